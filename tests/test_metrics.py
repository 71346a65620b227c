"""metrics/: balanced MAE on hand-computed arrays and the original definition; the other
metrics against scikit-learn / NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from metrics import (
    ORIGINAL_RANGE,
    BalancedMAE,
    balanced_mae,
    mae,
    pearson_r,
    per_bin_mae,
    r2,
    regression_report,
    rmse,
    shot_mae,
)


def test_hand_computed_with_an_empty_bin() -> None:
    # bins [0,1) [1,2) [2,3]; 3.5 and -1 fall in the edge bins; the middle bin is empty
    target = np.array([0.5, 0.2, 2.5, 3.5, -1.0])
    pred = np.array([1.0, 0.0, 2.0, 3.0, -0.5])
    metric = BalancedMAE(bins=3, value_range=(0.0, 3.0))
    metric.update(pred, target)
    with pytest.warns(UserWarning, match=r"bin\(s\) \[1\]"):
        result = metric.compute()
    assert result.value == pytest.approx((0.4 + 0.5) / 2)
    assert result.empty == (1,)
    assert result.counts.tolist() == [3, 0, 2]
    assert np.isnan(result.per_bin[1])
    assert result.to_dict()["per_bin_mae"] == [pytest.approx(0.4), None, pytest.approx(0.5)]


def _original_bmae(pred: np.ndarray, target: np.ndarray) -> float:
    """The original study's definition written out: 6 equal-width bins over its range,
    MAE per bin, mean over bins; labels outside the range count in the edge bins."""
    low, high = 0.28095, 3.09452
    width = (high - low) / 6
    maes = []
    for k in range(6):
        lo, hi = low + k * width, low + (k + 1) * width
        mask = (target >= lo) & (target < hi)
        if k == 0:
            mask |= target < low
        if k == 5:
            mask |= target >= hi
        maes.append(np.abs(pred[mask] - target[mask]).mean())
    return float(np.mean(maes))


def test_original_definition() -> None:
    rng = np.random.default_rng(0)
    target = rng.uniform(0.2, 3.2, 500)
    pred = target + rng.normal(0, 0.3, 500)
    assert BalancedMAE().edges == pytest.approx(np.linspace(*ORIGINAL_RANGE, 7))
    assert balanced_mae(pred, target) == pytest.approx(_original_bmae(pred, target), rel=1e-12)


def test_streaming_equals_one_shot_and_accepts_tensors() -> None:
    rng = np.random.default_rng(1)
    target = rng.uniform(0.3, 3.0, 301)
    pred = target + rng.normal(0, 0.2, 301)
    for kwargs in ({}, {"value_range": None}, {"quantile": True, "reference": target}):
        streaming = BalancedMAE(**kwargs)
        for chunk in np.array_split(np.arange(301), 7):
            streaming.update(torch.from_numpy(pred[chunk]).float(), torch.from_numpy(target[chunk]))
        one_shot = BalancedMAE(**kwargs)
        one_shot.update(pred, target)
        assert streaming.compute().value == pytest.approx(one_shot.compute().value, rel=1e-6)


def test_quantile_and_derived_range() -> None:
    train = np.arange(100, dtype=float)
    metric = BalancedMAE(bins=4, value_range=None, quantile=True, reference=train)
    assert metric.edges == pytest.approx([0, 24.75, 49.5, 74.25, 99])
    derived = BalancedMAE(bins=3, value_range=None, reference=train)
    assert derived.edges == pytest.approx([0, 33, 66, 99])


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="high > low"):
        BalancedMAE(value_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="quantile bins need reference"):
        BalancedMAE(quantile=True)
    with pytest.raises(ValueError, match="before any update"):
        BalancedMAE().compute()
    with pytest.raises(ValueError, match="differ in size"):
        mae([1.0, 2.0], [1.0])


def test_plain_metrics_match_sklearn_and_numpy() -> None:
    rng = np.random.default_rng(2)
    target = rng.normal(size=200)
    pred = target * 0.7 + rng.normal(0, 0.5, 200)
    assert mae(pred, target) == pytest.approx(mean_absolute_error(target, pred))
    assert rmse(pred, target) == pytest.approx(np.sqrt(mean_squared_error(target, pred)))
    assert r2(pred, target) == pytest.approx(r2_score(target, pred))
    assert pearson_r(pred, target) == pytest.approx(np.corrcoef(pred, target)[0, 1])


def test_per_bin_and_shot_mae() -> None:
    target = np.array([0.1, 0.2, 1.5, 2.5, 2.6])
    pred = target + np.array([0.1, 0.3, -0.2, 0.4, 0.0])
    bins = per_bin_mae(pred, target, 3, (0.0, 3.0))
    assert bins.per_bin == pytest.approx([0.2, 0.2, 0.2])
    train = np.concatenate([np.full(150, 0.5), np.full(50, 1.5), np.full(5, 2.5)])
    shots = shot_mae(pred, target, train, 3, many=100, few=20, value_range=(0.0, 3.0))
    assert shots["many_mae"] == pytest.approx(0.2) and shots["many_n"] == 2
    assert shots["medium_mae"] == pytest.approx(0.2) and shots["medium_n"] == 1
    assert shots["few_mae"] == pytest.approx(0.2) and shots["few_n"] == 2


def test_regression_report_keys() -> None:
    rng = np.random.default_rng(3)
    target = rng.uniform(0.3, 3.0, 120)
    pred = target + rng.normal(0, 0.1, 120)
    report = regression_report(pred, target, train_labels=target)
    for key in ("bmae", "mae", "rmse", "r2", "pearson_r", "many_mae", "medium_mae", "few_mae"):
        assert isinstance(report[key], float), key
    assert len(report["per_bin_mae"]) == 6
    assert report["bmae"] == pytest.approx(balanced_mae(pred, target))
