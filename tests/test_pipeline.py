"""The demo runner: stages in order, overrides, finished stages skipped on re-run."""

from __future__ import annotations

import pytest

from utils.pipeline import STAGES, parse_overrides, run_pipeline


def test_parse_overrides() -> None:
    assert parse_overrides(["image.n=5000", "image.size=225", 'main.device="cuda"']) == {
        "image": {"n": 5000, "size": 225},
        "main": {"device": "cuda"},
    }
    with pytest.raises(SystemExit, match="STAGE.KEY=VALUE"):
        parse_overrides(["n=5"])


def test_stage_order_is_the_pipeline_order() -> None:
    assert [s.name for s in STAGES] == ["image", "split_and_batch", "main", "visualization", "map"]


@pytest.mark.notebook
def test_run_then_skip_finished_stage(tmp_path) -> None:
    tiny = {"image": {"n": 8, "size": 8}}
    rows = run_pipeline(tmp_path / "run", stages=STAGES[:1], overrides=tiny)
    assert [(name, status) for name, _, status in rows] == [("image", "ran")]
    assert (tmp_path / "run" / "notebooks" / "image.ipynb").is_file()
    assert len(list((tmp_path / "run" / "exports").glob("*.tfrecord.gz"))) == 8
    rows = run_pipeline(tmp_path / "run", stages=STAGES[:1], overrides=tiny)
    assert rows[0][2] == "skipped"
    timings = (tmp_path / "run" / "timings.csv").read_text().splitlines()
    assert timings[0] == "stage,seconds,status" and timings[1].startswith("image,")
    rows = run_pipeline(tmp_path / "run", stages=STAGES[:1], overrides=tiny, force=True)
    assert rows[0][2] == "ran"
