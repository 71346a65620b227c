"""Earth Engine image recipe: one expression graph per location-year (DESIGN section 3).

Pure builders with keyword-only arguments; they return ``ee`` objects and never call
the server (no ``getInfo()``), so the whole recipe is built and serialised offline.
For each location and year:

* Sentinel-2 (``COPERNICUS/S2_HARMONIZED`` by default) scenes over the point, bands
  B2 B3 B4 B8 B11 B12 divided by 10000;
* every scene scored by its cloud fraction inside a buffer around the point (QA60
  opaque-cloud and cirrus bits, or Cloud Score+ ``cs`` below a threshold); pixels of
  the buffer the scene does not cover count as cloudy, so a scene that only grazes
  the patch does not win;
* for each period (calendar quarter by default; months or the whole year as options)
  the least-cloudy scene of the period; if the period has none, the least-cloudy scene
  of the year; if the year has none, an empty (nodata) image. The choice is made on
  the server by ranking the candidates of one merged collection (one graph per point,
  no round trip per quarter) and recorded per period in the band ``s2_fallback``;
* Dynamic World V1 ``label`` mode (or median) over the year as ``DW``;
* constant metadata bands ``label, latitude, longitude, year, imagery_year``;
* sampled on a fixed grid: a transverse Mercator projection centred on the point,
  ``scale`` metres per pixel, ``size`` x ``size`` pixels with the point at the centre,
  so every patch has exactly that shape.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import ee

from extract_GPS_images.schema import (
    DW_BAND,
    FALLBACK_BAND,
    META_BANDS,
    QUARTERS,
    S2_BANDS,
    s2_channel_names,
)

S2_L1C = "COPERNICUS/S2_HARMONIZED"
S2_SR = "COPERNICUS/S2_SR_HARMONIZED"
CLOUD_SCORE_PLUS = "GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED"
DYNAMIC_WORLD = "GOOGLE/DYNAMICWORLD/V1"
DW_SOURCE_BAND = "label"

#: QA60 bits 10 (opaque clouds) and 11 (cirrus).
QA60_CLOUD_MASK = (1 << 10) | (1 << 11)
#: Scene-level cloud percentage property of both Sentinel-2 collections (tie-breaker).
SCENE_CLOUD_PROPERTY = "CLOUDY_PIXEL_PERCENTAGE"

#: Codes of :data:`FALLBACK_BAND`, 2 bits per period (period i in bits 2i, 2i+1;
#: 12 months need 24 bits, still exact in float32).
SOURCE_PERIOD, SOURCE_YEAR, SOURCE_NONE = 0, 1, 2
SOURCE_NAMES: dict[int, str] = {SOURCE_PERIOD: "period", SOURCE_YEAR: "year", SOURCE_NONE: "none"}
_CODE_BASE = 4
#: Rank offsets that put year-level candidates after every in-period scene (cloud
#: scores lie in [0, 1 + scene_cloud_weight]) and the empty image last.
_YEAR_RANK_OFFSET = 10.0
_NONE_RANK = 100.0

PERIODS: dict[str, tuple[str, ...]] = {
    "quarter": QUARTERS,
    "month": tuple(f"m{m:02d}" for m in range(1, 13)),
    "year": ("y",),
}
CLOUD_METHODS = ("qa60", "cloud_score_plus")
DW_REDUCERS = ("mode", "median")


@dataclass(frozen=True)
class RecipeConfig:
    """Every knob of the image recipe.

    Attributes:
        collection: Sentinel-2 collection id (``S2_L1C`` or ``S2_SR``).
        bands: Sentinel-2 bands, in output order.
        reflectance_scale: digital numbers are divided by this.
        scale: metres per output pixel.
        size: patch width and height in pixels (the point is at the centre).
        periods: ``"quarter"``, ``"month"`` or ``"year"``.
        cloud_method: ``"qa60"`` or ``"cloud_score_plus"``.
        cs_threshold: Cloud Score+ ``cs`` below this is cloudy.
        cloud_buffer_m: radius of the buffer scored for clouds (default: half the patch).
        cloud_scale_m: scale of the cloud-fraction reduction.
        scene_cloud_weight: weight of the scene-level cloud percentage (0-1) added to
            the local cloud fraction, to break ties between equally clear scenes.
        mask_clouds: also mask cloudy pixels of the chosen scenes (they become nodata).
        dw_reducer: ``"mode"`` or ``"median"`` of Dynamic World ``label`` over the year.
        nodata: value written for pixels without data.
    """

    collection: str = S2_L1C
    bands: tuple[str, ...] = S2_BANDS
    reflectance_scale: float = 10000.0
    scale: float = 30.0
    size: int = 225
    periods: Literal["quarter", "month", "year"] = "quarter"
    cloud_method: Literal["qa60", "cloud_score_plus"] = "qa60"
    cs_threshold: float = 0.6
    cloud_buffer_m: float | None = None
    cloud_scale_m: float = 60.0
    scene_cloud_weight: float = 0.01
    mask_clouds: bool = False
    dw_reducer: Literal["mode", "median"] = "mode"
    nodata: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("periods", self.periods, tuple(PERIODS))
        _check_choice("cloud_method", self.cloud_method, CLOUD_METHODS)
        _check_choice("dw_reducer", self.dw_reducer, DW_REDUCERS)
        if self.size < 1 or self.scale <= 0:
            raise ValueError(f"size must be >= 1 and scale > 0, got size={self.size}, "
                             f"scale={self.scale}")
        if not self.bands:
            raise ValueError("bands must name at least one Sentinel-2 band")

    @property
    def period_names(self) -> tuple[str, ...]:
        return PERIODS[self.periods]

    @property
    def channel_names(self) -> list[str]:
        """Image channels: Sentinel-2 ``{band}_{period}`` (period-major), then ``DW``."""
        return [*s2_channel_names(self.bands, self.period_names), DW_BAND]

    @property
    def buffer_m(self) -> float:
        """Radius of the cloud-scored buffer (default: half the patch width)."""
        if self.cloud_buffer_m is not None:
            return self.cloud_buffer_m
        return self.size * self.scale / 2


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def period_ranges(*, year: int, periods: str = "quarter") -> list[tuple[str, str, str]]:
    """``(name, start, end)`` ISO dates of each period of ``year``; ``end`` exclusive."""
    _check_choice("periods", periods, tuple(PERIODS))
    names = PERIODS[periods]
    months = 12 // len(names)
    ranges = []
    for i, name in enumerate(names):
        first, after = 1 + i * months, 1 + (i + 1) * months
        end = f"{year + 1}-01-01" if after > 12 else f"{year}-{after:02d}-01"
        ranges.append((name, f"{year}-{first:02d}-01", end))
    return ranges


def local_projection_wkt(*, lat: float, lon: float) -> str:
    """WKT of a transverse Mercator projection (WGS 84, scale 1) centred on the point.

    The point sits at (0, 0) metres, so a grid of ``scale`` metres centred on it needs
    no client-side projection arithmetic, and distortion over a patch is negligible.
    """
    return (
        'PROJCS["local transverse Mercator",GEOGCS["WGS 84",DATUM["WGS_1984",'
        'SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],'
        'UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],'
        f'PARAMETER["latitude_of_origin",{lat:.8f}],PARAMETER["central_meridian",{lon:.8f}],'
        'PARAMETER["scale_factor",1],PARAMETER["false_easting",0],'
        'PARAMETER["false_northing",0],UNIT["metre",1]]'
    )


def crs_transform(*, scale: float, size: int) -> list[float]:
    """Affine transform ``[sx, 0, x0, 0, -sy, y0]`` putting the origin at the patch centre."""
    half = size * scale / 2.0
    return [float(scale), 0.0, -half, 0.0, -float(scale), half]


def pixel_grid(*, lat: float, lon: float, scale: float, size: int) -> dict[str, Any]:
    """The ``grid`` of an ``ee.data.computePixels`` request for one patch."""
    sx, shx, tx, shy, sy, ty = crs_transform(scale=scale, size=size)
    return {
        "crsWkt": local_projection_wkt(lat=lat, lon=lon),
        "dimensions": {"width": int(size), "height": int(size)},
        "affineTransform": {
            "scaleX": sx, "shearX": shx, "translateX": tx,
            "shearY": shy, "scaleY": sy, "translateY": ty,
        },
    }


def scored_scenes(
    *, point: ee.Geometry, year: int, config: RecipeConfig
) -> ee.ImageCollection:
    """Sentinel-2 scenes of ``year`` over ``point``: the bands scaled to reflectance,
    with ``cloud_score`` (cloudy-or-uncovered fraction of the buffer + tie-breaker), the
    same value as ``rank`` and ``s2_source`` = :data:`SOURCE_PERIOD`."""
    buffer = point.buffer(config.buffer_m)
    scenes = (
        ee.ImageCollection(config.collection)
        .filterBounds(point)
        .filterDate(f"{year}-01-01", f"{year + 1}-01-01")
    )
    if config.cloud_method == "cloud_score_plus":
        # Scenes without a Cloud Score+ match get a fully masked ``cs``: all cloudy.
        scenes = scenes.linkCollection(ee.ImageCollection(CLOUD_SCORE_PLUS), ["cs"])

    def clear_of(scene: ee.Image) -> ee.Image:
        if config.cloud_method == "cloud_score_plus":
            return scene.select("cs").gte(config.cs_threshold)
        return scene.select("QA60").bitwiseAnd(QA60_CLOUD_MASK).eq(0)

    def score(scene: ee.Image) -> ee.Image:
        clear = clear_of(scene)
        covered_clear = clear.unmask(0, False).rename("clear")
        fraction = covered_clear.reduceRegion(
            reducer=ee.Reducer.mean(), geometry=buffer, scale=config.cloud_scale_m,
            maxPixels=1e9,
        ).get("clear")
        cloud = ee.Number(1).subtract(ee.Number(fraction)).add(
            ee.Number(scene.get(SCENE_CLOUD_PROPERTY)).divide(100).multiply(
                config.scene_cloud_weight
            )
        )
        reflectance = scene.select(list(config.bands)).divide(config.reflectance_scale)
        if config.mask_clouds:
            reflectance = reflectance.updateMask(clear)
        return ee.Image(
            reflectance.rename(list(config.bands)).toFloat()
            .copyProperties(scene, ["system:index", "system:time_start"])
        ).set("cloud_score", cloud, "rank", cloud, "s2_source", SOURCE_PERIOD)

    return scenes.map(score)


def year_fallbacks(*, scenes: ee.ImageCollection, config: RecipeConfig) -> ee.ImageCollection:
    """The candidates every period falls back to: the least-cloudy scene of the year
    (ranked after any in-period scene) and an empty image (ranked last)."""
    year_best = scenes.sort("rank").limit(1).map(
        lambda im: im.set(
            "rank", ee.Number(im.get("rank")).add(_YEAR_RANK_OFFSET), "s2_source", SOURCE_YEAR
        )
    )
    empty = (
        ee.Image.constant([config.nodata] * len(config.bands))
        .rename(list(config.bands)).toFloat().updateMask(0)
        .set("rank", _NONE_RANK, "s2_source", SOURCE_NONE, "system:index", "none")
    )
    return year_best.merge(ee.ImageCollection([empty]))


def least_cloudy(
    *, scenes: ee.ImageCollection, fallbacks: ee.ImageCollection, start: str, end: str
) -> ee.Image:
    """The least-cloudy scene of ``[start, end)``, else of the year, else an empty image.

    One merged, ranked collection decides on the server; the chosen image carries
    ``s2_source`` (:data:`SOURCE_PERIOD`, :data:`SOURCE_YEAR` or :data:`SOURCE_NONE`).
    """
    return ee.Image(scenes.filterDate(start, end).merge(fallbacks).sort("rank").first())


def s2_composites(
    *, point: ee.Geometry, year: int, config: RecipeConfig
) -> tuple[ee.Image, ee.Image]:
    """The Sentinel-2 channels (``{band}_{period}``, period-major) and the
    :data:`FALLBACK_BAND` image coding each period's source (2 bits per period)."""
    scenes = scored_scenes(point=point, year=year, config=config)
    fallbacks = year_fallbacks(scenes=scenes, config=config)
    channels, code = [], ee.Number(0)
    for i, (name, start, end) in enumerate(period_ranges(year=year, periods=config.periods)):
        chosen = least_cloudy(scenes=scenes, fallbacks=fallbacks, start=start, end=end)
        channels.append(chosen.select(list(config.bands), [f"{b}_{name}" for b in config.bands]))
        code = code.add(ee.Number(chosen.get("s2_source")).multiply(_CODE_BASE**i))
    fallback = ee.Image.constant(code).toFloat().rename(FALLBACK_BAND)
    return ee.Image.cat(channels), fallback


