"""Labels that cannot be real: nodata codes, (0, 0), outliers, lone places.

Called by :func:`extract_GPS_images.labels.read_labels` on the parsed numbers:

* a label equal to a common nodata code (:data:`NODATA_CODES`, e.g. -9999) is a
  missing value: a bad row (refused or skipped per ``on_error``);
* with a bounding box, a place outside it is a bad row;
* warnings, with line numbers, on coordinates (0, 0) ("Null Island", a common
  placeholder), on labels far outside the rest (robust z-score
  ``0.6745 * |x - median| / MAD`` over ``outlier_z``) and on places farther than
  ``far_km`` from every other place (a swapped latitude/longitude, a typo).

The statistics need a few rows: outliers and lone places are looked for from
:data:`MIN_ROWS` rows on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

#: Label values that mean "no data" in common exports (GDAL/ArcGIS/Stata/float32).
NODATA_CODES: tuple[float, ...] = (-9999.0, -999.0, -99.0, 9999.0, -32768.0, -3.4028234663852886e38)
EARTH_RADIUS_KM = 6371.0088
MIN_ROWS = 10
_SHOWN = 10


@dataclass(frozen=True)
class PlausibilityRules:
    """What a plausible labels table looks like.

    Attributes:
        nodata_codes: label values read as missing.
        outlier_z: robust z-score above which a label is reported (warning).
        far_km: distance to the nearest other place above which a place is reported.
        bbox: ``(west, south, east, north)`` in degrees; places outside are bad rows.
    """

    nodata_codes: tuple[float, ...] = NODATA_CODES
    outlier_z: float = 8.0
    far_km: float = 1000.0
    bbox: tuple[float, float, float, float] | None = None


def robust_z(values: np.ndarray) -> np.ndarray:
    """``0.6745 * (x - median) / MAD`` (0 where the MAD is 0; NaN stays NaN)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.full(values.shape, np.nan)
    median = np.median(finite)
    mad = np.median(np.abs(finite - median))
    if mad == 0:
        return np.zeros(values.shape)
    return 0.6745 * (values - median) / mad


def nearest_km(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Great-circle distance (km) from each place to the nearest *other* distinct place
    (``inf`` for a single place)."""
    phi, lam = np.radians(lat), np.radians(lon)
    xyz = np.column_stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)])
    unique, inverse = np.unique(np.round(xyz, 9), axis=0, return_inverse=True)
    if len(unique) < 2:
        return np.full(len(lat), np.inf)
    chord, _ = cKDTree(unique).query(unique, k=2)
    km = 2 * EARTH_RADIUS_KM * np.arcsin(np.clip(chord[:, 1] / 2, 0, 1))
    return km[inverse.ravel()]


def check_plausible(
    numbers: dict[str, np.ndarray],
    lines: np.ndarray,
    problems: dict[int, list[str]],
    name: str,
    rules: PlausibilityRules | None = None,
) -> list[str]:
    """Add the bad rows (nodata labels, places outside ``bbox``) to ``problems`` and
    warn about implausible ones; return the warnings.

    Args:
        numbers: parsed ``latitude``, ``longitude`` and, when present, ``label``.
        lines: line number of each row in the file.
        problems: row index -> messages, as :func:`read_labels` collects them.
        name: the file's name for the warnings.
        rules: the :class:`PlausibilityRules` (defaults if ``None``).
    """
    rules = rules or PlausibilityRules()

    def bad(mask: np.ndarray, message: Callable[[int], str]) -> None:
        for i in np.flatnonzero(mask):
            problems.setdefault(int(i), []).append(message(int(i)))

    lat, lon = numbers["latitude"], numbers["longitude"]
    label = numbers.get("label")
    if label is not None:
        nodata = np.isin(label, rules.nodata_codes)
        bad(nodata, lambda i: f"line {lines[i]}: label {label[i]:g} is a nodata code (missing)")
    if rules.bbox is not None:
        west, south, east, north = rules.bbox
        outside = ~((lon >= west) & (lon <= east) & (lat >= south) & (lat <= north))
        bad(
            outside & np.isfinite(lat) & np.isfinite(lon),
            lambda i: (
                f"line {lines[i]}: ({lat[i]:g}, {lon[i]:g}) is outside the bounding "
                f"box {rules.bbox} (west, south, east, north)"
            ),
        )
    usable = np.array([i not in problems for i in range(len(lat))], bool)
    usable &= np.isfinite(lat) & np.isfinite(lon)
    notes = []
    null_island = usable & (lat == 0) & (lon == 0)
    if null_island.any():
        notes.append(f"coordinates (0, 0), a common placeholder, on {_lines(lines, null_island)}")
    if usable.sum() >= MIN_ROWS:
        if label is not None:
            z = np.full(len(label), np.nan)
            z[usable] = robust_z(label[usable])
            far = usable & (np.abs(np.nan_to_num(z)) > rules.outlier_z)
            if far.any():
                median = float(np.median(label[usable]))
                notes.append(
                    f"labels far outside the rest (robust z-score over {rules.outlier_z:g}, "
                    f"median {median:.4g}) on {_lines(lines, far, label)}"
                )
        km = np.full(len(lat), np.nan)
        km[usable] = nearest_km(lat[usable], lon[usable])
        lone = usable & (np.nan_to_num(km) > rules.far_km)
        if lone.any():
            notes.append(
                f"places more than {rules.far_km:g} km from every other place on "
                f"{_lines(lines, lone, km, ' km')}"
            )
    for note in notes:
        warnings.warn(f"{name}: {note}", stacklevel=3)
    return notes


def _lines(lines: np.ndarray, mask: np.ndarray, values: np.ndarray | None = None, unit="") -> str:
    rows = np.flatnonzero(mask)
    shown = [
        f"{lines[i]}" + (f" ({values[i]:.4g}{unit})" if values is not None else "")
        for i in rows[:_SHOWN]
    ]
    more = f" and {len(rows) - _SHOWN} more" if len(rows) > _SHOWN else ""
    return f"line(s) {', '.join(shown)}{more}"
