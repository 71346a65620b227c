"""HDF5's byte shuffle and its inverse: the first byte of every value, then every second
byte, and so on (the ``shuffle`` filter the shards' chunks pass through before deflate or
Zstandard).

Both run on c-blosc2's SIMD kernels (``blosc2_shuffle`` / ``blosc2_unshuffle``, public
functions of the Blosc2 HDF5 filter that ``hdf5plugin`` ships), which transpose a
register-sized tile at a time: ~0.4 ms for a 225 px sample (26 x 225 x 225 float32)
where NumPy's strided copies take ~1.4 ms. Where that library cannot be loaded, NumPy
does the same permutation; the bytes are the same either way (tests/test_byte_shuffle.py).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: The kernels take the block's length as a 32-bit int: longer buffers go through NumPy.
_MAX_KERNEL_BYTES = 2**31 - 1
_Kernel = Callable[[int, int, int, int], int]


def _load_kernels() -> tuple[_Kernel, _Kernel] | None:
    """``(blosc2_shuffle, blosc2_unshuffle)`` from hdf5plugin's Blosc2 filter, or ``None``."""
    try:
        import hdf5plugin  # noqa: PLC0415 - only to find its plugin folder

        library = next(Path(hdf5plugin.PLUGIN_PATH).glob("libh5blosc2.*"))
        loaded = ctypes.CDLL(str(library))
        kernels = (loaded.blosc2_shuffle, loaded.blosc2_unshuffle)
    except (ImportError, StopIteration, OSError, AttributeError):
        return None
    probe, out = (ctypes.create_string_buffer(8) for _ in range(2))
    for kernel in kernels:  # int32_t f(int32_t typesize, int32_t blocksize, src, dest)
        kernel.restype = ctypes.c_int32
        kernel.argtypes = (ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p)
        # the first call picks the CPU's kernel (SSE2, AVX2, ...): made here, before any
        # reader thread calls it
        if kernel(4, 8, ctypes.addressof(probe), ctypes.addressof(out)) != 8:
            return None
    return kernels


_KERNELS = _load_kernels()


def _permute(src: np.ndarray, itemsize: int, inverse: bool) -> np.ndarray:
    """``src`` (uint8, 1-D, whole values of ``itemsize`` bytes) shuffled or unshuffled
    into a new uint8 array."""
    out = np.empty_like(src)
    if _KERNELS is not None and 0 < src.size <= _MAX_KERNEL_BYTES:
        done = _KERNELS[inverse](itemsize, src.size, src.ctypes.data, out.ctypes.data)
        if done != src.size:
            raise RuntimeError(f"blosc2 {'un' * inverse}shuffle returned {done}, not {src.size}")
    elif inverse:
        planes = src.reshape(itemsize, -1)
        values = out.reshape(-1, itemsize)
        for byte in range(itemsize):  # one strided write per byte plane
            values[:, byte] = planes[byte]
    else:
        np.copyto(out.reshape(itemsize, -1), src.reshape(-1, itemsize).T)
    return out


def shuffle(array: np.ndarray) -> np.ndarray:
    """The shuffled bytes of ``array`` (its values in C order) as a 1-D uint8 array."""
    array = np.ascontiguousarray(array)
    return _permute(array.reshape(-1).view(np.uint8), array.itemsize, inverse=False)


def unshuffle(
    raw: bytes | bytearray | np.ndarray, dtype: np.dtype, shape: tuple[int, ...]
) -> np.ndarray:
    """The array of ``dtype`` and ``shape`` whose shuffled bytes begin ``raw`` (a new,
    writable array; ``ValueError`` if ``raw`` is shorter)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    src = np.frombuffer(raw, np.uint8, count * dtype.itemsize)
    if dtype.itemsize == 1:
        return src.copy().view(dtype).reshape(shape)
    return _permute(src, dtype.itemsize, inverse=True).view(dtype).reshape(shape)
