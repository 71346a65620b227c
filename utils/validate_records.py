"""Read and validate exported TFRecords, one file at a time, record by record.

A file is read streaming (gzip inflate, then the TFRecord framing: length, CRC,
payload, CRC); each record is parsed as a ``tf.train.Example`` and checked against
one of two schemas (DESIGN section 3):

* **canonical**: the 24 channels ``B2_q1 ... B12_q4``, ``DW`` and the constant metadata
  bands ``label``, ``latitude``, ``longitude``, ``year``, ``imagery_year``, each
  holding H*W values, plus an optional bytes feature ``cell_id``;
* **original** (the study's own ``neighborhoodToArray`` exports): ``B2_1 ... B12_4``,
  Dynamic World under ``label``, scalar ``wi``, ``latitude``, ``longtitude`` (sic), the
  year in the file name ``{year}_{lon}_{lat}_{wi}...``; mapped with
  :func:`extract_GPS_images.schema.canonical_from_original`.

A record passes when every band is there with H*W finite values in range
(reflectance within :data:`~extract_GPS_images.schema.REFLECTANCE_RANGE`, DW integer
codes 0-8), its metadata bands are constant, the label lies in the configured range
and the coordinates on Earth (a record without a ``label`` band is a place to predict:
it passes with a NaN label, and ``split_and_batch`` puts it in the ``predict`` split).
Otherwise it gets one reason of :data:`utils.quarantine.REASONS` and a detail that names
the band and values.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from isal import isal_zlib

from extract_GPS_images import schema
from extract_GPS_images.labels import FIRST_IMAGERY_YEAR
from extract_GPS_images.labels import cell_key as make_cell_key
from utils.example_wire import ExampleDecodeError, decode_example

GZIP_MAGIC = b"\x1f\x8b"
#: Largest read: a smaller file is read whole (one allocation of its own size, which
#: threads do in parallel; a fixed 1 MiB buffer per read did not scale), a larger one
#: streams in blocks of this size.
READ_BLOCK = 16 << 20
#: Plausible label/imagery years (Landsat era to far future): outside is out_of_range.
YEAR_RANGE: tuple[int, int] = (1980, 2100)
LATITUDE_RANGE: tuple[float, float] = (-90.0, 90.0)
LONGITUDE_RANGE: tuple[float, float] = (-180.0, 180.0)
DW_CODES: tuple[int, int] = (0, len(schema.DW_CLASSES) - 1)

CANONICAL_KEYS: tuple[str, ...] = tuple(schema.all_band_names())
IMAGE_BANDS: tuple[str, ...] = tuple(schema.image_band_names())
N_S2 = len(schema.s2_channel_names())
#: The original study's keys: ``B2_1`` ... (band, quarter number), DW under ``label``.
ORIGINAL_KEYS: tuple[str, ...] = (
    *(f"{band}_{q + 1}" for q in range(len(schema.QUARTERS)) for band in schema.S2_BANDS),
    "label",
    "wi",
    "latitude",
    "longtitude",
)
ORIGINAL_SCALARS: tuple[str, ...] = ("wi", "latitude", "longtitude")
_ORIGINAL_NAME = re.compile(r"^(?P<year>\d{4})_(?P<lon>-?\d+(?:\.\d+)?)_(?P<lat>-?\d+(?:\.\d+)?)_")
_CANONICAL_NAME = re.compile(
    r"^(?P<key>[A-Za-z0-9_-]+?)_(?P<year>\d{4})(?:-\d+)?\.tfrecords?(?:\.gz)?$"
)


class RecordError(Exception):
    """A record or file that fails validation: ``reason`` (from the quarantine
    vocabulary) and a human-readable ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RecordRules:
    """What a valid record looks like."""

    size: int  # patch side H = W in pixels
    label_range: tuple[float, float] = (-1000.0, 1000.0)
    reflectance_range: tuple[float, float] = schema.REFLECTANCE_RANGE
    imagery_year_floor: int = (
        FIRST_IMAGERY_YEAR  # label years before it use this imagery year (original files)
    )


@dataclass
class Sample:
    """One valid record: the (25, H, W) float32 image and its metadata."""

    image: np.ndarray
    label: float
    latitude: float
    longitude: float
    year: int
    imagery_year: int
    cell_id: str
    cell_key: str
    schema_name: str
    band_min: np.ndarray | None = None  # per band, as found by the checks
    band_max: np.ndarray | None = None


