"""The quarantine folder of ``split_and_batch``: damaged inputs kept aside with their reason.

``<out>/quarantine/`` holds a copy of each damaged file (or, for one bad record of a
multi-record file, that record alone as a one-record gzip TFRecord) and
``reasons.csv``. Reasons use one fixed vocabulary, :data:`REASONS`, shared by the
tests, the manifest and the report.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from utils.atomic import atomic_open, atomic_path

#: Why an input was quarantined (exact strings: the manifest, tests and report use them).
REASONS: tuple[str, ...] = (
    "unreadable",  # not a gzip TFRecord, CRC mismatch, unparsable protobuf
    "empty_file",  # zero bytes
    "truncated",  # the gzip stream or a record ends early
    "missing_band",  # a band (or the year of an original-study file name) is absent
    "wrong_size",  # a band does not hold H*W values
    "nan_or_inf",  # non-finite image values
    "out_of_range",  # reflectance/DW codes/year outside their valid range, non-constant meta
    "bad_label",  # label non-finite or outside the configured label range
    "bad_coordinates",  # latitude/longitude non-finite or outside [-90, 90]/[-180, 180]
    "unknown_schema",  # neither the canonical nor the original study's keys
    "unsafe_archive_entry",  # zip entry escaping its folder (absolute, '..', link)
    "bad_archive",  # a zip archive (or one of its entries) that cannot be read
    "mostly_nodata",  # valid-pixel share of the patch under min_valid
    "cloudy",  # clear share of the chosen scenes under min_clear
    "oversized",  # a record, file or archive entry larger than its cap (a bomb)
    "link",  # a symbolic link (refused unless followed and inside the input folder)
    "special_file",  # a FIFO, socket or device: never opened
    "duplicate",  # a second record of the same (cell key, year)
)

REASONS_FILE = "reasons.csv"
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def check_reason(reason: str) -> str:
    """Return ``reason`` if it is in :data:`REASONS`, else raise a ``ValueError``."""
    if reason not in REASONS:
        raise ValueError(f"unknown quarantine reason {reason!r}; valid: {', '.join(REASONS)}")
    return reason


def quarantine_name(source: str, record: int | None = None) -> str:
    """Flat, file-name-safe name for a quarantined input (``a/b.gz`` -> ``a__b.gz``);
    a single record of a multi-record file gets ``__r00003.tfrecord.gz``."""
    name = _UNSAFE_CHARS.sub("_", source.replace("\\", "/").strip("/").replace("/", "__"))
    name = name.lstrip(".") or "input"
    return f"{name}__r{record:05d}.tfrecord.gz" if record is not None else name


def keep_file(folder: Path, source: str, path: Path) -> str:
    """Copy a damaged file into the quarantine ``folder``; return its name there."""
    name = quarantine_name(source)
    with atomic_path(folder / name) as tmp:
        shutil.copyfile(path, tmp)
    return name


def keep_bytes(folder: Path, source: str, payload: bytes, record: int | None = None) -> str:
    """Write damaged bytes (an archive entry, or one record framed as a gzip TFRecord
    when ``record`` is given) into ``folder``; return the name there."""
    name = quarantine_name(source, record)
    if record is None:
        with atomic_open(folder / name, "wb") as handle:
            handle.write(payload)
    else:
        from extract_GPS_images.tfrecord import write_tfrecord  # noqa: PLC0415 (TF is heavy)

        write_tfrecord(folder / name, [payload])
    return name
