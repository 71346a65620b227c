"""Synthetic Sentinel-2 world: the embedded default data source, no Earth Engine needed.

Writes what an Earth Engine extraction writes (docs/design.md): a
``labels.csv`` in the documented format and one gzip TFRecord per location-year in
the export schema (24 Sentinel-2 channels ``B2_q1 ... B12_q4``, ``DW``, constant
metadata bands, the original ``cell_id``).

How the world is made:

* **Places**: settlements scattered in a bounding box (default Vietnam's); each place
  sits near one. Wealth is a latent field (city proximity, a smooth regional trend,
  a settlement effect, local noise), so neighbours are alike, mapped through the
  quantiles of the real wealth index's shape: range 0.281-3.095, left-skewed, six
  equal-width bins holding 0.3 / 2.9 / 10.9 / 28.1 / 40.6 / 17.2 % of places.
* **Scenes**: land cover (Dynamic World classes) drawn from smooth random fields
  whose shares follow a noisy copy of the place's wealth: rich places are built-up
  with dense roads and bright, textured roofs; middle ones are crops and grass;
  the poorest are forest, shrub and bare ground with scattered huts. Reflectances
  per class and band are plausible L1C values with seasonal change per quarter;
  some quarters are cloudy, a few are missing. Quality travels as Earth Engine
  records carry it: ``valid_q1 ... valid_q4`` / ``valid_DW`` masks (a missing quarter
  is 0 there and its bands hold the nodata value 0) and the clear share of each
  quarter's scene (``clear_q1 ...``: 1 minus its cloud fraction, 0 when missing).
  The label is therefore a noisy but learnable function of the scene.
* **Night lights** (``night_lights=True``): a VIIRS-like radiance band ``NL`` that
  follows built-up area and wealth with its own noise: the glow of the town spread
  over a few hundred metres, saturating in the cores of rich towns, nearly dark in
  the poorest places.
* **Your own labels**: with ``labels=...`` every row of a researcher's labels.csv
  gets a scene drawn to fit its label; one cell keeps its landscape across years
  (seeded by the cell), only the wealth-driven parts change.
* **Places without labels** (a places file, e.g. a grid): each is rendered from the
  world's latent wealth field (:class:`WealthField`, the world of the same seed, ``n``,
  bbox and years); its record carries no label band and the true wealth goes to
  ``truth.csv`` beside the records, never into them, so a map's error can be measured.
* **Damage**: a seeded fraction of files is damaged (truncated gzip, missing band,
  wrong length, NaNs, nodata label) and listed in ``corruptions.csv``, so that
  quarantine has real work.

Deterministic: the same arguments give byte-identical files. Re-running into the
same folder skips finished files (writes are atomic).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.interpolate import PchipInterpolator
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from extract_GPS_images import schema
from extract_GPS_images.labels import Labels, LabelsError, read_labels, write_labels
from extract_GPS_images.tfrecord import encode_example, sample_bands, write_tfrecord
from utils.atomic import atomic_open, remove_stale_temporaries
from utils.ownership import OutputFolder

#: (lat_min, lat_max, lon_min, lon_max) of Vietnam.
VIETNAM_BBOX: tuple[float, float, float, float] = (8.4, 23.4, 102.1, 109.5)
#: Range and six-bin shares of the Vietnamese wealth index (docs/design.md).
WEALTH_RANGE: tuple[float, float] = (0.281, 3.095)
WEALTH_BIN_SHARES: tuple[float, ...] = (0.003, 0.029, 0.109, 0.281, 0.406, 0.172)
CORRUPTION_KINDS: tuple[str, ...] = (
    "truncated_gzip",
    "missing_band",
    "wrong_length",
    "nan",
    "bad_label",
)
#: Label value written by the ``bad_label`` damage (a nodata fill).
NODATA_LABEL = -9999.0
#: The true wealth of places without label (never in a record), beside the records.
TRUTH_FILE = "truth.csv"

DW = {name: code for code, name in enumerate(schema.DW_CLASSES)}
# Typical top-of-atmosphere reflectance per class for B2, B3, B4, B8, B11, B12.
CLASS_REFLECTANCE = np.array(
    [
        [0.070, 0.060, 0.040, 0.025, 0.012, 0.008],  # water
        [0.030, 0.050, 0.030, 0.300, 0.150, 0.070],  # trees
        [0.050, 0.080, 0.060, 0.280, 0.220, 0.120],  # grass
        [0.040, 0.060, 0.045, 0.200, 0.110, 0.055],  # flooded vegetation
        [0.050, 0.080, 0.060, 0.330, 0.200, 0.100],  # crops
        [0.050, 0.070, 0.070, 0.220, 0.230, 0.150],  # shrub and scrub
        [0.100, 0.100, 0.110, 0.160, 0.200, 0.180],  # built
        [0.120, 0.140, 0.170, 0.230, 0.300, 0.250],  # bare
        [0.800, 0.800, 0.780, 0.700, 0.100, 0.080],  # snow and ice
    ],
    dtype=np.float32,
)
# Cleared, burnt ground of slash-and-burn farming (B2, B3, B4, B8, B11, B12): darker in
# the near infrared and brighter in B12 than the shrub Dynamic World calls it.
CLEARED_REFLECTANCE = np.array([0.060, 0.065, 0.085, 0.140, 0.260, 0.230], np.float32)
# Land-cover classes outside towns and water, in the order of their shares below.
REMAINDER_CLASSES: tuple[str, ...] = (
    "trees",
    "grass",
    "flooded_vegetation",
    "crops",
    "shrub_and_scrub",
    "bare",
)
# How strongly a class's near-infrared follows the growing season (crops most).
SEASONAL_AMPLITUDE = np.array([0.0, 0.15, 0.25, 0.3, 0.6, 0.2, 0.0, 0.0, 0.0], np.float32)


@dataclass
class WorldConfig:
    """Knobs of the synthetic world (the CLI and image.ipynb set the same ones)."""

    n: int = 1000  # number of cells (places); records = cells x years
    size: int = 225  # patch side in pixels (225 as Earth Engine exports; smaller for demos)
    seed: int = 0
    corrupt_fraction: float = 0.02
    years: tuple[int, ...] = (2019,)
    bbox: tuple[float, float, float, float] = VIETNAM_BBOX
    n_settlements: int = 60
    scene_noise: float = 0.3  # std of the wealth the scene shows around the label
    # unit wealth (0 poorest, 1 richest) below which only clearings tell places apart:
    # 0.5 freezes the poorest three of six label bins (3.2 + 10.9 % of places)
    tail_wealth: float = 0.5
    # std of the wealth the clearings show around the label (None: the scene's own):
    # slash-and-burn varies more between poor villages than towns do, so L2 learns the
    # tail only in part (README, "The synthetic world")
    tail_noise: float | None = 0.8
    cloud_probability: float = 0.12  # per quarter
    missing_probability: float = 0.02  # per quarter
    night_lights: bool = False  # also write the NL band (VIIRS-like radiance)


@dataclass
class WorldReport:
    """What :func:`generate_world` did."""

    out_dir: Path
    labels: pd.DataFrame
    written: int
    skipped: int
    corruptions: pd.DataFrame
    config: dict = field(default_factory=dict)

    @property
    def files(self) -> list[Path]:
        """All record files of the world, in labels order."""
        return [self.out_dir / name for name in self.labels["file"]]

    def summary(self) -> str:
        """A few lines for notebooks and the CLI."""
        labels = self.labels["label"].dropna()
        counts, _ = np.histogram(labels, np.linspace(*WEALTH_RANGE, 7))
        kinds = self.corruptions["kind"].value_counts().to_dict() if len(self.corruptions) else {}
        places = len(self.labels) - len(labels)
        if places:  # a places file: no label to describe
            return (
                f"{len(self.labels)} places without label in {self.out_dir}: {self.written} "
                f"written, {self.skipped} already there; true wealth in {TRUTH_FILE}\n"
                f"damaged on purpose: {len(self.corruptions)} {kinds}"
            )
        return (
            f"{len(self.labels)} records ({self.labels['cell_id'].nunique()} cells) in "
            f"{self.out_dir}: {self.written} written, {self.skipped} already there\n"
            f"label range {labels.min():.3f}-{labels.max():.3f}, skewness "
            f"{pd.Series(labels).skew():.2f}, six-bin shares "
            f"{np.round(100 * counts / max(counts.sum(), 1), 1).tolist()} %\n"
            f"damaged on purpose: {len(self.corruptions)} {kinds}"
        )


# --------------------------------------------------------------------------- labels


def wealth_quantile(u: np.ndarray) -> np.ndarray:
    """Map uniform(0, 1) values to wealth with the real index's shape (inverse CDF,
    monotone cubic through the six-bin shares)."""
    edges = np.linspace(*WEALTH_RANGE, len(WEALTH_BIN_SHARES) + 1)
    cdf = np.concatenate([[0.0], np.cumsum(WEALTH_BIN_SHARES)])
    cdf /= cdf[-1]
    grid = np.linspace(edges[0], edges[-1], 4001)
    return np.interp(u, PchipInterpolator(edges, cdf)(grid), grid)


@dataclass
class WealthField:
    """The world's latent wealth, defined at any point (docs/maps.md): city pull, a
    regional trend, the effect of the settlement that pulls hardest, and per-cell noise,
    mapped through the distribution of the invented places' latents onto the wealth
    index's shape. An invented place evaluated with its own settlement and noise gets
    its own label back; any other place (a grid cell) gets a draw of the same field."""

    seed: int
    centres: np.ndarray  # (S, 2) settlement lat/lon
    size: np.ndarray  # (S,) settlement sizes
    effect: np.ndarray  # (S,) settlement wealth effects
    waves: np.ndarray  # (6, 2) regional trend wave vectors
    phase: np.ndarray  # (6,)
    pull_moments: tuple[float, float]  # mean, std of the invented places' pull
    reference: np.ndarray  # sorted latents of the invented places
    last_year: int  # labels of earlier years are a little poorer

    def pull(self, pts: np.ndarray) -> np.ndarray:
        """(n, S) pull of every settlement on every point."""
        dist = np.hypot(*(pts[:, None, :] - self.centres[None, :, :]).transpose(2, 0, 1))
        return np.log1p(self.size)[None, :] * np.exp(-dist / 0.4)

    def latent(self, pts: np.ndarray, home: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """Latent wealth of points ``pts`` (n, 2) belonging to settlements ``home``."""
        mean, std = self.pull_moments
        trend = np.cos(pts @ self.waves.T + self.phase).sum(axis=1) / np.sqrt(3)
        pull = (self.pull(pts).max(axis=1) - mean) / (std + 1e-12)
        return pull + 0.6 * trend + 0.5 * self.effect[home] + 0.45 * noise

    def wealth(self, latent: np.ndarray) -> np.ndarray:
        """Latents -> wealth with the real index's shape (the invented places' ranks)."""
        n = len(self.reference)
        return wealth_quantile(np.interp(latent, self.reference, (np.arange(n) + 0.5) / n))

    def at(self, places: pd.DataFrame) -> np.ndarray:
        """True wealth of tidy places rows (``latitude, longitude, cell_key, year``): the
        noise and yearly growth of a cell are seeded by its key."""
        pts = places[["latitude", "longitude"]].to_numpy(float).reshape(-1, 2)
        home = self.pull(pts).argmax(axis=1)
        draws = [
            np.random.default_rng([*_cell_seed(self.seed, k), 13]).random(2)
            for k in places["cell_key"]
        ]
        u = np.clip(np.array(draws).reshape(-1, 2), 1e-9, 1 - 1e-9)
        noise, growth = _normal_ppf(u[:, 0]), 0.03 * (1.0 + u[:, 1])
        wealth = self.wealth(self.latent(pts, home, noise))
        years = places["year"].to_numpy(float) - self.last_year
        return np.clip(wealth + growth * years, *WEALTH_RANGE)


def _normal_ppf(u: np.ndarray) -> np.ndarray:
    from scipy.stats import norm  # noqa: PLC0415

    return norm.ppf(u)


def _draw_world(cfg: WorldConfig) -> tuple[WealthField, np.ndarray, np.ndarray, np.ndarray]:
    """The seeded draws of a world: its wealth field, the invented places' points,
    latents and yearly growth."""
    rng = np.random.default_rng([cfg.seed, 1])
    lat0, lat1, lon0, lon1 = cfg.bbox
    centres = np.column_stack(
        [rng.uniform(lat0, lat1, cfg.n_settlements), rng.uniform(lon0, lon1, cfg.n_settlements)]
    )
    size = rng.lognormal(0.0, 1.0, cfg.n_settlements)  # a few big cities, many villages
    home = rng.choice(cfg.n_settlements, cfg.n, p=size / size.sum())
    spread = 0.08 + 0.25 * rng.random(cfg.n)
    pts = centres[home] + rng.normal(0, 1, (cfg.n, 2)) * spread[:, None]
    pts[:, 0] = np.clip(pts[:, 0], lat0, lat1)
    pts[:, 1] = np.clip(pts[:, 1], lon0, lon1)
    waves = rng.normal(0, 1, (6, 2)) / 2.5
    phase = rng.uniform(0, 2 * np.pi, 6)
    effect = rng.normal(0, 1, cfg.n_settlements)
    noise = rng.normal(0, 1, cfg.n)
    growth = 0.03 * (1.0 + rng.random(cfg.n))  # wealth gained per year
    field = WealthField(
        cfg.seed, centres, size, effect, waves, phase, (0.0, 1.0), np.zeros(0), max(cfg.years)
    )
    pull = field.pull(pts).max(axis=1)
    field.pull_moments = (float(pull.mean()), float(pull.std()))
    latent = field.latent(pts, home, noise)
    field.reference = np.sort(latent)
    return field, pts, latent, growth


def wealth_field(cfg: WorldConfig) -> WealthField:
    """The wealth field of the world made with ``cfg`` (same seed, n, bbox, years)."""
    return _draw_world(cfg)[0]


def invent_places(cfg: WorldConfig) -> pd.DataFrame:
    """Cells clustered around settlements, with spatially autocorrelated wealth.

    Returns a tidy labels frame (``cell_id, year, latitude, longitude, label``), one
    row per cell and year; later years grow a little richer.
    """
    from scipy.stats import rankdata  # noqa: PLC0415

    _, pts, latent, growth = _draw_world(cfg)
    # ranks -> quantiles: the marginal follows the real shape exactly, neighbours stay alike
    wealth = wealth_quantile((rankdata(latent) - 0.5) / cfg.n)
    rows = []
    for year in cfg.years:
        label = np.clip(wealth + growth * (year - max(cfg.years)), *WEALTH_RANGE)
        rows.append(
            pd.DataFrame(
                {
                    "cell_id": [f"VN{i:06d}" for i in range(cfg.n)],
                    "year": year,
                    "latitude": pts[:, 0].round(6),
                    "longitude": pts[:, 1].round(6),
                    "label": label.round(6),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-12)


# --------------------------------------------------------------------------- scenes


def _field(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Smooth Gaussian random field, standardised; ``scale`` is a fraction of the side."""
    noise = gaussian_filter(rng.normal(0, 1, (size, size)), max(scale * size, 0.5), mode="wrap")
    return _standardise(noise)


