"""The ideal-predictor analysis of utils/study/ideal_balancing.py on worlds whose answer is
known."""

from __future__ import annotations

import pytest

from extract_GPS_images.synthetic import WorldConfig
from utils.study.ideal_balancing import finite_training_table, ideal_table, spread_over_test_sets

N = 200_000


def test_a_noiseless_world_leaves_nothing_to_balance() -> None:
    rows = ideal_table(WorldConfig(scene_noise=0.001, tail_noise=0.001), n=N)
    assert rows[0]["bmae"] < 0.03 and rows[0]["mae"] < 0.03  # only the grid's resolution
    assert all(abs(r["bmae"] - rows[0]["bmae"]) < 0.01 for r in rows)


def test_reweighting_trades_mae_for_balanced_mae_in_the_default_world() -> None:
    rows = ideal_table(WorldConfig(), n=N)
    assert [r["a"] for r in rows] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert rows[0]["bmae_change"] == 0.0 and rows[0]["mae_change"] == 0.0
    assert rows[0]["bmae"] == pytest.approx(sum(rows[0][f"bin{b}"] for b in range(1, 7)) / 6)
    bmae, mae = [r["bmae"] for r in rows], [r["mae"] for r in rows]
    assert bmae == sorted(bmae, reverse=True) and mae == sorted(mae)  # L2 is the MAE-best
    assert rows[0]["bin1"] > 3 * rows[0]["bin4"]  # L2 leaves the poorest far off


def test_a_noisier_tail_signature_leaves_more_to_balance() -> None:
    clear = ideal_table(WorldConfig(tail_noise=0.3), alphas=(0.5,), n=N)
    blurred = ideal_table(WorldConfig(tail_noise=1.2), alphas=(0.5,), n=N)
    assert blurred[0]["bin1"] > clear[0]["bin1"] + 0.1
    assert blurred[1]["bmae_change"] < clear[1]["bmae_change"]


def test_one_small_test_set_reads_the_ideal_change_with_a_spread() -> None:
    world = WorldConfig()
    full = {r["a"]: r for r in ideal_table(world, alphas=(0.5,), n=N)}
    small = spread_over_test_sets(world, (0.5,), n_test=980, repeats=200, n=N)[0]
    large = spread_over_test_sets(world, (0.5,), n_test=50_000, repeats=20, n=N)[0]
    assert small["a"] == 0.5
    # large test sets read the change of the whole population; small ones scatter around it
    assert large["bmae_change"] == pytest.approx(full[0.5]["bmae_change"], abs=1.0)
    assert large["mae_change"] == pytest.approx(full[0.5]["mae_change"], abs=0.5)
    assert small["bmae_change_sd"] > 3 * large["bmae_change_sd"]
    assert small["bmae_change_sd"] > 1.0
    assert 0.0 < small["goal_share"] < 1.0
    impossible = spread_over_test_sets(world, (0.5,), repeats=20, n=N, goal=(-90.0, 10.0))
    assert impossible[0]["goal_share"] == 0.0


def test_few_training_labels_with_a_perfect_reading_of_the_scene() -> None:
    rows = finite_training_table(WorldConfig(), 3000, (1.0,), repeats=1, n_test=20_000)
    assert [r["a"] for r in rows] == [0.0, 1.0]
    assert rows[0]["bmae_change"] == 0.0 and rows[0]["bmae_change_sd"] == 0.0
    ideal = ideal_table(WorldConfig(), alphas=(1.0,), n=N)
    assert rows[0]["mae"] == pytest.approx(ideal[0]["mae"], rel=0.1)  # L2 learns the middle
    assert rows[1]["bmae_change"] < -5 and rows[1]["mae_change"] > 3  # the trade-off shows
    noiseless = finite_training_table(
        WorldConfig(scene_noise=0.001, tail_noise=0.001), 3000, (1.0,), repeats=1, n_test=20_000
    )
    assert noiseless[0]["mae"] < 0.05 < rows[0]["mae"]
