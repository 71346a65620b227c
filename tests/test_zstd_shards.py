"""Zstandard shards (``split_and_batch --compression zstd``): the same values, manifest and
statistics as gzip shards, read by the chunk reader and by h5py alike; damaged or lying
chunks are clear errors, with memory bounded whatever a frame claims."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest
import torch
import zstandard

import utils.batching.split_and_batch as sb
from extract_GPS_images.synthetic import generate_world
from utils import hdf5_schema as hs
from utils.batching.shard_writer import ChunkCodec, write_chunk
from utils.dataloader import ShardDataset
from utils.fast_chunks import Codec, chunk_plan, read_sample


def _convert(src: Path, out: Path, compression: str) -> None:
    cfg = sb.SplitConfig(workers=2, compression=compression, shard_size=8, progress=False)
    sb.run_split_and_batch(src, out, cfg)


def test_zstd_shards_hold_the_gzip_shards_values(tmp_path: Path) -> None:
    src = tmp_path / "world"
    generate_world(src, n=40, size=12, corrupt_fraction=0.05, progress=False)
    _convert(src, tmp_path / "gzip", "gzip")
    _convert(src, tmp_path / "zstd", "zstd")
    for name in (hs.MANIFEST_FILE, hs.STATS_FILE):
        assert (tmp_path / "gzip" / name).read_bytes() == (tmp_path / "zstd" / name).read_bytes()
    shards = sorted(p.relative_to(tmp_path / "gzip") for p in (tmp_path / "gzip").glob("*/*.h5"))
    assert len(shards) >= 3 and shards == sorted(
        p.relative_to(tmp_path / "zstd") for p in (tmp_path / "zstd").glob("*/*.h5")
    )
    for shard in shards:
        with h5py.File(tmp_path / "gzip" / shard) as g, h5py.File(tmp_path / "zstd" / shard) as z:
            assert chunk_plan(z[hs.DATA]) == (True, Codec.ZSTD)
            assert z[hs.DATA].id.get_create_plist().get_filter(1)[0] == hdf5plugin.ZSTD_ID
            assert np.array_equal(g[hs.DATA][:], z[hs.DATA][:], equal_nan=True)  # via h5py
            for i in range(len(z[hs.DATA])):
                assert read_sample(z[hs.DATA], i).tobytes() == g[hs.DATA][i].tobytes()
            for key in (hs.LABELS, hs.LOCATIONS, hs.MASK, hs.CLEAR, hs.YEAR):
                assert np.array_equal(g[key][:], z[key][:], equal_nan=True)
            assert json.loads(z.attrs[hs.ATTR_CONFIG])["compression"] == "zstd"
    gz, zs = (ShardDataset(tmp_path / c, "train", train=True, crop=10) for c in ("gzip", "zstd"))
    assert len(gz) == len(zs) > 0
    for i in range(len(gz)):
        torch.manual_seed(i)
        a = gz[i]
        torch.manual_seed(i)
        b = zs[i]
        assert all(_same(a[k], b[k]) for k in a)


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))
    return a == b


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # then a frame header: one segment, an 8-byte size


def _zstd_shard(path: Path, n: int = 2) -> np.ndarray:
    codec = ChunkCodec((3, 8, 8), compression="zstd")
    data = np.random.default_rng(1).random((n, 3, 8, 8), dtype=np.float32)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(hs.DATA, shape=data.shape, **codec.dataset_options())
        for i in range(n):
            write_chunk(ds, i, codec.encode(data[i]), codec)
    return data


@pytest.mark.parametrize(
    ("chunk", "message"),
    [
        (b"\x00not a zstd frame at all", "does not decompress"),
        # a valid frame that claims 1 TiB: refused before anything is allocated
        (_ZSTD_MAGIC + b"\xe0" + (1 << 40).to_bytes(8, "little") + b"\x01", "1099511627776 b"),
        (zstandard.ZstdCompressor().compress(b"\x01" * 100), "not 768"),  # too short
    ],
)
def test_damaged_zstd_chunks_are_clear_errors(tmp_path: Path, chunk: bytes, message: str) -> None:
    data = _zstd_shard(tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "r+") as f:
        f[hs.DATA].id.write_direct_chunk((1, 0, 0, 0), chunk)
    with h5py.File(tmp_path / "s.h5") as f:
        assert read_sample(f[hs.DATA], 0).tobytes() == data[0].tobytes()
        tracemalloc.start()
        try:
            with pytest.raises(OSError, match=message):
                read_sample(f[hs.DATA], 1)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize(
    ("compression", "level", "ok"),
    [("zstd", 1, True), ("zstd", 22, True), ("zstd", 0, False), ("zstd", 23, False),
     ("gzip", 0, True), ("gzip", 9, True), ("gzip", 10, False), ("gzip", -1, False),
     ("lzf", 99, True), ("none", 0, True)],
)  # fmt: skip
def test_levels_each_compression_takes(compression: str, level: int, ok: bool) -> None:
    if ok:
        ChunkCodec((1, 2, 2), compression=compression, level=level)
    else:
        with pytest.raises(ValueError, match=f"{compression} level {level}"):
            ChunkCodec((1, 2, 2), compression=compression, level=level)


def test_the_command_line_takes_zstd() -> None:
    cfg = sb.config_from_args(sb.get_args_parser().parse_args(["s", "o", "--compression", "zstd"]))
    assert (cfg.compression, cfg.compression_level) == ("zstd", 1)


def test_a_bad_level_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="zstd level 0; valid: 1-22"):
        sb.run_split_and_batch(
            tmp_path / "absent",
            tmp_path / "out",
            sb.SplitConfig(compression="zstd", compression_level=0),
        )
    assert not (tmp_path / "out").exists()
