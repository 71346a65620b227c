"""Places files (labels.csv without labels) and the grid maker."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import shapely
from pyproj import Transformer

from extract_GPS_images.__main__ import main as cli
from extract_GPS_images.grid import (
    bbox_polygon,
    cell_polygons,
    infer_grid_crs,
    make_grid,
    regular_grid,
    reproject,
    utm_crs,
)
from extract_GPS_images.labels import LabelsError, cell_key, read_labels

BBOX = (20.6, 21.2, 105.5, 106.1)


def test_places_file_without_label_column_reads(tmp_path) -> None:
    path = tmp_path / "places.csv"
    path.write_text("year,cell_id,lat,lon\n2019,a,21.0,105.8\n2019,b,21.1,105.9\n")
    labels = read_labels(path)
    assert len(labels) == 2 and labels.frame["label"].isna().all()
    assert "2 rows without a label" in labels.summary()


def test_empty_labels_are_places_but_bad_labels_still_fail(tmp_path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text("year,cell id,lat,lon,wi\n2019,a,21.0,105.8,1.5\n2019,b,21.1,105.9,\n")
    frame = read_labels(path).frame
    assert frame["label"].iloc[0] == pytest.approx(1.5) and np.isnan(frame["label"].iloc[1])
    path.write_text("year,cell id,lat,lon,wi\n2019,a,21.0,105.8,abc\n")
    with pytest.raises(LabelsError, match="line 2.*not a number"):
        read_labels(path)


def test_utm_zone() -> None:
    assert utm_crs(21.0, 105.8) == "EPSG:32648"
    assert utm_crs(-8.0, 110.0) == "EPSG:32749"


def test_cells_tile_the_box_without_gaps_or_overlaps() -> None:
    grid = make_grid(BBOX, cell_m=6750, years=(2019,))
    polygons = shapely.from_wkt(grid.frame["cell_id"].to_numpy())
    box = reproject(bbox_polygon(BBOX), grid.crs)
    union = shapely.union_all(polygons)
    assert shapely.difference(box, union).area < 1e-6 * box.area  # no gap
    assert np.isclose(union.area, shapely.area(polygons).sum(), rtol=1e-9)  # no overlap
    assert np.allclose(shapely.area(polygons), 6750.0**2)
    assert all(shapely.intersection(p, box).area > 0 for p in polygons)  # none outside
    assert grid.frame["cell_id"].is_unique


def test_wkt_ids_round_trip_through_the_places_file(tmp_path) -> None:
    grid = make_grid(BBOX, cell_m=5000, years=(2016, 2019))
    assert len(grid.frame) == 2 * grid.n_cells
    assert grid.frame["cell_id"].iloc[0].startswith("POLYGON ((")
    path = tmp_path / "places.csv"
    cli(
        [
            "grid",
            "--bbox",
            *map(str, BBOX),
            "--cell-m",
            "5000",
            "--years",
            "2016",
            "2019",
            "--out",
            str(path),
        ]
    )
    back = read_labels(path).frame
    assert back["cell_id"].tolist() == grid.frame["cell_id"].tolist()
    assert back["cell_key"].tolist() == [cell_key(i) for i in grid.frame["cell_id"]]
    assert back["label"].isna().all()
    polygons = cell_polygons(back["cell_id"])
    bounds = shapely.bounds(polygons)
    assert np.allclose(bounds[:, 2] - bounds[:, 0], 5000.0)
    # centroids in lat/lon land on the polygons' centres in the grid's CRS
    x, y = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True).transform(
        back["longitude"].to_numpy(), back["latitude"].to_numpy()
    )
    centres = shapely.centroid(polygons)
    assert np.hypot(x - shapely.get_x(centres), y - shapely.get_y(centres)).max() < 0.1
    assert infer_grid_crs(polygons, back["latitude"], back["longitude"]) == grid.crs


def test_polygon_area_and_regular_layout(tmp_path) -> None:
    triangle = {
        "type": "Polygon",
        "coordinates": [[[105.5, 20.6], [106.1, 20.6], [105.5, 21.2], [105.5, 20.6]]],
    }
    path = tmp_path / "area.geojson"
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [{"type": "Feature", "properties": {}, "geometry": triangle}],
            }
        )
    )
    out = tmp_path / "places.csv"
    cli(["grid", "--polygon", str(path), "--out", str(out)])
    tri = make_grid(shapely.geometry.shape(triangle), years=(2019,))
    full = make_grid(BBOX, years=(2019,))
    assert 0.3 * full.n_cells < tri.n_cells < 0.7 * full.n_cells
    assert set(tri.frame["cell_id"]) <= set(full.frame["cell_id"])  # one lattice per CRS
    assert len(pd.read_csv(out)) == tri.n_cells
    index = regular_grid(cell_polygons(full.frame["cell_id"]))
    assert index is not None and index.cell == pytest.approx(6750.0)
    assert (index.row == full.frame["row"]).all() and (index.col == full.frame["col"]).all()
    assert regular_grid(shapely.from_wkt(["POLYGON ((0 0, 1 0, 1 2, 0 2, 0 0))"])) is None


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="lat_min < lat_max"):
        make_grid((21.0, 20.0, 105.0, 106.0))
    with pytest.raises(ValueError, match="projected CRS"):
        make_grid(BBOX, crs="EPSG:4326")
    assert cell_polygons(["a", "POLYGON ((0 0, 1 0, 1 1, 0 0))"]) is None
