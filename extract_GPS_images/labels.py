"""The one labels.csv reader (docs/design.md), used by the synthetic world and the
Earth Engine extraction.

Documented columns: ``year, cell id, centroid latitude, centroid longitude, label``.
Common variants (``cell_id``, ``lat``/``lon``, ...) and the original study's files
exactly as they are (``year,cell_id,centroid_longtitude,centroid_latitude,wi`` with
WKT polygon cell ids) are accepted; the report says which columns were used.

The result is a :class:`Labels` with a tidy frame: ``cell_id`` (original id),
``cell_key`` (short, stable, file-name-safe), ``year``, ``imagery_year``,
``latitude``, ``longitude``, ``label`` and ``line`` (line number in the file).
"""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from extract_GPS_images.label_checks import PlausibilityRules, check_plausible
from utils.atomic import atomic_open

#: Canonical column -> accepted header spellings (compared case-insensitively, with
#: spaces, underscores and dashes treated alike).
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "year": ("year", "survey year"),
    "cell_id": ("cell id", "cellid", "id", "cell"),
    "latitude": ("centroid latitude", "latitude", "lat"),
    "longitude": (
        "centroid longitude",
        "centroid longtitude",  # sic: the original study's spelling
        "longitude",
        "longtitude",
        "lon",
        "lng",
        "long",
    ),
    "label": ("label", "wi", "wealth index", "iwi", "y"),
}
#: Columns a file may lack: without ``label`` (or with empty labels) it is a *places*
#: file, rows to predict (docs/maps.md); their label is NaN.
OPTIONAL_COLUMNS: tuple[str, ...] = ("label",)

#: Header written by :func:`write_labels` (the documented format).
DOCUMENTED_COLUMNS: tuple[str, ...] = (
    "year",
    "cell id",
    "centroid latitude",
    "centroid longitude",
    "label",
)

#: Sentinel-2 (and Dynamic World) start in mid 2015: the first full year.
FIRST_IMAGERY_YEAR = 2016

_SAFE_KEY = re.compile(r"[A-Za-z0-9_-]{1,40}")


#: How the Python API asks to skip bad rows; :meth:`LabelsError.for_tool` swaps in the
#: spelling of the tool in use (``--skip-bad-rows``, ``--on-error skip``).
SKIP_HINT = "on_error='skip'"


class LabelsError(ValueError):
    """A labels.csv that cannot be used; the message names the file, every bad row and
    column, and the fix."""

    def for_tool(self, skip: str) -> str:
        """The message with the way to skip bad rows spelled ``skip`` (a CLI flag)."""
        return str(self).replace(SKIP_HINT, skip)


@dataclass
class Labels:
    """A validated labels table and what the reader did to get it."""

    frame: pd.DataFrame
    columns_used: dict[str, str]
    problems: list[str] = field(default_factory=list)
    year_mapping: dict[int, int] = field(default_factory=dict)
    source: str = ""
    read_as: str = ""  # how the file was read when not plain UTF-8 CSV, e.g. "';'-separated"

    def __len__(self) -> int:
        return len(self.frame)

    def summary(self) -> str:
        """One paragraph for notebooks and logs."""
        used = ", ".join(f"{canon} <- '{col}'" for canon, col in self.columns_used.items())
        lines = [
            f"{len(self.frame)} rows, {self.frame['cell_id'].nunique()} cells, "
            f"years {sorted(self.frame['year'].unique().tolist())} from {self.source or 'frame'}",
            f"columns: {used}",
        ]
        if self.read_as:
            lines.append(f"read as {self.read_as}")
        if self.year_mapping:
            lines.append(f"label year -> imagery year: {self.year_mapping}")
        unlabelled = int(self.frame["label"].isna().sum())
        if unlabelled:
            lines.append(f"{unlabelled} rows without a label: places to predict")
        if self.problems:
            lines.append(f"{len(self.problems)} rows skipped")
        return "\n".join(lines)


def cell_key(cell_id: str) -> str:
    """A short, stable, file-name-safe key for a cell id.

    Ids that are already safe (letters, digits, ``_``, ``-``; at most 40 characters)
    are kept; anything else (a WKT polygon, spaces, slashes) becomes ``c`` + the first
    16 hex digits of its SHA-1. Keys fit Earth Engine task descriptions.
    """
    text = str(cell_id).strip()
    if _SAFE_KEY.fullmatch(text):
        return text
    return "c" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _normalise_header(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(name).strip().lower())


