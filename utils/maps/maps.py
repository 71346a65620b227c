"""Wealth maps of places without labels (docs/maps.md): predictions with conformal
intervals as CSV, GeoJSON and GeoTIFF, region means, and the error against a known truth.

:func:`predict_map` is what the Map notebook (``map.ipynb``) and ``python -m
utils.inference predict`` call. It

1. rebuilds the model and its inputs from the checkpoint; normalisation always comes
   from the *training* shards' ``stats.json`` (the checkpoint's ``shards_dir``);
2. calibrates split-conformal intervals (:mod:`utils.maps.conformal`) on the training shards'
   validation split and reports their coverage on the test split (``intervals.json``);
3. predicts the places of ``split`` (default ``predict``) shard by shard, in batches,
   writing each batch at once to ``predictions.csv`` and ``predictions.geojson`` (cell
   polygons reprojected to EPSG:4326 when the cell ids are WKT polygons, points
   otherwise), so memory does not grow with the number of places;
4. when the cells form a regular grid, writes ``predictions_<year>.tif`` per year in
   the grid's CRS: band 1 the prediction, band 2 the interval width.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
import shapely
import torch
from torch.utils.data import Subset
from tqdm.auto import tqdm

from extract_GPS_images.grid import WGS84, cell_polygons, infer_grid_crs, regular_grid, reproject
from metrics import bin_edges, regression_report
from utils import hdf5_schema as hs
from utils.atomic import atomic_open, atomic_path
from utils.checkpoint import load_model_from_checkpoint
from utils.dataloader import ShardDataset, make_loader
from utils.device import resolve_device
from utils.maps.conformal import METHODS, Conformal, coverage_report
from utils.paths import resolve

MAP_COLUMNS: tuple[str, ...] = (
    "cell_id",
    "cell_key",
    "latitude",
    "longitude",
    "year",
    "prediction",
    "low",
    "high",
    "label",
)
PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_GEOJSON = "predictions.geojson"
INTERVALS_JSON = "intervals.json"
#: Side of the square drawn around a place whose id is not a polygon (degrees).
POINT_CELL_DEG = 0.05


@dataclass
class MapConfig:
    """Knobs of :func:`predict_map` (the CLI and the Map notebook set the same ones).

    Attributes:
        checkpoint: a ``best.pt`` written by :func:`utils.train.fit`.
        shards_dir: shards holding ``split`` (e.g. a places file converted by
            ``split_and_batch``).
        out_dir: folder of the map files.
        split: the split to predict (``predict``: places without labels).
        coverage: target coverage of the intervals.
        intervals: ``"mondrian"`` (per label bin) or ``"plain"``.
        train_shards: shards of the training run (val: calibration, test: coverage,
            ``stats.json``: normalisation); default the checkpoint's.
        grid_crs: CRS of WKT cell ids; default inferred from their centroids.
        batch_size, num_workers, device, progress: the usual.
    """

    checkpoint: str
    shards_dir: str
    out_dir: str
    split: str = hs.PREDICT
    coverage: float = 0.9
    intervals: str = "mondrian"
    train_shards: str | None = None
    grid_crs: str | None = None
    batch_size: int = 64
    num_workers: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.intervals not in METHODS:
            raise ValueError(f"intervals must be one of {METHODS}, got {self.intervals!r}")
        if not 0 < self.coverage < 1:
            raise ValueError(f"coverage must be in (0, 1), got {self.coverage}")


@dataclass
class MapResult:
    """Files and numbers of one :func:`predict_map` run."""

    out_dir: Path
    n: int
    crs: str | None
    conformal: dict[str, Any]
    coverage: dict[str, Any] = field(default_factory=dict)
    geotiffs: list[Path] = field(default_factory=list)

    @property
    def csv(self) -> Path:
        return self.out_dir / PREDICTIONS_CSV

    @property
    def geojson(self) -> Path:
        return self.out_dir / PREDICTIONS_GEOJSON

    def summary(self) -> str:
        """A few lines for the notebook and the CLI."""
        lines = [
            f"{self.n} places -> {self.csv}, {self.geojson.name}"
            + (f", {', '.join(p.name for p in self.geotiffs)}" if self.geotiffs else "")
        ]
        for method, rep in self.coverage.items():
            if rep.get("coverage") is not None:
                lines.append(
                    f"{method} intervals on test: coverage {rep['coverage']:.3f} (target "
                    f"{rep['target']:.2f}, +-{rep['sampling_error']:.3f}), mean width "
                    f"{rep['mean_width']:.3f}; per label bin "
                    + ", ".join(
                        "-" if b["coverage"] is None else f"{b['coverage']:.2f}"
                        for b in rep["per_bin"]
                    )
                )
        return "\n".join(lines)


# ----------------------------------------------------------------------------- inputs


def _dataset(shards: Path, split: str, train_cfg: dict, stats: dict) -> ShardDataset:
    dataset = ShardDataset(
        shards,
        split,
        channels=train_cfg["channels"],
        crop=train_cfg["crop"],
        dw_mode=train_cfg["dw_mode"],
        stats=stats,
        train=False,
    )
    if list(dataset.band_names) != list(train_cfg["band_names"]):
        raise ValueError(
            f"{shards} gives bands {dataset.band_names}; the model takes {train_cfg['band_names']}"
        )
    return dataset


@torch.no_grad()
def iter_predictions(
    model: torch.nn.Module,
    dataset: ShardDataset,
    *,
    batch_size: int,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Iterator[pd.DataFrame]:
    """Predict ``dataset`` one batch at a time, shard file by shard file (each file's
    loader and handles are closed before the next: memory stays flat).

    Yields:
        One frame per batch: cell_id, cell_key, latitude, longitude, year, label,
        prediction.
    """
    device = torch.device(device)
    model.eval().to(device)
    offsets = dataset._offsets  # noqa: SLF001 (where each shard file starts in the split)
    try:
        with tqdm(total=len(dataset), desc="predict", disable=not progress) as bar:
            for k in range(len(dataset.files)):
                part = Subset(dataset, range(int(offsets[k]), int(offsets[k + 1])))
                for batch in make_loader(part, batch_size=batch_size, num_workers=num_workers):
                    pred = model(batch["image"].to(device)).float().cpu().numpy()
                    bar.update(len(pred))
                    yield pd.DataFrame(
                        {
                            "cell_id": list(batch["cell_id"]),
                            "cell_key": list(batch["cell_key"]),
                            "latitude": batch["latitude"].numpy().astype(np.float64),
                            "longitude": batch["longitude"].numpy().astype(np.float64),
                            "year": batch["year"].numpy().astype(np.int64),
                            "label": batch["label"].numpy().astype(np.float64),
                            "prediction": pred.astype(np.float64).reshape(-1),
                        }
                    )
                dataset.close()
    finally:
        dataset.close()


def _all_predictions(model, dataset: ShardDataset, cfg: MapConfig, device) -> pd.DataFrame:
    frames = list(
        iter_predictions(
            model, dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers, device=device
        )
    )
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------- writers


def _json_value(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return None if not math.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def cell_geometries(frame: pd.DataFrame, crs: str | None) -> np.ndarray:
    """Lon/lat geometries of places: their WKT polygons reprojected from ``crs`` when the
    ids are polygons (and ``crs`` is known), their points otherwise."""
    polygons = cell_polygons(frame["cell_id"]) if crs else None
    if polygons is None:
        return shapely.points(frame["longitude"].to_numpy(), frame["latitude"].to_numpy())
    return shapely.orient_polygons(reproject(polygons, crs, to_lonlat=True))  # RFC 7946 rings


def write_features(
    handle: TextIO, frame: pd.DataFrame, geometries: np.ndarray, first: bool
) -> None:
    """Append GeoJSON features (one per row of ``frame``) to an open FeatureCollection."""
    texts = shapely.to_geojson(geometries)
    records = frame.to_dict("records")
    for i, (props, geometry) in enumerate(zip(records, texts, strict=True)):
        sep = "" if first and i == 0 else ",\n"
        props = {k: _json_value(v) for k, v in props.items()}
        handle.write(
            f'{sep}{{"type": "Feature", "properties": {json.dumps(props)}, "geometry": {geometry}}}'
        )


def write_geojson_header(handle: TextIO) -> None:
    """Open a FeatureCollection in EPSG:4326 (RFC 7946)."""
    handle.write('{"type": "FeatureCollection", "features": [\n')


def write_geotiffs(csv: Path, crs: str, out_dir: Path) -> list[Path]:
    """One GeoTIFF per year from a predictions CSV whose cells form a regular grid in
    ``crs``: band 1 prediction, band 2 interval width (NaN where no cell). Returns the
    files written, none when the cells are not a regular grid."""
    import rasterio  # noqa: PLC0415 (GDAL: only when a raster is written)
    from affine import Affine  # noqa: PLC0415 (rasterio's own dependency)

    table = pd.read_csv(csv, usecols=["cell_id", "year", "prediction", "low", "high"])
    polygons = cell_polygons(table["cell_id"])
    index = regular_grid(polygons)
    if index is None:
        return []
    written = []
    transform = Affine(index.cell, 0.0, index.origin[0], 0.0, -index.cell, index.origin[1])
    for year, rows in table.groupby("year").groups.items():
        rows = np.asarray(rows)
        raster = np.full((2, *index.shape), np.nan, np.float32)
        raster[0, index.row[rows], index.col[rows]] = table["prediction"].to_numpy()[rows]
        width = (table["high"] - table["low"]).to_numpy()[rows]
        raster[1, index.row[rows], index.col[rows]] = width
        path = out_dir / f"predictions_{int(year)}.tif"
        profile = dict(
            driver="GTiff",
            height=index.shape[0],
            width=index.shape[1],
            count=2,
            dtype="float32",
            crs=crs,
            transform=transform,
            nodata=float("nan"),
            compress="deflate",
        )
        with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            dst.write(raster)
            dst.set_band_description(1, "prediction")
            dst.set_band_description(2, "interval_width")
        written.append(path)
    return written


# ----------------------------------------------------------------------------- the run


def calibrate(
    model: torch.nn.Module, train_cfg: dict, train_shards: Path, cfg: MapConfig, device
) -> tuple[dict[str, Conformal], dict[str, Any]]:
    """Both interval methods fitted on the validation split, their coverage on test."""
    stats = hs.read_stats(train_shards)
    train_labels = ShardDataset(
        train_shards,
        "train",
        channels=train_cfg["channels"],
        dw_mode=train_cfg["dw_mode"],
        stats=stats,
    ).labels
    label_range = train_cfg.get("label_range")
    edges = bin_edges(
        int(train_cfg.get("bins", 6)),
        tuple(label_range) if label_range else None,
        reference=train_labels,
    )
    val = _all_predictions(model, _dataset(train_shards, "val", train_cfg, stats), cfg, device)
    fitted = {
        m: Conformal.fit(
            val["prediction"], val["label"], method=m, coverage=cfg.coverage, edges=edges
        )
        for m in METHODS
    }
    coverage: dict[str, Any] = {}
    if (train_shards / "test").is_dir() and any((train_shards / "test").glob("*.h5")):
        test = _all_predictions(
            model, _dataset(train_shards, "test", train_cfg, stats), cfg, device
        )
        coverage = {
            m: coverage_report(c, test["prediction"], test["label"]) for m, c in fitted.items()
        }
        coverage["test_metrics"] = {
            k: v
            for k, v in regression_report(
                test["prediction"], test["label"], bins=edges, value_range=None
            ).items()
            if not isinstance(v, list)
        }
    return fitted, coverage


def predict_map(cfg: MapConfig) -> MapResult:
    """Predict every place of ``cfg.split`` with intervals and write the map files.

    Returns:
        A :class:`MapResult` (files under ``cfg.out_dir``).
    """
    device = resolve_device(cfg.device)
    model, train_cfg = load_model_from_checkpoint(cfg.checkpoint, map_location=device)
    train_shards = resolve(cfg.train_shards or train_cfg["shards_dir"])
    out = resolve(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fitted, coverage = calibrate(model, train_cfg, train_shards, cfg, device)
    chosen = fitted[cfg.intervals]
    with atomic_open(out / INTERVALS_JSON) as handle:
        json.dump(
            {
                "chosen": cfg.intervals,
                "calibrated_on": str(train_shards / "val"),
                **{m: c.to_dict() for m, c in fitted.items()},
                "test_coverage": coverage,
            },
            handle,
            indent=1,
            default=_json_value,
        )

    places = _dataset(resolve(cfg.shards_dir), cfg.split, train_cfg, hs.read_stats(train_shards))
    crs, n = cfg.grid_crs, 0
    with (
        atomic_path(out / PREDICTIONS_CSV) as tmp_csv,
        open(tmp_csv, "w", encoding="utf-8") as csv,
        atomic_path(out / PREDICTIONS_GEOJSON) as tmp_geo,
        open(tmp_geo, "w", encoding="utf-8") as geo,
    ):
        csv.write(",".join(MAP_COLUMNS) + "\n")
        write_geojson_header(geo)
        for batch in iter_predictions(
            model,
            places,
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            device=device,
            progress=cfg.progress,
        ):
            batch["low"], batch["high"] = chosen.interval(batch["prediction"].to_numpy())
            batch = batch[list(MAP_COLUMNS)]
            if crs is None and n == 0 and (polygons := cell_polygons(batch["cell_id"])) is not None:
                crs = infer_grid_crs(polygons, batch["latitude"], batch["longitude"])
            batch.to_csv(csv, header=False, index=False, lineterminator="\n")
            write_features(geo, batch, cell_geometries(batch, crs), first=n == 0)
            n += len(batch)
        geo.write("\n]}\n")
    geotiffs = write_geotiffs(out / PREDICTIONS_CSV, crs, out) if crs else []
    return MapResult(out, n, crs, fitted[cfg.intervals].to_dict(), coverage, geotiffs)


# ----------------------------------------------------------------------------- regions


def read_regions(path: str | Path, name_field: str | None = None) -> pd.DataFrame:
    """Regions of a GeoJSON FeatureCollection (lon/lat): ``region`` (the ``name_field``
    property, or the first string property, or the feature number) and ``geometry``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    rows = []
    for i, feature in enumerate(data.get("features", [])):
        props = feature.get("properties") or {}
        name = (
            props.get(name_field)
            if name_field
            else next((v for v in props.values() if isinstance(v, str)), None)
        )
        geometry = shapely.geometry.shape(feature["geometry"])
        rows.append({"region": str(name if name is not None else i), "geometry": geometry})
    if not rows:
        raise ValueError(f"{path} holds no feature")
    return pd.DataFrame(rows)


