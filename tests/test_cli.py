"""One CLI style: every command's --help names its ``python -m`` program, shows defaults,
takes ``--run-dir`` (stages) and answers without importing torch or TensorFlow (so
does a bad option); paths typed at a shell mean the shell's folder; the notebooks'
parameters cells hold the same defaults as their stage's config dataclass."""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from utils.paths import project_root
from utils.pipeline import notebook_parameters

#: (module, sub-command args, is a stage taking --run-dir)
CLIS = [
    ("extract_GPS_images", [], False),
    ("extract_GPS_images", ["synthetic"], True),
    ("extract_GPS_images", ["gee"], True),
    ("extract_GPS_images.synthetic", [], True),
    ("utils.batching.split_and_batch", [], True),
    ("utils.pipeline", [], True),
    ("utils.study.run", [], True),
    ("utils.study.ideal_balancing", [], False),  # a research tool, not a stage
    # torch stages: their options come from TrainConfig / ExplainConfig (utils.train_config,
    # visualization.explain_config) and are parsed before the stage's torch imports
    ("utils.train", [], True),
    ("visualization.explain", [], True),
]

HELP_PROBE = """
import json, runpy, sys, time
start, cpu = time.perf_counter(), time.process_time()
sys.argv = sys.argv[1:]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit:
    pass
heavy = [m for m in ("torch", "tensorflow") if m in sys.modules]
print(json.dumps({"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu,
                  "heavy": heavy}), file=sys.stderr)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(project_root())}


@pytest.fixture(scope="module")
def helps() -> dict[str, tuple[str, str]]:
    """Every CLI's --help, run side by side in subprocesses: name -> (stdout, stderr)."""
    running = {
        " ".join([m, *s]): subprocess.Popen(
            [sys.executable, "-c", HELP_PROBE, m, *s, "--help"],
            env=_env(),
            cwd=project_root(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for m, s, _ in CLIS
    }
    return {name: proc.communicate(timeout=300) for name, proc in running.items()}


@pytest.mark.parametrize(
    ("module", "sub", "stage"), CLIS, ids=[" ".join([m, *s]) for m, s, _ in CLIS]
)
def test_help_names_the_program_and_shows_defaults(helps, module, sub, stage) -> None:
    text, err = helps[" ".join([module, *sub])]
    assert text.startswith(f"usage: python -m {' '.join([module, *sub])}"), text[:200]
    assert "DESIGN" not in text and "issue" not in text.lower()
    probe = json.loads(err.strip().splitlines()[-1])
    # the robust form of "answers in under a second": nothing heavy was imported
    assert probe["heavy"] == [], probe
    # CPU seconds of imports + parsing (wall time depends on the machine's load): about
    # 0.5 s on an idle core, well under a second; the slack is for slow machines
    assert probe["cpu"] < 3, probe
    if sub or module != "extract_GPS_images":
        assert re.search(r"\(default:\s", text), text
    if stage:
        assert "--run-dir" in text


@pytest.mark.parametrize("module", ["utils.train", "visualization.explain"])
def test_a_bad_option_of_a_torch_stage_fails_before_torch_loads(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", HELP_PROBE, module, "--no-such-option", "1"],
        env=_env(),
        cwd=project_root(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        f"python -m {module}: error: unrecognized arguments: --no-such-option 1" in done.stderr
    ), done.stderr
    assert json.loads(done.stderr.strip().splitlines()[-1])["heavy"] == []


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        env=_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_paths_are_relative_to_the_shell_folder(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    made = _run(
        [
            "extract_GPS_images",
            "synthetic",
            "--out",
            "relw",
            "--n",
            "12",
            "--size",
            "8",
            "--corrupt-fraction",
            "0",
        ],
        elsewhere,
    )
    assert made.returncode == 0, made.stderr
    assert len(list((elsewhere / "relw").glob("*.tfrecord.gz"))) == 12
    assert not (project_root() / "relw").exists()
    split = _run(["utils.batching.split_and_batch", "relw", "shards", "--no-progress"], elsewhere)
    assert split.returncode == 0, split.stderr
    assert (elsewhere / "shards" / "manifest.csv").is_file()
    # the same with --run-dir: <run-dir>/exports then <run-dir>/shards
    made = _run(
        ["extract_GPS_images.synthetic", "--run-dir", "r", "--n", "12", "--size", "8"], elsewhere
    )
    assert made.returncode == 0, made.stderr
    split = _run(["utils.batching.split_and_batch", "--run-dir", "r", "--no-progress"], elsewhere)
    assert split.returncode == 0, split.stderr
    assert (elsewhere / "r" / "shards" / "stats.json").is_file()
    missing = _run(["utils.batching.split_and_batch", "nothere", "out"], elsewhere)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert f"no export folder {elsewhere / 'nothere'}" in missing.stderr


def _notebook_defaults(notebook: str) -> dict:
    nb = json.loads((project_root() / notebook).read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    values: dict = {}
    exec(compile(ast.parse("".join(cell["source"])), notebook, "exec"), {}, values)  # noqa: S102
    assert list(values) == notebook_parameters(notebook)
    return values


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def test_notebook_defaults_are_the_config_defaults() -> None:
    from dataclasses import asdict

    from extract_GPS_images.synthetic import WorldConfig, generate_world
    from utils.batching.split_and_batch import SplitConfig
    from utils.study.study import StudyConfig
    from utils.train import TrainConfig
    from visualization.explain import ExplainConfig

    pairs = {
        "main.ipynb": asdict(TrainConfig()),
        "split_and_batch.ipynb": asdict(SplitConfig()),
        "visualization.ipynb": asdict(ExplainConfig()),
        "extract_GPS_images/image.ipynb": {  # corrupt_fraction: generate_world's (None)
            **asdict(WorldConfig()),
            "corrupt_fraction": inspect.signature(generate_world)
            .parameters["corrupt_fraction"]
            .default,
        },
    }
    for notebook, config in pairs.items():
        params = _notebook_defaults(notebook)
        shared = set(params) & set(config)
        assert len(shared) >= 5, notebook
        differ = {k: (params[k], config[k]) for k in shared if not _same(params[k], config[k])}
        assert not differ, f"{notebook}: parameters differ from the config's defaults {differ}"
    study = _notebook_defaults("main.ipynb")["study"]
    defaults = asdict(StudyConfig())
    assert all(_same(v, defaults[k]) for k, v in study.items()), study


def test_field_help_reads_continuation_lines_holding_a_colon() -> None:
    from dataclasses import dataclass  # noqa: PLC0415

    from utils.cli import field_help  # noqa: PLC0415

    @dataclass
    class Knobs:
        """Two knobs.

        Attributes:
            first, second: shared text that goes on, naming
                :class:`Thing` with two words: here, and ``code``.
            third: 100% plain.
        """

        first: int = 0
        second: int = 0
        third: int = 0

    help_ = field_help(Knobs)
    assert set(help_) == {"first", "second", "third"}
    expected = "shared text that goes on, naming Thing with two words: here, and code."
    assert help_["first"] == help_["second"] == expected
    assert help_["third"] == "100%% plain."
