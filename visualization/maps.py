"""Map figures of predicted wealth (docs/maps.md): cells drawn as their polygons in
longitude/latitude, a colour bar with the index's units, a title on every panel.

Each function takes the GeoJSON written by :func:`utils.maps.maps.predict_map` (or
:func:`utils.maps.maps.aggregate_regions`), optionally joined with more columns, saves a PNG
when given a path and returns the figure.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import shapely
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

DPI = 120
WEALTH_UNITS = "wealth index"
#: Colour scale of the wealth index: poor (dark purple) to rich (yellow).
WEALTH_CMAP = "viridis"


def read_features(path: str | Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Properties (one row per feature) and lon/lat geometries of a GeoJSON file."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    props = pd.DataFrame([f["properties"] for f in data["features"]])
    geoms = shapely.from_geojson([json.dumps(f["geometry"]) for f in data["features"]])
    return props, np.asarray(geoms)


def _rings(geometries: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Exterior rings of (multi)polygons for a PolyCollection, and which geometry each
    ring belongs to; points become small squares."""
    rings, owner = [], []
    for i, geom in enumerate(geometries):
        if geom.geom_type == "Point":
            geom = geom.buffer(0.02, cap_style="square")
        parts = geom.geoms if geom.geom_type == "MultiPolygon" else [geom]
        for part in parts:
            rings.append(np.asarray(part.exterior.coords))
            owner.append(i)
    return rings, np.asarray(owner, dtype=np.int64)


def draw_cells(
    ax: plt.Axes,
    geometries: np.ndarray,
    values: Sequence[float],
    *,
    cmap: str = WEALTH_CMAP,
    vmin: float | None = None,
    vmax: float | None = None,
    units: str = WEALTH_UNITS,
    title: str = "",
) -> PolyCollection:
    """Fill each cell polygon with its value on ``ax`` (lon/lat axes, colour bar)."""
    rings, owner = _rings(geometries)
    values = np.asarray(values, np.float64)[owner]
    cells = PolyCollection(
        rings, array=np.ma.masked_invalid(values), cmap=cmap, edgecolors="face", linewidths=0.2
    )
    cells.set_clim(
        vmin if vmin is not None else np.nanmin(values),
        vmax if vmax is not None else np.nanmax(values),
    )
    ax.add_collection(cells)
    ax.autoscale_view()
    lat = float(np.mean(ax.get_ylim()))
    ax.set_aspect(1.0 / max(np.cos(np.radians(lat)), 1e-3))  # degrees of equal length
    ax.set(xlabel="longitude (°E)", ylabel="latitude (°N)", title=title)
    ax.figure.colorbar(cells, ax=ax, label=units, shrink=0.85)
    return cells


def _save(fig: Figure, path: str | Path | None) -> Figure:
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return fig


def prediction_maps(
    geojson: str | Path, path: str | Path | None = None, *, coverage: float = 0.9, title: str = ""
) -> Figure:
    """Two panels: predicted wealth per cell, and the width of its conformal interval
    (target ``coverage``)."""
    props, geoms = read_features(geojson)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    where = f" ({title})" if title else ""
    draw_cells(axes[0], geoms, props["prediction"], title=f"predicted wealth{where}")
    draw_cells(
        axes[1],
        geoms,
        props["high"] - props["low"],
        cmap="magma_r",
        vmin=0,
        units=f"interval width ({WEALTH_UNITS})",
        title=f"width of the {100 * coverage:g} % interval",
    )
    return _save(fig, path)


def truth_maps(geojson: str | Path, truth: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Three panels on the synthetic world: true wealth, prediction, error (prediction -
    truth), on one colour scale for the first two. ``truth`` has ``cell_key``, ``year``,
    ``true_wealth`` (the world's ``truth.csv``)."""
    props, geoms = read_features(geojson)
    both = props.merge(
        truth[["cell_key", "year", "true_wealth"]], on=["cell_key", "year"], how="left"
    )
    low = float(np.nanmin([both["true_wealth"].min(), both["prediction"].min()]))
    high = float(np.nanmax([both["true_wealth"].max(), both["prediction"].max()]))
    error = both["prediction"] - both["true_wealth"]
    limit = float(np.nanmax(np.abs(error))) or 1.0
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    draw_cells(axes[0], geoms, both["true_wealth"], vmin=low, vmax=high, title="true wealth")
    draw_cells(axes[1], geoms, both["prediction"], vmin=low, vmax=high, title="predicted wealth")
    mae = float(np.nanmean(np.abs(error)))
    draw_cells(
        axes[2],
        geoms,
        error,
        cmap="RdBu_r",
        vmin=-limit,
        vmax=limit,
        units=f"prediction - truth ({WEALTH_UNITS})",
        title=f"error (MAE {mae:.3f})",
    )
    return _save(fig, path)


def region_map(
    geojson: str | Path, path: str | Path | None = None, *, cells: str | Path | None = None
) -> Figure:
    """Mean predicted wealth per region (``regions.geojson``), with the region names and
    mean intervals written on them; the cells' outlines beneath when given."""
    props, geoms = read_features(geojson)
    fig, ax = plt.subplots(figsize=(6.5, 5))
    limits: dict[str, float] = {}
    if cells is not None:  # the cells' range: region means on the scale of the cell map
        cell_props, cell_geoms = read_features(cells)
        rings, _ = _rings(cell_geoms)
        ax.add_collection(
            PolyCollection(rings, facecolors="none", edgecolors="0.7", linewidths=0.2)
        )
        limits = {
            "vmin": float(cell_props["prediction"].min()),
            "vmax": float(cell_props["prediction"].max()),
        }
    draw_cells(ax, geoms, props["prediction"], title="mean predicted wealth per region", **limits)
    for geom, row in zip(geoms, props.itertuples(), strict=True):
        point = geom.representative_point()
        ax.annotate(
            f"{row.region}\n{row.prediction:.2f} [{row.low:.2f}, {row.high:.2f}]",
            (point.x, point.y),
            ha="center",
            va="center",
            fontsize=7,
            bbox={"boxstyle": "round", "fc": "white", "alpha": 0.7, "lw": 0},
        )
    return _save(fig, path)
