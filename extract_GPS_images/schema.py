"""Band names and metadata of the Earth Engine export schema (docs/design.md).

One place says what a record holds, so the synthetic world, both Earth Engine
export paths and ``split_and_batch`` agree on it:

* 24 Sentinel-2 channels ``B2_q1 ... B12_q4`` (quarter-major: the six bands of
  quarter 1, then quarter 2, ...), reflectance = DN / 10000;
* ``DW``: the Dynamic World V1 ``label`` mode over the year, class codes 0-8;
* constant metadata bands ``label``, ``latitude``, ``longitude``, ``year``,
  ``imagery_year``;
* written locally, also a bytes feature ``cell_id`` holding the original id.

The original study's exports (``neighborhoodToArray`` + ``Export.table``) use
``B4_1`` style keys, ``label`` for Dynamic World and ``wi``/``latitude``/
``longtitude`` scalars; :func:`canonical_from_original` maps those names.
"""

from __future__ import annotations

import re

S2_BANDS: tuple[str, ...] = ("B2", "B3", "B4", "B8", "B11", "B12")
QUARTERS: tuple[str, ...] = ("q1", "q2", "q3", "q4")
DW_BAND = "DW"
LABEL_BAND = "label"
META_BANDS: tuple[str, ...] = ("label", "latitude", "longitude", "year", "imagery_year")
CELL_ID_FEATURE = "cell_id"
#: Optional constant band of Earth Engine records: per period, whether its scene came
#: from the period itself, the fallback to the year, or nowhere (see gee_recipe).
FALLBACK_BAND = "s2_fallback"
SCHEMA_VERSION = 1
#: Dynamic World "no data" code: outside the class codes 0-8 (0 is water).
DW_NODATA = 255
#: Prefix of the valid-pixel masks (1 valid, 0 nodata): ``valid_q1 ... valid_q4`` for
#: the Sentinel-2 scene of each period, ``valid_DW`` for Dynamic World.
VALID_PREFIX = "valid_"
#: Prefix of the chosen scene's clear share over the patch per period (constant band or
#: scalar feature, 0-1): ``clear_q1 ... clear_q4``.
CLEAR_PREFIX = "clear_"
#: Optional night-lights channel (VIIRS DNB radiance over the imagery year, nW/sr/cm^2).
NIGHT_LIGHTS_BAND = "NL"
#: Per-record scalar features of a multi-place file (Earth Engine table export): the
#: file-name-safe key and the original id of the place's cell.
CELL_KEY_FEATURE = "cell_key"

#: Dynamic World V1 class codes, in code order.
DW_CLASSES: tuple[str, ...] = (
    "water",
    "trees",
    "grass",
    "flooded_vegetation",
    "crops",
    "shrub_and_scrub",
    "built",
    "bare",
    "snow_and_ice",
)

#: Dynamic World's own palette, in code order.
DW_PALETTE: tuple[str, ...] = (
    "#419BDF",
    "#397D49",
    "#88B053",
    "#7A87C6",
    "#E49635",
    "#DFC35A",
    "#C4281B",
    "#A59B8F",
    "#B39FE1",
)

#: Valid range of Sentinel-2 reflectance after /10000 (L1C saturates near 2.0).
REFLECTANCE_RANGE: tuple[float, float] = (0.0, 2.0)


def s2_channel_names(
    bands: tuple[str, ...] = S2_BANDS, periods: tuple[str, ...] = QUARTERS
) -> list[str]:
    """Sentinel-2 channel names, period-major: ``B2_q1, B3_q1, ..., B12_q4``."""
    return [f"{band}_{period}" for period in periods for band in bands]


def image_band_names(
    bands: tuple[str, ...] = S2_BANDS, periods: tuple[str, ...] = QUARTERS
) -> list[str]:
    """All image channels of a record: the Sentinel-2 channels, then ``DW``."""
    return [*s2_channel_names(bands, periods), DW_BAND]


def all_band_names(
    bands: tuple[str, ...] = S2_BANDS, periods: tuple[str, ...] = QUARTERS
) -> list[str]:
    """Every float band of a record: image channels, then the metadata bands."""
    return [*image_band_names(bands, periods), *META_BANDS]


def valid_band_names(periods: tuple[str, ...] = QUARTERS, extra: tuple[str, ...] = ()) -> list[str]:
    """Valid-pixel mask bands: one per Sentinel-2 period, one for ``DW`` (and one per
    ``extra`` channel such as ``NL``)."""
    return [f"{VALID_PREFIX}{name}" for name in (*periods, DW_BAND, *extra)]


def clear_band_names(periods: tuple[str, ...] = QUARTERS) -> list[str]:
    """Clear-share bands/features, one per Sentinel-2 period."""
    return [f"{CLEAR_PREFIX}{period}" for period in periods]


_ORIGINAL_BAND = re.compile(r"^(B\d{1,2}A?)_(\d)$")

#: Scalar keys of the original study's exports and their canonical names.
ORIGINAL_KEYS: dict[str, str] = {
    "label": DW_BAND,  # the Dynamic World band was exported under its own name
    "wi": "label",
    "latitude": "latitude",
    "longtitude": "longitude",  # sic, as the original exports spell it
}


def canonical_from_original(key: str) -> str:
    """Map a key of an original-study export to its canonical name.

    ``B4_1`` -> ``B4_q1``, ``label`` (Dynamic World) -> ``DW``, ``wi`` -> ``label``,
    ``longtitude`` -> ``longitude``; other keys unchanged. Only for files recognised
    as the original schema: there ``label`` is Dynamic World, not the wealth index.
    """
    match = _ORIGINAL_BAND.match(key)
    if match:
        return f"{match.group(1)}_q{match.group(2)}"
    return ORIGINAL_KEYS.get(key, key)


def record_file_name(cell_key: str, year: int) -> str:
    """File name of one location-year record: ``{cell_key}_{year}.tfrecord.gz``."""
    return f"{cell_key}_{int(year)}.tfrecord.gz"
