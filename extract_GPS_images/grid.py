"""A grid of square cells over an area: a *places* file to predict (docs/maps.md).

Cells are ``cell_m`` metres square (default 6,750 m, the original study's grid) in a
projected CRS (default: the UTM zone of the area's centre), aligned to multiples of
``cell_m`` so that two grids of one CRS share their cells. A cell is kept when its
interior meets the area (a bounding box in latitude/longitude or a GeoJSON polygon),
so the kept cells cover the area without gaps and never overlap. Each cell id is the
cell's polygon as WKT in the grid's CRS, like the original study's files
(``POLYGON ((219500.00 2470500.00, ...))``); centroids are in latitude/longitude.

CLI twin: ``python -m extract_GPS_images grid --bbox LAT_MIN LAT_MAX LON_MIN LON_MAX
--cell-m 6750 --years 2019 --out places.csv`` (or ``--polygon area.geojson``).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
from pyproj import CRS, Transformer
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from extract_GPS_images.labels import write_labels

#: The original study's cell side in metres.
DEFAULT_CELL_M = 6750.0
#: Decimals of the WKT coordinates (centimetres, as the original's files).
WKT_DECIMALS = 2
WGS84 = "EPSG:4326"


@dataclass
class Grid:
    """The cells of an area: one row per cell and year, and how they were made."""

    frame: pd.DataFrame  # year, cell_id (WKT), latitude, longitude, label (NaN), row, col
    crs: str  # the grid's projected CRS
    cell_m: float
    origin: tuple[float, float]  # (x, y) of the top-left corner of cell (row 0, col 0)

    @property
    def n_cells(self) -> int:
        """Number of distinct cells."""
        return int(self.frame["cell_id"].nunique())

    def summary(self) -> str:
        """One line for notebooks and the CLI."""
        years = sorted(self.frame["year"].unique().tolist())
        return (
            f"{self.n_cells} cells of {self.cell_m:g} m in {self.crs} x years {years} "
            f"= {len(self.frame)} places"
        )


def utm_crs(latitude: float, longitude: float) -> str:
    """The UTM zone (WGS 84) holding a point, as ``EPSG:326zz`` (north) / ``327zz``."""
    zone = min(int((longitude + 180.0) // 6.0) + 1, 60)
    return f"EPSG:{(32600 if latitude >= 0 else 32700) + zone}"


def bbox_polygon(bbox: Sequence[float]) -> BaseGeometry:
    """A ``(lat_min, lat_max, lon_min, lon_max)`` box as a lon/lat polygon whose edges are
    densified (a straight edge in degrees is curved in metres)."""
    lat0, lat1, lon0, lon1 = (float(v) for v in bbox)
    if not (-90 <= lat0 < lat1 <= 90 and -180 <= lon0 < lon1 <= 180):
        raise ValueError(
            f"bbox must be lat_min < lat_max in [-90, 90], lon_min < lon_max in [-180, 180]; "
            f"got {tuple(bbox)}"
        )
    return shapely.segmentize(shapely.box(lon0, lat0, lon1, lat1), 0.05)


def read_area(path: str | Path) -> BaseGeometry:
    """The union of the polygons of a GeoJSON file (geometry, Feature or
    FeatureCollection), in lon/lat."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("type") == "FeatureCollection":
        geoms = [shape(f["geometry"]) for f in data["features"] if f.get("geometry")]
    elif data.get("type") == "Feature":
        geoms = [shape(data["geometry"])]
    else:
        geoms = [shape(data)]
    area = shapely.union_all([g for g in geoms if g.area > 0])
    if area.is_empty:
        raise ValueError(f"{path} holds no polygon with an area")
    return area


def _transformer(crs: str, inverse: bool = False) -> Transformer:
    src, dst = (crs, WGS84) if inverse else (WGS84, crs)
    return Transformer.from_crs(src, dst, always_xy=True)


