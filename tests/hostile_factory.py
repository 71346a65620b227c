"""Builders of hostile inputs for the hostile-input tests (and the benchmark): valid
records, files framed by hand, CRC damage, bombs. Seeded, tiny (8 x 8 pixels)."""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from extract_GPS_images.tfrecord import encode_example, sample_bands
from utils.batching.crc32c import masked_crc

SIZE = 8


def record(
    seed: int,
    *,
    size: int = SIZE,
    label=1.5,
    lat=10.0,
    lon=105.0,
    year=2019,
    cell_id: str | None = None,
) -> bytes:
    """One valid canonical record (cell id ``cell-<seed>`` unless given)."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.01, 0.5, (25, size, size)).astype(np.float32)
    image[24] = rng.integers(0, 9, (size, size))
    meta = {"label": label, "latitude": lat, "longitude": lon, "year": year, "imagery_year": year}
    return encode_example(sample_bands(image, meta), cell_id=cell_id or f"cell-{seed}")


def spread_records(n: int, first_seed: int = 0, **kw) -> list[bytes]:
    """``n`` valid records at distinct places (labels 0.5 ... spread out)."""
    return [
        record(first_seed + i, label=0.5 + 0.1 * (i % 20), lat=5 + 0.7 * i, lon=100 + 0.4 * i, **kw)
        for i in range(n)
    ]


def write_framed(path: Path, frames: Iterable[bytes], compress: bool = True) -> Path:
    """Write already framed records (``frame_record`` output, maybe damaged)."""
    data = b"".join(frames)
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


def flip_byte(frame: bytes, offset: int) -> bytes:
    """``frame`` with the byte at ``offset`` (negative: from the end) inverted."""
    data = bytearray(frame)
    data[offset] ^= 0xFF
    return bytes(data)


def gzip_bomb(
    path: Path, inflated: int, chunk: bytes = b"\0" * (1 << 20), prefix: bytes = b""
) -> Path:
    """A gzip file of ``prefix`` then zeros (or ``chunk`` repeated) inflating to about
    ``inflated`` bytes, written streaming (deflate level 9: ~1000:1 on zeros)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as handle:
        handle.write(compressor.compress(prefix))
        for _ in range(max(1, inflated // len(chunk))):
            handle.write(compressor.compress(chunk))
        handle.write(compressor.flush())
    return path


def huge_frame_header(length: int) -> bytes:
    """A TFRecord length field announcing ``length`` bytes, with its correct CRC."""
    header = struct.pack("<Q", length)
    return header + struct.pack("<I", masked_crc(header))
