"""Earth Engine image recipe: one expression graph per location-year (docs/design.md).

Pure builders with keyword-only arguments; they return ``ee`` objects and never call
the server (no ``getInfo()``), so the whole recipe is built and serialised offline.
For each location and year:

* Sentinel-2 (``COPERNICUS/S2_HARMONIZED`` by default) scenes over the point, bands
  B2 B3 B4 B8 B11 B12 divided by 10000;
* every scene scored by its cloud fraction inside a buffer around the point (by
  default Cloud Score+ ``cs_cdf`` (or ``cs``) below a threshold; option: the QA60
  opaque-cloud and cirrus bits, refused for imagery in QA60's masked gap of
  February 2022 - February 2024); pixels of the buffer the scene does not cover count
  as cloudy, so a scene that only grazes the patch does not win; the chosen scene's
  clear share is recorded per period (``clear_q1 ...``);
* for each period (calendar quarter by default; months or the whole year as options)
  the least-cloudy scene of the period; if the period has none, the least-cloudy scene
  of the year; if the year has none, an empty (nodata) image. The choice is made on
  the server by ranking the candidates of one merged collection (one graph per point,
  no round trip per quarter) and recorded per period in the band ``s2_fallback``;
* Dynamic World V1 ``label`` mode (or median) over the year as ``DW``;
* optional night lights (VIIRS DNB ``average`` of the annual composite, or the mean
  ``avg_rad`` of the monthly composites over the year) as ``NL``;
* valid-pixel masks ``valid_q1 ... valid_q4``, ``valid_DW`` (1 data, 0 nodata); nodata
  pixels hold 0, and ``DW`` holds :data:`~extract_GPS_images.schema.DW_NODATA`;
* constant metadata bands ``label, latitude, longitude, year, imagery_year``;
* sampled on a fixed grid: a transverse Mercator projection centred on the point,
  ``scale`` metres per pixel, ``size`` x ``size`` pixels with the point at the centre,
  so every patch has exactly that shape.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import ee

from extract_GPS_images.schema import (
    CLEAR_PREFIX,
    DW_BAND,
    DW_NODATA,
    FALLBACK_BAND,
    META_BANDS,
    NIGHT_LIGHTS_BAND,
    QUARTERS,
    S2_BANDS,
    VALID_PREFIX,
    clear_band_names,
    s2_channel_names,
    valid_band_names,
)

S2_L1C = "COPERNICUS/S2_HARMONIZED"
S2_SR = "COPERNICUS/S2_SR_HARMONIZED"
CLOUD_SCORE_PLUS = "GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED"
DYNAMIC_WORLD = "GOOGLE/DYNAMICWORLD/V1"
DW_SOURCE_BAND = "label"
VIIRS_ANNUAL = "NOAA/VIIRS/DNB/ANNUAL_V22"
VIIRS_ANNUAL_BAND = "average"
VIIRS_MONTHLY = "NOAA/VIIRS/DNB/MONTHLY_V1/VCMSLCFG"
VIIRS_MONTHLY_BAND = "avg_rad"
#: Earth Engine catalog: QA60 of the Sentinel-2 L1C/L2A collections is masked from
#: 2022-02 to 2024-02, so a QA60 ranking is meaningless for imagery in those months.
QA60_GAP: tuple[str, str] = ("2022-02-01", "2024-03-01")

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
CLOUD_METHODS = ("cloud_score_plus", "qa60")
CS_BANDS = ("cs_cdf", "cs")
QA60_GAP_ACTIONS = ("refuse", "warn")
NIGHT_LIGHTS = ("none", "annual", "monthly")
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
        cloud_method: ``"cloud_score_plus"`` (default) or ``"qa60"``.
        cs_band: Cloud Score+ band, ``"cs_cdf"`` (default) or ``"cs"``.
        cs_threshold: a pixel is clear where ``cs_band >= cs_threshold``.
        qa60_gap: with ``cloud_method="qa60"`` and imagery in QA60's masked gap
            (:data:`QA60_GAP`): ``"refuse"`` (default) or ``"warn"``.
        cloud_buffer_m: radius of the buffer scored for clouds (default: half the patch).
        cloud_scale_m: scale of the cloud-fraction reduction.
        scene_cloud_weight: weight of the scene-level cloud percentage (0-1) added to
            the local cloud fraction, to break ties between equally clear scenes.
        mask_clouds: also mask cloudy pixels of the chosen scenes (they become nodata).
        dw_reducer: ``"mode"`` or ``"median"`` of Dynamic World ``label`` over the year.
        night_lights: ``"none"``, ``"annual"`` (VIIRS annual composite ``average``) or
            ``"monthly"`` (mean of the monthly ``avg_rad`` over the year), as ``NL``.
        nodata: value written for Sentinel-2 pixels without data (the valid masks
            say which); Dynamic World nodata is :data:`DW_NODATA`.
    """

    collection: str = S2_L1C
    bands: tuple[str, ...] = S2_BANDS
    reflectance_scale: float = 10000.0
    scale: float = 30.0
    size: int = 225
    periods: Literal["quarter", "month", "year"] = "quarter"
    cloud_method: Literal["cloud_score_plus", "qa60"] = "cloud_score_plus"
    cs_band: Literal["cs_cdf", "cs"] = "cs_cdf"
    cs_threshold: float = 0.6
    qa60_gap: Literal["refuse", "warn"] = "refuse"
    cloud_buffer_m: float | None = None
    cloud_scale_m: float = 60.0
    scene_cloud_weight: float = 0.01
    mask_clouds: bool = False
    dw_reducer: Literal["mode", "median"] = "mode"
    night_lights: Literal["none", "annual", "monthly"] = "none"
    nodata: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("periods", self.periods, tuple(PERIODS))
        _check_choice("cloud_method", self.cloud_method, CLOUD_METHODS)
        _check_choice("cs_band", self.cs_band, CS_BANDS)
        _check_choice("qa60_gap", self.qa60_gap, QA60_GAP_ACTIONS)
        _check_choice("night_lights", self.night_lights, NIGHT_LIGHTS)
        _check_choice("dw_reducer", self.dw_reducer, DW_REDUCERS)
        if self.size < 1 or self.scale <= 0:
            raise ValueError(
                f"size must be >= 1 and scale > 0, got size={self.size}, scale={self.scale}"
            )
        if not self.bands:
            raise ValueError("bands must name at least one Sentinel-2 band")

    @property
    def period_names(self) -> tuple[str, ...]:
        return PERIODS[self.periods]

    @property
    def extra_channels(self) -> tuple[str, ...]:
        """Optional channel groups after ``DW`` (``NL`` with night lights)."""
        return (NIGHT_LIGHTS_BAND,) if self.night_lights != "none" else ()

    @property
    def channel_names(self) -> list[str]:
        """Image channels: Sentinel-2 ``{band}_{period}`` (period-major), ``DW``, then
        the optional groups (``NL``)."""
        return [*s2_channel_names(self.bands, self.period_names), DW_BAND, *self.extra_channels]

    @property
    def valid_names(self) -> list[str]:
        """Valid-pixel mask bands: ``valid_{period}`` per period, ``valid_DW`` (``valid_NL``)."""
        return valid_band_names(self.period_names, self.extra_channels)

    @property
    def clear_names(self) -> list[str]:
        """Clear-share bands (constant per record), one per period."""
        return clear_band_names(self.period_names)

    @property
    def record_bands(self) -> list[str]:
        """Every non-metadata band of a record: channels, masks, clear shares, fallback."""
        return [*self.channel_names, *self.valid_names, *self.clear_names, FALLBACK_BAND]

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
            "scaleX": sx,
            "shearX": shx,
            "translateX": tx,
            "shearY": shy,
            "scaleY": sy,
            "translateY": ty,
        },
    }


