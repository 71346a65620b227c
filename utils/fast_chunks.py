"""Read one sample of a shard's ``data`` as one HDF5 chunk, decoded by Zstandard or
ISA-L.

The shards store one sample per chunk, byte-shuffled and compressed (HDF5's ``shuffle``
filter, then Zstandard frames, HDF5's filter 32015, by default, or ``gzip`` deflate;
:mod:`utils.batching.shard_writer`). h5py's filter pipeline decodes a chunk and
unshuffles it into a buffer it then copies out; at 225 px (26 x 225 x 225 float32, 5.3
MB a sample) that is ~9 ms of zlib inflate plus ~6 ms of copies a gzip sample.
:func:`read_sample` reads the chunk's stored bytes (``read_direct_chunk``), decodes them
with ``zstandard`` or ISA-L (the same deflate stream as zlib, ~3x faster) and undoes the
shuffle (:mod:`utils.byte_shuffle`, SIMD): the same values, bit for bit. Datasets with
other filters or chunk shapes (lzf, a filter it does not know, a chunk mask) are read by
h5py as before, so any shard, old or new, reads.
"""

from __future__ import annotations

import threading
from enum import IntEnum

import h5py
import numpy as np
import zstandard
from isal import isal_zlib

from utils.byte_shuffle import unshuffle

#: HDF5 filter ids this reader undoes itself.
FILTER_DEFLATE = h5py.h5z.FILTER_DEFLATE
FILTER_SHUFFLE = h5py.h5z.FILTER_SHUFFLE
FILTER_ZSTD = 32015  # HDF5's registered Zstandard filter (hdf5plugin.ZSTD_ID)


class Codec(IntEnum):
    """How a chunk's bytes are compressed (``Codec.DEFLATE == True``, so a plan reads as
    the ``(shuffled, deflated)`` pair it was before Zstandard)."""

    RAW = 0
    DEFLATE = 1
    ZSTD = 2


def chunk_plan(dataset: h5py.Dataset) -> tuple[bool, Codec] | None:
    """``(shuffled, codec)`` when each sample of ``dataset`` is one chunk stored by
    (shuffle, then) deflate, Zstandard or raw, so :func:`read_sample` can decode it;
    else ``None``."""
    if dataset.chunks is None or dataset.chunks != (1, *dataset.shape[1:]):
        return None
    plist = dataset.id.get_create_plist()
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    shuffled = filters[:1] == [FILTER_SHUFFLE]
    codecs = {(): Codec.RAW, (FILTER_DEFLATE,): Codec.DEFLATE, (FILTER_ZSTD,): Codec.ZSTD}
    codec = codecs.get(tuple(filters[1:] if shuffled else filters))
    return None if codec is None else (shuffled, codec)


_local = threading.local()


def _zstd_decompress(raw: bytes, dataset: h5py.Dataset, row: int, size: int) -> bytes:
    """The ``size`` bytes of one Zstandard chunk (this thread's decompressor; a damaged
    chunk raises ``OSError`` as h5py does)."""
    if not hasattr(_local, "zstd"):
        _local.zstd = zstandard.ZstdDecompressor()
    try:  # the frame's own size is checked first: memory stays bounded whatever it claims
        claimed = zstandard.frame_content_size(raw)
        if claimed != size:
            raise zstandard.ZstdError(f"its frame says {claimed} bytes, not {size}")
        return _local.zstd.decompress(raw)  # exactly that size, or a ZstdError
    except zstandard.ZstdError as err:
        raise OSError(f"chunk {row} of {dataset.name} does not decompress ({err})") from err


def _inflate(raw: bytes, dataset: h5py.Dataset, row: int, size: int) -> bytes:
    """The ``size`` bytes of one deflate chunk, never more (ISA-L; a damaged chunk, or
    one that inflates to more or less, raises ``OSError`` as h5py does)."""
    inflater = isal_zlib.decompressobj()
    try:  # at most one sample's bytes come out: memory stays bounded whatever it holds
        out = inflater.decompress(raw, size)
    except isal_zlib.error as err:
        raise OSError(f"chunk {row} of {dataset.name} does not inflate ({err})") from err
    if not inflater.eof:
        what = f"more than {size} bytes" if inflater.unconsumed_tail else "a stream cut short"
        raise OSError(f"chunk {row} of {dataset.name} inflates to {what}")
    if len(out) != size:
        raise OSError(f"chunk {row} of {dataset.name} inflates to {len(out)} bytes, not {size}")
    return out


def read_sample(
    dataset: h5py.Dataset,
    row: int,
    plan: tuple[bool, bool] | None | str = "auto",
    *,
    writable: bool = True,
) -> np.ndarray:
    """Sample ``row`` of ``dataset`` (N, C, H, W) as a (C, H, W) array of its dtype.

    Args:
        dataset: a shard's ``data``.
        row: sample index.
        plan: :func:`chunk_plan` of ``dataset`` (pass it to skip the lookup), ``None``
            to read through h5py.
        writable: ``False`` lets a chunk stored without shuffle come back as a read-only
            view of the bytes read (no copy: an uncompressed 225 px float32 sample is
            5 MB, ~0.4 ms of copying and fresh memory a sample).
    """
    if plan == "auto":
        plan = chunk_plan(dataset)
    if plan is None:
        return dataset[row]
    shuffled, codec = plan
    filter_mask, raw = dataset.id.read_direct_chunk((row,) + (0,) * (dataset.ndim - 1))
    if filter_mask:  # a filter was skipped when this chunk was written
        return dataset[row]
    shape = dataset.shape[1:]
    size = dataset.dtype.itemsize * int(np.prod(shape))  # one sample's bytes
    if codec == Codec.ZSTD:
        raw = _zstd_decompress(raw, dataset, row, size)
    elif codec:
        raw = _inflate(raw, dataset, row, size)
    if shuffled and dataset.dtype.itemsize > 1:
        return unshuffle(raw, dataset.dtype, shape)
    sample = np.frombuffer(raw, dataset.dtype).reshape(shape)
    return sample.copy() if writable else sample
