"""Read and validate exported TFRecords, one file at a time, record by record.

A file is read streaming (gzip inflate, then the TFRecord framing: length, CRC,
payload, CRC); each record is parsed as a ``tf.train.Example`` and checked against
one of two schemas (docs/design.md):

* **canonical**: the 24 channels ``B2_q1 ... B12_q4``, ``DW`` and the constant metadata
  bands ``label``, ``latitude``, ``longitude``, ``year``, ``imagery_year``, each
  holding H*W values, plus an optional bytes feature ``cell_id``;
* **original** (the study's own ``neighborhoodToArray`` exports): ``B2_1 ... B12_4``,
  Dynamic World under ``label``, scalar ``wi``, ``latitude``, ``longtitude`` (sic), the
  year in the file name ``{year}_{lon}_{lat}_{wi}...``; mapped with
  :func:`extract_GPS_images.schema.canonical_from_original`.

Metadata is read per record (a file may hold many places, as Earth Engine table
exports do): the metadata as scalar features or constant bands, the cell from the
``cell_key`` / ``cell_id`` features, the year of an original-schema record from a
``year`` feature, its file name or :attr:`RecordRules.year`. Only a single-record file
without ids takes its cell key from its name; other records without ids are keyed by
their coordinates, so distinct places never share a cell. The valid mask and clear
shares (:mod:`utils.batching.record_quality`) come with every sample; a patch whose valid share
is under ``min_valid`` is ``mostly_nodata``, one whose clear share is under
``min_clear`` is ``cloudy``.

A record passes when every band is there with H*W finite values in range
(reflectance within :data:`~extract_GPS_images.schema.REFLECTANCE_RANGE`, DW integer
codes 0-8), its metadata bands are constant, the label lies in the configured range
and the coordinates on Earth (a record without a ``label`` band is a place to predict:
it passes with a NaN label, and ``split_and_batch`` puts it in the ``predict`` split).
Otherwise it gets one reason of :data:`utils.batching.quarantine.REASONS` and a detail that names
the band and values.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from isal import isal_zlib

from extract_GPS_images import schema
from extract_GPS_images.labels import FIRST_IMAGERY_YEAR
from extract_GPS_images.labels import cell_key as make_cell_key
from utils.batching import record_quality as rq
from utils.batching.crc32c import masked_crc
from utils.batching.example_wire import ExampleDecodeError, decode_example

GZIP_MAGIC = b"\x1f\x8b"
#: Largest read: a smaller file is read whole (one allocation of its own size, which
#: threads do in parallel; a fixed 1 MiB buffer per read did not scale), a larger one
#: streams in blocks of this size.
READ_BLOCK = 16 << 20
#: Most bytes one inflate call may return: a bomb inflates in steps of this size, so
#: memory stays bounded whatever the stream expands to.
INFLATE_STEP = 64 << 20
#: Features of a record (30 canonical bands, with room for a few more) and the bytes of
#: its headers, for the default caps derived from the patch size.
RECORD_BANDS = 32
RECORD_OVERHEAD = 4 << 10
#: Generous bound on the records of one file (Earth Engine table exports hold many
#: places): the default inflate cap of a file is this many records of the patch size.
RECORDS_PER_FILE = 4096
#: Patch side assumed for the record-length cap while the patch size is not yet known.
MAX_PATCH = 1024
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
        self.band_length: int | None = None  # a wrong_size record's band length


@dataclass(frozen=True)
class RecordRules:
    """What a valid record looks like."""

    size: int  # patch side H = W in pixels
    label_range: tuple[float, float] = (-1000.0, 1000.0)
    reflectance_range: tuple[float, float] = schema.REFLECTANCE_RANGE
    imagery_year_floor: int = (
        FIRST_IMAGERY_YEAR  # label years before it use this imagery year (original files)
    )
    year: int | None = None  # year of original-schema records whose name and features lack it
    extra: tuple[str, ...] = ()  # optional channel groups after DW (``NL``: night lights)
    min_valid: float = 0.0  # valid-pixel share under which a patch is mostly_nodata
    min_clear: float = 0.0  # clear share (mean over quarters) under which it is cloudy
    check_crc: bool = True  # both masked CRC-32C of every record
    max_inflate_bytes: int | None = None  # per file; None: inflate_cap(size)

    @property
    def limits(self) -> ReadLimits:
        """The read limits these rules imply."""
        return ReadLimits.for_size(self.size, self.max_inflate_bytes, self.check_crc)


def record_bytes(size: int) -> int:
    """Bytes of one record of a ``size`` x ``size`` patch (with room for extra bands)."""
    return RECORD_BANDS * size * size * 4 + RECORD_OVERHEAD


def inflate_cap(size: int, records_per_file: int = RECORDS_PER_FILE) -> int:
    """Default cap on what one file may inflate to: ``records_per_file`` records."""
    return records_per_file * record_bytes(size)


@dataclass(frozen=True)
class ReadLimits:
    """How much one file may hold: a record's declared length (twice a record of the
    patch size) and the whole inflated stream; and whether the CRCs are checked."""

    max_record_bytes: int = 2 * record_bytes(MAX_PATCH)
    max_inflate_bytes: int = inflate_cap(MAX_PATCH)
    check_crc: bool = True

    @classmethod
    def for_size(
        cls, size: int, max_inflate_bytes: int | None = None, check_crc: bool = True
    ) -> ReadLimits:
        """Limits for patches of ``size`` pixels (``max_inflate_bytes`` overrides the cap)."""
        cap = max_inflate_bytes if max_inflate_bytes is not None else inflate_cap(size)
        return cls(min(2 * record_bytes(size), cap), cap, check_crc)


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
    mask: np.ndarray | None = None  # (5, H, W) uint8 valid mask (utils.batching.record_quality)
    clear: np.ndarray | None = None  # (4,) clear share per quarter, NaN where unknown
    key_from_name: bool = False  # no id features: the cell key came from the file name


@dataclass
class RecordResult:
    """Outcome of one record (``sample`` when valid, else ``reason``/``detail``)."""

    index: int
    sample: Sample | None = None
    reason: str = ""
    detail: str = ""
    payload: bytes | None = None  # raw bytes of a rejected record
    file_level: bool = False  # a file-level error: reading stopped before this record
    band_length: int | None = None  # values per band (valid and wrong_size records)


@dataclass
class FileResult:
    """Outcome of one file: its records, and a file-level error if reading stopped."""

    records: list[RecordResult] = field(default_factory=list)
    file_error: RecordError | None = None  # applies to the record after the last one read


# ---------------------------------------------------------------------------- reading


def _gzip_blocks(handle, block_size: int, cap: int) -> Iterator[bytes]:
    """Inflate a (possibly multi-member) gzip stream in steps of at most
    :data:`INFLATE_STEP` bytes (ISA-L: the same deflate format as zlib at about twice
    its speed), stopping with ``oversized`` once more than ``cap`` bytes came out."""
    inflater = isal_zlib.decompressobj(31)
    total = 0
    while data := handle.read(block_size):
        while data:
            if total > cap:  # checked after the records before it were framed
                raise RecordError(
                    "oversized",
                    f"inflates to more than {cap} bytes (max_inflate_bytes; stopped after "
                    f"{handle.tell()} compressed bytes)",
                )
            out = inflater.decompress(data, min(INFLATE_STEP, cap + 1 - total))
            data = inflater.unconsumed_tail
            if inflater.eof and not data and inflater.unused_data:  # another member follows
                data = inflater.unused_data
                inflater = isal_zlib.decompressobj(31)
            total += len(out)
            if out:
                yield out
    if not inflater.eof:
        raise RecordError("truncated", "the gzip stream ends before its end marker")


def _frame(
    data: bytes | bytearray, start: int, limits: ReadLimits, index: int
) -> tuple[int, int, int] | None:
    """``(payload start, payload end, record end)`` of the record at ``start``, or
    ``None`` when ``data`` ends before it does. The length is trusted only when its
    CRC matches (so garbage stops at once) and it is within ``limits``."""
    if len(data) - start < 12:
        return None
    (length,) = struct.unpack_from("<Q", data, start)
    if limits.check_crc:
        (stored,) = struct.unpack_from("<I", data, start + 8)
        computed = masked_crc(memoryview(data)[start : start + 8])
        if stored != computed:
            raise RecordError(
                "unreadable",
                f"record {index}: length CRC mismatch (stored {stored:#010x}, computed "
                f"{computed:#010x}); the rest of the file cannot be framed",
            )
    if length > limits.max_record_bytes:
        reason = "oversized" if limits.check_crc else "unreadable"
        raise RecordError(
            reason,
            f"record {index} declares {length} bytes, more than the {limits.max_record_bytes} "
            "a record of this patch size may hold",
        )
    end = start + 12 + length + 4
    return (start + 12, start + 12 + length, end) if end <= len(data) else None


def _payload_problem(data: bytes | bytearray, where: tuple[int, int, int], index: int) -> str:
    """``""`` when the payload's CRC matches, else the detail of the mismatch."""
    (stored,) = struct.unpack_from("<I", data, where[1])
    computed = masked_crc(memoryview(data)[where[0] : where[1]])
    if stored == computed:
        return ""
    return (
        f"record {index}: payload CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
    )