def metadata_bands(
    *, label: float, lat: float, lon: float, year: int, imagery_year: int
) -> ee.Image:
    """Constant float bands ``label, latitude, longitude, year, imagery_year``; a NaN
    label (a place to predict) gives no ``label`` band."""
    values = dict(label=label, latitude=lat, longitude=lon, year=year, imagery_year=imagery_year)
    names = [n for n in META_BANDS if not (n == "label" and math.isnan(float(label)))]
    return ee.Image.constant([float(values[name]) for name in names]).rename(names).toFloat()


def check_cloud_method(config: RecipeConfig, imagery_year: int) -> None:
    """Refuse (or warn loudly about) a QA60 cloud ranking of imagery in QA60's gap.

    Raises:
        ValueError: ``cloud_method="qa60"`` with ``qa60_gap="refuse"`` and an imagery
            year overlapping :data:`QA60_GAP`.
    """
    if config.cloud_method != "qa60":
        return
    first, after = f"{imagery_year}-01-01", f"{imagery_year + 1}-01-01"
    if not (first < QA60_GAP[1] and after > QA60_GAP[0]):
        return
    message = (
        f"cloud_method='qa60' for imagery of {imagery_year}: the QA60 band of {config.collection} "
        f"is masked from {QA60_GAP[0]} to {QA60_GAP[1]} (Earth Engine catalog), so every "
        "scene would score as cloudy and the tile-wide cloud percentage would decide; use "
        "cloud_method='cloud_score_plus' (the default)"
    )
    if config.qa60_gap == "refuse":
        raise ValueError(message + ", or qa60_gap='warn' to go on anyway")
    warnings.warn("QA60 GAP: " + message, UserWarning, stacklevel=3)


