"""Reusable per-thread buffers for the conversion's largest temporary arrays.

A 225 px record makes a few large temporaries (the file's bytes, the 5 MB image, the
5 MB byte-shuffled copy for the deflate). Fresh ones a record cost page faults and the
zeroing of new pages (the allocator hands big blocks back to the kernel between
records); a reader thread instead keeps one :class:`Scratch` and reuses its buffers.
An array taken from a scratch is valid until the same name is asked for ``ring`` more
times (``ring=2``: a reader that looks one record ahead keeps both), so a scratch
belongs to one thread and its arrays must not outlive the records they hold.
"""

from __future__ import annotations

import math

import numpy as np


class Scratch:
    """Named byte buffers, grown as needed and reused (one per thread)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, int], np.ndarray] = {}
        self._turns: dict[str, int] = {}

    def array(
        self, name: str, shape: tuple[int, ...], dtype: np.dtype | type, ring: int = 1
    ) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape`` and ``dtype``: a view of the
        next of ``ring`` buffers named ``name``, in turn."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        turn = self._turns.get(name, 0)
        self._turns[name] = turn + 1
        key = (name, turn % ring)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.size < nbytes:
            buffer = self._buffers[key] = np.empty(nbytes, np.uint8)
        return buffer[:nbytes].view(dtype).reshape(shape)


def array(
    scratch: Scratch | None,
    name: str,
    shape: tuple[int, ...],
    dtype: np.dtype | type,
    ring: int = 1,
) -> np.ndarray:
    """``scratch.array(name, shape, dtype, ring)``, or a fresh ``np.empty`` without one."""
    if scratch is None:
        return np.empty(shape, dtype)
    return scratch.array(name, shape, dtype, ring)