def dynamic_world(*, point: ee.Geometry, year: int, config: RecipeConfig) -> ee.Image:
    """Dynamic World V1 ``label`` reduced over ``year`` (mode or median) as ``DW``; an
    empty placeholder keeps the band when the year has no Dynamic World image."""
    empty = ee.Image.constant(0).toByte().rename(DW_SOURCE_BAND).updateMask(0)
    labels = (
        ee.ImageCollection(DYNAMIC_WORLD)
        .filterBounds(point)
        .filterDate(f"{year}-01-01", f"{year + 1}-01-01")
        .select(DW_SOURCE_BAND)
        .merge(ee.ImageCollection([empty]))
    )
    reducer = ee.Reducer.mode() if config.dw_reducer == "mode" else ee.Reducer.median()
    return labels.reduce(reducer).rename(DW_BAND)


def metadata_bands(
    *, label: float, lat: float, lon: float, year: int, imagery_year: int
) -> ee.Image:
    """Constant float bands ``label, latitude, longitude, year, imagery_year``; a NaN
    label (a place to predict) gives no ``label`` band."""
    values = dict(label=label, latitude=lat, longitude=lon, year=year, imagery_year=imagery_year)
    names = [n for n in META_BANDS if not (n == "label" and math.isnan(float(label)))]
    return ee.Image.constant([float(values[name]) for name in names]).rename(names).toFloat()


