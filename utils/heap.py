"""The heap of the conversion and of the training input: freed blocks kept for reuse,
handed back to the kernel after each staging part (glibc's ``mallopt`` and
``malloc_trim``).

Each record or sample at 225 px takes a few blocks of 4-6 MB (the input file or chunk,
its inflated bytes, the image, its shuffled copy). glibc serves blocks that large with
a fresh ``mmap`` and unmaps them when freed, or returns an arena's free top to the
kernel once it passes a threshold that it moves as it goes; often the next record
faults in and zeroes fresh pages: ~5 ms of system time a record in the conversion with
2 reader threads, ~3 ms a sample read in the training process (docs/performance.md).
:func:`reuse_freed_memory` keeps such blocks in the arenas, so the next one reuses them.

A staging part's arrays (the samples' packed masks and statistics grids, ~30 MB for
256 samples at 225 px) and the reader threads' record buffers are freed once the part
is written, but glibc keeps freed memory in its arenas (one per thread, up to 8 per
core) for reuse, and what one part leaves there stacks up with the next part's peak.
:func:`release_heap` after each part returns it, so each part starts from the same heap.
"""

from __future__ import annotations

import ctypes

from utils.libc import libc_function

_MALLOC_TRIM = libc_function("malloc_trim", (ctypes.c_size_t,))  # glibc only
_MALLOPT = libc_function("mallopt", (ctypes.c_int, ctypes.c_int))
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
#: Blocks up to this size come from the arenas (glibc's own threshold moves between 128
#: KB and 32 MB); an arena keeps twice this much free at its top.
REUSED_BLOCK_BYTES = 16 << 20


def reuse_freed_memory(largest: int = REUSED_BLOCK_BYTES) -> bool:
    """Serve blocks up to ``largest`` bytes from the heap arenas and keep up to twice that
    free at each arena's top, for the next blocks to reuse (process-wide; the memory
    goes back with :func:`release_heap`). ``True`` if set (``False`` where the C library
    has no ``mallopt``)."""
    if _MALLOPT is None:
        return False
    return bool(_MALLOPT(M_MMAP_THRESHOLD, largest)) and bool(
        _MALLOPT(M_TRIM_THRESHOLD, 2 * largest)
    )


def release_heap() -> bool:
    """Return the free memory of every heap arena to the kernel; ``True`` if some was
    (``False`` also where the C library has no such call)."""
    return _MALLOC_TRIM is not None and bool(_MALLOC_TRIM(0))