@dataclass
class RecordResult:
    """Outcome of one record (``sample`` when valid, else ``reason``/``detail``)."""

    index: int
    sample: Sample | None = None
    reason: str = ""
    detail: str = ""
    payload: bytes | None = None  # raw bytes of a rejected record


@dataclass
class FileResult:
    """Outcome of one file: its records, and a file-level error if reading stopped."""

    records: list[RecordResult] = field(default_factory=list)
    file_error: RecordError | None = None  # applies to the record after the last one read


# ---------------------------------------------------------------------------- reading


def _gzip_blocks(handle, block_size: int) -> Iterator[bytes]:
    """Inflate a (possibly multi-member) gzip stream block by block (ISA-L: the same
    deflate format as zlib at about twice its speed)."""
    inflater = isal_zlib.decompressobj(31)
    while block := handle.read(block_size):
        while block:
            yield inflater.decompress(block)
            block = b""
            if inflater.eof and inflater.unused_data:  # another gzip member follows
                block = inflater.unused_data
                inflater = isal_zlib.decompressobj(31)
    if not inflater.eof:
        raise RecordError("truncated", "the gzip stream ends before its end marker")


def _frame(data: bytes | bytearray, start: int) -> tuple[int, int, int] | None:
    """``(payload start, payload end, record end)`` of the record at ``start``, or
    ``None`` when ``data`` ends before it does."""
    if len(data) - start < 12:
        return None
    (length,) = struct.unpack_from("<Q", data, start)
    if length > (1 << 34):
        raise RecordError("unreadable", f"implausible record length {length}")
    end = start + 12 + length + 4
    return (start + 12, start + 12 + length, end) if end <= len(data) else None


def iter_records(path: str | Path) -> Iterator[bytes | memoryview]:
    """Yield the serialised records of a TFRecord file (gzip or uncompressed), streaming.

    Records that lie inside one inflated block come as zero-copy ``memoryview`` slices of
    it, the rare one cut by a block boundary as ``bytes``.

    Raises:
        RecordError: ``empty_file``, ``truncated`` (gzip stream or record cut short) or
            ``unreadable`` (not a TFRecord, corrupt gzip data).
    """
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(2)
        if not head:
            raise RecordError("empty_file", "the file holds 0 bytes")
        handle.seek(0)
        block_size = max(1, min(READ_BLOCK, os.fstat(handle.fileno()).st_size))
        blocks = (
            _gzip_blocks(handle, block_size)
            if head == GZIP_MAGIC
            else iter(lambda: handle.read(block_size), b"")
        )
        pending = bytearray()  # the start of a record cut by a block boundary
        try:
            for block in blocks:
                pos = 0
                if pending:
                    pending += block
                    while (where := _frame(pending, pos)) is not None:
                        yield bytes(pending[where[0] : where[1]])
                        pos = where[2]
                    del pending[:pos]
                    continue
                view = memoryview(block)
                while (where := _frame(block, pos)) is not None:
                    yield view[where[0] : where[1]]
                    pos = where[2]
                pending += view[pos:]
        except isal_zlib.error as err:
            raise RecordError("unreadable", f"corrupt gzip data ({err})") from None
        if pending:
            raise RecordError(
                "truncated", f"the last record is cut short ({len(pending)} bytes left)"
            )


# ---------------------------------------------------------------------------- parsing


def _float_features(serialized: bytes | memoryview) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    try:
        features = decode_example(serialized)
    except ExampleDecodeError as err:
        raise RecordError("unreadable", f"not a tf.train.Example ({err})") from None
    floats, texts = {}, {}
    for name, value in features.items():
        if isinstance(value, list):
            if value:
                texts[name] = value[0].decode("utf-8", "replace")
        else:
            floats[name] = value.astype(np.float32, copy=False)
    return floats, texts