def reproject(geometry, crs: str, *, to_lonlat: bool = False):
    """Geometries (one or an array) from lon/lat to ``crs``, or back with ``to_lonlat``."""
    fn = _transformer(crs, inverse=to_lonlat).transform
    return shapely.transform(geometry, lambda xy: np.column_stack(fn(xy[:, 0], xy[:, 1])))


def make_grid(
    area: BaseGeometry | Sequence[float],
    *,
    cell_m: float = DEFAULT_CELL_M,
    years: Sequence[int] = (2019,),
    crs: str | None = None,
) -> Grid:
    """Square cells of ``cell_m`` metres covering ``area``, one row per cell and year.

    Args:
        area: a lon/lat (multi)polygon, or a ``(lat_min, lat_max, lon_min, lon_max)`` box.
        cell_m: cell side in metres of ``crs``.
        years: the years to predict (each cell gets one row per year).
        crs: projected CRS of the grid (anything pyproj reads); default the UTM zone of
            the area's centre.

    Returns:
        A :class:`Grid`; ``frame`` rows are ordered by year, then north to south and
        west to east (``row``, ``col`` in the grid).
    """
    if cell_m <= 0:
        raise ValueError(f"cell_m must be positive, got {cell_m}")
    if not years:
        raise ValueError("years is empty")
    if not isinstance(area, BaseGeometry):
        area = bbox_polygon(area)
    if crs is None:
        centre = area.centroid
        crs = utm_crs(centre.y, centre.x)
    if not CRS.from_user_input(crs).is_projected:
        raise ValueError(f"the grid needs a projected CRS in metres, got {crs}")
    projected = reproject(area, crs)
    minx, miny, maxx, maxy = projected.bounds
    x0, y1 = math.floor(minx / cell_m) * cell_m, math.ceil(maxy / cell_m) * cell_m
    nx, ny = math.ceil((maxx - x0) / cell_m), math.ceil((y1 - miny) / cell_m)
    row, col = np.divmod(np.arange(nx * ny), nx)
    left, top = x0 + col * cell_m, y1 - row * cell_m
    cells = shapely.box(left, top - cell_m, left + cell_m, top)
    shapely.prepare(projected)
    keep = shapely.intersects(projected, cells) & ~shapely.touches(projected, cells)
    cells, row, col = cells[keep], row[keep], col[keep]
    cx, cy = left[keep] + cell_m / 2, top[keep] - cell_m / 2
    lon, lat = _transformer(crs, inverse=True).transform(cx, cy)
    ids = shapely.to_wkt(cells, rounding_precision=WKT_DECIMALS, trim=False)
    one_year = pd.DataFrame(
        {
            "cell_id": ids,
            "latitude": np.round(lat, 6),
            "longitude": np.round(lon, 6),
            "label": np.nan,
            "row": row,
            "col": col,
        }
    )
    frame = pd.concat([one_year.assign(year=int(y)) for y in years], ignore_index=True)
    columns = ["year", "cell_id", "latitude", "longitude", "label", "row", "col"]
    return Grid(frame[columns], str(crs), float(cell_m), (float(x0), float(y1)))


def write_places(grid: Grid, path: str | Path) -> Path:
    """Write a grid as a places file (the documented labels.csv columns, empty labels)."""
    return write_labels(grid.frame, path)


# ----------------------------------------------------------------------- reading cell ids


def cell_polygons(cell_ids: Sequence[str]) -> np.ndarray | None:
    """The polygons of WKT cell ids, or ``None`` when any id is not a WKT polygon."""
    ids = np.asarray(cell_ids, dtype=object)
    if not len(ids) or not all(str(i).lstrip().upper().startswith("POLYGON") for i in ids):
        return None
    try:
        return shapely.from_wkt(ids.astype(str))
    except shapely.errors.GEOSException:
        return None


