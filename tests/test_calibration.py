"""Balanced calibration on hand-made numbers: weights, monotone map, what it buys."""

from __future__ import annotations

import numpy as np
import pytest

from metrics import balanced_mae, mae
from utils.study.calibration import BalancedCalibration


def test_weights_are_inverse_bin_shares_to_the_alpha() -> None:
    # training labels: 3 in the low bin [0, 1), 1 in the high bin [1, 2]
    train = np.array([0.1, 0.2, 0.3, 1.9])
    pred = np.array([0.5, 0.5])  # one prediction, two labels: the fit is their weighted mean
    target = np.array([0.0, 2.0])
    plain = BalancedCalibration.fit(pred, target, train, alpha=0.0, bins=2)
    assert plain(0.5) == pytest.approx(1.0)
    full = BalancedCalibration.fit(pred, target, train, alpha=1.0, bins=2)
    # weights 1/0.75 and 1/0.25: (0 * 4/3 + 2 * 4) / (4/3 + 4) = 1.5
    assert full(0.5) == pytest.approx(1.5)
    half = BalancedCalibration.fit(pred, target, train, alpha=0.5, bins=2)
    w = np.array([0.75, 0.25]) ** -0.5
    assert half(0.5) == pytest.approx(2 * w[1] / w.sum())


def test_map_is_monotone_and_undoes_shrinkage() -> None:
    rng = np.random.default_rng(0)
    y = rng.uniform(0, 1, 2000)
    shrunk = 0.5 + 0.5 * (y - 0.5)  # a model that halves every distance to the mean
    cal = BalancedCalibration.fit(shrunk, y, y, alpha=0.0)
    grid = np.linspace(-1, 2, 301)
    assert np.all(np.diff(cal(grid)) >= 0)
    assert cal(grid).min() >= y.min() - 1e-12 and cal(grid).max() <= y.max() + 1e-12
    fresh = rng.uniform(0, 1, 500)
    assert mae(cal(0.5 + 0.5 * (fresh - 0.5)), fresh) < 0.02


def test_balancing_trades_mae_for_balanced_mae_on_held_out_data() -> None:
    """Rare labels seen through noise: the weighted map moves their predictions out of
    the crowd (lower b-MAE) at some cost in plain MAE, more so for larger alpha."""
    rng = np.random.default_rng(1)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.concatenate([rng.normal(0.0, 0.3, n), rng.uniform(-2.0, -1.0, n // 40)])
        return y + rng.normal(0, 0.5, y.size), y

    train_x, train_y = draw(4000)
    val_x, val_y = draw(4000)
    test_x, test_y = draw(4000)
    l2 = np.polyval(np.polyfit(train_x, train_y, 1), [val_x, test_x])  # the shrunk model
    scores = []
    for alpha in (0.0, 0.5, 1.0):
        cal = BalancedCalibration.fit(l2[0], val_y, train_y, alpha=alpha)
        calibrated = cal(l2[1])
        scores.append(
            (balanced_mae(calibrated, test_y, 6, None, reference=train_y), mae(calibrated, test_y))
        )
    (b0, m0), (b5, m5), (b1, m1) = scores
    assert b1 < b5 < b0 and m0 < m5 < m1


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="as many"):
        BalancedCalibration.fit([1.0, 2.0], [1.0], [1.0, 2.0], alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        BalancedCalibration.fit([1.0], [1.0], [1.0, 2.0], alpha=-1)
