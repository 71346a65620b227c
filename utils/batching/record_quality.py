"""Valid-pixel masks, clear shares and per-record metadata of one record (docs/design.md).

Earth Engine records of this project carry their own quality and identity:

* ``valid_q1 ... valid_q4`` and ``valid_DW`` masks (1 data, 0 nodata), full bands or
  constants; without them (older exports, the original study's) the mask is derived
  from the nodata convention: a Sentinel-2 pixel whose six bands of a quarter are all
  0 has no data, a ``DW`` pixel holding :data:`~extract_GPS_images.schema.DW_NODATA`
  neither;
* ``clear_q1 ...``: the chosen scene's clear share of the patch per quarter;
* the metadata of the place: scalar features (Earth Engine table exports write a
  point's properties so) or constant bands, and bytes features ``cell_id`` /
  ``cell_key``.

Pure functions on the decoded feature dicts of :mod:`utils.batching.example_wire`; the checks
that quarantine live in :mod:`utils.batching.validate_records`.
"""

from __future__ import annotations

import numpy as np

from extract_GPS_images import schema

#: Mask channels of a canonical record, in order (the shards' ``mask`` dataset).
MASK_BANDS: tuple[str, ...] = tuple(schema.valid_band_names())
CLEAR_BANDS: tuple[str, ...] = tuple(schema.clear_band_names())


class QualityError(ValueError):
    """A mask band that is not a 0/1 mask of the patch (``detail`` says which)."""


def record_mask(floats: dict[str, np.ndarray], image: np.ndarray) -> np.ndarray:
    """The (5, H, W) uint8 valid mask of a record: its ``valid_*`` bands when present,
    else derived from the nodata convention.

    Args:
        floats: the record's float features (canonical names).
        image: the record's (25, H, W) channels (24 Sentinel-2, then ``DW``).

    Raises:
        QualityError: a mask band of the wrong length or holding values other than 0/1.
    """
    n_s2, (height, width) = len(schema.s2_channel_names()), image.shape[1:]
    per_quarter = len(schema.S2_BANDS)
    mask = np.empty((len(MASK_BANDS), height, width), np.uint8)
    for i, name in enumerate(MASK_BANDS):
        values = floats.get(name)
        if values is None:  # derived from the nodata convention
            if i < n_s2 // per_quarter:
                mask[i] = (image[i * per_quarter : (i + 1) * per_quarter] != 0).any(axis=0)
            else:
                mask[i] = image[n_s2] != schema.DW_NODATA
            continue
        if values.size not in (1, height * width):
            raise QualityError(f"{name} holds {values.size} values, expected {height * width}")
        if not np.isin(values, (0.0, 1.0)).all():
            raise QualityError(f"{name} holds values other than 0 and 1")
        mask[i] = np.broadcast_to(
            values.reshape(-1) if values.size == 1 else values.reshape(height, width),
            (height, width),
        )
    return mask


def clear_shares(floats: dict[str, np.ndarray]) -> np.ndarray:
    """Per-quarter clear shares (float32, NaN where the record has none)."""
    out = np.full(len(CLEAR_BANDS), np.nan, np.float32)
    for i, name in enumerate(CLEAR_BANDS):
        values = floats.get(name)
        if values is not None and values.size and np.isfinite(values.flat[0]):
            out[i] = float(values.flat[0])
    return out


def clear_share(shares: np.ndarray) -> float:
    """The patch's clear share: the mean over the quarters that have one (NaN if none)."""
    known = shares[np.isfinite(shares)]
    return float(known.mean()) if known.size else float("nan")


def scalar(floats: dict[str, np.ndarray], name: str) -> float | None:
    """The value of a scalar feature or of the first pixel of a constant band."""
    values = floats.get(name)
    if values is None or values.size == 0:
        return None
    return float(values.flat[0])