def aggregate_regions(
    predictions: pd.DataFrame | str | Path,
    regions: pd.DataFrame | str | Path,
    out_dir: str | Path,
    *,
    labels: pd.DataFrame | None = None,
    name_field: str | None = None,
) -> pd.DataFrame:
    """Mean prediction and mean interval per region and year (and the mean label of the
    labelled places inside, when ``labels`` with latitude/longitude/year/label is given);
    a place belongs to the region holding its centroid. Writes ``regions.csv`` and
    ``regions.geojson`` to ``out_dir``.

    The mean of the cells' bounds is the band their intervals share, not a calibrated
    interval of the regional mean (docs/maps.md).
    """
    table = pd.read_csv(predictions) if isinstance(predictions, str | Path) else predictions
    zones = read_regions(regions, name_field) if isinstance(regions, str | Path) else regions
    geoms = np.asarray(zones["geometry"].to_list(), dtype=object)

    def region_of(frame: pd.DataFrame) -> np.ndarray:
        points = shapely.points(frame["longitude"].to_numpy(), frame["latitude"].to_numpy())
        tree = shapely.STRtree(geoms)
        point_i, zone_i = tree.query(points, predicate="within")
        which = np.full(len(frame), -1)
        which[point_i] = zone_i
        return which

    table = table.assign(zone=region_of(table))
    inside = table[table["zone"] >= 0]
    result = (
        inside.groupby(["zone", "year"])
        .agg(
            n_places=("prediction", "size"),
            prediction=("prediction", "mean"),
            low=("low", "mean"),
            high=("high", "mean"),
        )
        .reset_index()
    )
    if labels is not None:
        labelled = labels.dropna(subset=["label"])
        labelled = labelled.assign(zone=region_of(labelled))
        means = (
            labelled[labelled["zone"] >= 0]
            .groupby(["zone", "year"])
            .agg(n_labelled=("label", "size"), mean_label=("label", "mean"))
            .reset_index()
        )
        result = result.merge(means, on=["zone", "year"], how="left")
        result["n_labelled"] = result["n_labelled"].fillna(0).astype(int)
    result.insert(0, "region", zones["region"].to_numpy()[result["zone"]])
    out = resolve(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "regions.csv") as handle:
        result.drop(columns="zone").to_csv(handle, index=False, lineterminator="\n")
    with atomic_open(out / "regions.geojson") as handle:
        write_geojson_header(handle)
        write_features(
            handle,
            result.drop(columns="zone"),
            np.asarray(geoms[result["zone"].to_numpy()]),
            first=True,
        )
        handle.write("\n]}\n")
    return result.drop(columns="zone")