def match_columns(columns: list[str], name: str = "labels.csv") -> dict[str, str]:
    """Map canonical names to the file's own column names (``name``: the file, for messages).

    Raises:
        LabelsError: naming the missing columns, the accepted spellings and the
            columns the file has.
    """
    normalised = {_normalise_header(col): col for col in columns}
    used: dict[str, str] = {}
    missing = []
    for canon, aliases in COLUMN_ALIASES.items():
        found = next((normalised[a] for a in aliases if a in normalised), None)
        if found is None and canon not in OPTIONAL_COLUMNS:
            missing.append(f"'{canon}' (accepted: {', '.join(repr(a) for a in aliases)})")
        elif found is not None:
            used[canon] = found
    if missing:
        hint = ""
        if len(columns) == 1:  # one column: the header was not split by commas
            found = [sep for sep in _SEPARATORS if sep in str(columns[0])]
            if found:
                hint = (
                    f"; the header looks separated by {found[0]!r}, not commas: "
                    "save the file as comma-separated CSV"
                )
        raise LabelsError(
            f"{name} lacks column(s) {'; '.join(missing)}; it has {list(columns)}{hint}"
        )
    return used


# --- reading the file: encoding, separator, empty files (messages that name the fix) -------
_SEPARATORS = (",", ";", "\t", "|")
_DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+")
_FORMAT = "a header line `year,cell id,centroid latitude,centroid longitude,label`"


def _decode(data: bytes, name: str) -> tuple[str, str]:
    """The file's text and its encoding: UTF-8 (with or without BOM), UTF-16 with BOM (Excel
    "Unicode text"), else Windows cp1252 (Excel "CSV") with a warning."""
    if data[:4] == b"PK\x03\x04":
        raise LabelsError(
            f"{name} is a zip or an Excel workbook (.xlsx), not a CSV file: "
            "in Excel use Save As > 'CSV UTF-8 (Comma delimited)'"
        )
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return data.decode("utf-16"), "utf-16"
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as err:
        utf8_error = err
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        raise LabelsError(
            f"{name} is not UTF-8 text (byte {data[utf8_error.start]:#04x} at offset "
            f"{utf8_error.start}) nor Windows cp1252: save it as 'CSV UTF-8'"
        ) from None
    _warn(
        f"{name} is not UTF-8; read it as Windows cp1252 (Excel's plain 'CSV'). "
        "Save it as 'CSV UTF-8' to be sure of accented names"
    )
    return text, "cp1252"


def _read_table(path: Path) -> tuple[pd.DataFrame, str]:
    """Read ``path`` as text columns; return it and how it was read (for the summary)."""
    name = str(path)
    text, encoding = _decode(path.read_bytes(), name)
    if not text.strip():
        raise LabelsError(
            f"{name} is empty: a labels.csv needs {_FORMAT} and one row per cell and year"
        )
    header = text.lstrip().splitlines()[0]
    sep = max(_SEPARATORS, key=header.count) if any(s in header for s in _SEPARATORS) else ","
    try:
        raw = pd.read_csv(
            io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, skipinitialspace=True
        )
    except pd.errors.ParserError as err:
        raise LabelsError(
            f"{name} is not a well-formed {sep!r}-separated file ({err}); it needs {_FORMAT}"
        ) from None
    read_as = ", ".join(
        x
        for x in (
            f"{sep!r}-separated" if sep != "," else "",
            encoding if encoding != "utf-8" else "",
        )
        if x
    )
    return raw, read_as


def _decimal_comma_hint(values: list[str]) -> str:
    examples = [v for v in values if _DECIMAL_COMMA.fullmatch(v)]
    if not examples:
        return ""
    return (
        f"\n  values such as {examples[0]!r} use a decimal comma: save the file with "
        "decimal points (e.g. set Excel's decimal separator to '.' before saving as CSV)"
    )


def _swap_summary(lines: np.ndarray, used: dict[str, str]) -> str:
    shown = ", ".join(str(x) for x in lines[:8]) + (", ..." if len(lines) > 8 else "")
    return (
        f"lines {shown} ({len(lines)} rows): column '{used['latitude']}' is outside "
        f"[-90, 90] where column '{used['longitude']}' would be a valid latitude: did you "
        "swap latitude and longitude?"
    )


