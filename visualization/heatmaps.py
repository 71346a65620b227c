"""Heatmaps, band/season importance and their figures (docs/design.md).

Arrays first (:func:`perturbation_heatmap`, :func:`channel_importance`,
:func:`group_importance`, :func:`true_colour`), then plotting functions that save PNGs
(atomically, under the run's ``explain`` folder). The arrays come from
:func:`visualization.lots.lots` or from an attribution method
(:mod:`visualization.baselines`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from extract_GPS_images.schema import DW_BAND, DW_CLASSES, QUARTERS, S2_BANDS
from utils.atomic import atomic_path

#: Dynamic World V1 palette (the dataset's own colours), in class-code order.
DW_PALETTE: tuple[str, ...] = (
    "#419bdf",
    "#397d49",
    "#88b053",
    "#7a87c6",
    "#e49635",
    "#dfc35a",
    "#c4281b",
    "#a59b8f",
    "#b39fe1",
)


def _np(a: torch.Tensor | np.ndarray) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _scaled_change(
    x: torch.Tensor | np.ndarray,
    x_adv: torch.Tensor | np.ndarray,
    scale: Sequence[float] | np.ndarray | None,
) -> np.ndarray:
    delta = np.abs(_np(x_adv).astype(np.float64) - _np(x).astype(np.float64))
    if delta.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) arrays, got shape {delta.shape}")
    if scale is not None:
        s = np.asarray(scale, dtype=np.float64).reshape(1, -1, 1, 1)
        if s.shape[1] != delta.shape[1]:
            raise ValueError(f"scale needs {delta.shape[1]} values (one per channel), got {s.size}")
        delta = delta / np.where(s > 0, s, 1.0)
    return delta


def smooth(
    heat: np.ndarray, *, sigma: float = 0.0, clip_percentile: float | None = None
) -> np.ndarray:
    """Gaussian blur (``sigma`` in pixels, 0 = none) and clip at a per-sample percentile.

    Args:
        heat: (N, H, W) non-negative maps.
        clip_percentile: values above this percentile of each map are set to it
            (e.g. 99), so that a few extreme pixels do not wash out the colour scale.
    """
    heat = np.asarray(heat, dtype=np.float64)
    if heat.ndim != 3:
        raise ValueError(f"expected (N, H, W) maps, got shape {heat.shape}")
    if sigma > 0:
        heat = gaussian_filter(heat, sigma=(0, sigma, sigma), mode="nearest")
    if clip_percentile is not None:
        if not 0 < clip_percentile <= 100:
            raise ValueError(f"clip_percentile must be in (0, 100], got {clip_percentile}")
        top = np.percentile(heat.reshape(heat.shape[0], -1), clip_percentile, axis=1)
        heat = np.minimum(heat, top[:, None, None])
    return heat


def perturbation_heatmap(
    x: torch.Tensor | np.ndarray,
    x_adv: torch.Tensor | np.ndarray,
    *,
    scale: Sequence[float] | np.ndarray | None = None,
    sigma: float = 0.0,
    clip_percentile: float | None = None,
) -> np.ndarray:
    """LOTS heatmap: ``|x_adv - x|`` summed over channels, then :func:`smooth`.

    Args:
        x, x_adv: (N, C, H, W) origins and adversarial inputs.
        scale: optional per-channel divisor (e.g. each channel's valid range), so every
            band counts in units of its own range.

    Returns:
        (N, H, W) float64, non-negative.
    """
    return smooth(
        _scaled_change(x, x_adv, scale).sum(1), sigma=sigma, clip_percentile=clip_percentile
    )


def attribution_heatmap(
    attribution: torch.Tensor | np.ndarray,
    *,
    sigma: float = 0.0,
    clip_percentile: float | None = None,
) -> np.ndarray:
    """Heatmap of an attribution map (N, C, H, W): ``|a|`` summed over channels, smoothed."""
    a = np.abs(_np(attribution).astype(np.float64))
    if a.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) attributions, got shape {a.shape}")
    return smooth(a.sum(1), sigma=sigma, clip_percentile=clip_percentile)


def channel_importance(
    x: torch.Tensor | np.ndarray,
    x_adv: torch.Tensor | np.ndarray,
    *,
    scale: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """Share of the total perturbation that each channel carries: (N, C), rows sum to 1
    (a row of zeros where a sample was not changed at all)."""
    per_channel = _scaled_change(x, x_adv, scale).sum((2, 3))
    total = per_channel.sum(1, keepdims=True)
    return np.divide(per_channel, total, out=np.zeros_like(per_channel), where=total > 0)


def group_importance(
    importance: np.ndarray, band_names: Sequence[str]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Sum channel importance (N, C) into Sentinel-2 bands and into quarters.

    Channel names follow the schema (``B4_q2``); others (``DW``...) are left out.

    Returns:
        ``(per_band, per_quarter)``: dicts ``name -> (N,)`` in schema order.
    """
    importance = np.asarray(importance)
    if importance.shape[-1] != len(band_names):
        raise ValueError(
            f"importance has {importance.shape[-1]} channels, band_names has {len(band_names)}"
        )
    per_band = {b: np.zeros(importance.shape[:-1]) for b in S2_BANDS}
    per_quarter = {q: np.zeros(importance.shape[:-1]) for q in QUARTERS}
    for i, name in enumerate(band_names):
        band, _, quarter = name.partition("_")
        if band in per_band and quarter in per_quarter:
            per_band[band] = per_band[band] + importance[..., i]
            per_quarter[quarter] = per_quarter[quarter] + importance[..., i]
    present_b = {b for b in S2_BANDS if any(n.startswith(b + "_") for n in band_names)}
    present_q = {q for q in QUARTERS if any(n.endswith("_" + q) for n in band_names)}
    return (
        {b: v for b, v in per_band.items() if b in present_b},
        {q: v for q, v in per_quarter.items() if q in present_q},
    )


def stretch(channel: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """Linear stretch of one channel between its ``low`` and ``high`` percentiles to [0, 1]."""
    channel = np.asarray(channel, dtype=np.float64)
    lo, hi = np.percentile(channel, [low, high])
    if hi <= lo:
        return np.zeros_like(channel)
    return np.clip((channel - lo) / (hi - lo), 0.0, 1.0)


def true_colour(
    image: torch.Tensor | np.ndarray,
    band_names: Sequence[str],
    quarter: str = "q1",
    *,
    low: float = 2.0,
    high: float = 98.0,
) -> np.ndarray:
    """(H, W, 3) true-colour image from B4/B3/B2 of ``quarter``, each channel stretched
    between its 2-98 % percentiles (an affine normalisation of the input does not change
    the result, so raw or normalised data give the same picture)."""
    image = _np(image)
    names = list(band_names)
    wanted = [f"B4_{quarter}", f"B3_{quarter}", f"B2_{quarter}"]
    missing = [w for w in wanted if w not in names]
    if missing:
        raise ValueError(f"true colour needs {wanted}; missing {missing} in {names}")
    return np.stack([stretch(image[names.index(w)], low, high) for w in wanted], axis=-1)


def dw_map(image: torch.Tensor | np.ndarray, band_names: Sequence[str]) -> np.ndarray | None:
    """Dynamic World class codes (H, W) from a ``DW`` channel or ``DW_<class>`` one-hot
    channels; ``None`` when the image holds neither."""
    image = _np(image)
    names = list(band_names)
    if DW_BAND in names:
        return np.rint(image[names.index(DW_BAND)]).astype(np.int64)
    onehot = [names.index(f"{DW_BAND}_{c}") for c in DW_CLASSES if f"{DW_BAND}_{c}" in names]
    if len(onehot) == len(DW_CLASSES):
        return np.argmax(image[onehot], axis=0).astype(np.int64)
    return None


# ------------------------------------------------------------------------- plotting


def _save(fig, path: str | Path) -> Path:  # noqa: ANN001 (matplotlib figure)
    import matplotlib.pyplot as plt  # noqa: PLC0415

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _normalise(heat: np.ndarray) -> np.ndarray:
    top = float(np.max(heat)) if heat.size else 0.0
    return heat / top if top > 0 else np.zeros_like(heat)


def plot_heatmap_grid(
    rgb: Sequence[np.ndarray],
    heatmaps: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    dw: Sequence[np.ndarray | None] | None = None,
    row_titles: Sequence[str] | None = None,
    alpha: float = 0.55,
    cmap: str = "inferno",
    difference: tuple[str, str] | None = None,
) -> Path:
    """One row per sample: true colour, Dynamic World, then each heatmap over the image
    (in grey), each map scaled to its own maximum (the colour bar), and optionally the
    difference of two of them.

    Args:
        rgb: N images (H, W, 3) in [0, 1].
        heatmaps: column title -> (N, H, W) map (e.g. ``{"LOTS poorer": ..., "LOTS richer": ...}``).
        path: PNG to write.
        dw: N Dynamic World code maps (H, W), or ``None`` entries / no column.
        row_titles: N labels written left of each row.
        difference: two column titles ``(a, b)``: one more column ``b - a`` of the scaled
            maps, red where only ``b`` changed the image, blue where only ``a`` did (the two
            pushes often touch the same pixels; this shows where they part).
    """
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.colors import ListedColormap  # noqa: PLC0415

    n = len(rgb)
    has_dw = dw is not None and any(d is not None for d in dw)
    cols = 1 + int(has_dw) + len(heatmaps) + int(difference is not None)
    height = 2.3 * n + 1.3  # inches: the rows, then the legend and the colour bars
    fig, axes = plt.subplots(n, cols, figsize=(2.3 * cols, height), squeeze=False)
    heat_image = diff_image = None
    dw_cmap = ListedColormap(DW_PALETTE)
    for i in range(n):
        ax = axes[i, 0]
        ax.imshow(rgb[i])
        if row_titles is not None:
            ax.set_ylabel(row_titles[i], fontsize=8)
        col = 1
        if has_dw:
            d = dw[i] if dw is not None else None
            if d is not None:
                axes[i, col].imshow(d, cmap=dw_cmap, vmin=-0.5, vmax=len(DW_CLASSES) - 0.5)
            col += 1
        grey = np.asarray(rgb[i], dtype=np.float64).mean(-1)  # the map reads better on grey
        for name, maps in heatmaps.items():
            axes[i, col].imshow(grey, cmap="gray", vmin=0, vmax=1)
            heat_image = axes[i, col].imshow(
                _normalise(maps[i]), cmap=cmap, alpha=alpha, vmin=0, vmax=1
            )
            if i == 0:
                axes[i, col].set_title(name, fontsize=9)
            col += 1
        if difference is not None:
            a, b = difference
            change = _normalise(heatmaps[b][i]) - _normalise(heatmaps[a][i])
            diff_image = axes[i, col].imshow(change, cmap="RdBu_r", vmin=-1, vmax=1)
            if i == 0:
                first = [name.splitlines()[0].split()[-1] for name in (b, a)]  # "richer", ...
                axes[i, col].set_title(" − ".join(first), fontsize=9)
        if i == 0:
            axes[i, 0].set_title("true colour", fontsize=9)
            if has_dw:
                axes[i, 1].set_title("Dynamic World", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.subplots_adjust(bottom=1.1 / height, top=1 - 0.35 / height, hspace=0.08, wspace=0.05)
    if has_dw:
        handles = [plt.Rectangle((0, 0), 1, 1, color=DW_PALETTE[k]) for k in range(len(DW_CLASSES))]
        fig.legend(handles, DW_CLASSES, loc="lower left", ncol=3, fontsize=7, frameon=False)
    first_heat = 1 + int(has_dw)
    bars = []
    if heat_image is not None:
        bars.append(
            (
                heat_image,
                first_heat,
                first_heat + len(heatmaps) - 1,
                "map value (each map scaled to its maximum)",
            )
        )
    if diff_image is not None:
        bars.append((diff_image, cols - 1, cols - 1, "difference of the scaled maps"))
    for image, first, last, label in bars:  # own axes under the grid: no row loses space
        left, right = axes[-1, first].get_position(), axes[-1, last].get_position()
        gap = 0.1 * (left.x1 - left.x0)  # room between two bars' tick labels
        cax = fig.add_axes(
            (left.x0 + gap, 0.55 / height, right.x1 - left.x0 - 2 * gap, 0.12 / height)
        )
        bar = fig.colorbar(image, cax=cax, orientation="horizontal")
        bar.set_label(label, fontsize=8)
        bar.ax.tick_params(labelsize=7)
        if image is diff_image:
            bar.set_ticks([-1, 0, 1])
    return _save(fig, path)


def plot_importance(
    per_band: Mapping[str, Mapping[str, float]],
    per_quarter: Mapping[str, Mapping[str, float]],
    path: str | Path,
    *,
    title: str = "share of the LOTS perturbation",
) -> Path:
    """Grouped bar charts of importance per band and per quarter.

    Args:
        per_band: series name (e.g. ``"poorer"``) -> band -> mean share.
        per_quarter: series name -> quarter -> mean share.
    """
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, data, xlabel in ((axes[0], per_band, "band"), (axes[1], per_quarter, "quarter")):
        series = list(data)
        keys = list(next(iter(data.values()))) if data else []
        width = 0.8 / max(len(series), 1)
        for s, name in enumerate(series):
            pos = np.arange(len(keys)) + (s - (len(series) - 1) / 2) * width
            ax.bar(pos, [data[name][k] for k in keys], width=width, label=name)
        ax.set_xticks(np.arange(len(keys)), keys)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("share")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_traces(
    distances: Mapping[str, np.ndarray], predictions: Mapping[str, np.ndarray], path: str | Path
) -> Path:
    """LOTS feature distance and prediction per iteration, one line per sample."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, name in enumerate(distances):
        colour = colours[k % len(colours)]
        for row, (d, p) in enumerate(zip(distances[name], predictions[name], strict=True)):
            label = name if row == 0 else None
            axes[0].plot(d, color=colour, alpha=0.6, label=label)
            axes[1].plot(p, color=colour, alpha=0.6, label=label)
    axes[0].set(xlabel="iteration", ylabel="||t - f(x)||", title="feature distance")
    axes[1].set(xlabel="iteration", ylabel="prediction", title="prediction")
    axes[0].legend(fontsize=8)
    return _save(fig, path)
