"""Run the notebooks headless, in pipeline order, with papermill.

``make demo`` calls ``python -m utils.pipeline --run-dir runs/demo``: each notebook's
``parameters`` cell is overridden with the demo values below, the executed copy lands
in ``<run_dir>/notebooks/``, and a stage whose notebook and parameters have not
changed since it last finished is skipped (the stages themselves also resume).
Tests call :func:`execute_notebook` with tiny parameters.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.paths import RunPaths, project_root


@dataclass(frozen=True)
class Stage:
    """One notebook of the pipeline and its demo-size parameters."""

    notebook: str  # path relative to the project root
    demo: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return Path(self.notebook).stem


#: Pipeline order. Each stage's ``demo`` dict overrides its notebook's parameters cell.
STAGES: tuple[Stage, ...] = (
    Stage("extract_GPS_images/image.ipynb", {"backend": "synthetic", "n": 1500, "size": 48}),
    Stage("split_and_batch.ipynb", {}),
    Stage(
        "main.ipynb",
        # the study trains 16 models: a small CNN on whole 48 px patches (cached in memory)
        {"model": "tiny_cnn", "crop": None, "epochs": 5, "batch_size": 64, "lr": 0.003},
    ),
    Stage(
        "visualization.ipynb",
        # 2 examples from each of the 6 label bins, pushed 0.5 poorer and richer
        {"examples_per_bin": 2, "iterations": 100, "push": 0.5, "faithfulness_steps": 16},
    ),
    # the map: a 1 x 1 degree grid (about 280 cells of 6,750 m) around the world's biggest town
    Stage("map.ipynb", {"box_deg": 1.0, "cell_m": 6750}),
)


def execute_notebook(
    notebook: str | Path,
    output: str | Path,
    parameters: dict[str, Any] | None = None,
    *,
    timeout: int = 1800,
) -> Path:
    """Execute ``notebook`` headless with papermill, cwd at the project root.

    Raises ``papermill.PapermillExecutionError`` with the failing cell's traceback;
    the partially executed notebook is kept at ``output`` for inspection.
    """
    import papermill  # noqa: PLC0415 (heavy; only when notebooks run)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(project_root() / notebook),
        str(output),
        parameters=parameters or {},
        cwd=str(project_root()),
        kernel_name="python3",
        progress_bar=False,
        execution_timeout=timeout,
    )
    return output


def _fingerprint(stage: Stage, parameters: dict[str, Any]) -> str:
    digest = hashlib.sha256((project_root() / stage.notebook).read_bytes())
    digest.update(json.dumps(parameters, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def run_pipeline(
    run_dir: str | Path,
    *,
    stages: tuple[Stage, ...] = STAGES,
    overrides: dict[str, dict[str, Any]] | None = None,
    force: bool = False,
) -> list[tuple[str, float, str]]:
    """Run ``stages`` in order under ``run_dir``; return (stage, seconds, status) rows.

    Args:
        run_dir: the run folder (relative paths are taken from the project root).
        stages: the stages to run, in order.
        overrides: stage name -> parameters replacing the stage's demo values.
        force: run a stage even when it already finished with the same inputs.
    """
    paths = RunPaths.of(run_dir)
    paths.notebooks.mkdir(parents=True, exist_ok=True)
    rows = []
    for stage in stages:
        params = {"run_dir": str(paths.root), **stage.demo, **(overrides or {}).get(stage.name, {})}
        stamp = paths.notebooks / f".{stage.name}.done"
        fingerprint = _fingerprint(stage, params)
        if not force and stamp.is_file() and stamp.read_text() == fingerprint:
            print(f"[{stage.name}] up to date, skipped (use --force to re-run)")
            rows.append((stage.name, 0.0, "skipped"))
            continue
        print(f"[{stage.name}] running {stage.notebook} with {params}", flush=True)
        start = time.perf_counter()
        execute_notebook(stage.notebook, paths.notebooks / f"{stage.name}.ipynb", params)
        seconds = time.perf_counter() - start
        stamp.write_text(fingerprint)
        print(f"[{stage.name}] done in {seconds:.0f} s", flush=True)
        rows.append((stage.name, seconds, "ran"))
    with open(paths.root / "timings.csv", "w", encoding="utf-8") as handle:
        handle.write("stage,seconds,status\n")
        handle.writelines(f"{name},{sec:.1f},{status}\n" for name, sec, status in rows)
    return rows


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line options of ``python -m utils.pipeline``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/demo", help="run folder (default runs/demo)")
    parser.add_argument(
        "--only", nargs="+", metavar="STAGE", help=f"stages to run: {[s.name for s in STAGES]}"
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="STAGE.KEY=JSON",
        help="override a parameter, e.g. image.n=5000 image.size=225",
    )
    parser.add_argument("--force", action="store_true", help="re-run finished stages")
    return parser


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["image.n=5000", "main.device=\\"cuda\\""]`` -> ``{"image": {"n": 5000}, ...}``."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        stage, dot, key = target.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--set expects STAGE.KEY=VALUE, got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        overrides.setdefault(stage, {})[key] = parsed
    return overrides


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m utils.pipeline``."""
    args = get_args_parser().parse_args(argv)
    known = {s.name: s for s in STAGES}
    unknown = [name for name in (args.only or []) if name not in known]
    if unknown:
        raise SystemExit(f"unknown stage(s) {unknown}; valid: {list(known)}")
    stages = tuple(known[n] for n in args.only) if args.only else STAGES
    rows = run_pipeline(
        args.run_dir, stages=stages, overrides=parse_overrides(args.set), force=args.force
    )
    print("\nstage                seconds  status")
    for name, seconds, status in rows:
        print(f"{name:<20} {seconds:7.0f}  {status}")


if __name__ == "__main__":
    main()
