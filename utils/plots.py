"""Figures of a training run: learning curves, predicted vs true, per-bin MAE bars,
residuals on a map. Each function saves a PNG and returns the figure."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

DPI = 120


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return fig


def _frame(history: pd.DataFrame | Sequence[dict] | str | Path) -> pd.DataFrame:
    if isinstance(history, str | Path):
        return pd.read_csv(history)
    return history if isinstance(history, pd.DataFrame) else pd.DataFrame(list(history))


def learning_curves(
    history: pd.DataFrame | Sequence[dict] | str | Path,
    path: str | Path | None = None,
    metrics: Sequence[str] = ("loss", "bmae", "mae"),
) -> Figure:
    """Train and validation curves per epoch, one panel per metric (``history.csv``)."""
    frame = _frame(history)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for split in ("train", "val"):
            column = f"{split}_{metric}"
            if column in frame:
                ax.plot(frame["epoch"], frame[column], marker="o", ms=3, label=split)
        ax.set(xlabel="epoch", title=metric)
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def pred_vs_true(table: pd.DataFrame, path: str | Path | None = None, title: str = "") -> Figure:
    """Scatter of predictions against labels with the identity line."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(table["label"], table["prediction"], s=8, alpha=0.6)
    values = np.concatenate([table["label"], table["prediction"]])
    lo, hi = float(np.min(values)), float(np.max(values))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="identity")
    ax.set(xlabel="true label", ylabel="prediction", title=title or "predicted vs true")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def per_bin_mae_bars(report: dict[str, Any], path: str | Path | None = None) -> Figure:
    """MAE per label bin (empty bins marked), with the sample count on each bar."""
    edges = report["bin_edges"]
    values = [np.nan if v is None else v for v in report["per_bin_mae"]]
    labels = [f"{a:.2f}-{b:.2f}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bars = ax.bar(labels, np.nan_to_num(values), color="tab:blue")
    for bar, count, value in zip(bars, report["bin_counts"], values, strict=True):
        text = "empty" if np.isnan(value) else f"n={count}"
        ax.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.axhline(report["bmae"], color="k", ls="--", lw=1, label=f"b-MAE {report['bmae']:.3f}")
    ax.set(xlabel="label bin", ylabel="MAE", title="MAE per label bin")
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def places_outline(lon: np.ndarray, lat: np.ndarray) -> np.ndarray | None:
    """The closed convex hull (K, 2) of the places' lon/lat, or None below 3 distinct
    points: an outline of the mapped area that needs no coastline data."""
    from scipy.spatial import ConvexHull, QhullError  # noqa: PLC0415

    points = np.unique(np.column_stack([lon, lat]).astype(float), axis=0)
    points = points[np.isfinite(points).all(axis=1)]
    if len(points) < 3:
        return None
    try:
        hull = ConvexHull(points)
    except QhullError:  # all on a line
        return None
    return points[np.r_[hull.vertices, hull.vertices[0]]]


def residual_map(table: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Residuals (prediction - label) at each location, diverging colours around 0,
    inside the outline (convex hull) of all places of the table."""
    residual = table["prediction"] - table["label"]
    limit = float(np.nanmax(np.abs(residual))) or 1.0
    fig, ax = plt.subplots(figsize=(5, 5))
    outline = places_outline(table["longitude"].to_numpy(), table["latitude"].to_numpy())
    if outline is not None:
        ax.fill(outline[:, 0], outline[:, 1], color="0.93", zorder=0)
        ax.plot(
            outline[:, 0],
            outline[:, 1],
            color="0.4",
            lw=1,
            zorder=1,
            label="outline of the places (convex hull)",
        )
        ax.legend(loc="lower left", fontsize=7, frameon=False)
    points = ax.scatter(
        table["longitude"],
        table["latitude"],
        c=residual,
        cmap="RdBu_r",
        vmin=-limit,
        vmax=limit,
        s=12,
        edgecolors="0.3",
        linewidths=0.2,
    )
    fig.colorbar(points, ax=ax, label="prediction - label (red: predicted too rich)")
    lo_lon, hi_lon = table["longitude"].min(), table["longitude"].max()
    lo_lat, hi_lat = table["latitude"].min(), table["latitude"].max()
    ax.set(
        xlabel="longitude",
        ylabel="latitude",
        title=f"test residuals, {len(table)} places\n"
        f"lon {lo_lon:.1f}–{hi_lon:.1f}, lat {lo_lat:.1f}–{hi_lat:.1f}",
    )
    ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    return _save(fig, path)
