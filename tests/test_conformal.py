"""Split-conformal intervals: the quantile rule, plain and Mondrian (label-bin) coverage
on exchangeable synthetic data, the coverage report."""

from __future__ import annotations

import math

import numpy as np
import pytest

from utils.maps.conformal import Conformal, conformal_quantile, coverage_report

EDGES = np.linspace(0.0, 6.0, 7)


def draw(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Skewed labels; predictions with errors five times larger in the two poorest bins."""
    y = np.clip(6.0 * rng.beta(4.0, 2.0, n), 0, 6)
    sigma = np.where(y < 2.0, 1.0, 0.2)
    return y + rng.normal(0, 1, n) * sigma, y


def test_conformal_quantile_rule() -> None:
    scores = np.arange(1.0, 11.0)  # n = 10
    assert conformal_quantile(scores, 0.5) == 6.0  # ceil(11 * 0.5) = 6th smallest
    assert conformal_quantile(scores, 0.9) == 10.0  # ceil(9.9) = 10
    assert math.isinf(conformal_quantile(scores, 0.95))  # ceil(10.45) = 11 > n
    with pytest.raises(ValueError, match="coverage"):
        conformal_quantile(scores, 1.0)


def test_coverage_within_sampling_error_overall_and_per_bin() -> None:
    rng = np.random.default_rng(0)
    cal_pred, cal_y = draw(6000, rng)
    test_pred, test_y = draw(60_000, rng)
    plain = Conformal.fit(cal_pred, cal_y, method="plain", coverage=0.9, edges=EDGES)
    mondrian = Conformal.fit(cal_pred, cal_y, method="mondrian", coverage=0.9, edges=EDGES)
    for fitted in (plain, mondrian):
        report = coverage_report(fitted, test_pred, test_y)
        # the coverage of a calibration set scatters by ~sqrt(c(1-c)/n_cal) around the target
        tolerance = 3 * math.sqrt(0.09 / 6000) + 3 * report["sampling_error"]
        assert abs(report["set_coverage"] - 0.9) < tolerance, (fitted.method, report)
        assert report["coverage"] > 0.9 - tolerance
    assert coverage_report(plain, test_pred, test_y)["coverage"] == pytest.approx(
        coverage_report(plain, test_pred, test_y)["set_coverage"]
    )
    per_bin = coverage_report(mondrian, test_pred, test_y)["per_bin"]
    for b, row in enumerate(per_bin):
        if mondrian.counts[b] < 100:
            continue
        tolerance = 3 * math.sqrt(0.09 / mondrian.counts[b]) + 3 * row["sampling_error"]
        assert abs(row["set_coverage"] - 0.9) < tolerance, (b, row)
        assert row["coverage"] >= row["set_coverage"]
    # plain intervals are too narrow where the errors are large (the poor bins)...
    plain_bins = coverage_report(plain, test_pred, test_y)["per_bin"]
    assert plain_bins[1]["coverage"] < 0.75
    # ...Mondrian ones are wide there and narrow where the model is precise
    assert per_bin[1]["mean_width"] > 2 * plain_bins[1]["mean_width"]
    assert per_bin[5]["mean_width"] < plain_bins[5]["mean_width"]


def test_mondrian_interval_is_the_hull_of_the_per_bin_sets() -> None:
    fitted = Conformal("mondrian", 0.9, np.array([0.0, 1.0, 2.0]), np.array([0.5, 0.1]))
    low, high = fitted.interval(np.array([1.05, 1.8]))
    # 1.05: bin 0 allows [0.55, 1.0], bin 1 allows [1.0, 1.15] -> [0.55, 1.15]
    # 1.8: bin 0 would need y <= 1.0 within 0.5 of 1.8: empty; bin 1 allows [1.7, 1.9]
    np.testing.assert_allclose(low, [0.55, 1.7])
    np.testing.assert_allclose(high, [1.15, 1.9])
    few = Conformal("mondrian", 0.9, np.array([0.0, 1.0, 2.0]), np.array([math.inf, 0.1]))
    low, high = few.interval(np.array([1.5]))
    assert low[0] == 0.0 and high[0] == pytest.approx(1.6)  # too few: the whole bin 0


def test_fit_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown interval method"):
        Conformal.fit(np.ones(3), np.ones(3), method="cqr")
    with pytest.raises(ValueError, match="no calibration place"):
        Conformal.fit(np.ones(3), np.full(3, np.nan))


def test_sparse_bins_are_merged_with_their_neighbours() -> None:
    from utils.maps.conformal import merge_sparse_bins

    assert merge_sparse_bins(np.array([1, 12, 37, 83]), 9) == [[0, 1], [2], [3]]
    assert merge_sparse_bins(np.array([50, 3, 20, 2]), 9) == [[0], [1, 2, 3]]
    assert merge_sparse_bins(np.array([2, 3]), 9) == [[0, 1]]
    rng = np.random.default_rng(1)
    y = np.concatenate([[0.5], rng.uniform(1, 6, 300)])  # one place in the poorest bin
    fitted = Conformal.fit(y + rng.normal(0, 0.3, len(y)), y, edges=EDGES)
    assert fitted.groups[0] == [0, 1] and np.isfinite(fitted.quantiles).all()
    assert fitted.quantiles[0] == fitted.quantiles[1]
    low, _ = fitted.interval(np.array([5.0]))
    assert low[0] > 3.0  # no longer stretched down over a whole empty bin