def iter_frames(
    path: str | Path, limits: ReadLimits | None = None
) -> Iterator[tuple[bytes | memoryview, str]]:
    """Yield ``(record, crc_problem)`` for each record of a TFRecord file (gzip or
    uncompressed), streaming; ``crc_problem`` is ``""`` or names the failed payload CRC
    (the record is then still framed, so the next ones are read).

    Records that lie inside one inflated block come as zero-copy ``memoryview`` slices of
    it, the rare one cut by a block boundary as ``bytes``. Memory stays within a few
    blocks and one record, whatever the file inflates to.

    Raises:
        RecordError: ``empty_file``, ``truncated`` (gzip stream or record cut short),
            ``unreadable`` (not a TFRecord, length CRC mismatch, corrupt gzip data) or
            ``oversized`` (a record or the inflated file over ``limits``).
    """
    path, limits = Path(path), limits or ReadLimits()
    index = 0
    with open(path, "rb") as handle:
        head = handle.read(2)
        if not head:
            raise RecordError("empty_file", "the file holds 0 bytes")
        handle.seek(0)
        size = os.fstat(handle.fileno()).st_size
        block_size = max(1, min(READ_BLOCK, size))
        if head != GZIP_MAGIC and size > limits.max_inflate_bytes:
            raise RecordError(
                "oversized",
                f"{size} bytes, more than {limits.max_inflate_bytes} (max_inflate_bytes)",
            )
        blocks = (
            _gzip_blocks(handle, block_size, limits.max_inflate_bytes)
            if head == GZIP_MAGIC
            else iter(lambda: handle.read(block_size), b"")
        )
        pending = bytearray()  # the start of a record cut by a block boundary
        try:
            for block in blocks:
                pos = 0
                if pending:
                    pending += block
                    while (where := _frame(pending, pos, limits, index)) is not None:
                        problem = (
                            _payload_problem(pending, where, index) if limits.check_crc else ""
                        )
                        yield bytes(pending[where[0] : where[1]]), problem
                        pos, index = where[2], index + 1
                    del pending[:pos]
                    continue
                view = memoryview(block)
                while (where := _frame(block, pos, limits, index)) is not None:
                    problem = _payload_problem(block, where, index) if limits.check_crc else ""
                    yield view[where[0] : where[1]], problem
                    pos, index = where[2], index + 1
                pending += view[pos:]
        except isal_zlib.error as err:
            raise RecordError("unreadable", f"corrupt gzip data ({err})") from None
        if pending:
            raise RecordError(
                "truncated", f"the last record is cut short ({len(pending)} bytes left)"
            )


