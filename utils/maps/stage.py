"""The Map stage of the pipeline (``map.ipynb``): grid -> imagery -> predict split ->
predictions with intervals -> map files, region means and figures (docs/maps.md).

Everything lands under ``<run_dir>/map/``: ``places.csv`` (the grid), ``exports/`` (its
records, and the synthetic world's ``truth.csv``), ``shards/`` (all in ``predict``) and
``out/`` (predictions CSV/GeoJSON/GeoTIFF, ``intervals.json``, regions, figures). The
model is the training stage's checkpoint; the synthetic backend renders the grid from
the very world the model was trained on (the image stage's ``world.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from extract_GPS_images.grid import Grid, make_grid, read_area, write_places
from utils.batching.split_and_batch import SplitConfig, SplitReport, run_split_and_batch
from utils.maps import maps
from utils.paths import RunPaths, resolve

BACKENDS: tuple[str, ...] = ("synthetic", "gee")


@dataclass
class MapStage:
    """Parameters of the Map stage (the notebook's parameters cell)."""

    run_dir: str = "runs/demo"
    backend: str = "synthetic"
    bbox: tuple[float, float, float, float] | list[float] | None = None
    box_deg: float = 1.0  # side of the default box around the world's biggest settlement
    polygon: str | None = None  # GeoJSON area instead of a box
    cell_m: float = 6750.0
    years: tuple[int, ...] | list[int] = (2019,)
    corrupt_fraction: float = 0.0  # synthetic: records damaged on purpose
    checkpoint: str | None = None  # None: <run_dir>/train/l2_baseline/best.pt
    coverage: float = 0.9
    intervals: str = "mondrian"
    regions: str | None = None  # GeoJSON of regions; None: 2 x 2 demo districts of the box
    batch_size: int = 64
    device: str = "auto"
    progress: bool = False
    gee: dict[str, Any] = field(default_factory=dict)  # GeeConfig.from_flat parameters

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    @property
    def paths(self) -> RunPaths:
        return RunPaths.of(self.run_dir)

    @property
    def root(self) -> Path:
        """``<run_dir>/map``."""
        return self.paths.root / "map"

    @property
    def out(self) -> Path:
        return self.root / "out"

    def world(self) -> dict[str, Any]:
        """The image stage's synthetic world settings (``exports/world.json``)."""
        path = self.paths.exports / "world.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: the synthetic Map backend renders the world of the image "
                "stage; run extract_GPS_images/image.ipynb (backend='synthetic') first"
            )
        return json.loads(path.read_text())["config"]

    def area(self) -> Any:
        """The box or polygon to grid: ``bbox``/``polygon``, else ``box_deg`` around the
        synthetic world's biggest settlement."""
        if self.polygon:
            return read_area(resolve(self.polygon))
        if self.bbox is not None:
            return tuple(self.bbox)
        if self.backend != "synthetic":
            raise ValueError("give bbox= or polygon= (the area to map)")
        from extract_GPS_images.synthetic import WorldConfig, wealth_field  # noqa: PLC0415

        world = self.world()
        cfg = WorldConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in world.items()})
        field_ = wealth_field(cfg)
        lat, lon = field_.centres[int(np.argmax(field_.size))]
        half = self.box_deg / 2
        lat0, lat1, lon0, lon1 = cfg.bbox
        lat, lon = np.clip(lat, lat0 + half, lat1 - half), np.clip(lon, lon0 + half, lon1 - half)
        return (
            round(lat - half, 4),
            round(lat + half, 4),
            round(lon - half, 4),
            round(lon + half, 4),
        )


def make_places(stage: MapStage) -> Grid:
    """Write the grid of the area as ``<run_dir>/map/places.csv``."""
    grid = make_grid(stage.area(), cell_m=stage.cell_m, years=tuple(stage.years))
    stage.root.mkdir(parents=True, exist_ok=True)
    write_places(grid, stage.root / "places.csv")
    return grid


