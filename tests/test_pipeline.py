"""The demo runner: stages in order, overrides, finished stages skipped on re-run."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import papermill
import pytest

from utils import pipeline
from utils.paths import project_root
from utils.pipeline import STAGES, main, notebook_parameters, parse_overrides, run_pipeline


def test_parse_overrides() -> None:
    assert parse_overrides(["image.n=5000", "image.size=225", 'main.device="cuda"']) == {
        "image": {"n": 5000, "size": 225},
        "main": {"device": "cuda"},
    }
    with pytest.raises(SystemExit, match="STAGE.KEY=VALUE"):
        parse_overrides(["n=5"])


def test_stage_order_is_the_pipeline_order() -> None:
    assert [s.name for s in STAGES] == ["image", "split_and_batch", "main", "visualization", "map"]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_parameters_cell_one_assignment_per_line_seen_by_papermill(stage) -> None:
    names = notebook_parameters(stage.notebook)
    # papermill warns "Passed unknown parameter" for every name its own parser misses
    assert names == list(papermill.inspect_notebook(str(project_root() / stage.notebook)))
    assert set(stage.demo) <= set(names), "a demo parameter the notebook does not have"


def test_tuple_assignment_in_parameters_cell_is_refused(tmp_path, monkeypatch) -> None:
    cell = {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "a, b = 1, 2"}
    (tmp_path / "nb.ipynb").write_text(pipeline.json.dumps({"cells": [cell]}))
    monkeypatch.setattr(pipeline, "project_root", lambda: tmp_path)
    with pytest.raises(ValueError, match="line 1 of the parameters cell"):
        notebook_parameters("nb.ipynb")


def test_unknown_set_key_is_an_error_listing_the_valid_keys(tmp_path) -> None:
    with pytest.raises(SystemExit) as err:
        main(["--run-dir", str(tmp_path / "run"), "--set", "visualization.pussh=0.3"])
    message = str(err.value)
    assert "visualization.pussh" in message and "did you mean 'push'" in message
    assert "examples_per_bin" in message and "faithfulness_steps" in message
    with pytest.raises(SystemExit, match="unknown stage 'vis'.*visualization"):
        main(["--run-dir", str(tmp_path / "run"), "--set", "vis.push=0.3"])
    assert not (tmp_path / "run").exists()  # refused before anything ran


def test_timings_keep_the_last_real_time_of_a_skipped_stage(tmp_path, monkeypatch) -> None:
    clock = iter([0.0, 12.5, 100.0, 103.0])
    monkeypatch.setattr(pipeline.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(pipeline, "execute_notebook", lambda nb, out, params: Path(out))
    run = tmp_path / "run"
    run_pipeline(run, stages=STAGES[:2])
    assert (run / "timings.csv").read_text().splitlines() == [
        "stage,seconds,status",
        "image,12.5,ran",
        "split_and_batch,3.0,ran",
    ]
    rows = run_pipeline(run, stages=STAGES[:2])  # both up to date: nothing runs
    assert rows == [("image", 12.5, "skipped"), ("split_and_batch", 3.0, "skipped")]
    assert (run / "timings.csv").read_text().splitlines() == [
        "stage,seconds,status",
        "image,12.5,skipped",
        "split_and_batch,3.0,skipped",
    ]
    run_pipeline(run, stages=STAGES[1:2])  # only one stage asked for: the other row stays
    assert (run / "timings.csv").read_text().splitlines()[1] == "image,12.5,not run"


NOISE = ("oneDNN", "absl::", "cpu_feature_guard", "IPKernelApp", "without encryption", "0%|")


def _outputs_text(notebook: Path) -> str:
    nb = json.loads(notebook.read_text())
    parts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "")))
            parts.extend("".join(v) for k, v in out.get("data", {}).items() if k.startswith("text"))
    return "\n".join(parts)


@pytest.mark.parametrize(
    "code",
    [
        "from extract_GPS_images.tfrecord import _tf; print(_tf().constant(1).numpy())",
        # what utils.train does before TensorBoard, which imports TensorFlow when installed
        "from utils.quiet import quiet_tensorflow; quiet_tensorflow(); import tempfile; "
        "from torch.utils.tensorboard import SummaryWriter; "
        "SummaryWriter(tempfile.mkdtemp()).close(); print(1)",
    ],
    ids=["tfrecord", "tensorboard"],
)
def test_tensorflow_starts_quietly(code: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=project_root(),
        timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith("TF_")},
    )
    assert done.stdout.strip() == "1", done.stderr
    assert not [word for word in NOISE if word in done.stderr], done.stderr


@pytest.mark.notebook
def test_run_then_skip_finished_stage(tmp_path, caplog, capfd) -> None:
    tiny = {"image": {"n": 8, "size": 8}}
    with caplog.at_level(logging.WARNING, logger="papermill"):
        rows = run_pipeline(tmp_path / "run", stages=STAGES[:1], overrides=tiny)
    assert not [r for r in caplog.records if "unknown parameter" in r.getMessage()]
    # quiet: nothing of the kernel's transport, TensorFlow or a saved "0%" progress bar
    outputs = _outputs_text(tmp_path / "run" / "notebooks" / "image.ipynb")
    assert "8 records" in outputs
    assert not [w for w in NOISE if w in outputs], outputs
    # the console: no transport warning from the kernel, nothing from TensorFlow (a kernel of
    # an earlier test may still log its own shutdown here, so not every kernel line counts)
    printed = capfd.readouterr()
    console = [
        line
        for line in (printed.err + printed.out).splitlines()
        if any(w in line for w in NOISE if w not in ("IPKernelApp", "0%|"))
    ]
    assert not console, console
    assert [(name, status) for name, _, status in rows] == [("image", "ran")]
    assert (tmp_path / "run" / "notebooks" / "image.ipynb").is_file()
    assert len(list((tmp_path / "run" / "exports").glob("*.tfrecord.gz"))) == 8
    rows = run_pipeline(tmp_path / "run", stages=STAGES[:1], overrides=tiny)
    assert rows[0][2] == "skipped"
    timings = (tmp_path / "run" / "timings.csv").read_text().splitlines()
    assert timings[0] == "stage,seconds,status" and timings[1].startswith("image,")
    rows = run_pipeline(tmp_path / "run", stages=STAGES[:1], overrides=tiny, force=True)
    assert rows[0][2] == "ran"
