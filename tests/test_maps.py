"""The map end to end: a places file without labels is extracted, converted (all records
in ``predict``) and predicted with intervals; CSV, GeoJSON and GeoTIFF put each cell where
it is; regions aggregate; the error against the synthetic truth is measured."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import shapely
from pyproj import Transformer

from extract_GPS_images.grid import make_grid, reproject, write_places
from extract_GPS_images.synthetic import TRUTH_FILE, generate_world
from utils.batching.split_and_batch import SplitConfig, run_split_and_batch
from utils.maps.maps import (
    INTERVALS_JSON,
    MapConfig,
    aggregate_regions,
    grid_regions,
    map_error,
    predict_map,
)
from utils.train import TrainConfig, fit

SIZE = 8
WORLD = dict(n=150, size=SIZE, seed=3, progress=False, corrupt_fraction=0.0)
GRID_BBOX = (20.6, 21.0, 105.6, 106.0)


@pytest.fixture(scope="module")
def mapped(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("map")
    generate_world(root / "exports", **WORLD)
    split = SplitConfig(split="random", shard_size=32, progress=False)
    run_split_and_batch(root / "exports", root / "shards", split)
    train = fit(
        TrainConfig(
            run_dir=str(root),
            model="tiny_cnn",
            crop=None,
            epochs=2,
            batch_size=32,
            device="cpu",
            progress=False,
            tensorboard=False,
        )
    )
    grid = make_grid(GRID_BBOX, cell_m=10_000, years=(2019,))
    write_places(grid, root / "places.csv")
    generate_world(root / "grid_exports", labels=root / "places.csv", **WORLD)
    report = run_split_and_batch(
        root / "grid_exports", root / "grid_shards", SplitConfig(shard_size=7, progress=False)
    )
    result = predict_map(
        MapConfig(
            checkpoint=str(train.best_checkpoint),
            shards_dir=str(root / "grid_shards"),
            out_dir=str(root / "out"),
            batch_size=5,
            device="cpu",
            progress=False,
        )
    )
    return {
        "root": root,
        "grid": grid,
        "split": report,
        "result": result,
        "checkpoint": train.best_checkpoint,
    }


def test_one_row_per_place_with_its_original_cell_id(mapped) -> None:
    grid, result = mapped["grid"], mapped["result"]
    assert mapped["split"].per_split == {"train": 0, "val": 0, "test": 0, "predict": grid.n_cells}
    table = pd.read_csv(result.csv)
    assert result.n == len(table) == grid.n_cells
    assert sorted(table["cell_id"]) == sorted(grid.frame["cell_id"])
    assert table["label"].isna().all() and table["prediction"].notna().all()
    assert (table["low"] <= table["prediction"]).all()
    assert (table["prediction"] <= table["high"]).all()
    assert result.crs == grid.crs
    intervals = json.loads((result.out_dir / INTERVALS_JSON).read_text())
    assert intervals["chosen"] == "mondrian" and 0 <= result.coverage["plain"]["coverage"] <= 1
    assert len(result.coverage["mondrian"]["per_bin"]) == 6


def test_geojson_polygons_are_where_the_cells_are(mapped) -> None:
    grid, result = mapped["grid"], mapped["result"]
    data = json.loads(result.geojson.read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == grid.n_cells
    expected = dict(
        zip(
            grid.frame["cell_id"],
            reproject(shapely.from_wkt(grid.frame["cell_id"].to_numpy()), grid.crs, to_lonlat=True),
            strict=True,
        )
    )
    for feature in data["features"]:
        polygon = shapely.from_geojson(json.dumps(feature["geometry"]))
        props = feature["properties"]
        assert polygon.geom_type == "Polygon" and polygon.exterior.is_ccw  # RFC 7946
        truth = expected[props["cell_id"]]
        assert polygon.symmetric_difference(truth).area < 1e-6 * truth.area
        assert polygon.contains(shapely.Point(props["longitude"], props["latitude"]))
        assert 105.5 < polygon.centroid.x < 106.1 and 20.5 < polygon.centroid.y < 21.1
        assert props["label"] is None


def test_geotiff_puts_each_cell_value_at_its_centroid(mapped) -> None:
    import rasterio

    grid, result = mapped["grid"], mapped["result"]
    (tif,) = result.geotiffs
    table = pd.read_csv(result.csv)
    to_grid = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True)
    with rasterio.open(tif) as src:
        assert src.crs.to_epsg() == int(grid.crs.split(":")[1]) and src.count == 2
        assert src.res == pytest.approx((10_000.0, 10_000.0))
        bands = src.read()
        assert np.isfinite(bands[0]).sum() == grid.n_cells
        for row in table.itertuples():
            x, y = to_grid.transform(row.longitude, row.latitude)
            r, c = src.index(x, y)
            assert bands[0, r, c] == pytest.approx(row.prediction, abs=1e-5)
            assert bands[1, r, c] == pytest.approx(row.high - row.low, abs=1e-5)


def test_cli_twin_writes_the_same_predictions(mapped, tmp_path) -> None:
    from utils.inference import main

    root = mapped["root"]
    regions = tmp_path / "regions.geojson"
    regions.write_text(json.dumps(grid_regions(GRID_BBOX, 2)))
    main(
        [
            "predict",
            "--checkpoint",
            str(mapped["checkpoint"]),
            "--shards",
            str(root / "grid_shards"),
            "--split",
            "predict",
            "--out",
            str(tmp_path / "cli"),
            "--device",
            "cpu",
            "--no-progress",
            "--regions",
            str(regions),
        ]
    )
    ours = pd.read_csv(tmp_path / "cli" / "predictions.csv")
    theirs = pd.read_csv(mapped["result"].csv)
    pd.testing.assert_frame_equal(ours, theirs)
    assert (tmp_path / "cli" / "regions.csv").is_file()


def test_regions_aggregate_places_and_labels(mapped, tmp_path) -> None:
    result = mapped["result"]
    table = pd.read_csv(result.csv)
    regions = tmp_path / "regions.geojson"
    regions.write_text(json.dumps(grid_regions(GRID_BBOX, 2)))
    labels = table[["latitude", "longitude", "year"]].assign(label=np.linspace(1, 2, len(table)))
    out = aggregate_regions(result.csv, regions, tmp_path / "agg", labels=labels)
    assert len(out) <= 4 and out["n_places"].sum() <= len(table)
    west = table[table["longitude"].between(105.6, 105.8) & table["latitude"].between(20.6, 20.8)]
    row = out[out["region"] == "district 1"].iloc[0]
    assert row["n_places"] == len(west)
    assert row["prediction"] == pytest.approx(west["prediction"].mean())
    assert row["mean_label"] == pytest.approx(labels.loc[west.index, "label"].mean())
    data = json.loads((tmp_path / "agg" / "regions.geojson").read_text())
    assert len(data["features"]) == len(out)


def test_map_error_against_the_synthetic_truth(mapped) -> None:
    root, result = mapped["root"], mapped["result"]
    report = map_error(result.csv, root / "grid_exports" / TRUTH_FILE)
    assert report["n"] == mapped["grid"].n_cells
    assert report["mae"] > 0 and len(report["per_bin_mae"]) == 6
    assert 0 <= report["interval_coverage"] <= 1


def test_bad_config() -> None:
    with pytest.raises(ValueError, match="intervals"):
        MapConfig("a", "b", "c", intervals="cqr")
    with pytest.raises(ValueError, match="coverage"):
        MapConfig("a", "b", "c", coverage=90)


def test_map_figures(mapped, tmp_path) -> None:
    import matplotlib.pyplot as plt

    from visualization import maps as vm

    root, result = mapped["root"], mapped["result"]
    fig = vm.prediction_maps(result.geojson, tmp_path / "pred.png")
    titles = [ax.get_title() for ax in fig.axes]
    assert "predicted wealth" in titles and "width of the 90 % interval" in titles
    assert {ax.get_ylabel() for ax in fig.axes} >= {"latitude (°N)", "wealth index"}
    truth = pd.read_csv(root / "grid_exports" / TRUTH_FILE)
    fig = vm.truth_maps(result.geojson, truth, tmp_path / "truth.png")
    assert [ax.get_title() for ax in fig.axes][:3] == [
        "true wealth",
        "predicted wealth",
        fig.axes[2].get_title(),
    ]
    assert fig.axes[2].get_title().startswith("error (MAE")
    regions = tmp_path / "regions.geojson"
    regions.write_text(json.dumps(grid_regions(GRID_BBOX, 2)))
    aggregate_regions(result.csv, regions, tmp_path)
    vm.region_map(tmp_path / "regions.geojson", tmp_path / "regions.png", cells=result.geojson)
    assert all(
        (tmp_path / f).stat().st_size > 10_000 for f in ("pred.png", "truth.png", "regions.png")
    )
    plt.close("all")


def test_points_when_ids_are_not_polygons(mapped, tmp_path) -> None:
    root = mapped["root"]
    result = predict_map(
        MapConfig(
            checkpoint=str(mapped["checkpoint"]),
            shards_dir=str(root / "shards"),
            split="test",
            out_dir=str(tmp_path),
            device="cpu",
            progress=False,
        )
    )
    data = json.loads(result.geojson.read_text())
    assert {f["geometry"]["type"] for f in data["features"]} == {"Point"}
    assert result.geotiffs == [] and result.crs is None
    table = pd.read_csv(result.csv)
    assert table["label"].notna().all() and len(table) == result.n
    first = data["features"][0]
    assert first["geometry"]["coordinates"] == pytest.approx(
        [first["properties"]["longitude"], first["properties"]["latitude"]]
    )
