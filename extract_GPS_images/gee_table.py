"""Table-export batch mode: many places per Earth Engine export task (docs/design.md).

The original study's reader and Yeh et al.'s ``africa_poverty`` export so: the image
is turned into arrays with ``neighborhoodToArray`` over a ``size`` x ``size`` kernel and
sampled at a FeatureCollection of places (``sampleRegions``), and
``Export.table.toDrive`` / ``toCloudStorage`` writes the samples as TFRecord, one record
per place, many places per file. Here each place is sampled on its own fixed grid (the
transverse Mercator projection centred on it, ``scale`` metres per pixel, the point at
the centre pixel), with its own least-cloudy scenes (:func:`gee_recipe.place_parts`),
in a ``map`` over the places, so the pixels equal those of the one-task-per-place
export. Every record carries its place's ``cell_key``, ``cell_id``, ``label``,
``latitude``, ``longitude``, ``year`` and ``imagery_year`` as scalar features (a table
export writes a point's properties so), plus the clear shares and ``s2_fallback``.

Pure builders: :func:`plan_batches` cuts the places into tasks (``points_per_task``
places of one imagery year each, stable across runs), :func:`table_task` builds one
unstarted task; nothing here calls the server.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ee

from extract_GPS_images.gee_recipe import (
    RecipeConfig,
    crs_transform,
    local_projection_wkt,
    place_parts,
)
from extract_GPS_images.schema import CELL_ID_FEATURE, CELL_KEY_FEATURE, META_BANDS

#: Feature properties copied into every record (scalar features of the export).
PLACE_PROPERTIES: tuple[str, ...] = (CELL_KEY_FEATURE, CELL_ID_FEATURE, *META_BANDS)
_CRS_PROPERTY = "crs_wkt"


@dataclass(frozen=True)
class Batch:
    """The places of one table-export task (all of one imagery year)."""

    name: str  # places_{imagery year}_{number}_{digest}
    imagery_year: int
    locations: tuple  # of gee_download.Location

    def __len__(self) -> int:
        return len(self.locations)

    def description(self, prefix: str = "") -> str:
        """Task description: the prefix (``/`` as ``_``) and the name."""
        return f"{prefix.replace('/', '_')}{self.name}"

    def stem(self, prefix: str = "") -> str:
        """File name prefix of the export (a ``gcs`` prefix may hold folders)."""
        return f"{prefix}{self.name}"


def plan_batches(locations: Sequence, *, points_per_task: int) -> list[Batch]:
    """Cut the places into tasks of at most ``points_per_task``, one imagery year each.

    The places keep the labels' order within a year, so the same labels and settings
    give the same tasks in every run; each description ends in a short digest of its
    places' keys, so a changed batch never reuses a finished one's name.
    """
    if points_per_task < 1:
        raise ValueError(f"points_per_task must be >= 1, got {points_per_task}")
    by_year: dict[int, list] = {}
    for loc in locations:
        by_year.setdefault(int(loc.imagery_year), []).append(loc)
    batches = []
    for year in sorted(by_year):
        places = by_year[year]
        for k in range(math.ceil(len(places) / points_per_task)):
            members = tuple(places[k * points_per_task : (k + 1) * points_per_task])
            digest = hashlib.sha1(
                "\n".join(f"{m.cell_key}_{m.year}" for m in members).encode()
            ).hexdigest()[:8]
            batches.append(Batch(f"places_{year}_{k:05d}_{digest}", year, members))
    return batches


def check_odd_size(recipe: RecipeConfig) -> None:
    """Raise a ``ValueError`` for an even patch size (the kernel is centred on a pixel)."""
    if recipe.size % 2 == 0:
        raise ValueError(
            f"the table export needs an odd patch size (a kernel centred on the "
            f"place's pixel), got size={recipe.size}; use 225 (or layout='image')"
        )


def places_collection(locations: Sequence) -> ee.FeatureCollection:
    """The places as point features with the properties every record carries (and the
    WKT of each place's own grid projection)."""
    return ee.FeatureCollection(
        [
            ee.Feature(
                ee.Geometry.Point([loc.lon, loc.lat]),
                {
                    CELL_KEY_FEATURE: loc.cell_key,
                    CELL_ID_FEATURE: loc.cell_id,
                    # a place to predict (NaN label) carries no label property
                    **({} if math.isnan(float(loc.label)) else {"label": float(loc.label)}),
                    "latitude": float(loc.lat),
                    "longitude": float(loc.lon),
                    "year": int(loc.year),
                    "imagery_year": int(loc.imagery_year),
                    _CRS_PROPERTY: local_projection_wkt(lat=loc.lat, lon=loc.lon),
                },
            )
            for loc in locations
        ]
    )


def sampled_places(
    places: ee.FeatureCollection,
    *,
    imagery_year: int,
    recipe: RecipeConfig,
    tile_scale: float = 1.0,
) -> ee.FeatureCollection:
    """One feature per place: every pixel band as a ``size`` x ``size`` array
    (``neighborhoodToArray`` sampled with ``sampleRegions`` on the place's grid), its
    properties and the per-record numbers as scalars.

    Raises:
        ValueError: an even ``size`` (the kernel is centred on the place's pixel).
    """
    check_odd_size(recipe)
    kernel = ee.Kernel.square(radius=recipe.size // 2, units="pixels")
    transform = crs_transform(scale=recipe.scale, size=recipe.size)

    def sample(feature: Any) -> ee.Feature:
        place = ee.Feature(feature)
        image, numbers = place_parts(
            point=place.geometry(), imagery_year=imagery_year, config=recipe
        )
        projection = ee.Projection(place.get(_CRS_PROPERTY), transform)
        arrays = image.neighborhoodToArray(kernel)
        one = arrays.sampleRegions(
            collection=ee.FeatureCollection([place]),
            properties=list(PLACE_PROPERTIES),
            projection=projection,
            tileScale=tile_scale,
            geometries=False,
        )
        return ee.Feature(one.first()).set(numbers)

    return places.map(sample)


def table_selectors(recipe: RecipeConfig) -> list[str]:
    """Columns of the export: pixel bands and masks (arrays), then the scalars."""
    return [
        *recipe.channel_names,
        *recipe.valid_names,
        *PLACE_PROPERTIES,
        *recipe.clear_names,
        "s2_fallback",
    ]


def table_task(
    batch: Batch,
    *,
    recipe: RecipeConfig,
    destination: str,
    folder: str,
    bucket: str | None,
    prefix: str,
    tile_scale: float,
) -> ee.batch.Task:
    """The unstarted TFRecord table-export task of one batch of places."""
    collection = sampled_places(
        places_collection(batch.locations),
        imagery_year=batch.imagery_year,
        recipe=recipe,
        tile_scale=tile_scale,
    )
    params: dict[str, Any] = dict(
        collection=collection,
        description=batch.description(prefix),
        fileNamePrefix=batch.stem(prefix),
        fileFormat="TFRecord",
        selectors=table_selectors(recipe),
    )
    if destination == "gcs":
        return ee.batch.Export.table.toCloudStorage(bucket=bucket, **params)
    return ee.batch.Export.table.toDrive(folder=folder, **params)
