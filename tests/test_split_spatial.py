"""Split by location: groups, blocks, stratified spatial assignment, random 60/20/20."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from utils.batching.spatial_split import assign_splits, block_of, location_groups


def world_table(n_cells: int = 400, years: int = 2, seed: int = 0) -> pd.DataFrame:
    """Cells in clusters over Vietnam, left-skewed labels alike within a cluster."""
    rng = np.random.default_rng(seed)
    centres = np.column_stack([rng.uniform(9, 23, 40), rng.uniform(103, 109, 40)])
    which = rng.integers(0, 40, n_cells)
    lat = centres[which, 0] + rng.normal(0, 0.2, n_cells)
    lon = centres[which, 1] + rng.normal(0, 0.2, n_cells)
    label = np.clip(3.1 - rng.gamma(2.0, 0.4, 40)[which] + rng.normal(0, 0.1, n_cells), 0.28, 3.1)
    cells = pd.DataFrame(
        {
            "cell_id": [f"POLYGON (({i} 0, ...))" for i in range(n_cells)],
            "latitude": lat,
            "longitude": lon,
            "label": label,
        }
    )
    return pd.concat([cells] * years, ignore_index=True)  # every cell in several years


def test_location_groups_join_years_and_identical_points() -> None:
    cell = np.array(["a", "b", "a", "c", "d"])
    lat = np.array([1.0, 2.0, 1.0, 2.0, 5.0])
    lon = np.array([1.0, 2.0, 1.0, 2.0, 5.0])
    groups = location_groups(cell, lat, lon)
    assert groups[0] == groups[2]  # one cell, two years
    assert groups[1] == groups[3]  # two ids at the very same point
    assert len(set(groups)) == 3
    shuffled = location_groups(cell[::-1], lat[::-1], lon[::-1])[::-1]
    assert np.array_equal(groups, shuffled)  # numbering does not depend on input order


def test_blocks_are_about_block_km_wide() -> None:
    lat = np.array([10.0, 10.2, 10.6, 10.0])
    lon = np.array([105.0, 105.0, 105.0, 105.6])
    blocks = block_of(lat, lon, 50.0)
    assert blocks[0] == blocks[1]  # 22 km apart
    assert blocks[0] != blocks[2] and blocks[0] != blocks[3]  # 67 / 66 km apart
    with pytest.raises(ValueError, match="block_km"):
        block_of(lat, lon, 0)


def test_spatial_split_keeps_blocks_whole_covers_bins_and_follows_ratios() -> None:
    table = world_table()
    result = assign_splits(table, mode="spatial", block_km=50.0, seed=42)
    frame = pd.DataFrame({"split": result.split, "block": result.block, "cell": table.cell_id})
    assert frame.groupby("block")["split"].nunique().max() == 1
    assert frame.groupby("cell")["split"].nunique().max() == 1
    shares = frame["split"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.6, abs=0.08)
    assert shares["val"] == pytest.approx(0.2, abs=0.08)
    assert shares["test"] == pytest.approx(0.2, abs=0.08)
    assert result.uncovered == []
    assert list(result.counts.index) == ["train", "val", "test"] and result.counts.shape[1] == 6
    assert (result.counts.sum() > 0).all()


def test_random_split_over_locations_60_20_20_and_reproducible() -> None:
    table = world_table(n_cells=500)
    first = assign_splits(table, mode="random", seed=42)
    again = assign_splits(table.copy(), mode="random", seed=42)
    other = assign_splits(table, mode="random", seed=1)
    assert np.array_equal(first.split, again.split)
    assert not np.array_equal(first.split, other.split)
    per_cell = pd.Series(first.split).groupby(table.cell_id.to_numpy()).agg(["nunique", "first"])
    assert per_cell["nunique"].max() == 1
    assert per_cell["first"].value_counts().to_dict() == {"train": 300, "val": 100, "test": 100}


def test_bad_arguments_are_named() -> None:
    table = world_table(20)
    with pytest.raises(ValueError, match="unknown split mode 'blocks'"):
        assign_splits(table, mode="blocks")
    with pytest.raises(ValueError, match="summing to 1"):
        assign_splits(table, ratios=(0.5, 0.2, 0.2))
