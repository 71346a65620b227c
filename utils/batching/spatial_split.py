"""Train/val/test splits by location: one location is never in two splits.

A *location* groups every sample sharing a cell id or coordinates (all years of one
cell, and cells at the very same point). Two modes:

* ``random``: locations shuffled with ``seed`` and cut at ``ratios`` (the original
  study: 60/20/20 over unique locations, seed 42);
* ``spatial`` (default): locations fall into square blocks of ``block_km``; whole
  blocks are assigned to splits greedily, rarest label bins first, so that every
  split covers the label range (stratified by ``n_bins`` equal-width label bins)
  and the split sizes follow ``ratios``. Neighbouring cells share administrative
  units and labels, so spatial blocks keep the test split honest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from utils.hdf5_schema import SPLITS

MODES: tuple[str, ...] = ("spatial", "random")
KM_PER_DEGREE = 111.32
#: Coordinates equal to this many decimals (about 0.1 m) are the same location.
COORD_DECIMALS = 6


@dataclass
class SplitResult:
    """Split of every sample, and how well the label bins are covered."""

    split: np.ndarray  # (n,) split name per sample
    location: np.ndarray  # (n,) location group id per sample
    block: np.ndarray  # (n,) block id per sample (location id in random mode)
    bin_edges: np.ndarray  # label bin edges used for stratification
    counts: pd.DataFrame  # split x label bin sample counts
    uncovered: list[tuple[str, int]]  # (split, bin) empty although >= 3 blocks hold the bin


def check_ratios(ratios: tuple[float, ...]) -> tuple[float, ...]:
    """Validate three non-negative split ratios summing to 1."""
    if len(ratios) != len(SPLITS) or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-6:
        raise ValueError(
            f"ratios must be {len(SPLITS)} non-negative numbers ({'/'.join(SPLITS)}) "
            f"summing to 1, got {ratios}"
        )
    return tuple(float(r) for r in ratios)


def location_groups(cell_id: np.ndarray, latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """Group id per sample: samples sharing a cell id or rounded coordinates are one location.

    Ids are numbered in the sorted order of their smallest cell id, so they do not
    depend on the order of the inputs. ``cell_id`` may also hold integer codes of the
    ids (equal ids, equal codes): the groups are the same, numbered in the codes' order.
    """
    n = len(cell_id)
    if n == 0:
        return np.zeros(0, np.int64)
    codes = np.asarray(cell_id)
    cells, cell_index = np.unique(
        codes if codes.dtype.kind in "iu" else codes.astype(str), return_inverse=True
    )
    coords = np.round(np.stack([latitude, longitude], 1), COORD_DECIMALS)
    _, coord_index = np.unique(coords, axis=0, return_inverse=True)
    nodes = len(cells) + int(coord_index.max()) + 1
    graph = coo_matrix(
        (np.ones(n), (cell_index, len(cells) + coord_index.ravel())), shape=(nodes, nodes)
    )
    _, component = connected_components(graph, directed=False)
    per_sample = component[cell_index]
    first_cell = pd.Series(cell_index).groupby(per_sample).min()
    rank = pd.Series(np.arange(len(first_cell)), index=first_cell.sort_values().index)
    return rank.loc[per_sample].to_numpy()


def block_of(latitude: np.ndarray, longitude: np.ndarray, block_km: float) -> np.ndarray:
    """Block id (row, column packed in one integer) of square blocks about ``block_km``
    wide: rows of equal latitude span, columns scaled by the row's cosine of latitude."""
    if block_km <= 0:
        raise ValueError(f"block_km must be positive, got {block_km}")
    row = np.floor(np.asarray(latitude) * KM_PER_DEGREE / block_km).astype(np.int64)
    centre = np.radians((row + 0.5) * block_km / KM_PER_DEGREE)
    width = np.maximum(KM_PER_DEGREE * np.cos(centre), 1e-3)
    col = np.floor(np.asarray(longitude) * width / block_km).astype(np.int64)
    return row * 1_000_000 + col


