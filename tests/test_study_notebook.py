"""main.ipynb runs every experiment of the study at a tiny budget and writes the table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from shards_factory import write_tiny_shards

from utils.paths import RunPaths
from utils.study.study import DEFAULT_ALPHAS, default_experiments


@pytest.mark.notebook
def test_main_notebook_runs_every_study_experiment(
    run_notebook, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one torch thread in the kernel: on a busy 2-core machine two threads spin-wait
    # on each other and run several times slower
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    paths = RunPaths.of(tmp_path / "run")
    write_tiny_shards(paths.shards, size=10)
    run_notebook(
        "main.ipynb", run_dir=str(paths.root), model="tiny_cnn", epochs=1, crop=8, batch_size=16
    )
    study = paths.train / "study"
    table = pd.read_csv(study / "results.csv")
    bases = ("L2", "weighted L2 a=1")  # StudyConfig.calibrate
    calibrated = [f"{base} + calibration a={a:g}" for base in bases for a in DEFAULT_ALPHAS]
    assert list(table["method"]) == [e.name for e in default_experiments()] + calibrated
    assert np.isfinite(table[["b-MAE", "MAE", "RMSE", "R2"]].to_numpy()).all()
    assert table.loc[table["method"] == "L2", "b-MAE vs L2 %"].item() == 0
    md = (study / "results.md").read_text()
    assert md.count("\n") == len(table) + 2 and "| BMC |" in md
    assert (study / "per_bin_mae.png").stat().st_size > 0
    assert len(list(study.glob("*/result.json"))) == len(table) - len(calibrated)  # trained
    assert (paths.train / "l2_baseline" / "best.pt").is_file()  # the baseline still there
