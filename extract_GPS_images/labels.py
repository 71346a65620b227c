"""The one labels.csv reader (DESIGN section 3), used by the synthetic world and the
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
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

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
#: file, rows to predict (DESIGN section 8); their label is NaN.
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


class LabelsError(ValueError):
    """A labels.csv that cannot be used; the message names every bad row and column."""


@dataclass
class Labels:
    """A validated labels table and what the reader did to get it."""

    frame: pd.DataFrame
    columns_used: dict[str, str]
    problems: list[str] = field(default_factory=list)
    year_mapping: dict[int, int] = field(default_factory=dict)
    source: str = ""

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


def match_columns(columns: list[str]) -> dict[str, str]:
    """Map canonical names to the file's own column names.

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
        raise LabelsError(
            f"labels.csv lacks column(s) {'; '.join(missing)}; it has {list(columns)}"
        )
    return used


def read_labels(
    source: str | Path | pd.DataFrame,
    *,
    on_error: Literal["raise", "skip"] = "raise",
    imagery_year: int = FIRST_IMAGERY_YEAR,
    first_year: int = FIRST_IMAGERY_YEAR,
    last_year: int | None = None,
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
    if isinstance(source, pd.DataFrame):
        raw, name = source.copy(), "frame"
    else:
        path = Path(source)
        if not path.is_file():
            raise LabelsError(f"labels file not found: {path}")
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        name = str(path)
    used = match_columns(list(raw.columns))
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
            lambda i, c=canon, t=text: f"line {lines[i]}, column '{used[c]}': "
            f"not a number: {t.iloc[i]!r}",
        )
    years = numbers["year"]
    finite_year = np.isfinite(years)
    bad(
        finite_year & (years != np.round(years)),
        lambda i: f"line {lines[i]}, column '{used['year']}': year {years[i]} is not whole",
    )
    bad(
        finite_year & (years > last_year),
        lambda i: f"line {lines[i]}, column '{used['year']}': year {int(years[i])} is after "
        f"{last_year}, outside the life of Sentinel-2 so far",
    )
    for canon, limit in (("latitude", 90.0), ("longitude", 180.0)):
        values = numbers[canon]
        bad(
            np.isfinite(values) & (np.abs(values) > limit),
            lambda i, c=canon, v=values, lim=limit: f"line {lines[i]}, column '{used[c]}': "
            f"{v[i]} is outside [-{lim:g}, {lim:g}]",
        )
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
    if messages and on_error == "raise":
        shown = "\n  ".join(messages[:25])
        more = f"\n  ... and {len(messages) - 25} more" if len(messages) > 25 else ""
        raise LabelsError(
            f"{name}: {len(problems)} bad row(s); fix them or read with on_error='skip':\n  "
            f"{shown}{more}"
        )
    for message in messages:
        warnings.warn(f"{name}: skipping {message}", stacklevel=2)

    keep = np.array([i not in problems for i in range(len(raw))], dtype=bool)
    if not keep.any():
        raise LabelsError(f"{name}: no usable row")
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
        warnings.warn(
            f"{name}: label years {sorted(mapping)} are before {first_year} (no full year of "
            f"Sentinel-2 / Dynamic World); using imagery of {imagery_year} for "
            f"{int(early.sum())} rows (stored per sample as 'imagery_year')",
            stacklevel=2,
        )
    columns = ["cell_id", "cell_key", "year", "imagery_year", "latitude", "longitude", "label"]
    frame = frame[[*columns, "line"]]
    return Labels(frame, used, messages, mapping, name)


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


def write_labels(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a tidy labels frame (as returned by :func:`read_labels`) in the documented
    format ``year, cell id, centroid latitude, centroid longitude, label`` (atomic)."""
    out = pd.DataFrame(
        {
            "year": frame["year"].astype(int),
            "cell id": frame["cell_id"],
            "centroid latitude": frame["latitude"].round(6),
            "centroid longitude": frame["longitude"].round(6),
            "label": frame["label"].round(6),
        }
    )[list(DOCUMENTED_COLUMNS)]
    with atomic_open(path, "w", encoding="utf-8") as handle:
        out.to_csv(handle, index=False, lineterminator="\n")
    return Path(path)