def scored_scenes(*, point: ee.Geometry, year: int, config: RecipeConfig) -> ee.ImageCollection:
    """Sentinel-2 scenes of ``year`` over ``point``: the bands scaled to reflectance,
    with ``cloud_score`` (cloudy-or-uncovered fraction of the buffer + tie-breaker), the
    same value as ``rank``, ``clear_share`` (clear and covered fraction of the buffer)
    and ``s2_source`` = :data:`SOURCE_PERIOD`."""
    buffer = point.buffer(config.buffer_m)
    scenes = (
        ee.ImageCollection(config.collection)
        .filterBounds(point)
        .filterDate(f"{year}-01-01", f"{year + 1}-01-01")
    )
    if config.cloud_method == "cloud_score_plus":
        # Scenes without a Cloud Score+ match get a fully masked score: all cloudy.
        scenes = scenes.linkCollection(ee.ImageCollection(CLOUD_SCORE_PLUS), [config.cs_band])

    def clear_of(scene: ee.Image) -> ee.Image:
        if config.cloud_method == "cloud_score_plus":
            return scene.select(config.cs_band).gte(config.cs_threshold)
        return scene.select("QA60").bitwiseAnd(QA60_CLOUD_MASK).eq(0)

    def score(scene: ee.Image) -> ee.Image:
        clear = clear_of(scene)
        covered_clear = clear.unmask(0, False).rename("clear")
        fraction = ee.Number(
            covered_clear.reduceRegion(
                reducer=ee.Reducer.mean(),
                geometry=buffer,
                scale=config.cloud_scale_m,
                maxPixels=1e9,
            ).get("clear")
        )
        cloud = (
            ee.Number(1)
            .subtract(fraction)
            .add(
                ee.Number(scene.get(SCENE_CLOUD_PROPERTY))
                .divide(100)
                .multiply(config.scene_cloud_weight)
            )
        )
        reflectance = scene.select(list(config.bands)).divide(config.reflectance_scale)
        if config.mask_clouds:
            reflectance = reflectance.updateMask(clear)
        return ee.Image(
            reflectance.rename(list(config.bands))
            .toFloat()
            .copyProperties(scene, ["system:index", "system:time_start"])
        ).set(
            "cloud_score", cloud, "rank", cloud, "s2_source", SOURCE_PERIOD, "clear_share", fraction
        )

    return scenes.map(score)


def year_fallbacks(*, scenes: ee.ImageCollection, config: RecipeConfig) -> ee.ImageCollection:
    """The candidates every period falls back to: the least-cloudy scene of the year
    (ranked after any in-period scene) and an empty image (ranked last, clear share 0)."""
    year_best = (
        scenes.sort("rank")
        .limit(1)
        .map(
            lambda im: im.set(
                "rank", ee.Number(im.get("rank")).add(_YEAR_RANK_OFFSET), "s2_source", SOURCE_YEAR
            )
        )
    )
    empty = (
        ee.Image.constant([config.nodata] * len(config.bands))
        .rename(list(config.bands))
        .toFloat()
        .updateMask(0)
        .set("rank", _NONE_RANK, "s2_source", SOURCE_NONE, "system:index", "none", "clear_share", 0)
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
) -> tuple[ee.Image, ee.Image, dict[str, ee.Number]]:
    """The Sentinel-2 channels (``{band}_{period}``, period-major), their valid-pixel
    masks (``valid_{period}``: 1 where every band of the chosen scene has data) and the
    per-record numbers: :data:`FALLBACK_BAND` (each period's source, 2 bits per period)
    and ``clear_{period}`` (the chosen scene's clear share of the buffer)."""
    scenes = scored_scenes(point=point, year=year, config=config)
    fallbacks = year_fallbacks(scenes=scenes, config=config)
    channels, masks, code = [], [], ee.Number(0)
    numbers: dict[str, ee.Number] = {}
    for i, (name, start, end) in enumerate(period_ranges(year=year, periods=config.periods)):
        chosen = least_cloudy(scenes=scenes, fallbacks=fallbacks, start=start, end=end)
        bands = chosen.select(list(config.bands), [f"{b}_{name}" for b in config.bands])
        channels.append(bands)
        masks.append(bands.mask().reduce(ee.Reducer.min()).rename(f"{VALID_PREFIX}{name}"))
        code = code.add(ee.Number(chosen.get("s2_source")).multiply(_CODE_BASE**i))
        numbers[f"{CLEAR_PREFIX}{name}"] = ee.Number(chosen.get("clear_share"))
    numbers = {FALLBACK_BAND: code, **numbers}
    return ee.Image.cat(channels), ee.Image.cat(masks), numbers


