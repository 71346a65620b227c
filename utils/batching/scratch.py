"""Reusable per-thread buffers for the conversion's largest temporary arrays.

A 225 px record makes a few large temporaries (the file's bytes, the 5 MB image, the
5 MB byte-shuffled copy for the deflate). Fresh ones a record cost page faults and the
zeroing of new pages (the allocator hands big blocks back to the kernel between
records); a reader thread instead keeps one :class:`Scratch` and reuses its buffers.
An array taken from a scratch is valid until the same name is asked for again, so a
scratch belongs to one thread and its arrays must not outlive the record they hold.
"""

from __future__ import annotations

import math

import numpy as np


class Scratch:
    """Named byte buffers, grown as needed and reused (one per thread)."""

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape`` and ``dtype``, a view of the
        buffer ``name`` (its earlier contents are overwritten by the caller)."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < nbytes:
            buffer = self._buffers[name] = np.empty(nbytes, np.uint8)
        return buffer[:nbytes].view(dtype).reshape(shape)


def array(
    scratch: Scratch | None, name: str, shape: tuple[int, ...], dtype: np.dtype | type
) -> np.ndarray:
    """``scratch.array(name, shape, dtype)``, or a fresh ``np.empty`` without a scratch."""
    if scratch is None:
        return np.empty(shape, dtype)
    return scratch.array(name, shape, dtype)
