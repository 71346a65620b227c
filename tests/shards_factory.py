"""Seeded tiny HDF5 shards in the ``utils.hdf5_schema`` format, for tests.

``write_tiny_shards(root)`` writes ``root/train``, ``root/val``, ``root/test`` shard
files plus ``root/stats.json`` (train statistics), the same layout ``split_and_batch``
produces, so the dataloader, training, study and LOTS tests run without the upstream
notebooks. The label is tied to the images (the mean of the B4 channels and the share of
``built`` Dynamic World pixels), so a small CNN can learn it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np

from extract_GPS_images.schema import DW_CLASSES, image_band_names
from utils import hdf5_schema as hs

BUILT = DW_CLASSES.index("built")


def _split_arrays(n: int, size: int, rng: np.random.Generator, start: int) -> dict[str, np.ndarray]:
    bands = image_band_names()
    data = rng.normal(0.1, 0.03, size=(n, len(bands), size, size)).astype(np.float32)
    wealth = rng.beta(5, 2, size=n)  # left-skewed in (0, 1)
    b4 = [i for i, b in enumerate(bands) if b.startswith("B4_")]
    data[:, b4] += (0.2 * wealth)[:, None, None, None]
    dw = rng.integers(0, 5, size=(n, size, size))
    built = rng.random((n, size, size)) < wealth[:, None, None]
    dw[built] = BUILT
    data[:, bands.index("DW")] = dw
    labels = (0.3 + 2.7 * wealth).astype(np.float32)
    ids = np.arange(start, start + n)
    return {
        "data": data,
        "labels": labels,
        "locations": np.stack([rng.uniform(8, 23, n), rng.uniform(102, 109, n)], 1),
        "cell_id": np.array([f"POLYGON (({i} 0, {i} 1, {i + 1} 1, {i} 0))" for i in ids]),
        "cell_key": np.array(["c" + hashlib.sha1(str(i).encode()).hexdigest()[:12] for i in ids]),
        "year": np.full(n, 2019, np.int32),
    }


def write_shard(path: Path, arrays: dict[str, np.ndarray], split: str) -> None:
    """One shard file with the datasets and attributes of ``utils.hdf5_schema``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n, c, h, w = arrays["data"].shape
    text = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as f:
        f.create_dataset(hs.DATA, data=arrays["data"], chunks=(1, c, h, w), compression="gzip")
        f.create_dataset(hs.LABELS, data=arrays["labels"].astype(np.float32))
        f.create_dataset(hs.LOCATIONS, data=arrays["locations"].astype(np.float64))
        f.create_dataset(hs.CELL_ID, data=arrays["cell_id"].astype(object), dtype=text)
        f.create_dataset(hs.CELL_KEY, data=arrays["cell_key"].astype(object), dtype=text)
        f.create_dataset(hs.YEAR, data=arrays["year"])
        f.create_dataset(hs.IMAGERY_YEAR, data=arrays["year"])
        f.attrs[hs.ATTR_BANDS] = image_band_names()
        f.attrs[hs.ATTR_SCHEMA_VERSION] = hs.SCHEMA_VERSION
        f.attrs[hs.ATTR_SOURCE] = "tests/shards_factory.py"
        f.attrs[hs.ATTR_SPLIT] = split


def write_tiny_shards(
    root: str | Path,
    *,
    sizes: dict[str, int] | None = None,
    size: int = 12,
    shard_size: int = 16,
    seed: int = 0,
) -> Path:
    """Write tiny train/val/test shards and ``stats.json`` under ``root``; return ``root``.

    Args:
        root: the shards folder (``RunPaths.shards`` of a run, or any folder).
        sizes: samples per split (default train 48, val 16, test 16).
        size: patch side in pixels.
        shard_size: samples per shard file (several files per split by default).
        seed: seed of the generator.
    """
    root = Path(root)
    sizes = sizes or {"train": 48, "val": 16, "test": 16}
    rng = np.random.default_rng(seed)
    start = 0
    train_data = None
    for split, n in sizes.items():
        arrays = _split_arrays(n, size, rng, start)
        start += n
        for k, lo in enumerate(range(0, n, shard_size)):
            part = {key: value[lo : lo + shard_size] for key, value in arrays.items()}
            write_shard(root / split / hs.shard_name(split, k), part, split)
        if split == "train":
            train_data = arrays["data"]
    assert train_data is not None, "sizes must include 'train'"
    flat = train_data.transpose(1, 0, 2, 3).reshape(train_data.shape[1], -1).astype(np.float64)
    stats = {
        "bands": image_band_names(),
        "mean": flat.mean(1).tolist(),
        "std": flat.std(1).tolist(),
        "min": flat.min(1).tolist(),
        "max": flat.max(1).tolist(),
        "p01": np.percentile(flat, 1, axis=1).tolist(),
        "p99": np.percentile(flat, 99, axis=1).tolist(),
        "n_samples": int(train_data.shape[0]),
        "split": "train",
    }
    (root / hs.STATS_FILE).write_text(json.dumps(stats))
    return root