def grid_regions(bbox: Sequence[float], n: int = 2) -> dict:
    """A GeoJSON FeatureCollection of ``n`` x ``n`` rectangular regions tiling a
    ``(lat_min, lat_max, lon_min, lon_max)`` box (demo districts)."""
    lat0, lat1, lon0, lon1 = bbox
    lats, lons = np.linspace(lat0, lat1, n + 1), np.linspace(lon0, lon1, n + 1)
    features = []
    for i in range(n):
        for j in range(n):
            box = shapely.box(lons[j], lats[i], lons[j + 1], lats[i + 1])
            features.append(
                {
                    "type": "Feature",
                    "properties": {"name": f"district {i * n + j + 1}"},
                    "geometry": json.loads(shapely.to_geojson(box)),
                }
            )
    return {"type": "FeatureCollection", "features": features}


# ----------------------------------------------------------------------------- truth


def with_truth(
    predictions: pd.DataFrame | str | Path, truth: pd.DataFrame | str | Path
) -> pd.DataFrame:
    """Predictions joined with the true wealth (``true_wealth``, ``error`` = prediction -
    truth) of the synthetic world's ``truth.csv``."""
    table = pd.read_csv(predictions) if isinstance(predictions, str | Path) else predictions
    known = pd.read_csv(truth) if isinstance(truth, str | Path) else truth
    both = table.merge(known[["cell_key", "year", "true_wealth"]], on=["cell_key", "year"])
    if not len(both):
        raise ValueError("no place of the predictions is in the truth table")
    return both.assign(error=both["prediction"] - both["true_wealth"])


