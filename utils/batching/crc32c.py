"""TFRecord's masked CRC-32C, computed by ``google-crc32c`` (hardware CRC instructions).

``google_crc32c.value`` accepts only ``bytes``, so a record that is a slice of an
inflated block would have to be copied first. The same library's C function
``crc32c_extend`` is called here through ``ctypes`` on the slice's address instead (no
copy, and ``ctypes`` releases the GIL, so reader threads check in parallel). Where that
library file cannot be found, :func:`crc32c` falls back to ``google_crc32c.value`` on a
copy: the same result, only slower.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import google_crc32c
import numpy as np

#: TFRecord's mask constant (``tensorflow/core/lib/hash/crc32c.h``).
MASK_DELTA = 0xA282EAD8


def _load_extend():
    from google_crc32c import _crc32c  # noqa: PLC0415 (the C extension beside its library)

    folder = Path(_crc32c.__file__).resolve().parent.parent / "google_crc32c.libs"
    for lib in sorted(folder.glob("libcrc32c*.so*")):
        try:
            extend = ctypes.CDLL(str(lib)).crc32c_extend
        except (OSError, AttributeError):
            continue
        extend.restype = ctypes.c_uint32
        extend.argtypes = (ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t)
        return extend
    return None


_EXTEND = _load_extend()


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C (Castagnoli) of ``data``, without copying it when possible."""
    if isinstance(data, bytes) or _EXTEND is None:
        return google_crc32c.value(bytes(data))
    array = np.frombuffer(data, np.uint8)
    return int(_EXTEND(0, array.ctypes.data, array.size)) if array.size else 0


def masked_crc(data: bytes | bytearray | memoryview) -> int:
    """TFRecord's masked CRC-32C of ``data`` (rotate right by 15, add a constant)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + MASK_DELTA) & 0xFFFFFFFF
