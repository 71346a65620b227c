"""image.ipynb runs headless with tiny parameters and writes the exports and figures."""

from __future__ import annotations

import json

import pytest

from extract_GPS_images.labels import read_labels
from utils.paths import RunPaths


@pytest.mark.notebook
def test_image_notebook_synthetic(run_notebook, tmp_path) -> None:
    executed = run_notebook(
        "extract_GPS_images/image.ipynb", n=30, size=12, corrupt_fraction=0.1, years=[2016, 2019]
    )
    exports = RunPaths.of(tmp_path / "run").exports
    assert len(list(exports.glob("*.tfrecord.gz"))) == 60
    assert len(read_labels(exports / "labels.csv")) == 60
    assert (exports / "labels.png").stat().st_size > 10_000
    assert (exports / "examples.png").stat().st_size > 10_000
    outputs = json.loads(executed.read_text())["cells"]
    text = json.dumps([c.get("outputs", []) for c in outputs])
    assert "60 records (30 cells)" in text and "damaged on purpose: 6" in text
