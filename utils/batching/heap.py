"""Hand the heap's free memory back to the kernel (glibc's ``malloc_trim``).

A staging part's arrays (the samples' packed masks and statistics grids, ~30 MB for
256 samples at 225 px) and the reader threads' record buffers are freed once the part
is written, but glibc keeps freed memory in its arenas (one per thread, up to 8 per
core) for reuse, and what one part leaves there stacks up with the next part's peak:
the peak RSS of a conversion at 225 px was ~170 MB at 250 records (one part) and ~198
MB at 1,000 (docs/performance.md, "Conversion memory"). Trimmed after each part, each
part starts from the same heap.
"""

from __future__ import annotations

import ctypes

from utils.batching.libc import libc_function

_MALLOC_TRIM = libc_function("malloc_trim", (ctypes.c_size_t,))  # glibc only


def release_heap() -> bool:
    """Return the free memory of every heap arena to the kernel; ``True`` if some was
    (``False`` also where the C library has no such call)."""
    return _MALLOC_TRIM is not None and bool(_MALLOC_TRIM(0))
