"""main.ipynb runs headless on tiny shards and writes its checkpoint, predictions and figures."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from shards_factory import write_tiny_shards

from utils.paths import RunPaths


@pytest.mark.notebook
def test_main_notebook_trains_evaluates_and_plots(run_notebook, tmp_path: Path) -> None:
    paths = RunPaths.of(tmp_path / "run")
    write_tiny_shards(paths.shards, size=12)
    study = {"experiments": ["L2"], "alphas": [0.5], "force": False}  # the study has its own test
    run_notebook(
        "main.ipynb",
        run_dir=str(paths.root),
        model="tiny_cnn",
        epochs=2,
        crop=10,
        batch_size=8,
        study=study,
    )
    out = paths.train / "l2_baseline"
    for name in (
        "best.pt",
        "last.pt",
        "history.csv",
        "predictions_test.csv",
        "learning_curves.png",
        "pred_vs_true.png",
        "per_bin_mae.png",
        "residual_map.png",
    ):
        assert (out / name).is_file(), name
    assert len(pd.read_csv(out / "history.csv")) == 2
    table = pd.read_csv(out / "predictions_test.csv")
    assert len(table) == 16 and table["prediction"].notna().all()
    assert json.loads((out / "metrics_test.json").read_text())["n"] == 16