def iter_records(
    path: str | Path, limits: ReadLimits | None = None
) -> Iterator[bytes | memoryview]:
    """Yield the serialised records of a TFRecord file (see :func:`iter_frames`).

    Raises:
        RecordError: as :func:`iter_frames`, and ``unreadable`` at a payload CRC mismatch.
    """
    for record, problem in iter_frames(path, limits):
        if problem:
            raise RecordError("unreadable", problem)
        yield record


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
        scalars = set(schema.META_BANDS)  # constant bands, or scalars of a table export
        meta_bands = schema.META_BANDS
    if schema.LABEL_BAND not in floats:  # no label: a place to predict (docs/maps.md)
        meta_bands = tuple(k for k in meta_bands if k != schema.LABEL_BAND)
    channels = (*IMAGE_BANDS, *rules.extra)
    missing = [k for k in (*channels, *meta_bands) if k not in floats]
    if missing:
        raise RecordError("missing_band", f"lacks band(s) {_short(missing)}")
    pixels = rules.size * rules.size
    wrong = [
        f"{k} has {floats[k].size}"
        for k in (*channels, *meta_bands)
        if floats[k].size != pixels and not (k in scalars and floats[k].size == 1)
    ]
    if wrong:
        err = RecordError(
            "wrong_size",
            f"expected {pixels} values ({rules.size}x{rules.size}): {', '.join(wrong)}",
        )
        err.band_length = int(floats[IMAGE_BANDS[0]].size)  # for the run's patch size
        raise err
    image = np.empty((len(channels), pixels), np.float32)
    for row, k in zip(image.view(np.uint8), channels, strict=True):
        row[:] = floats[k].view(np.uint8)  # byte copy: wire floats are often unaligned
    image = image.reshape(len(channels), rules.size, rules.size)
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
        year, imagery_year = _original_years(floats, rules, file_name)
    else:
        year = _year("year", floats["year"])
        imagery_year = _year("imagery_year", floats["imagery_year"])
    cell_id, key, from_name = _cell_of(texts, lat, lon, file_name, schema_name)
    try:
        mask = rq.record_mask(floats, image[: len(IMAGE_BANDS)])
    except rq.QualityError as err:
        raise RecordError("out_of_range", str(err)) from None
    clear = rq.clear_shares(floats)
    _check_quality(mask, clear, rules)
    return Sample(
        image,
        label,
        lat,
        lon,
        year,
        imagery_year,
        cell_id,
        key,
        schema_name,
        band_min,
        band_max,
        mask,
        clear,
        from_name,
    )


