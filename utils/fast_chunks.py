"""Read one sample of a shard's ``data`` as one HDF5 chunk, inflated by ISA-L.

The shards store one sample per chunk, byte-shuffled and deflated (HDF5's ``shuffle``
and ``gzip`` filters, :mod:`utils.batching.shard_writer`). h5py's filter pipeline inflates with
zlib and unshuffles into a buffer it then copies out; at 225 px (26 x 225 x 225
float32, 5.3 MB a sample) that is ~9 ms of inflate plus ~6 ms of copies a sample.
:func:`read_sample` reads the chunk's stored bytes (``read_direct_chunk``), inflates
them with ISA-L (the same deflate stream, ~3x faster) and undoes the shuffle with one
NumPy transpose copy: the same values, bit for bit. Datasets with other filters or
chunk shapes (lzf, a filter it does not know, a chunk mask) are read by h5py as before,
so any shard, old or new, reads.
"""

from __future__ import annotations

import h5py
import numpy as np
from isal import isal_zlib

#: HDF5 filter ids this reader undoes itself.
FILTER_DEFLATE = h5py.h5z.FILTER_DEFLATE
FILTER_SHUFFLE = h5py.h5z.FILTER_SHUFFLE


def chunk_plan(dataset: h5py.Dataset) -> tuple[bool, bool] | None:
    """``(shuffled, deflated)`` when each sample of ``dataset`` is one chunk stored by
    (shuffle, then) deflate or raw, so :func:`read_sample` can decode it; else ``None``."""
    if dataset.chunks is None or dataset.chunks != (1, *dataset.shape[1:]):
        return None
    plist = dataset.id.get_create_plist()
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    known = {
        (): (False, False),
        (FILTER_DEFLATE,): (False, True),
        (FILTER_SHUFFLE, FILTER_DEFLATE): (True, True),
        (FILTER_SHUFFLE,): (True, False),
    }
    return known.get(tuple(filters))


def unshuffle(raw: bytes | np.ndarray, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """Undo HDF5's byte shuffle (all first bytes, then all second bytes, ...)."""
    itemsize = np.dtype(dtype).itemsize
    count = int(np.prod(shape))
    planes = np.frombuffer(raw, np.uint8, count * itemsize).reshape(itemsize, count)
    out = np.empty((count, itemsize), np.uint8)
    for byte in range(itemsize):  # one strided write per byte plane: ~2x one transpose
        out[:, byte] = planes[byte]
    return out.view(dtype).reshape(shape)


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
    shuffled, deflated = plan
    filter_mask, raw = dataset.id.read_direct_chunk((row,) + (0,) * (dataset.ndim - 1))
    if filter_mask:  # a filter was skipped when this chunk was written
        return dataset[row]
    if deflated:
        try:
            raw = isal_zlib.decompress(raw)
        except isal_zlib.error as err:  # a damaged chunk: the same error class as h5py's
            raise OSError(f"chunk {row} of {dataset.name} does not inflate ({err})") from err
    shape = dataset.shape[1:]
    if shuffled and dataset.dtype.itemsize > 1:
        return unshuffle(raw, dataset.dtype, shape)
    sample = np.frombuffer(raw, dataset.dtype).reshape(shape)
    return sample.copy() if writable else sample