def label_bins(labels: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-width bins over the label range: (bin index per sample, edges)."""
    low, high = (float(labels.min()), float(labels.max())) if len(labels) else (0.0, 1.0)
    edges = np.linspace(low, high if high > low else low + 1, n_bins + 1)
    return np.clip(np.searchsorted(edges, labels, side="right") - 1, 0, n_bins - 1), edges


def _assign_blocks(hist: np.ndarray, ratios: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Greedy stratified assignment of blocks (rows of ``hist``, label-bin counts) to splits."""
    totals = hist.sum(axis=0).astype(float)
    target = ratios[:, None] * totals[None, :]
    capacity = ratios * totals.sum()
    current = np.zeros_like(target)
    present = hist > 0
    rarity = np.where(present, totals[None, :], np.inf).min(axis=1)
    order = rng.permutation(len(hist))
    order = order[np.lexsort((-hist.sum(axis=1)[order], rarity[order]))]
    result = np.zeros(len(hist), np.int64)
    weight = 1.0 / np.maximum(totals, 1)
    for block in order:
        counts = hist[block]
        room = capacity - current.sum(axis=1)
        cover = ((current == 0) & present[block][None, :]).sum(axis=1) * (room > 0)
        need = (np.minimum(counts[None, :], np.maximum(target - current, 0)) * weight).sum(axis=1)
        relative_room = room / np.maximum(capacity, 1e-9)
        allowed = ratios > 0
        keys = np.where(allowed[:, None], np.stack([cover, need, relative_room], 1), -np.inf)
        best = max(np.flatnonzero(allowed), key=lambda s: tuple(keys[s]))
        result[block] = best
        current[best] += counts
    return result


def assign_splits(
    samples: pd.DataFrame,
    *,
    mode: str = "spatial",
    ratios: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 42,
    block_km: float = 50.0,
    n_bins: int = 6,
) -> SplitResult:
    """Assign every sample to ``train``/``val``/``test`` by location.

    Args:
        samples: columns ``cell_id`` (ids, or integer codes: see :func:`location_groups`),
            ``latitude``, ``longitude``, ``label``.
        mode: ``"spatial"`` (blocks of ``block_km``) or ``"random"`` (locations).
        ratios: shares of train, val, test.
        seed: seed of the shuffles; same inputs and seed, same split.
        block_km: block side in kilometres (spatial mode).
        n_bins: equal-width label bins used to stratify (spatial mode) and to report.

    Returns:
        A :class:`SplitResult`.
    """
    if mode not in MODES:
        raise ValueError(f"unknown split mode {mode!r}; valid: {', '.join(MODES)}")
    ratios_arr = np.array(check_ratios(ratios))
    labels = samples["label"].to_numpy(float)
    lat, lon = samples["latitude"].to_numpy(float), samples["longitude"].to_numpy(float)
    location = location_groups(samples["cell_id"].to_numpy(), lat, lon)
    bins, edges = label_bins(labels, n_bins)
    rng = np.random.default_rng(seed)
    if len(samples) == 0:
        split = np.array([], dtype=object)
        block = location
    elif mode == "random":
        n_loc = int(location.max()) + 1
        order = rng.permutation(n_loc)
        cuts = np.round(np.cumsum(ratios_arr)[:-1] * n_loc).astype(int)
        split_of_location = np.zeros(n_loc, np.int64)
        for s, part in enumerate(np.split(order, cuts)):
            split_of_location[part] = s
        split = np.array(SPLITS, dtype=object)[split_of_location[location]]
        block = location
    else:
        centre = pd.DataFrame({"loc": location, "lat": lat, "lon": lon}).groupby("loc").mean()
        loc_block = block_of(centre["lat"].to_numpy(), centre["lon"].to_numpy(), block_km)
        block_ids, block_index = np.unique(loc_block, return_inverse=True)
        block = block_index[location]
        hist = np.zeros((len(block_ids), n_bins), np.int64)
        np.add.at(hist, (block, bins), 1)
        split = np.array(SPLITS, dtype=object)[_assign_blocks(hist, ratios_arr, rng)[block]]
    counts = pd.crosstab(
        pd.Categorical(split, categories=SPLITS),
        pd.Categorical(bins, categories=range(n_bins)),
        dropna=False,
    )
    counts.index.name, counts.columns.name = "split", "label_bin"
    blocks_per_bin = pd.DataFrame({"block": block, "bin": bins}).groupby("bin")["block"].nunique()
    uncovered = [
        (s, int(b))
        for s, ratio in zip(SPLITS, ratios_arr, strict=True)
        for b in range(n_bins)
        if ratio > 0 and blocks_per_bin.get(b, 0) >= len(SPLITS) and counts.loc[s, b] == 0
    ]
    return SplitResult(split, location, block, edges, counts, uncovered)
