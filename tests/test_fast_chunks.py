"""The ISA-L chunk reader gives h5py's values bit for bit for every shard codec, and
ShardDataset's items are those of the per-sample path it replaced (reference below)."""

from __future__ import annotations

import tracemalloc
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from shards_factory import write_tiny_shards

from extract_GPS_images.schema import DW_BAND, DW_CLASSES
from utils import hdf5_schema as hs
from utils.batching.shard_writer import ChunkCodec, write_chunk
from utils.dataloader import ShardDataset, augment
from utils.fast_chunks import chunk_plan, read_sample

N, C, S = 3, 5, 9


def _data(dtype: str = "float32") -> np.ndarray:
    data = np.random.default_rng(0).normal(0.1, 0.05, (N, C, S, S)).astype(dtype)
    data[0, 1, 2, 3] = np.nan
    data[1, 0, 0, 0] = -0.0
    return data


@pytest.mark.parametrize(
    ("compression", "level", "shuffle", "dtype", "plan"),
    [
        ("gzip", 1, True, "float32", (True, True)),  # ISA-L, as split_and_batch writes
        ("gzip", 6, True, "float16", (True, True)),  # zlib, half precision
        ("gzip", 1, False, "float32", (False, True)),
        ("none", 0, True, "float32", ()),
        ("zstd", 1, True, "float32", (True, 2)),  # Zstandard, h5py through hdf5plugin
        ("zstd", 5, False, "float16", (False, 2)),
    ],
)
def test_direct_chunks_read_as_h5py_reads_them(
    tmp_path: Path, compression: str, level: int, shuffle: bool, dtype: str, plan: tuple
) -> None:
    codec = ChunkCodec(
        (C, S, S), dtype=dtype, compression=compression, level=level, shuffle=shuffle
    )
    data = _data(dtype)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        ds = f.create_dataset("data", shape=data.shape, **codec.dataset_options())
        for i in range(N):
            write_chunk(ds, i, codec.encode(data[i]), codec)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        ds = f["data"]
        assert chunk_plan(ds) == (plan or (False, False))
        for i in range(N):
            ours = read_sample(ds, i)
            assert ours.dtype == ds.dtype and ours.shape == (C, S, S)
            assert ours.tobytes() == ds[i].tobytes() == data[i].tobytes()


@pytest.mark.parametrize(
    "options",
    [
        {"compression": "lzf", "shuffle": True, "chunks": (1, C, S, S)},  # h5py decodes it
        {"compression": "gzip", "chunks": (2, C, S, S)},  # two samples a chunk
        {"compression": "gzip", "shuffle": True, "fletcher32": True, "chunks": (1, C, S, S)},
        {},  # contiguous
    ],
)
def test_other_layouts_fall_back_to_h5py(tmp_path: Path, options: dict) -> None:
    data = _data()
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("data", data=data, **options)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert chunk_plan(f["data"]) is None
        assert all(read_sample(f["data"], i).tobytes() == data[i].tobytes() for i in range(N))


def _reference_item(ds: ShardDataset, index: int) -> np.ndarray:
    """The per-sample path before the chunk reader (h5py read, crop, astype, concat)."""
    k, row = ds.locate(index)
    with h5py.File(ds.files[k], "r") as f:
        raw = f[hs.DATA][row]
        mask = f[hs.MASK][row] if ds.with_mask else None
    top, left = ds._window()
    raw = raw[:, top : top + ds.crop, left : left + ds.crop].astype(np.float32)
    parts = [raw[ds._s2_index]]
    if ds.dw_mode == "channel":
        parts.append(raw[ds._dw_index][None])
    image = (np.concatenate(parts) - ds._mean[:, None, None]) / ds._std[:, None, None]
    if ds.dw_mode == "onehot":
        codes = np.rint(np.nan_to_num(raw[ds._dw_index], nan=-1.0))
        onehot = codes[None] == np.arange(len(DW_CLASSES), dtype=np.float32)[:, None, None]
        image = np.concatenate([image, onehot.astype(np.float32)])
    if mask is not None:
        image = np.concatenate([image, mask[:, top : top + ds.crop, left : left + ds.crop]])
    if ds.train and ds.augment:
        image = augment(image)
    return np.ascontiguousarray(image, dtype=np.float32)


@pytest.mark.parametrize(
    ("dw_mode", "train", "with_mask", "channels"),
    [
        ("onehot", True, True, "s2"),
        ("channel", True, False, "rgb"),
        ("none", False, False, "s2"),
        ("onehot", False, True, "rgb"),
    ],
)
def test_items_equal_the_per_sample_reference(
    tmp_path: Path, dw_mode: str, train: bool, with_mask: bool, channels: str
) -> None:
    root = write_tiny_shards(tmp_path, sizes={"train": 6}, size=10, shard_size=4)
    for path in sorted((root / "train").glob("*.h5")):
        with h5py.File(path, "a") as f:
            n = f[hs.DATA].shape[0]
            dw = f.attrs[hs.ATTR_BANDS].tolist().index(DW_BAND)
            data = f[hs.DATA][:]
            data[0, dw, 0, :3] = np.nan  # nodata DW codes: no class
            f[hs.DATA][:] = data
            rng = np.random.default_rng(n)
            f.create_dataset(
                hs.MASK,
                data=rng.integers(0, 2, (n, 5, 10, 10), dtype=np.uint8),
                chunks=(1, 5, 10, 10),
                compression="gzip",
                compression_opts=1,
            )
    ds = ShardDataset(
        root,
        "train",
        channels=channels,
        crop=7,
        train=train,
        augment=train,
        dw_mode=dw_mode,
        with_mask=with_mask,
    )
    for index in range(len(ds)):
        torch.manual_seed(index)
        item = ds[index]
        torch.manual_seed(index)
        expected = _reference_item(ds, index)
        got = torch.cat([item["image"], item["mask"]]) if with_mask else item["image"]
        assert got.dtype == torch.float32
        assert got.numpy().tobytes() == expected.tobytes()


@pytest.mark.parametrize(
    ("chunk", "message"),
    [
        (b"\x00not a deflate stream", "does not inflate"),
        # a bomb: 64 MB of zeros in ~64 KB; at most one sample's bytes come out
        (zlib.compress(bytes(64 << 20), 9), f"more than {C * S * S * 4} bytes"),
        (zlib.compress(b"\x01" * 100), f"100 bytes, not {C * S * S * 4}"),  # too short
        (zlib.compress(bytes(C * S * S * 4))[:-9], "cut short"),  # the stream's end lost
    ],
    ids=["garbage", "bomb", "short", "cut"],
)
def test_damaged_deflate_chunks_are_clear_errors(
    tmp_path: Path, chunk: bytes, message: str
) -> None:
    """A damaged or lying gzip chunk is an OSError naming it, and reading it holds no more
    than one sample's memory."""
    data = _data()
    codec = ChunkCodec((C, S, S), "float32", "gzip", 1)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        ds = f.create_dataset(hs.DATA, shape=data.shape, **codec.dataset_options())
        for i in range(N):
            write_chunk(ds, i, codec.encode(data[i]), codec)
        ds.id.write_direct_chunk((1, 0, 0, 0), chunk)
    with h5py.File(tmp_path / "s.h5") as f:
        assert read_sample(f[hs.DATA], 0).tobytes() == data[0].tobytes()
        tracemalloc.start()
        try:
            with pytest.raises(OSError, match=f"chunk 1 of /data .*{message}"):
                read_sample(f[hs.DATA], 1)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 1 << 20
