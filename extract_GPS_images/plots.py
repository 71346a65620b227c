"""Figures of the extraction stage: label distribution and map, example patches."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap

from extract_GPS_images import schema
from extract_GPS_images.synthetic import WEALTH_BIN_SHARES, WEALTH_RANGE
from utils.batching.example_wire import decode_example
from utils.batching.validate_records import iter_records


def stretch(rgb: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """Percentile stretch of an (H, W, 3) image to [0, 1] (2-98 % by default), per band."""
    lo = np.nanpercentile(rgb, low, axis=(0, 1))
    hi = np.nanpercentile(rgb, high, axis=(0, 1))
    return np.clip((rgb - lo) / np.maximum(hi - lo, 1e-6), 0, 1)


def true_colour(bands: dict[str, np.ndarray], quarter: str = "q2") -> np.ndarray:
    """Stretched B4/B3/B2 (H, W, 3) image of one quarter."""
    return stretch(np.stack([bands[f"{b}_{quarter}"] for b in ("B4", "B3", "B2")], axis=-1))


def dw_colormap() -> ListedColormap:
    """Dynamic World's palette as a matplotlib colormap over codes 0-8."""
    return ListedColormap(schema.DW_PALETTE, name="dynamic_world")


def plot_labels(labels: pd.DataFrame, path: str | Path | None = None) -> plt.Figure:
    """Label histogram over the six reference bins (with the real index's shares) and
    a map of the places coloured by label."""
    edges = np.linspace(*WEALTH_RANGE, len(WEALTH_BIN_SHARES) + 1)
    fig, (hist, geo) = plt.subplots(1, 2, figsize=(11, 4.2))
    counts, _ = np.histogram(labels["label"].clip(*WEALTH_RANGE), edges)
    centres = (edges[:-1] + edges[1:]) / 2
    width = np.diff(edges)
    hist.bar(centres, 100 * counts / counts.sum(), width=width * 0.9, label="this data")
    hist.step(
        edges,
        100 * np.r_[WEALTH_BIN_SHARES, WEALTH_BIN_SHARES[-1]],
        where="post",
        color="k",
        lw=1.2,
        label="real index (Vietnam)",
    )
    hist.set(xlabel="label (wealth index)", ylabel="% of records", title="Label distribution")
    hist.legend()
    points = geo.scatter(
        labels["longitude"], labels["latitude"], c=labels["label"], s=6, cmap="viridis"
    )
    geo.set(xlabel="longitude", ylabel="latitude", title="Places", aspect="equal")
    fig.colorbar(points, ax=geo, label="label")
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
    return fig


def read_first_record(path: str | Path) -> dict[str, np.ndarray]:
    """Band name -> (H, W) array of the first record of a gzip TFRecord file (square
    patches), read without TensorFlow."""
    for raw in iter_records(path):
        bands = {}
        for name, value in decode_example(raw).items():
            if isinstance(value, np.ndarray) and value.dtype == np.float32:
                side = int(round(np.sqrt(value.size)))
                bands[name] = value.reshape(side, side) if side * side == value.size else value
        return bands
    raise ValueError(f"{path} holds no record")


def shown_quarter(bands: dict[str, np.ndarray], quarter: str = "q2") -> tuple[str, str]:
    """The quarter to show and a note: ``quarter`` itself when its RGB bands hold data,
    else the first quarter that does (note ``"q2 missing"``)."""

    def has_data(q: str) -> bool:
        rgb = [bands.get(f"{b}_{q}") for b in ("B4", "B3", "B2")]
        return all(a is not None and np.nanmax(np.abs(a)) > 0 for a in rgb)

    if has_data(quarter):
        return quarter, ""
    for q in schema.QUARTERS:
        if has_data(q):
            return q, f"{quarter} missing"
    return quarter, "no quarter with data"


def plot_examples(
    files: Sequence[str | Path], path: str | Path | None = None, quarter: str = "q2"
) -> plt.Figure:
    """True colour, false colour NIR and Dynamic World for a few records; a record whose
    ``quarter`` is missing (no scene) shows the first quarter that has one, and says so."""
    fig, axes = plt.subplots(3, len(files), figsize=(2.3 * len(files), 7.3), squeeze=False)
    for col, file in enumerate(files):
        bands = read_first_record(file)
        q, note = shown_quarter(bands, quarter)
        nir = stretch(np.stack([bands[f"{b}_{q}"] for b in ("B8", "B4", "B3")], -1))
        axes[0, col].imshow(true_colour(bands, q))
        title = f"label {float(bands['label'].flat[0]):.2f}"
        if q != quarter or note:
            title += f"\n{q} shown ({note})" if q != quarter else f"\n{note}"
        axes[0, col].set_title(title, fontsize=9)
        axes[1, col].imshow(nir)
        axes[2, col].imshow(
            bands[schema.DW_BAND], cmap=dw_colormap(), vmin=-0.5, vmax=8.5, interpolation="nearest"
        )
    for row, name in enumerate([f"RGB {quarter}", f"NIR/R/G {quarter}", "Dynamic World"]):
        axes[row, 0].set_ylabel(name)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
    return fig


def pick_examples(labels: pd.DataFrame, out_dir: str | Path, k: int = 6) -> list[Path]:
    """``k`` record files of ``out_dir`` spread over the label range, poorest first
    (files listed in ``corruptions.csv`` or absent are skipped)."""
    out = Path(out_dir)
    damaged = set()
    if (out / "corruptions.csv").is_file():
        damaged = set(pd.read_csv(out / "corruptions.csv")["file"])
    files = [
        schema.record_file_name(c, y) for c, y in zip(labels.cell_key, labels.year, strict=True)
    ]
    frame = labels.assign(file=files)
    frame = frame[~frame["file"].isin(damaged) & frame["file"].map(lambda f: (out / f).is_file())]
    frame = frame.sort_values("label")
    if frame.empty:
        return []
    picks = np.unique(np.linspace(0, len(frame) - 1, k).round().astype(int))
    return [out / frame["file"].iloc[i] for i in picks]
