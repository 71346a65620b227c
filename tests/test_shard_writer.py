"""Shard chunks and train statistics: chunks deflated here (ISA-L or zlib) read back
exactly through HDF5's own filters; BandStats from per-sample summaries matches NumPy."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from extract_GPS_images import schema
from utils import hdf5_schema as hs
from utils.batching.shard_writer import (
    STAT_GRID_PIXELS,
    BandStats,
    ChunkCodec,
    SampleSummary,
    create_sample_datasets,
    stat_stride,
    write_chunk,
)

BANDS = schema.image_band_names()


def _samples(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = np.round(rng.beta(2, 5, (n, len(BANDS), size, size)), 4).astype(np.float32)
    images[:, -1] = rng.integers(0, len(schema.DW_CLASSES), (n, size, size))
    return images


@pytest.mark.parametrize(
    ("compression", "level", "shuffle"),
    [
        ("gzip", 1, True),  # ISA-L
        ("gzip", 0, False),  # ISA-L's fastest level
        ("gzip", 6, True),  # zlib
        ("none", 1, False),
        ("lzf", 1, True),  # h5py compresses
    ],
)
def test_direct_chunks_read_back_through_hdf5(
    tmp_path: Path, compression: str, level: int, shuffle: bool
) -> None:
    images = _samples(3, 16)
    codec = ChunkCodec(images.shape[1:], "float32", compression, level, shuffle)
    with h5py.File(tmp_path / "s.h5", "w") as handle:
        create_sample_datasets(handle, codec, len(images))
        for i, image in enumerate(images):
            write_chunk(handle[hs.DATA], i, codec.encode(image), codec)
    with h5py.File(tmp_path / "s.h5") as handle:
        assert np.array_equal(handle[hs.DATA][:], images)
        assert handle[hs.DATA].compression == {"none": None}.get(compression, compression)


def test_band_stats_from_summaries_match_numpy() -> None:
    size = 64  # 4096 pixels: the percentile grid keeps every 16th
    images = _samples(40, size, seed=1)
    stride = stat_stride(size * size, STAT_GRID_PIXELS)
    assert stride == 16
    summaries = [SampleSummary.of(image, stride) for image in images]
    stats = BandStats(BANDS)
    for half in (summaries[:25], summaries[25:]):  # two calls add up
        stats.add(
            np.array([s.moments for s in half]), np.array([s.grid for s in half]), size * size
        )
    result = stats.result()
    bands = np.moveaxis(images, 1, 0).reshape(len(BANDS), -1).astype(np.float64)
    assert result["n_samples"] == 40
    assert np.allclose(result["mean"], bands.mean(axis=1), atol=1e-9)
    assert np.allclose(result["std"], bands.std(axis=1), atol=1e-7)
    assert np.array_equal(result["min"], bands.min(axis=1))
    assert np.array_equal(result["max"], bands.max(axis=1))
    # percentiles from the 1-in-16 grid: the share of all pixels below them is near q
    for key, q in (("p01", 0.01), ("p99", 0.99)):
        share = (bands[:-1] < np.array(result[key][:-1])[:, None]).mean(axis=1)
        assert np.all(np.abs(share - q) < 0.004), (key, share)
    assert result["p01"][-1] == 0 and result["p99"][-1] == len(schema.DW_CLASSES) - 1