def map_error(
    predictions: pd.DataFrame | str | Path, truth: pd.DataFrame | str | Path, *, bins: int = 6
) -> dict[str, Any]:
    """Error of a map against the true wealth of every place: MAE, R^2, b-MAE and MAE
    per label bin (the original study's six bins and range), and the share of places
    inside their interval."""
    both = with_truth(predictions, truth)
    report = regression_report(both["prediction"], both["true_wealth"], bins=bins)
    inside = (both["low"] <= both["true_wealth"]) & (both["true_wealth"] <= both["high"])
    report["interval_coverage"] = float(inside.mean())
    return report


# ----------------------------------------------------------------------------- CLI


def get_args_parser() -> argparse.ArgumentParser:
    """Options of ``python -m utils.inference predict``."""
    d = MapConfig("", "", "")
    parser = argparse.ArgumentParser(
        prog="python -m utils.inference", description="Predict places with conformal intervals."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="predict a split (default: places without labels)")
    p.add_argument("--checkpoint", required=True, help="best.pt of a training run")
    p.add_argument("--shards", required=True, help="shards holding the split to predict")
    p.add_argument("--split", default=d.split, choices=hs.ALL_SPLITS)
    p.add_argument("--out", required=True, help="folder of predictions.csv/.geojson/.tif")
    p.add_argument("--coverage", type=float, default=d.coverage, help="target, e.g. 0.9")
    p.add_argument("--intervals", choices=METHODS, default=d.intervals)
    p.add_argument("--train-shards", help="shards of the training run (default: the checkpoint's)")
    p.add_argument("--grid-crs", help="CRS of WKT cell ids (default: inferred)")
    p.add_argument("--regions", help="GeoJSON of regions: also regions.csv/.geojson")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--num-workers", type=int, default=d.num_workers)
    p.add_argument("--device", default=d.device)
    p.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> MapResult:
    """Entry point of ``python -m utils.inference predict``."""
    args = get_args_parser().parse_args(argv)
    cfg = MapConfig(
        checkpoint=args.checkpoint,
        shards_dir=args.shards,
        out_dir=args.out,
        split=args.split,
        coverage=args.coverage,
        intervals=args.intervals,
        train_shards=args.train_shards,
        grid_crs=args.grid_crs,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        progress=not args.no_progress,
    )
    result = predict_map(cfg)
    print(result.summary())
    if args.regions:
        regions = aggregate_regions(result.csv, args.regions, result.out_dir)
        print(f"{len(regions)} region-years -> {result.out_dir / 'regions.csv'}")
    return result


__all__ = [
    "WGS84",
    "MapConfig",
    "MapResult",
    "aggregate_regions",
    "grid_regions",
    "map_error",
    "predict_map",
    "read_regions",
    "with_truth",
]