def dynamic_world(*, point: ee.Geometry, year: int, config: RecipeConfig) -> ee.Image:
    """Dynamic World V1 ``label`` reduced over ``year`` (mode or median) as ``DW``, where
    no image covers a pixel :data:`DW_NODATA`, and its mask ``valid_DW``; an empty
    placeholder keeps the band when the year has no Dynamic World image."""
    empty = ee.Image.constant(0).toByte().rename(DW_SOURCE_BAND).updateMask(0)
    labels = (
        ee.ImageCollection(DYNAMIC_WORLD)
        .filterBounds(point)
        .filterDate(f"{year}-01-01", f"{year + 1}-01-01")
        .select(DW_SOURCE_BAND)
        .merge(ee.ImageCollection([empty]))
    )
    reducer = ee.Reducer.mode() if config.dw_reducer == "mode" else ee.Reducer.median()
    dw = labels.reduce(reducer).rename(DW_BAND)
    valid = dw.mask().rename(f"{VALID_PREFIX}{DW_BAND}")
    return ee.Image.cat([dw.unmask(DW_NODATA, False), valid])


def night_lights(*, year: int, config: RecipeConfig) -> ee.Image:
    """VIIRS DNB radiance over ``year`` as ``NL`` (nW/sr/cm^2) and its mask ``valid_NL``:
    the annual composite's ``average`` or the mean monthly ``avg_rad``. Sampled on the
    recipe's 30 m grid (each ~464 m VIIRS pixel covers about 15 x 15 output pixels)."""
    annual = config.night_lights == "annual"
    collection, band = (
        (VIIRS_ANNUAL, VIIRS_ANNUAL_BAND) if annual else (VIIRS_MONTHLY, VIIRS_MONTHLY_BAND)
    )
    empty = ee.Image.constant(0).toFloat().rename(band).updateMask(0)
    lights = (
        ee.ImageCollection(collection)
        .filterDate(f"{year}-01-01", f"{year + 1}-01-01")
        .select(band)
        .merge(ee.ImageCollection([empty]))
        .mean()
        .rename(NIGHT_LIGHTS_BAND)
    )
    valid = lights.mask().rename(f"{VALID_PREFIX}{NIGHT_LIGHTS_BAND}")
    return ee.Image.cat([lights.unmask(0, False), valid])


def place_parts(
    *, point: ee.Geometry, imagery_year: int, config: RecipeConfig
) -> tuple[ee.Image, dict[str, ee.Number]]:
    """The pixel bands of one place (channels and valid masks, float32, no masked
    pixel left) and its per-record numbers (:data:`FALLBACK_BAND`, ``clear_{period}``).

    The image paths write the numbers as constant bands, the table export as scalar
    features.
    """
    check_cloud_method(config, imagery_year)
    s2, s2_valid, numbers = s2_composites(point=point, year=imagery_year, config=config)
    dw = dynamic_world(point=point, year=imagery_year, config=config)
    parts = [s2, dw.select(DW_BAND)]
    masks = [s2_valid, dw.select(f"{VALID_PREFIX}{DW_BAND}")]
    if config.night_lights != "none":
        lights = night_lights(year=imagery_year, config=config)
        parts.append(lights.select(NIGHT_LIGHTS_BAND))
        masks.append(lights.select(f"{VALID_PREFIX}{NIGHT_LIGHTS_BAND}"))
    image = ee.Image.cat([*parts, *masks]).toFloat().unmask(config.nodata, False)
    return image, numbers


def constant_bands(numbers: dict[str, ee.Number]) -> ee.Image:
    """Per-record numbers as constant float bands named by their keys."""
    return ee.Image.cat(
        [ee.Image.constant(value).toFloat().rename(name) for name, value in numbers.items()]
    )


@functools.lru_cache(maxsize=64)
def recipe_function(config: RecipeConfig, imagery_year: int) -> ee.Function:
    """The recipe of one imagery year as an Earth Engine function of ``(point, meta)``.

    Built once per (config, year) and called per location, so building a location's
    graph costs one invocation instead of the whole recipe (the download path builds
    thousands); the server sees the same function definition every time.

    Raises:
        ValueError: a QA60 ranking of imagery in QA60's gap (see
            :func:`check_cloud_method`).
    """
    signature = {
        "name": "",
        "returns": "Image",
        "args": [{"name": "point", "type": "Geometry"}, {"name": "meta", "type": "Image"}],
    }

    def body(point: ee.Geometry, meta: ee.Image) -> ee.Image:
        image, numbers = place_parts(point=point, imagery_year=imagery_year, config=config)
        return ee.Image.cat([image, meta, constant_bands(numbers)]).toFloat()

    return ee.CustomFunction(signature, body)


def location_image(
    *, lat: float, lon: float, label: float, year: int, imagery_year: int, config: RecipeConfig
) -> ee.Image:
    """The full record image of one location-year: the channels (Sentinel-2, ``DW``,
    optional ``NL``), the valid masks, the metadata bands, :data:`FALLBACK_BAND` and
    the clear shares; float32, no masked pixel (nodata as documented in the module).

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