@functools.lru_cache(maxsize=64)
def recipe_function(config: RecipeConfig, imagery_year: int) -> ee.Function:
    """The recipe of one imagery year as an Earth Engine function of ``(point, meta)``.

    Built once per (config, year) and called per location, so building a location's
    graph costs one invocation instead of the whole recipe (the download path builds
    thousands); the server sees the same function definition every time.
    """
    signature = {
        "name": "",
        "returns": "Image",
        "args": [{"name": "point", "type": "Geometry"}, {"name": "meta", "type": "Image"}],
    }

    def body(point: ee.Geometry, meta: ee.Image) -> ee.Image:
        s2, fallback = s2_composites(point=point, year=imagery_year, config=config)
        dw = dynamic_world(point=point, year=imagery_year, config=config)
        return ee.Image.cat([s2, dw, meta, fallback]).toFloat().unmask(config.nodata, False)

    return ee.CustomFunction(signature, body)


def location_image(
    *, lat: float, lon: float, label: float, year: int, imagery_year: int, config: RecipeConfig
) -> ee.Image:
    """The full record image of one location-year: Sentinel-2 channels, ``DW``, the
    metadata bands, then :data:`FALLBACK_BAND`; float32, masked pixels set to nodata.

    Imagery comes from ``imagery_year`` (the label year, or the configured year for
    label years before Sentinel-2); ``year`` is the label year, kept as metadata.
    """
    meta = metadata_bands(label=label, lat=lat, lon=lon, year=year, imagery_year=imagery_year)
    point = ee.Geometry.Point([lon, lat])
    return ee.Image(recipe_function(config, int(imagery_year)).call(point, meta))


def decode_fallback(code: float, periods: Sequence[str]) -> dict[str, str]:
    """Period name -> ``"period"``, ``"year"`` or ``"none"`` from a :data:`FALLBACK_BAND`
    value."""
    value = int(round(float(code)))
    return {
        name: SOURCE_NAMES[(value // _CODE_BASE**i) % _CODE_BASE] for i, name in enumerate(periods)
    }


def fallback_summary(code: float, periods: Sequence[str]) -> str:
    """Short text for manifests: the periods that did not get their own scene, e.g.
    ``"q2:year;q4:none"`` (empty when every period had one)."""
    sources = decode_fallback(code, periods)
    return ";".join(f"{p}:{s}" for p, s in sources.items() if s != "period")