def _warn(message: str) -> None:
    """Warn, attributed to the first caller outside this project's packages (a notebook
    cell, a script), so the line a warning repeats is the user's own call."""
    frame, level = sys._getframe(1), 2  # stacklevel 2: the caller of _warn
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGES):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


_PACKAGES = tuple(
    os.path.join(Path(__file__).resolve().parents[1], d, "")
    for d in ("extract_GPS_images", "utils", "loss", "metrics", "visualization")
)
# --- end of the file-reading block -------------------------------------------------------


def read_labels(
    source: str | Path | pd.DataFrame,
    *,
    on_error: Literal["raise", "skip"] = "raise",
    imagery_year: int = FIRST_IMAGERY_YEAR,
    first_year: int = FIRST_IMAGERY_YEAR,
    last_year: int | None = None,
    plausibility: PlausibilityRules | None = None,
) -> Labels:
    """Read and validate a labels.csv.

    Args:
        source: a CSV path or an already loaded frame.
        on_error: ``"raise"`` refuses a file with any bad row (the message lists them
            all); ``"skip"`` drops bad rows with a warning each, recorded in
            ``Labels.problems``.
        imagery_year: imagery year used for label years before ``first_year``.
        first_year: first year with a full year of Sentinel-2 / Dynamic World.
        last_year: last acceptable year (default: the current year).
        plausibility: nodata codes, outlier and distance thresholds, bounding box
            (:mod:`extract_GPS_images.label_checks`; defaults if ``None``).

    Returns:
        The validated :class:`Labels`.

    Raises:
        LabelsError: missing columns, non-numbers, coordinates out of range, years
            after ``last_year``, duplicate (cell id, year) rows (with ``"raise"``),
            or no usable row left.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    last_year = last_year or datetime.date.today().year
    read_as = ""
    if isinstance(source, pd.DataFrame):
        raw, name = source.copy(), "frame"
    else:
        path = Path(source)
        if not path.is_file():
            raise LabelsError(
                f"labels file not found: {path} (a relative path is taken from "
                f"the current folder, {Path.cwd()}): check the name"
            )
        raw, read_as = _read_table(path)
        name = str(path)
    used = match_columns(list(raw.columns), name)
    raw = raw.rename(columns={col: canon for canon, col in used.items()})[list(used)]
    if "label" not in used:  # a places file: every row is a place to predict
        raw["label"] = ""
    lines = np.arange(len(raw)) + 2  # line 1 is the header

    problems: dict[int, list[str]] = {}

    def bad(mask: np.ndarray, message) -> None:
        for i in np.flatnonzero(mask):
            problems.setdefault(i, []).append(message(i))

    cell_ids = raw["cell_id"].astype(str).str.strip()
    bad(
        cell_ids.eq("").to_numpy(),
        lambda i: f"line {lines[i]}, column '{used['cell_id']}': empty cell id",
    )
    numbers = {}
    for canon in ("year", "latitude", "longitude", "label"):
        text = raw[canon].astype(str).str.strip()
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=float)
        numbers[canon] = values
        no_label = text.eq("").to_numpy() if canon == "label" else False  # a place to predict
        bad(
            ~np.isfinite(values) & ~no_label,
            lambda i, c=canon, t=text: (
                f"line {lines[i]}, column '{used[c]}': not a number: {t.iloc[i]!r}"
            ),
        )
    years = numbers["year"]
    finite_year = np.isfinite(years)
    bad(
        finite_year & (years != np.round(years)),
        lambda i: f"line {lines[i]}, column '{used['year']}': year {years[i]} is not whole",
    )
    bad(
        finite_year & (years > last_year),
        lambda i: (
            f"line {lines[i]}, column '{used['year']}': year {int(years[i])} is after "
            f"{last_year}, outside the life of Sentinel-2 so far"
        ),
    )
    lat, lon = numbers["latitude"], numbers["longitude"]
    swapped = np.isfinite(lat) & (np.abs(lat) > 90) & (np.abs(lon) <= 90)  # summarised below
    for canon, limit in (("latitude", 90.0), ("longitude", 180.0)):
        values = numbers[canon]
        bad(
            np.isfinite(values) & (np.abs(values) > limit) & ~(swapped & (canon == "latitude")),
            lambda i, c=canon, v=values, lim=limit: (
                f"line {lines[i]}, column '{used[c]}': {v[i]} is outside [-{lim:g}, {lim:g}]"
            ),
        )
    check_plausible(numbers, lines, problems, name, plausibility)  # nodata, (0, 0), outliers
    seen: dict[tuple[str, float], int] = {}
    for i, key in enumerate(zip(cell_ids, years, strict=True)):
        if key in seen and np.isfinite(key[1]):
            problems.setdefault(i, []).append(
                f"line {lines[i]}: duplicate (cell id, year) = ({_short(key[0])}, {int(key[1])}), "
                f"first at line {lines[seen[key]]}"
            )
        else:
            seen.setdefault(key, i)

    messages = [m for i in sorted(problems) for m in problems[i]]
    if swapped.any():  # one line for all rows whose coordinates look swapped
        messages.insert(0, _swap_summary(lines[swapped], used))
        for i in np.flatnonzero(swapped):
            problems.setdefault(i, [])
    not_numbers = [
        raw[c].astype(str).str.strip().iloc[i]
        for c in ("latitude", "longitude", "label")
        for i in np.flatnonzero(~np.isfinite(numbers[c]))
    ]
    hint = _decimal_comma_hint(not_numbers)
    if messages and on_error == "raise":
        shown = "\n  ".join(messages[:25])
        more = f"\n  ... and {len(messages) - 25} more" if len(messages) > 25 else ""
        raise LabelsError(
            f"{name}: {len(problems)} bad row(s); fix them or read with {SKIP_HINT}:\n  "
            f"{shown}{more}{hint}"
        )
    for message in messages:
        _warn(f"{name}: skipping {message}")
    if hint and on_error == "skip":
        _warn(f"{name}:{hint}")

    keep = np.array([i not in problems for i in range(len(raw))], dtype=bool)
    if not keep.any():
        raise LabelsError(
            f"{name}: no usable row (only a header, or every row skipped): it "
            f"needs {_FORMAT} and one row per cell and year"
        )
    frame = pd.DataFrame(
        {
            "cell_id": cell_ids[keep].to_numpy(),
            "year": years[keep].astype(int),
            "latitude": numbers["latitude"][keep],
            "longitude": numbers["longitude"][keep],
            "label": numbers["label"][keep],
            "line": lines[keep],
        }
    )
    frame["cell_key"] = frame["cell_id"].map(cell_key)
    _check_keys_unique(frame)
    early = frame["year"] < first_year
    frame["imagery_year"] = frame["year"].where(~early, imagery_year).astype(int)
    mapping = {int(y): imagery_year for y in sorted(frame.loc[early, "year"].unique())}
    if mapping:
        _warn(
            f"{name}: label years {sorted(mapping)} are before {first_year} (no full year of "
            f"Sentinel-2 / Dynamic World); using imagery of {imagery_year} for "
            f"{int(early.sum())} rows (stored per sample as 'imagery_year')",
        )
    columns = ["cell_id", "cell_key", "year", "imagery_year", "latitude", "longitude", "label"]
    frame = frame[[*columns, "line"]]
    return Labels(frame, used, messages, mapping, name, read_as)


def _short(cell_id: str, width: int = 40) -> str:
    text = repr(cell_id)
    return text if len(text) <= width else text[: width - 4] + "...'"


def _check_keys_unique(frame: pd.DataFrame) -> None:
    per_key = frame.groupby("cell_key")["cell_id"].nunique()
    clashes = per_key[per_key > 1]
    if len(clashes):
        key = clashes.index[0]
        ids = frame.loc[frame["cell_key"] == key, "cell_id"].unique()[:2]
        raise LabelsError(
            f"cell ids {_short(ids[0])} and {_short(ids[1])} map to the same key {key!r}; "
            "rename one of them"
        )


def write_labels(frame: pd.DataFrame, path: str | Path, keep_same: bool = False) -> Path:
    """Write a tidy labels frame (as returned by :func:`read_labels`) in the documented
    format ``year, cell id, centroid latitude, centroid longitude, label`` (atomic;
    ``keep_same``: a file that already holds these bytes is left untouched)."""
    out = pd.DataFrame(
        {
            "year": frame["year"].astype(int),
            "cell id": frame["cell_id"],
            "centroid latitude": frame["latitude"].round(6),
            "centroid longitude": frame["longitude"].round(6),
            "label": frame["label"].round(6),
        }
    )[list(DOCUMENTED_COLUMNS)]
    with atomic_open(path, "w", encoding="utf-8", keep_same=keep_same) as handle:
        out.to_csv(handle, index=False, lineterminator="\n")
    return Path(path)