def _original_years(
    floats: dict[str, np.ndarray], rules: RecordRules, file_name: str
) -> tuple[int, int]:
    """Label and imagery year of an original-schema record: a ``year`` feature, else the
    file name ``{year}_{lon}_{lat}_...``, else ``rules.year``."""
    if "year" in floats:
        year = _year("year", floats["year"])
    elif match := _ORIGINAL_NAME.match(file_name):
        year = int(match["year"])
    elif rules.year is not None:
        year = int(rules.year)
    else:
        raise RecordError(
            "missing_band",
            f"no year: no 'year' feature, file name {file_name!r} is not "
            "{year}_{lon}_{lat}_..., and no year= was given",
        )
    if "imagery_year" in floats:
        return year, _year("imagery_year", floats["imagery_year"])
    return year, max(year, rules.imagery_year_floor)


def _cell_of(
    texts: dict[str, str], lat: float, lon: float, file_name: str, schema_name: str
) -> tuple[str, str, bool]:
    """``(cell id, cell key, key came from the file name)`` of one record: its
    ``cell_key`` / ``cell_id`` features, else (canonical schema) the file name's key,
    else its coordinates."""
    cell_id = texts.get(schema.CELL_ID_FEATURE, "")
    key = texts.get(schema.CELL_KEY_FEATURE, "") or (make_cell_key(cell_id) if cell_id else "")
    if key:
        return cell_id or key, key, False
    match = _CANONICAL_NAME.match(file_name) if schema_name == "canonical" else None
    if match:
        return match["key"], match["key"], True
    cell_id = f"{lat:.6f},{lon:.6f}"
    return cell_id, make_cell_key(cell_id), False