def extract_places(stage: MapStage) -> str:
    """Imagery for every place of ``places.csv``, without labels, into ``map/exports``."""
    places, exports = stage.root / "places.csv", stage.root / "exports"
    if stage.backend == "gee":
        from extract_GPS_images import gee  # noqa: PLC0415 (Earth Engine only when asked)

        config = gee.GeeConfig.from_flat(labels=str(places), out_dir=str(exports), **stage.gee)
        return gee.extract_gee(config).summary()
    from extract_GPS_images.synthetic import generate_world  # noqa: PLC0415

    world = {k: tuple(v) if isinstance(v, list) else v for k, v in stage.world().items()}
    world["corrupt_fraction"] = stage.corrupt_fraction  # the same world, its own damage
    report = generate_world(exports, labels=places, progress=stage.progress, **world)
    return report.summary()


def convert_places(stage: MapStage) -> SplitReport:
    """``split_and_batch`` of the places' records: all valid ones in ``predict``."""
    return run_split_and_batch(
        stage.root / "exports", stage.root / "shards", SplitConfig(progress=stage.progress)
    )


def predict_places(stage: MapStage) -> maps.MapResult:
    """Predictions with conformal intervals and the map files, under ``map/out``."""
    checkpoint = stage.checkpoint or stage.paths.train / "l2_baseline" / "best.pt"
    return maps.predict_map(
        maps.MapConfig(
            checkpoint=str(resolve(checkpoint)),
            shards_dir=str(stage.root / "shards"),
            out_dir=str(stage.out),
            coverage=stage.coverage,
            intervals=stage.intervals,
            batch_size=stage.batch_size,
            device=stage.device,
            progress=stage.progress,
        )
    )


def region_means(stage: MapStage) -> pd.DataFrame:
    """Mean prediction per region (``regions``, or 2 x 2 districts of the box), with the
    mean survey label of the training run's labelled places inside them."""
    path = resolve(stage.regions) if stage.regions else stage.root / "regions.geojson"
    if not stage.regions:
        area = stage.area()
        bounds = (
            area
            if isinstance(area, tuple)
            else (area.bounds[1], area.bounds[3], area.bounds[0], area.bounds[2])
        )
        path.write_text(json.dumps(maps.grid_regions(bounds, 2)))
    labels_csv = stage.paths.exports / "labels.csv"
    labels = None
    if labels_csv.is_file():
        from extract_GPS_images.labels import read_labels  # noqa: PLC0415

        labels = read_labels(labels_csv, on_error="skip").frame
    return maps.aggregate_regions(stage.out / maps.PREDICTIONS_CSV, path, stage.out, labels=labels)


def truth_error(stage: MapStage) -> pd.DataFrame:
    """Synthetic backend: the map's error against the world's true wealth over the whole
    grid (MAE, R^2, b-MAE, per label bin, interval coverage), saved as
    ``map/out/map_error.json``; one row per label bin."""
    from extract_GPS_images.synthetic import TRUTH_FILE  # noqa: PLC0415

    report = maps.map_error(stage.out / maps.PREDICTIONS_CSV, stage.root / "exports" / TRUTH_FILE)
    (stage.out / "map_error.json").write_text(json.dumps(report, indent=1, default=str))
    edges = report["bin_edges"]
    return pd.DataFrame(
        {
            "bin": [f"{a:.2f}-{b:.2f}" for a, b in zip(edges[:-1], edges[1:], strict=True)],
            "places": report["bin_counts"],
            "MAE": report["per_bin_mae"],
        }
    ).assign(**{k: report[k] for k in ("mae", "r2", "bmae", "interval_coverage")})


def read_truth(stage: MapStage) -> pd.DataFrame | None:
    """The synthetic world's true wealth of the places (``truth.csv``), or ``None``."""
    path = stage.root / "exports" / "truth.csv"
    return pd.read_csv(path) if stage.backend == "synthetic" and path.is_file() else None