def _threshold(score: np.ndarray, share: float) -> np.ndarray:
    """Mask of the ``share`` highest values of ``score``."""
    if share <= 0:
        return np.zeros(score.shape, bool)
    return score >= np.quantile(score, 1.0 - min(share, 1.0))


def _unit_wealth(wealth: float) -> float:
    return float(np.clip((wealth - WEALTH_RANGE[0]) / (WEALTH_RANGE[1] - WEALTH_RANGE[0]), 0, 1))


def land_cover(
    wealth: float,
    landscape: np.random.Generator,
    year_rng: np.random.Generator,
    size: int,
    *,
    tail_wealth: float = 0.33,
    clearing_wealth: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Dynamic World class map (size x size, codes 0-8) for a place of ``wealth``, and the
    mask of freshly cleared (slash-and-burn) ground.

    ``landscape`` draws what stays put for one cell over the years (terrain, water,
    vegetation pattern, town centre); ``year_rng`` what changes (roads, huts, clearings).
    Below unit wealth ``tail_wealth`` the town/farm/forest shares stop changing: the
    poorest places differ from poor ones only by clearings that Dynamic World calls shrub
    but whose spectrum differs (a rare, subtle, learnable signature of the tail), as many
    as ``clearing_wealth`` (default ``wealth``) asks for.
    """
    shown = _unit_wealth(wealth if clearing_wealth is None else clearing_wealth)
    poverty = max(0.0, (tail_wealth - shown) / tail_wealth)  # 0 above the tail
    u = max(_unit_wealth(wealth), tail_wealth)
    water_score = _field(landscape, size, 0.12)
    town_score = _field(landscape, size, 0.06)
    cover_scores = np.stack([_field(landscape, size, 0.07) for _ in REMAINDER_CLASSES])
    water_share = landscape.choice([0.0, 0.03, 0.12], p=[0.5, 0.35, 0.15])
    cy, cx = landscape.uniform(0.3, 0.7, 2) * size
    yy, xx = np.mgrid[0:size, 0:size]
    radial = -np.hypot(yy - cy, xx - cx) / size

    built_share = 0.01 + 0.55 * u**3
    built = _threshold(town_score + 6.0 * radial * (0.5 + u), built_share)
    # roads: straight lines through the town, more and wider in richer places
    for _ in range(year_rng.poisson(0.3 + 5.0 * u**2)):
        angle = year_rng.uniform(0, np.pi)
        offset = year_rng.normal(0, 0.08 * size)
        dist = np.abs((xx - cx) * np.sin(angle) - (yy - cy) * np.cos(angle) - offset)
        built |= dist < (0.6 if u < 0.6 else 1.1)
    # scattered huts in poor places: isolated built pixels
    built |= year_rng.random((size, size)) < 0.004 * (1 - u)

    # the rest: each pixel takes the class whose own smooth field, biased by the class's
    # wealth-driven share, is highest -> patchy, natural-looking land cover
    shares = np.array(
        [
            0.05 + 0.55 * (1 - u) ** 2,  # trees
            0.10 + 0.25 * u,  # grass
            0.03,  # flooded vegetation (paddies)
            0.05 + 0.6 * np.sin(np.pi * min(u * 1.15, 1.0)),  # crops
            0.02 + 0.35 * (1 - u) ** 3,  # shrub and scrub
            0.01 + 0.3 * (1 - u) ** 5,  # bare
        ]
    )
    winner = np.argmax(cover_scores + 1.5 * np.log(shares / shares.sum())[:, None, None], axis=0)
    classes = np.array([DW[c] for c in REMAINDER_CLASSES], np.uint8)[winner]
    cleared = _threshold(_field(year_rng, size, 0.03), 0.3 * poverty) & ~built
    classes[cleared] = DW["shrub_and_scrub"]
    classes[built] = DW["built"]
    water = _threshold(water_score, water_share)
    classes[water] = DW["water"]
    return classes, cleared & ~water


def reflectance(
    classes: np.ndarray,
    cleared: np.ndarray,
    wealth: float,
    rng: np.random.Generator,
    *,
    cloud_probability: float,
    missing_probability: float,
    tail_wealth: float = 0.33,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """24 Sentinel-2 channels (quarter-major) for a class map, as reflectance (/10000),
    each quarter's validity (0 when the quarter has no scene) and clear share."""
    size = classes.shape[0]
    u = max(_unit_wealth(wealth), tail_wealth)
    base = CLASS_REFLECTANCE[classes]  # (H, W, 6)
    base[cleared] = CLEARED_REFLECTANCE
    built = classes == DW["built"]
    # rich roofs are brighter and more varied (concrete, metal); poor ones dull
    roof = 1.0 + (0.15 + 0.5 * u) * rng.normal(0, 1, (size, size)).clip(-2, 2) * built
    roof += 0.3 * u * built
    texture = 1.0 + 0.06 * rng.normal(0, 1, (size, size))
    quarters = []
    valid = np.ones(len(schema.QUARTERS), np.float32)
    clear = np.ones(len(schema.QUARTERS), np.float32)
    for q in range(len(schema.QUARTERS)):
        season = np.sin(2 * np.pi * (q - 0.5) / 4)  # greenest in q2-q3
        amp = SEASONAL_AMPLITUDE[classes] * season * ~cleared
        img = base.copy()
        img[..., 3] *= 1.0 + amp  # NIR follows the season
        img[..., 2] *= 1.0 - 0.4 * amp  # red dips when green
        img *= (roof * texture)[..., None]
        img += rng.normal(0, 0.004, 6)[None, None, :]  # atmosphere of the day
        if rng.random() < missing_probability:
            img[:] = 0.0  # no scene at all: nodata value 0, mask 0
            valid[q] = clear[q] = 0.0
        elif rng.random() < cloud_probability:
            cloud = _threshold(_field(rng, size, 0.1), rng.uniform(0.1, 0.6))
            img[cloud] = np.array([0.35, 0.36, 0.38, 0.42, 0.30, 0.22]) * rng.uniform(0.8, 1.2)
            clear[q] = 1.0 - float(cloud.mean())
        quarters.append(np.moveaxis(img, -1, 0))
    return np.clip(np.concatenate(quarters), 0.0, 1.5).astype(np.float32), valid, clear


#: Radiance (nW/sr/cm^2) where the lights saturate, as VIIRS does in city cores.
NL_SATURATION = 60.0


def night_lights(classes: np.ndarray, wealth: float, rng: np.random.Generator) -> np.ndarray:
    """VIIRS-like night-time radiance for a class map: the built-up density blurred over
    a few hundred metres (VIIRS pixels are ~464 m), times a brightness that grows with
    the wealth the lights show (the place's own noisy copy), saturating at
    :data:`NL_SATURATION`; a faint noisy background, so the poorest places are nearly
    dark but not exactly 0."""
    size = classes.shape[0]
    density = gaussian_filter((classes == DW["built"]).astype(np.float64), max(size / 15, 1.0))
    u = _unit_wealth(wealth)
    brightness = 10.0 * u**4 * density  # rich, dense cores saturate; poor villages barely glow
    radiance = NL_SATURATION * (1.0 - np.exp(-brightness))
    radiance += np.abs(rng.normal(0.0, 0.05 + 0.3 * u, classes.shape))  # background, airglow
    return radiance.astype(np.float32)


def _cell_seed(seed: int, cell_key: str) -> list[int]:
    digest = hashlib.sha256(cell_key.encode()).digest()
    return [seed, int.from_bytes(digest[:8], "little")]


def render_record(row: pd.Series, cfg: WorldConfig) -> dict[str, np.ndarray]:
    """All bands of one record (image channels + constant metadata bands)."""
    landscape = np.random.default_rng([*_cell_seed(cfg.seed, row.cell_key), 7])
    year_rng = np.random.default_rng([*_cell_seed(cfg.seed, row.cell_key), int(row.year)])
    # a place without label shows its true wealth (TRUTH_FILE), which stays out of the record
    wealth = row.label if np.isfinite(row.label) else row.true_wealth
    shown = wealth + cfg.scene_noise * year_rng.normal()  # the scene shows a noisy wealth
    clearing = None  # the clearings show the scene's wealth, or their own noisy copy
    if cfg.tail_noise is not None:
        tail_rng = np.random.default_rng([*_cell_seed(cfg.seed, row.cell_key), int(row.year), 11])
        clearing = wealth + cfg.tail_noise * tail_rng.normal()
    classes, cleared = land_cover(
        shown, landscape, year_rng, cfg.size, tail_wealth=cfg.tail_wealth, clearing_wealth=clearing
    )
    s2, valid, clear = reflectance(
        classes,
        cleared,
        shown,
        year_rng,
        cloud_probability=cfg.cloud_probability,
        missing_probability=cfg.missing_probability,
        tail_wealth=cfg.tail_wealth,
    )
    image = np.concatenate([s2, classes[None].astype(np.float32)])
    meta = {k: float(row[k]) for k in schema.META_BANDS}
    bands = sample_bands(image, meta)
    shape = classes.shape
    for name, value in zip(schema.valid_band_names(), [*valid, 1.0], strict=True):
        bands[name] = np.full(shape, value, np.float32)
    for name, value in zip(schema.clear_band_names(), clear, strict=True):
        bands[name] = np.full(shape, value, np.float32)
    if cfg.night_lights:  # their own draws: the other bands stay as without them
        lights_rng = np.random.default_rng([*_cell_seed(cfg.seed, row.cell_key), int(row.year), 13])
        shown_lights = row.label + cfg.scene_noise * lights_rng.normal()
        bands[schema.NIGHT_LIGHTS_BAND] = night_lights(classes, shown_lights, lights_rng)
        bands[f"{schema.VALID_PREFIX}{schema.NIGHT_LIGHTS_BAND}"] = np.ones(shape, np.float32)
    return bands


# --------------------------------------------------------------------------- damage


def damage(bands: dict[str, np.ndarray], kind: str, rng: np.random.Generator) -> dict:
    """Return a damaged copy of a record's bands (``truncated_gzip`` is done on bytes)."""
    bands = dict(bands)
    s2 = schema.s2_channel_names()
    if kind == "missing_band":
        del bands[s2[rng.integers(len(s2))]]
    elif kind == "wrong_length":
        name = s2[rng.integers(len(s2))]
        bands[name] = bands[name][:-1]  # one row short
    elif kind == "nan":
        name = s2[rng.integers(len(s2))]
        arr = bands[name].copy()
        arr[: max(1, arr.shape[0] // 4), : max(1, arr.shape[1] // 4)] = np.nan
        bands[name] = arr
    elif kind == "bad_label":
        bands["label"] = np.full_like(bands["latitude"], NODATA_LABEL)  # places have none
    elif kind != "truncated_gzip":
        raise ValueError(f"unknown damage {kind!r}; valid: {', '.join(CORRUPTION_KINDS)}")
    return bands


def pick_damaged(n_records: int, fraction: float, seed: int) -> dict[int, str]:
    """Exactly ``round(fraction * n_records)`` record indices -> damage kind (seeded;
    kinds taken in turn so that every kind appears once there are five)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"corrupt_fraction must be within [0, 1], got {fraction}")
    rng = np.random.default_rng([seed, 2])
    chosen = np.sort(rng.choice(n_records, int(round(fraction * n_records)), replace=False))
    kinds = rng.permutation(np.resize(CORRUPTION_KINDS, len(chosen)))
    return {int(i): str(k) for i, k in zip(chosen, kinds, strict=True)}


# --------------------------------------------------------------------------- world


def generate_world(
    out_dir: str | Path,
    *,
    n: int = 1000,
    size: int = 225,
    seed: int = 0,
    corrupt_fraction: float | None = None,
    years: Sequence[int] = (2019,),
    labels: str | Path | pd.DataFrame | None = None,
    on_error: str = "raise",
    progress: bool = True,
    workers: int = 1,
    **options,
) -> WorldReport:
    """Write a synthetic world: ``labels.csv``, one TFRecord per record, ``corruptions.csv``.

    Args:
        out_dir: output folder (created).
        n: number of invented cells (ignored with ``labels``).
        size: patch side in pixels.
        seed: seed of everything; same arguments, same bytes.
        corrupt_fraction: share of records damaged on purpose (0 allowed); None: the
            default of :class:`WorldConfig` (2 %) for invented places, 0 with ``labels``
            (a researcher's own rows are not damaged unless asked).
        years: label years of invented cells.
        labels: a researcher's labels.csv (path or frame): imagery is synthesised for
            every valid row instead of inventing places.
        on_error: what the labels reader does with bad rows (``"raise"``/``"skip"``).
        progress: show a progress bar.
        workers: processes rendering records in parallel (the files are the same for
            any number).
        **options: other :class:`WorldConfig` fields (bbox, scene_noise, ...).

    Returns:
        A :class:`WorldReport`.
    """
    if corrupt_fraction is None:
        corrupt_fraction = WorldConfig.corrupt_fraction if labels is None else 0.0
    cfg = WorldConfig(
        n=n, size=size, seed=seed, corrupt_fraction=corrupt_fraction, years=tuple(years), **options
    )
    if cfg.size < 4:
        raise ValueError(f"size must be at least 4 pixels, got {cfg.size}")
    out = Path(out_dir)
    OutputFolder.claim(out, "synthetic", ("world.json",))  # refuses a folder not its own
    remove_stale_temporaries(out)
    if labels is None:
        table = read_labels(invent_places(cfg)).frame
        source = "invented"
    else:
        parsed: Labels = read_labels(labels, on_error=on_error)  # type: ignore[arg-type]
        table, source = parsed.frame, parsed.source
    _check_config(out, cfg, source)
    table = table.drop(columns="line").reset_index(drop=True)
    table["file"] = [
        schema.record_file_name(k, y) for k, y in zip(table.cell_key, table.year, strict=True)
    ]
    if table["label"].isna().any():
        _write_truth(out, table, cfg)
    damaged = pick_damaged(len(table), cfg.corrupt_fraction, cfg.seed)

    todo = [i for i in range(len(table)) if not (out / table.file[i]).exists()]
    rows = [table.iloc[i] for i in todo]
    jobs = (repeat(out), rows, repeat(cfg), todo, [damaged.get(i) for i in todo])
    bar = dict(total=len(todo), desc="synthetic world", disable=not progress)
    if workers > 1 and len(todo) > 1:
        context = multiprocessing.get_context("spawn")  # no fork of a threaded parent
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=context) as pool:
            for _ in tqdm(pool.map(write_record, *jobs, chunksize=4), **bar):
                pass
    else:
        for _ in tqdm(map(write_record, *jobs), **bar):
            pass
    written, skipped = len(todo), len(table) - len(todo)
    # a re-run with the same settings leaves the tables as they are (modification times
    # too), so the conversion's input fingerprint, and its finished run, still hold
    write_labels(table, out / "labels.csv", keep_same=True)
    corruptions = pd.DataFrame(
        [(table.file[i], table.cell_id[i], int(table.year[i]), k) for i, k in damaged.items()],
        columns=["file", "cell_id", "year", "kind"],
    )
    with atomic_open(out / "corruptions.csv", keep_same=True) as handle:
        corruptions.to_csv(handle, index=False, lineterminator="\n")
    return WorldReport(out, table, written, skipped, corruptions, dataclasses.asdict(cfg))


def _write_truth(out: Path, table: pd.DataFrame, cfg: WorldConfig) -> None:
    """Draw the true wealth of the rows without label from the world's field (into
    ``table.true_wealth``, for rendering) and write it to ``out / TRUTH_FILE``, apart from
    the records, so that a map's error can be measured."""
    places = table["label"].isna().to_numpy()
    table["true_wealth"] = np.nan
    table.loc[places, "true_wealth"] = wealth_field(cfg).at(table[places]).round(6)
    columns = ["file", "cell_id", "cell_key", "year", "latitude", "longitude", "true_wealth"]
    with atomic_open(out / TRUTH_FILE, keep_same=True) as handle:
        table.loc[places, columns].to_csv(handle, index=False, lineterminator="\n")


def write_record(out: Path, row: pd.Series, cfg: WorldConfig, index: int, kind: str | None) -> Path:
    """Render the record of one labels row, damage it when ``kind`` names a damage, and
    write it to ``out / row.file`` (atomically). The bytes depend only on the arguments."""
    path = out / row.file
    bands = render_record(row, cfg)
    if kind:
        bands = damage(bands, kind, np.random.default_rng([cfg.seed, 3, index]))
    record = encode_example(bands, cell_id=row.cell_id)
    if kind == "truncated_gzip":
        _write_truncated(path, record)
    else:
        write_tfrecord(path, [record])
    return path


def _write_truncated(path: Path, record: bytes) -> None:
    """A gzip TFRecord cut short, as an interrupted download leaves it."""
    tmp = path.with_name(path.name + ".full")
    write_tfrecord(tmp, [record])
    data = tmp.read_bytes()
    tmp.unlink()
    with atomic_open(path, "wb") as handle:
        handle.write(data[: len(data) * 3 // 5])  # cut inside the gzip stream


def _check_config(out: Path, cfg: WorldConfig, source: str) -> None:
    """Refuse to mix two different worlds in one folder."""
    config = dataclasses.asdict(cfg)
    if not config["night_lights"]:  # worlds made before the option read the same
        del config["night_lights"]
    meta = {"config": config, "labels": source}
    path = out / "world.json"
    text = json.dumps(meta, indent=2, sort_keys=True, default=list)
    if path.exists():
        old = json.loads(path.read_text())
        if json.dumps(old, indent=2, sort_keys=True, default=list) != text:
            raise ValueError(
                f"{out} holds a synthetic world made with other settings ({path}); "
                "use a new folder or delete it"
            )
        return
    with atomic_open(path) as handle:
        handle.write(text)


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m extract_GPS_images synthetic`` (defaults: :class:`WorldConfig`)."""
    from utils.cli import add_run_dir, shell_path  # noqa: PLC0415

    world = WorldConfig()
    add_run_dir(parser, None, "write <run-dir>/exports (or give --out)")
    parser.add_argument("--out", type=shell_path, help="output folder (instead of --run-dir)")
    parser.add_argument("--n", type=int, default=world.n, help="number of invented cells")
    parser.add_argument("--size", type=int, default=world.size, help="patch side in pixels")
    parser.add_argument("--seed", type=int, default=world.seed, help="same seed, same bytes")
    parser.add_argument(
        "--corrupt-fraction",
        type=float,
        default=None,
        help="share of records damaged on purpose (quarantine test); default "
        f"{world.corrupt_fraction} for invented places, 0 with --labels",
    )
    parser.add_argument(
        "--years",
        type=int,
        nargs="+",
        default=list(world.years),
        help="label years of invented cells",
    )
    parser.add_argument(
        "--labels", type=shell_path, help="your labels.csv: synthesise imagery for its rows"
    )
    parser.add_argument("--workers", type=int, default=1, help="rendering processes")
    parser.add_argument(
        "--scene-noise",
        type=float,
        default=world.scene_noise,
        help="std of the wealth a scene shows around its label",
    )
    parser.add_argument(
        "--tail-wealth",
        type=float,
        default=world.tail_wealth,
        help="unit wealth below which only clearings tell places apart",
    )
    parser.add_argument(
        "--tail-noise",
        type=float,
        default=world.tail_noise,
        help="std of the wealth the clearings show",
    )
    parser.add_argument(
        "--night-lights", action="store_true", help="also write a VIIRS-like night-lights band NL"
    )
    parser.add_argument(
        "--skip-bad-rows", action="store_true", help="skip bad labels.csv rows instead of failing"
    )


def main(args: argparse.Namespace) -> None:
    """Run the synthetic backend from parsed CLI arguments."""
    from utils.cli import writable_folder  # noqa: PLC0415
    from utils.paths import RunPaths  # noqa: PLC0415

    if (args.out is None) == (args.run_dir is None):
        raise SystemExit("error: give --run-dir (writes <run-dir>/exports) or --out FOLDER")
    out = writable_folder(
        args.out or RunPaths.of(args.run_dir).exports, "--out" if args.out else "--run-dir"
    )
    try:
        report = generate_world(
            out,
            n=args.n,
            size=args.size,
            seed=args.seed,
            corrupt_fraction=args.corrupt_fraction,
            years=args.years,
            labels=args.labels,
            on_error="skip" if args.skip_bad_rows else "raise",
            workers=args.workers,
            scene_noise=args.scene_noise,
            tail_wealth=args.tail_wealth,
            tail_noise=args.tail_noise,
            night_lights=args.night_lights,
        )
    except LabelsError as err:
        raise SystemExit(f"error: {err.for_tool('--skip-bad-rows')}") from None
    print(report.summary())


if __name__ == "__main__":  # python -m extract_GPS_images.synthetic (no Earth Engine import)
    from utils.cli import make_parser

    _parser = make_parser("extract_GPS_images.synthetic", "Write a synthetic world of TFRecords.")
    add_arguments(_parser)
    main(_parser.parse_args())