def _check_quality(mask: np.ndarray, clear: np.ndarray, rules: RecordRules) -> None:
    valid = float(mask.mean())
    if valid < rules.min_valid:
        raise RecordError(
            "mostly_nodata", f"valid pixel share {valid:.3f} is under min_valid {rules.min_valid}"
        )
    share = rq.clear_share(clear)
    if rules.min_clear > 0 and not share >= rules.min_clear:
        raise RecordError(
            "cloudy",
            f"clear share {share:.3f} (mean over quarters {np.round(clear, 3).tolist()}) is "
            f"under min_clear {rules.min_clear}",
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
        names = (*IMAGE_BANDS, *rules.extra)
        bad = [names[i] for i in np.flatnonzero(~finite)]
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
    codes = dw[dw != schema.DW_NODATA] if maxs[N_S2] == schema.DW_NODATA else dw
    low_code, high_code = (codes.min(), codes.max()) if codes.size else (0, 0)
    if low_code < DW_CODES[0] or high_code > DW_CODES[1] or not np.array_equal(dw, np.round(dw)):
        raise RecordError(
            "out_of_range",
            f"DW holds {mins[N_S2]:.4g}..{maxs[N_S2]:.4g}; valid: integer codes "
            f"{DW_CODES[0]}-{DW_CODES[1]} and {schema.DW_NODATA} (no data)",
        )
    return mins, maxs


def _first_image_features(paths: Iterable[Path]) -> Iterator[dict[str, np.ndarray]]:
    """The float features of each file's first readable record that holds the first
    Sentinel-2 band (in either schema), lazily, file by file."""
    for path in paths:
        try:
            first = next(iter_records(path), None)
            floats, _ = _float_features(first) if first is not None else ({}, {})
        except RecordError:
            continue
        if "B2_q1" in floats or "B2_1" in floats:
            yield floats


def first_record_layout(paths: list[Path], limit: int = 32) -> tuple[int | None, tuple[str, ...]]:
    """A first guess of the patch side and the optional channel groups (``NL``) from one
    record: the first readable one of the first ``limit`` of ``paths`` (one file read;
    ``split_and_batch`` then counts the size of every record in its pass and settles on
    the majority). The side is ``None`` without such a record, and rounded down when the
    band length is not a square (the pass then finds every record ``wrong_size``)."""
    floats = next(_first_image_features(paths[:limit]), None)
    if floats is None:
        return None, ()
    length = (floats["B2_q1"] if "B2_q1" in floats else floats["B2_1"]).size
    extra = tuple(b for b in (schema.NIGHT_LIGHTS_BAND,) if b in floats)
    return max(1, math.isqrt(length)), extra


def iter_results(path: Path, rules: RecordRules) -> Iterator[RecordResult]:
    """Read and validate the records of one file, one :class:`RecordResult` at a time
    (so a caller can drop each image before the next is read). A file-level error that
    stops reading comes last, as a result with ``file_level`` set and the index of the
    record after the last one read; a file without records gives ``empty_file``. A file
    of many places: a file name names none of them, so its records keyed by the file
    name are keyed by their coordinates instead (a single record keeps the file's key)."""
    results = _iter_file_results(path, rules)
    first = next(results, None)
    second = next(results, None) if first is not None else None
    if second is None or second.file_level:
        yield from (r for r in (first, second) if r is not None)
        return
    for rec in itertools.chain((first, second), results):
        s = rec.sample
        if s is not None and s.key_from_name:
            s.cell_id = f"{s.latitude:.6f},{s.longitude:.6f}"
            s.cell_key, s.key_from_name = make_cell_key(s.cell_id), False
        yield rec


def _iter_file_results(path: Path, rules: RecordRules) -> Iterator[RecordResult]:
    """The records of one file as read, each validated (see :func:`iter_results`)."""
    count = 0
    try:
        for serialized, problem in iter_frames(path, rules.limits):
            if problem:
                yield RecordResult(count, None, "unreadable", problem, bytes(serialized))
            else:
                try:
                    sample = decode_record(serialized, rules, path.name)
                    yield RecordResult(count, sample, band_length=rules.size * rules.size)
                except RecordError as err:
                    yield RecordResult(
                        count,
                        None,
                        err.reason,
                        err.detail,
                        bytes(serialized),
                        False,
                        err.band_length,
                    )
            count += 1
    except RecordError as err:
        yield RecordResult(count, None, err.reason, err.detail, file_level=True)
        return
    except OSError as err:
        yield RecordResult(
            count, None, "unreadable", f"cannot read the file ({err})", file_level=True
        )
        return
    if count == 0:
        yield RecordResult(
            0, None, "empty_file", "a valid TFRecord file holding no record", file_level=True
        )


def read_file(path: Path, rules: RecordRules) -> FileResult:
    """Read and validate every record of one file into memory (see
    :func:`iter_results`; a file-level error is kept in ``FileResult.file_error``)."""
    result = FileResult()
    for rec in iter_results(path, rules):
        if rec.file_level:
            result.file_error = RecordError(rec.reason, rec.detail)
        else:
            result.records.append(rec)
    return result
