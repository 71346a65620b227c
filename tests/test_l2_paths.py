"""One L2 for one config: main.ipynb's baseline (``fit`` reading the shards) and the
study's L2 row (in-memory cache, model built by the study) give the same predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from shards_factory import write_tiny_shards

from utils.inference import evaluate_checkpoint
from utils.study.study import default_experiments, run_study, select_experiments
from utils.train import TrainConfig, fit

torch.set_num_threads(1)


def test_baseline_and_study_l2_predict_the_same(tmp_path: Path) -> None:
    write_tiny_shards(tmp_path / "shards", size=10)
    cfg = TrainConfig(
        run_dir=str(tmp_path),
        model="tiny_cnn",
        epochs=2,
        batch_size=16,
        progress=False,
        tensorboard=False,
        augment=True,
        dropout=0.2,
    )
    baseline = fit(cfg)
    table, report = evaluate_checkpoint(baseline.best_checkpoint, split="test", device="cpu")
    l2 = select_experiments(default_experiments(), ["L2"])
    for cache in (True, False):  # the in-memory cache and the shards
        rows = run_study(l2, cfg, tmp_path / "train" / f"study_{cache}", cache_data=cache)
        study_pred = pd.read_csv(Path(rows["dir"][0]) / "predictions_test.csv")
        np.testing.assert_allclose(study_pred["label"], table["label"], rtol=1e-6)
        np.testing.assert_allclose(study_pred["prediction"], table["prediction"], atol=1e-5)
        assert abs(rows["bmae"][0] - report["bmae"]) < 1e-5
    # the predictions are those of a trained model, not constants that agree trivially
    assert np.ptp(table["prediction"]) > 1e-3