def which_schema(keys: set[str]) -> str:
    """``"canonical"`` or ``"original"`` for a record's feature keys.

    A schema is recognised when at least half of its keys are there (the rest are then
    ``missing_band``).

    Raises:
        RecordError: ``unknown_schema``, naming the keys each schema lacks.
    """
    missing = {
        "canonical": [k for k in CANONICAL_KEYS if k not in keys],
        "original": [k for k in ORIGINAL_KEYS if k not in keys],
    }
    best = min(missing, key=lambda name: len(missing[name]))
    total = len(CANONICAL_KEYS) if best == "canonical" else len(ORIGINAL_KEYS)
    if len(missing[best]) <= total // 2:
        return best
    raise RecordError(
        "unknown_schema",
        "matches neither schema; lacks canonical keys "
        f"{_short(missing['canonical'])} and original keys {_short(missing['original'])}; "
        f"has {_short(sorted(keys))}",
    )


def _short(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)})"


def _constant(name: str, values: np.ndarray, reason: str) -> float:
    """The single value of a constant metadata band (``reason`` when non-finite)."""
    first = float(values[0])
    if not np.isfinite(values).all():
        raise RecordError(reason, f"{name} is not finite ({first})")
    if values.size > 1 and (values.min() != values.max()):
        raise RecordError(
            "out_of_range", f"metadata band {name} is not constant ({values.min()}..{values.max()})"
        )
    return first


def decode_record(serialized: bytes | memoryview, rules: RecordRules, file_name: str) -> Sample:
    """Parse and validate one serialised record.

    Args:
        serialized: the record's bytes.
        rules: patch size and valid ranges.
        file_name: the file's name (original-study files carry their year in it; canonical
            files their cell key).

    Returns:
        A valid :class:`Sample`.

    Raises:
        RecordError: with the first failing check's reason.
    """
    floats, texts = _float_features(serialized)
    schema_name = which_schema(set(floats) | set(texts))
    if schema_name == "original":
        floats = {schema.canonical_from_original(k): v for k, v in floats.items()}
        scalars = {schema.canonical_from_original(k) for k in ORIGINAL_SCALARS}
        meta_bands = ("label", "latitude", "longitude")
    else:
        scalars = set()
        meta_bands = schema.META_BANDS
    if schema.LABEL_BAND not in floats:  # no label: a place to predict (DESIGN section 8)
        meta_bands = tuple(k for k in meta_bands if k != schema.LABEL_BAND)
    missing = [k for k in (*IMAGE_BANDS, *meta_bands) if k not in floats]
    if missing:
        raise RecordError("missing_band", f"lacks band(s) {_short(missing)}")
    pixels = rules.size * rules.size
    wrong = [
        f"{k} has {floats[k].size}"
        for k in (*IMAGE_BANDS, *meta_bands)
        if floats[k].size != pixels and not (k in scalars and floats[k].size == 1)
    ]
    if wrong:
        raise RecordError(
            "wrong_size",
            f"expected {pixels} values ({rules.size}x{rules.size}): {', '.join(wrong)}",
        )
    image = np.empty((len(IMAGE_BANDS), pixels), np.float32)
    for row, k in zip(image.view(np.uint8), IMAGE_BANDS, strict=True):
        row[:] = floats[k].view(np.uint8)  # byte copy: wire floats are often unaligned
    image = image.reshape(len(IMAGE_BANDS), rules.size, rules.size)
    band_min, band_max = _check_image(image, rules)

    label = _constant("label", floats["label"], "bad_label") if "label" in floats else math.nan
    low, high = rules.label_range
    if not (math.isnan(label) or low <= label <= high):
        raise RecordError("bad_label", f"label {label} outside the label range [{low}, {high}]")
    lat = _constant("latitude", floats["latitude"], "bad_coordinates")
    lon = _constant("longitude", floats["longitude"], "bad_coordinates")
    if not (LATITUDE_RANGE[0] <= lat <= LATITUDE_RANGE[1]) or not (
        LONGITUDE_RANGE[0] <= lon <= LONGITUDE_RANGE[1]
    ):
        raise RecordError("bad_coordinates", f"latitude {lat}, longitude {lon} not on Earth")

    if schema_name == "original":
        match = _ORIGINAL_NAME.match(file_name)
        if not match:
            raise RecordError(
                "missing_band",
                f"no year: file name {file_name!r} is not {{year}}_{{lon}}_{{lat}}_...",
            )
        year = int(match["year"])
        imagery_year = max(year, rules.imagery_year_floor)
        cell_id = f"{lat:.6f},{lon:.6f}"
        key = make_cell_key(cell_id)
    else:
        year = _year("year", floats["year"])
        imagery_year = _year("imagery_year", floats["imagery_year"])
        match = _CANONICAL_NAME.match(file_name)
        cell_id = texts.get(schema.CELL_ID_FEATURE, "")
        key = make_cell_key(cell_id) if cell_id else (match["key"] if match else "")
        if not key:
            raise RecordError(
                "missing_band", f"no cell_id feature and no cell key in {file_name!r}"
            )
        cell_id = cell_id or key
    return Sample(
        image, label, lat, lon, year, imagery_year, cell_id, key, schema_name, band_min, band_max
    )


