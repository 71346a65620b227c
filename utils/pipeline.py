"""Run the notebooks headless, in pipeline order, with papermill.

``make demo`` calls ``python -m utils.pipeline --run-dir runs/demo``: each notebook's
``parameters`` cell is overridden with the demo values below, the executed copy lands
in ``<run_dir>/notebooks/``, and a stage whose notebook and parameters have not
changed since it last finished is skipped (the stages themselves also resume).
Tests call :func:`execute_notebook` with tiny parameters.
"""

from __future__ import annotations

import argparse
import ast
import csv
import difflib
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.atomic import atomic_open
from utils.paths import RunPaths, project_root
from utils.quiet import quiet_tensorflow

TIMINGS_FILE = "timings.csv"


@dataclass(frozen=True)
class Stage:
    """One notebook of the pipeline and its demo-size parameters."""

    notebook: str  # path relative to the project root
    demo: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return Path(self.notebook).stem


#: Pipeline order. Each stage's ``demo`` dict overrides its notebook's parameters cell.
#: Headless runs keep no progress bars (a saved bar shows only its first state, "0%").
STAGES: tuple[Stage, ...] = (
    Stage(
        "extract_GPS_images/image.ipynb",
        {"backend": "synthetic", "n": 1500, "size": 48, "progress": False},
    ),
    Stage("split_and_batch.ipynb", {"progress": False}),
    Stage(
        "main.ipynb",
        # the study trains 16 models: a small CNN on whole 48 px patches (cached in memory)
        {
            "model": "tiny_cnn",
            "crop": None,
            "epochs": 5,
            "batch_size": 64,
            "lr": 0.003,
            "progress": False,
        },
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

    quiet_tensorflow()  # the kernels inherit the environment
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
        # the kernel's start-up warning about local TCP transport is noise in a headless run
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
    )
    return output


def notebook_parameters(notebook: str | Path) -> list[str]:
    """The names assigned in ``notebook``'s cell tagged ``parameters``, in order.

    One plain ``name = value`` per line is what papermill understands; a tuple assignment
    (``a, b = 1, 2``) is refused here because papermill cannot see its names (it would
    warn "Passed unknown parameter" for each on every run).
    """
    nb = json.loads((project_root() / notebook).read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "parameters" in cell["metadata"].get("tags", []):
            names = []
            for node in ast.parse("".join(cell["source"])).body:
                if not (
                    isinstance(node, ast.Assign)
                    and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name)
                ):
                    raise ValueError(
                        f"{notebook}: line {node.lineno} of the parameters cell is not one "
                        "`name = value` assignment"
                    )
                names.append(node.targets[0].id)
            return names
    raise ValueError(f"{notebook} has no cell tagged 'parameters'")


def check_overrides(
    overrides: dict[str, dict[str, Any]], stages: tuple[Stage, ...] = STAGES
) -> None:
    """Refuse an override of a stage or parameter that does not exist.

    Raises:
        ValueError: naming the unknown stage or key, the closest valid name and every
            valid one.
    """
    known = {s.name: s for s in stages}
    for stage, values in overrides.items():
        if stage not in known:
            raise ValueError(f"unknown stage {stage!r}; valid stages: {', '.join(known)}")
        valid = notebook_parameters(known[stage].notebook)
        for key in values:
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(
                    f"unknown parameter {stage}.{key}{hint}; the parameters of {stage} "
                    f"({known[stage].notebook}) are: {', '.join(valid)}"
                )


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
) -> list[tuple[str, float | None, str]]:
    """Run ``stages`` in order under ``run_dir``; return (stage, seconds, status) rows
    (a skipped stage carries the time of its last real run, or None).

    Args:
        run_dir: the run folder (relative paths are taken from the project root).
        stages: the stages to run, in order.
        overrides: stage name -> parameters replacing the stage's demo values.
        force: run a stage even when it already finished with the same inputs.
    """
    check_overrides(overrides or {}, (*STAGES, *stages))
    paths = RunPaths.of(run_dir)
    paths.notebooks.mkdir(parents=True, exist_ok=True)
    timings = read_timings(paths.root / TIMINGS_FILE)
    rows = []
    for stage in stages:
        params = {"run_dir": str(paths.root), **stage.demo, **(overrides or {}).get(stage.name, {})}
        stamp = paths.notebooks / f".{stage.name}.done"
        fingerprint = _fingerprint(stage, params)
        if not force and stamp.is_file() and stamp.read_text() == fingerprint:
            last = timings.get(stage.name)
            print(f"[{stage.name}] up to date, skipped (use --force to re-run)")
            rows.append((stage.name, last, "skipped"))
            continue
        print(f"[{stage.name}] running {stage.notebook} with {params}", flush=True)
        start = time.perf_counter()
        execute_notebook(stage.notebook, paths.notebooks / f"{stage.name}.ipynb", params)
        seconds = time.perf_counter() - start
        stamp.write_text(fingerprint)
        print(f"[{stage.name}] done in {seconds:.0f} s", flush=True)
        rows.append((stage.name, seconds, "ran"))
    write_timings(paths.root / TIMINGS_FILE, rows, timings)
    return rows


def read_timings(path: Path) -> dict[str, float | None]:
    """Stage -> seconds of its last real run, from a ``timings.csv`` (empty if none)."""
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8", newline="") as handle:
        return {
            row["stage"]: float(row["seconds"]) if row.get("seconds") else None
            for row in csv.DictReader(handle)
        }


def write_timings(
    path: Path, rows: list[tuple[str, float | None, str]], previous: dict[str, float | None]
) -> None:
    """Write ``timings.csv``: one row per stage of the pipeline, in order.

    A stage that ran has its time and status ``ran``; a skipped stage keeps the time of its
    last real run (status ``skipped``; empty if it never ran under this runner); a stage not
    asked for this time keeps its previous row (status ``not run``).
    """
    done = {name: (seconds, status) for name, seconds, status in rows}
    lines = ["stage,seconds,status\n"]
    for stage in STAGES:
        if stage.name in done:
            seconds, status = done[stage.name]
        elif stage.name in previous:
            seconds, status = previous[stage.name], "not run"
        else:
            continue
        lines.append(f"{stage.name},{'' if seconds is None else f'{seconds:.1f}'},{status}\n")
    with atomic_open(path, "w") as handle:
        handle.writelines(lines)


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line options of ``python -m utils.pipeline``."""
    from utils.cli import add_run_dir, make_parser  # noqa: PLC0415

    parser = make_parser("utils.pipeline", __doc__.splitlines()[0])
    add_run_dir(parser, "runs/demo", "every stage's inputs and outputs")
    parser.add_argument(
        "--only", nargs="+", metavar="STAGE", help=f"stages to run: {[s.name for s in STAGES]}"
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="STAGE.KEY=JSON",
        help="override a notebook parameter, e.g. image.n=5000 image.size=225 (an unknown "
        "key is refused with the list of valid ones)",
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
    overrides = parse_overrides(args.set)
    try:
        check_overrides(overrides)
    except ValueError as err:
        raise SystemExit(f"error: --set: {err}") from None
    rows = run_pipeline(args.run_dir, stages=stages, overrides=overrides, force=args.force)
    print("\nstage                seconds  status")
    for name, seconds, status in rows:
        shown = "      -" if seconds is None else f"{seconds:7.0f}"
        note = " (time of its last run)" if status == "skipped" and seconds is not None else ""
        print(f"{name:<20} {shown}  {status}{note}")


if __name__ == "__main__":
    main()