def infer_grid_crs(
    polygons: np.ndarray, latitude: np.ndarray, longitude: np.ndarray, *, tolerance_m: float = 50.0
) -> str:
    """The projected CRS the cell polygons are in, found from their lat/lon centroids.

    Tries the UTM zones (north and south) around the points and keeps the one in which
    the centroids land on the polygons' centres (median miss under ``tolerance_m``),
    which is how the original study's files (UTM 48N in Vietnam) are read.

    Raises:
        ValueError: no candidate fits; give the CRS explicitly.
    """
    lat, lon = np.asarray(latitude, float), np.asarray(longitude, float)
    centres = shapely.centroid(polygons)
    px, py = shapely.get_x(centres), shapely.get_y(centres)
    zone = int((float(np.median(lon)) + 180.0) // 6.0) + 1
    best, best_miss = None, np.inf
    for z in (zone - 1, zone, zone + 1, zone - 2, zone + 2):
        for base in (32600, 32700):
            code = f"EPSG:{base + (z - 1) % 60 + 1}"
            x, y = _transformer(code).transform(lon, lat)
            miss = float(np.median(np.hypot(x - px, y - py)))
            if miss < best_miss:
                best, best_miss = code, miss
    if best is None or best_miss > tolerance_m:
        raise ValueError(
            f"cannot tell the CRS of the cell polygons (best guess {best} misses the "
            f"centroids by {best_miss:.0f} m); give grid_crs= (e.g. 'EPSG:32648')"
        )
    return best


@dataclass
class GridIndex:
    """Where each polygon sits in a regular grid (for rasters)."""

    origin: tuple[float, float]  # top-left corner (x, y)
    cell: float
    shape: tuple[int, int]  # rows, cols
    row: np.ndarray
    col: np.ndarray


def regular_grid(polygons: np.ndarray, *, rtol: float = 1e-6) -> GridIndex | None:
    """The raster layout of axis-aligned square cells of one size on one lattice, or
    ``None`` when the polygons do not form such a grid."""
    if polygons is None or not len(polygons):
        return None
    bounds = shapely.bounds(polygons)  # minx, miny, maxx, maxy
    width, height = bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1]
    cell = float(np.median(width))
    tol = rtol * max(cell, 1.0) + 0.011  # WKT ids are rounded to centimetres
    squares = (np.abs(width - cell) < tol).all() and (np.abs(height - cell) < tol).all()
    if not squares or cell <= 0:
        return None
    if not np.allclose(shapely.area(polygons), cell * cell, rtol=1e-4):  # boxes, not diamonds
        return None
    x0, y1 = float(bounds[:, 0].min()), float(bounds[:, 3].max())
    colf, rowf = (bounds[:, 0] - x0) / cell, (y1 - bounds[:, 3]) / cell
    col, row = np.rint(colf).astype(np.int64), np.rint(rowf).astype(np.int64)
    if np.abs(colf - col).max() * cell > tol or np.abs(rowf - row).max() * cell > tol:
        return None
    return GridIndex((x0, y1), cell, (int(row.max()) + 1, int(col.max()) + 1), row, col)


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m extract_GPS_images grid``."""
    area = parser.add_mutually_exclusive_group(required=True)
    area.add_argument(
        "--bbox",
        type=float,
        nargs=4,
        metavar=("LAT_MIN", "LAT_MAX", "LON_MIN", "LON_MAX"),
        help="area as a latitude/longitude box",
    )
    area.add_argument("--polygon", help="area as a GeoJSON file of polygons (lon/lat)")
    parser.add_argument(
        "--cell-m",
        type=float,
        default=DEFAULT_CELL_M,
        help="cell side in metres (6750: the original study's grid)",
    )
    parser.add_argument("--years", type=int, nargs="+", default=[2019], help="years to predict")
    parser.add_argument("--crs", help="projected CRS of the grid (default: UTM zone of the area)")
    parser.add_argument("--out", required=True, help="places file to write (labels.csv format)")


def main(args: argparse.Namespace) -> None:
    """Write the places file of parsed CLI arguments."""
    area = read_area(args.polygon) if args.polygon else args.bbox
    grid = make_grid(area, cell_m=args.cell_m, years=args.years, crs=args.crs)
    write_places(grid, args.out)
    print(f"{grid.summary()} -> {args.out}")