def _year(name: str, values: np.ndarray) -> int:
    value = _constant(name, values, "out_of_range")
    if value != math.floor(value) or not YEAR_RANGE[0] <= value <= YEAR_RANGE[1]:
        raise RecordError("out_of_range", f"{name} {value} is not a year in {list(YEAR_RANGE)}")
    return int(value)


def _check_image(image: np.ndarray, rules: RecordRules) -> tuple[np.ndarray, np.ndarray]:
    """Per-band minima and maxima of a valid image (NaN/inf show up in them, so the
    whole image is scanned twice, not once per check)."""
    flat = image.reshape(len(image), -1)
    mins, maxs = flat.min(axis=1), flat.max(axis=1)
    if not (np.isfinite(mins).all() and np.isfinite(maxs).all()):
        finite = np.isfinite(flat).all(axis=1)
        bad = [IMAGE_BANDS[i] for i in np.flatnonzero(~finite)]
        count = int((~np.isfinite(flat)).sum())
        raise RecordError("nan_or_inf", f"{count} non-finite value(s) in {_short(bad)}")
    low, high = rules.reflectance_range
    bad = np.flatnonzero((mins[:N_S2] < low) | (maxs[:N_S2] > high))
    if bad.size:
        i = int(bad[0])
        raise RecordError(
            "out_of_range",
            f"reflectance of {IMAGE_BANDS[i]} spans {mins[i]:.4g}..{maxs[i]:.4g}, "
            f"valid [{low}, {high}] ({bad.size} band(s))",
        )
    dw = flat[N_S2]
    if mins[N_S2] < DW_CODES[0] or maxs[N_S2] > DW_CODES[1] or not np.array_equal(dw, np.round(dw)):
        raise RecordError(
            "out_of_range",
            f"DW holds {mins[N_S2]:.4g}..{maxs[N_S2]:.4g}; valid: integer codes "
            f"{DW_CODES[0]}-{DW_CODES[1]}",
        )
    return mins, maxs


def infer_size(paths: list[Path], limit: int = 32) -> int | None:
    """Patch side H (= W) from the first readable records of ``paths``: the most common
    length of the first Sentinel-2 band, which must be a perfect square. ``None`` when
    no file holds a readable record (then every input is quarantined anyway).

    Raises:
        ValueError: the band length is not a square.
    """
    lengths: list[int] = []
    for path in paths:
        if len(lengths) >= limit:
            break
        try:
            first = next(iter_records(path), None)
            floats, _ = _float_features(first) if first is not None else ({}, {})
        except RecordError:
            continue
        for key in ("B2_q1", "B2_1"):
            if key in floats:
                lengths.append(floats[key].size)
                break
    if not lengths:
        return None
    values, counts = np.unique(lengths, return_counts=True)
    length = int(values[np.argmax(counts)])
    side = math.isqrt(length)
    if side * side != length:
        raise ValueError(
            f"bands hold {length} values, not a square patch; pass size= (H = W) explicitly"
        )
    return side


def read_file(path: Path, rules: RecordRules) -> FileResult:
    """Read and validate every record of one file; a file-level error stops reading
    and is kept in ``FileResult.file_error`` (records read before it are kept)."""
    result = FileResult()
    try:
        for index, serialized in enumerate(iter_records(path)):
            try:
                sample = decode_record(serialized, rules, path.name)
                result.records.append(RecordResult(index, sample))
            except RecordError as err:
                result.records.append(
                    RecordResult(index, None, err.reason, err.detail, payload=bytes(serialized))
                )
    except RecordError as err:
        result.file_error = err
    except OSError as err:
        result.file_error = RecordError("unreadable", f"cannot read the file ({err})")
    if not result.records and result.file_error is None:
        result.file_error = RecordError("empty_file", "a valid TFRecord file holding no record")
    return result
