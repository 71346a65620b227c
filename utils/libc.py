"""Functions of the C library called through ``ctypes`` (Linux system calls and glibc
calls that Python's ``os`` module lacks), looked up once."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable, Sequence
from typing import Any


def libc_function(name: str, argtypes: Sequence[Any]) -> Callable[..., int] | None:
    """libc's ``name`` (an ``int``-returning function of ``argtypes``) on Linux, or
    ``None`` where the platform or its C library (e.g. musl for ``malloc_trim``) has
    none. ``ctypes`` releases the GIL during the call and keeps ``errno``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_int
    function.argtypes = tuple(argtypes)
    return function
