"""Write and read records in the Earth Engine TFRecord export schema (docs/design.md).

Each record is a gzip-compressed ``tf.train.Example``: one float feature per band
holding H*W values row-major (metadata bands are constant images), plus, when
written locally, a bytes feature ``cell_id``. It reads back exactly as Earth
Engine's documentation reads exports::

    tf.io.parse_single_example(x, {b: tf.io.FixedLenFeature([H, W], tf.float32)})

TensorFlow is imported lazily, only here, only when a record is written or read.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from isal import isal_zlib

from extract_GPS_images.schema import CELL_ID_FEATURE, LABEL_BAND, META_BANDS, image_band_names
from utils.atomic import atomic_path
from utils.batching import example_wire
from utils.batching.crc32c import masked_crc
from utils.batching.page_cache import drop_pages
from utils.quiet import quiet_tensorflow


def _tf():
    quiet_tensorflow()
    import tensorflow as tf  # noqa: PLC0415 (lazy: heavy, only for TFRecord I/O)

    return tf


def encode_example(bands: Mapping[str, np.ndarray], cell_id: str | None = None) -> bytes:
    """Serialise one record deterministically (same arrays, same bytes; the bytes of
    TensorFlow's deterministic serialisation, written without TensorFlow).

    Args:
        bands: band name -> array of any shape (flattened row-major as float32).
        cell_id: original cell id, stored as a bytes feature when given.
    """
    return example_wire.encode_example(bands, _byte_features(cell_id))


def _byte_features(cell_id: str | None) -> dict[str, bytes] | None:
    return None if cell_id is None else {CELL_ID_FEATURE: str(cell_id).encode("utf-8")}


def sample_bands(
    image: np.ndarray, meta: Mapping[str, float], names: list[str] | None = None
) -> dict[str, np.ndarray]:
    """Band dict of one sample: image channels (C, H, W) plus constant metadata bands.

    Args:
        image: (C, H, W) array whose channels are ``names`` (default: the 24
            Sentinel-2 channels and ``DW``).
        meta: values of ``label``, ``latitude``, ``longitude``, ``year``, ``imagery_year``
            (a NaN label: a place to predict, written without a ``label`` band).
        names: channel names of ``image``.
    """
    names = names or image_band_names()
    if image.ndim != 3 or image.shape[0] != len(names):
        raise ValueError(f"image must be (C={len(names)}, H, W), got shape {image.shape}")
    height, width = image.shape[1:]
    bands = {name: image[i] for i, name in enumerate(names)}
    for key in META_BANDS:
        if key == LABEL_BAND and not np.isfinite(meta[key]):
            continue  # a place to predict carries no label band
        bands[key] = np.full((height, width), meta[key], np.float32)
    return bands


def frame_parts(record: bytes | memoryview) -> tuple[bytes, bytes | memoryview, bytes]:
    """TFRecord framing of one record as (header, data, footer): length and its masked
    CRC-32C, the data itself (not copied), the data's masked CRC-32C."""
    length = struct.pack("<Q", len(record))
    head = length + struct.pack("<I", masked_crc(length))
    return head, record, struct.pack("<I", masked_crc(record))


def frame_record(record: bytes) -> bytes:
    """One record in TFRecord framing: length, its masked CRC-32C, data, data's CRC."""
    return b"".join(frame_parts(record))


#: Files whose records total at most this many bytes are deflated in one call.
ONE_SHOT_BYTES = 64 * 2**20
#: Deflate codecs of :func:`write_tfrecord`: ISA-L (levels 0-3) or zlib (levels 0-9).
TFRECORD_CODECS: dict[str, tuple[Any, int]] = {"isal": (isal_zlib, 3), "zlib": (zlib, 9)}


def _joined(parts: list[bytes], buffer: bytearray | None) -> bytes | memoryview:
    """``b"".join(parts)``, or the same bytes copied into ``buffer`` (grown if needed)."""
    if buffer is None:
        return b"".join(parts)
    total = sum(len(part) for part in parts)
    if len(buffer) < total:
        buffer.extend(bytes(total - len(buffer)))
    view, pos = memoryview(buffer), 0
    for part in parts:
        view[pos : pos + len(part)] = part
        pos += len(part)
    return view[:total]


def write_tfrecord(
    path: str | Path,
    records: Iterable[bytes],
    level: int = 1,
    codec: str = "isal",
    buffer: bytearray | None = None,
    drop_cache: bool = False,
) -> Path:
    """Write serialised records to a gzip TFRecord file, atomically.

    Framing and gzip are done here, with a fixed gzip header (no timestamp), so the same
    records, codec and level give the same bytes; the result is the format
    ``tf.data.TFRecordDataset(path, compression_type="GZIP")`` reads. Files up to
    :data:`ONE_SHOT_BYTES` are deflated in one call, larger ones stream; both codecs
    release the GIL while they deflate (so do the CRC-32C and the copies), so writer
    threads run in parallel. The default, ISA-L level 1, deflates a 225 px record about
    25x faster than zlib level 6 for a file under 1 % larger; ISA-L level 0 is slower
    than 1 here and compresses less (``bench/bench_gee_download.py``).

    Args:
        path: output file.
        records: serialised ``tf.train.Example`` records.
        level: deflate level (ISA-L 0-3, zlib 0-9).
        codec: ``"isal"`` or ``"zlib"``.
        buffer: scratch space for the framed records of a one-call file, grown when
            too small; a writer thread that keeps one across files saves a fresh 8 MB
            allocation (page faults, ``munmap``) a 225 px record. The bytes written do
            not depend on it.
        drop_cache: once the file is on disk, drop it from the page cache (Linux
            ``POSIX_FADV_DONTNEED``): a writer of many files that are read back much
            later then writes into recycled pages, not fresh ones (on the 2-core test VM
            a 4.3 MB file cost 8.8 ms of system CPU, 1.3 ms so).

    Raises:
        ValueError: for an unknown codec or a level it lacks.
    """
    module = _codec(codec, level)
    pending: list[bytes] = []  # framed records not yet deflated
    size, compressor = 0, None
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        for record in records:
            pending.extend(frame_parts(record))
            size += len(record)
            if size > ONE_SHOT_BYTES:  # a large file: deflate as a stream
                compressor = compressor or module.compressobj(level, module.DEFLATED, 31)
                for part in pending:
                    handle.write(compressor.compress(part))
                pending, size = [], 0
        if compressor is None:  # one call, which releases the GIL
            handle.write(module.compress(_joined(pending, buffer), level, wbits=31))  # gzip
        else:
            for part in pending:
                handle.write(compressor.compress(part))
            handle.write(compressor.flush())
        if drop_cache:
            _drop_from_cache(handle)
    return Path(path)


def _codec(codec: str, level: int) -> Any:
    """The deflate module of ``codec``, checked against ``level``."""
    if codec not in TFRECORD_CODECS:
        raise ValueError(f"unknown codec {codec!r}; valid: {', '.join(TFRECORD_CODECS)}")
    module, top = TFRECORD_CODECS[codec]
    if not 0 <= level <= top:
        raise ValueError(f"level {level} out of range for {codec} (0..{top})")
    return module


def _drop_from_cache(handle: Any) -> None:
    """Sync an open file and drop it from the page cache (Linux; elsewhere a no-op)."""
    handle.flush()
    os.fsync(handle.fileno())  # clean pages only are dropped (atomic_path syncs too)
    drop_pages(handle.fileno())


def write_example(
    path: str | Path,
    bands: Mapping[str, np.ndarray],
    cell_id: str | None = None,
    *,
    level: int = 1,
    codec: str = "isal",
    buffer: bytearray | None = None,
    drop_cache: bool = False,
) -> Path:
    """Write a one-record TFRecord file: the bytes of ``write_tfrecord(path,
    [encode_example(bands, cell_id)], ...)``, built in one buffer.

    The record is serialised straight into ``buffer`` behind room for its TFRecord
    header, framed there (CRC-32C without a copy, GIL released) and deflated from
    there: one copy of the float data instead of three, and no fresh 8 MB objects a
    225 px record when the caller keeps ``buffer`` across files (the downloader's
    writer threads do). Arguments as :func:`write_tfrecord`.
    """
    module = _codec(codec, level)
    buffer = bytearray() if buffer is None else buffer
    size = example_wire.encode_example_into(buffer, 12, bands, _byte_features(cell_id), tail=4)
    if size > ONE_SHOT_BYTES:  # write_tfrecord streams such a record: same bytes
        record = bytes(memoryview(buffer)[12 : 12 + size])
        return write_tfrecord(path, [record], level=level, codec=codec, drop_cache=drop_cache)
    with memoryview(buffer) as view, atomic_path(path) as tmp, open(tmp, "wb") as handle:
        head, _, foot = frame_parts(view[12 : 12 + size])  # framed in place, same size
        view[:12], view[12 + size : 16 + size] = head, foot
        handle.write(module.compress(view[: 16 + size], level, wbits=31))  # 31: gzip
        if drop_cache:
            _drop_from_cache(handle)
    return Path(path)


def iter_serialized(path: str | Path) -> Iterator[bytes]:
    """Yield the raw serialised records of a gzip TFRecord file."""
    tf = _tf()
    for raw in tf.data.TFRecordDataset(str(path), compression_type="GZIP"):
        yield raw.numpy()


def parse_spec(names: Iterable[str], height: int, width: int) -> dict:
    """Feature spec reading each band as ``FixedLenFeature([H, W], tf.float32)``."""
    tf = _tf()
    return {name: tf.io.FixedLenFeature([height, width], tf.float32) for name in names}


def read_bands(path: str | Path, index: int = 0) -> tuple[dict[str, np.ndarray], str | None]:
    """Read record ``index`` of a canonical-schema file as band name -> (H, W) arrays
    (square patches; H inferred from the band length) and its cell id, if stored."""
    tf = _tf()
    for i, raw in enumerate(iter_serialized(path)):
        if i != index:
            continue
        example = tf.train.Example.FromString(raw)
        bands, cell_id = {}, None
        for name, feat in example.features.feature.items():
            if feat.HasField("bytes_list"):
                if name == CELL_ID_FEATURE:
                    cell_id = feat.bytes_list.value[0].decode("utf-8")
                continue
            values = np.asarray(feat.float_list.value, np.float32)
            side = int(round(np.sqrt(values.size)))
            bands[name] = values.reshape(side, side) if side * side == values.size else values
        return bands, cell_id
    raise IndexError(f"{path} has no record {index}")
