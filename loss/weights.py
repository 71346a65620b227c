"""Per-sample weights from the training labels' density (imbalanced regression).

One entry point, :func:`sample_weights` (``method`` picks the estimator), and its
reusable form :func:`fit_label_weights`, which returns a :class:`LabelWeights` that maps
any label value to its weight (DenseLoss uses it on the targets of each batch).
Weights are normalised to mean 1 over the training labels, so a weighted loss keeps
the scale of the unweighted one.

Methods (``a`` is ``alpha``):

* ``"none"``: every weight 1.
* ``"kde"`` (the original study): Gaussian KDE density ``p``, normalised by its
  maximum over the label range; ``w = max(1 - a p / max p, eps)``.
* ``"denseweight"`` (Steininger et al. 2021, DenseWeight): the same with the density
  min-max normalised, ``p' = (p - min p) / (max p - min p)``; ``w = max(1 - a p', eps)``.
* ``"inverse"``: equal-width bins, ``w = count(bin)^-a`` (``a = 0.5``: square-root
  inverse frequency).
* ``"lds"`` (Yang et al. 2021, label-distribution smoothing): the bin histogram
  convolved with a symmetric kernel window (Gaussian, Laplace or triangular, in bin
  units), ``w = smoothed(bin)^-a``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

WeightMethod = Literal["none", "kde", "denseweight", "inverse", "lds"]
Kernel = Literal["gaussian", "laplace", "triangular"]

WEIGHT_METHODS: tuple[str, ...] = ("none", "kde", "denseweight", "inverse", "lds")
KERNELS: tuple[str, ...] = ("gaussian", "laplace", "triangular")

#: Number of points the KDE density is evaluated on (then linearly interpolated).
KDE_GRID_SIZE = 1024


@dataclass(frozen=True)
class LabelWeights:
    """A fitted label -> weight function.

    Attributes:
        method: the estimator that produced it.
        grid: bin centres (``kind="step"``) or KDE evaluation points (``kind="linear"``).
        values: the weight at each grid point, already scaled so that the weights of
            the training labels have mean 1.
        edges: bin edges (``kind="step"``), else None.
        kind: ``"step"`` (weight of the label's bin; labels outside the range count in
            the edge bins) or ``"linear"`` (interpolated, constant outside the range).
    """

    method: str
    grid: NDArray[np.float64]
    values: NDArray[np.float64]
    edges: NDArray[np.float64] | None
    kind: Literal["step", "linear"]

    def __call__(self, labels: ArrayLike) -> NDArray[np.float64]:
        """The weight of each label value."""
        y = np.asarray(labels, dtype=np.float64).reshape(-1)
        if self.kind == "step":
            assert self.edges is not None
            return self.values[bin_index(y, self.edges)]
        return np.interp(y, self.grid, self.values)


def bin_index(labels: NDArray[np.float64], edges: NDArray[np.float64]) -> NDArray[np.intp]:
    """Index of the equal-width bin of each label; outside values go to the edge bins."""
    index = np.searchsorted(edges, labels, side="right") - 1
    return np.clip(index, 0, len(edges) - 2)


def kernel_window(kernel: Kernel, *, sigma: float, window: int) -> NDArray[np.float64]:
    """A symmetric smoothing window over ``window`` bins (odd), summing to 1.

    ``gaussian``: ``exp(-k^2 / 2 sigma^2)``; ``laplace``: ``exp(-|k| / sigma)``;
    ``triangular``: ``1 - |k| / (h + 1)`` with ``h = window // 2``; ``k`` the bin offset.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"kernel window must be a positive odd number of bins, got {window}")
    if sigma <= 0:
        raise ValueError(f"kernel sigma must be > 0 (in bins), got {sigma}")
    half = window // 2
    k = np.arange(-half, half + 1, dtype=np.float64)
    if kernel == "gaussian":
        w = np.exp(-(k**2) / (2 * sigma**2))
    elif kernel == "laplace":
        w = np.exp(-np.abs(k) / sigma)
    elif kernel == "triangular":
        w = 1 - np.abs(k) / (half + 1)
    else:
        raise ValueError(f"unknown kernel {kernel!r}; valid: {', '.join(KERNELS)}")
    return w / w.sum()


def smoothed_histogram(
    labels: ArrayLike,
    *,
    bins: int,
    kernel: Kernel = "gaussian",
    sigma: float = 2.0,
    window: int = 5,
    value_range: tuple[float, float] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """LDS density: the label histogram convolved with :func:`kernel_window`.

    The histogram is zero-padded at both ends (the effective density of Yang et al.
    2021). Returns ``(smoothed, edges)``.
    """
    y = _check_labels(labels)
    edges = _edges(y, bins, value_range)
    counts = np.bincount(bin_index(y, edges), minlength=bins).astype(np.float64)
    window_ = kernel_window(kernel, sigma=sigma, window=window)
    if window > bins:  # np.convolve "same" needs the longer input first
        pad = (window - bins) // 2 + 1
        padded = np.pad(counts, pad)
        smoothed = np.convolve(padded, window_, mode="same")[pad:-pad]
    else:
        smoothed = np.convolve(counts, window_, mode="same")
    return smoothed, edges


def fit_label_weights(
    labels: ArrayLike,
    method: WeightMethod = "kde",
    *,
    alpha: float = 1.0,
    bins: int = 50,
    kernel: Kernel = "gaussian",
    sigma: float = 2.0,
    window: int = 5,
    bandwidth: float | str | None = None,
    eps: float = 1e-6,
    value_range: tuple[float, float] | None = None,
) -> LabelWeights:
    """Fit the label -> weight function of ``method`` on the training ``labels``.

    Args:
        labels: training labels, shape ``(N,)``.
        method: one of :data:`WEIGHT_METHODS` (see the module docstring).
        alpha: strength ``a``; 0 gives uniform weights.
        bins: number of equal-width bins (``"inverse"``, ``"lds"``).
        kernel: LDS kernel, one of :data:`KERNELS`.
        sigma: LDS kernel width, in bins.
        window: LDS kernel window length, in bins (odd).
        bandwidth: KDE bandwidth (``scipy.stats.gaussian_kde`` ``bw_method``: a
            factor, ``"scott"`` or ``"silverman"``; None = Silverman, DenseWeight's).
        eps: the smallest weight before normalisation (``"kde"``, ``"denseweight"``).
        value_range: ``(low, high)`` of the bins / KDE grid; default the labels' range.

    Returns:
        A :class:`LabelWeights` whose values on ``labels`` have mean 1.
    """
    y = _check_labels(labels)
    if method not in WEIGHT_METHODS:
        raise ValueError(f"unknown weighting method {method!r}; valid: {', '.join(WEIGHT_METHODS)}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if method in ("none", "inverse", "lds"):
        edges = _edges(y, 1 if method == "none" else bins, value_range)
        if method == "none":
            density = np.ones(1)
        elif method == "inverse":
            density = np.bincount(bin_index(y, edges), minlength=bins).astype(np.float64)
        else:
            density, _ = smoothed_histogram(
                y, bins=bins, kernel=kernel, sigma=sigma, window=window, value_range=value_range
            )
        tiny = np.finfo(np.float64).tiny
        raw = np.maximum(density, tiny) ** -alpha if method != "none" else density
        raw = np.where(density > 0, raw, np.nan)  # no training label there
        scale = np.mean(raw[bin_index(y, edges)])
        values = raw / scale
        # an empty bin (only reachable by labels not in the training set) gets the
        # weight of the rarest non-empty bin
        values = np.where(np.isnan(values), np.nanmax(values), values)
        centres = (edges[:-1] + edges[1:]) / 2
        return LabelWeights(method, centres, values, edges, "step")
    return _fit_kde(y, method, alpha=alpha, bandwidth=bandwidth, eps=eps, value_range=value_range)


def sample_weights(
    labels: ArrayLike,
    method: WeightMethod = "kde",
    *,
    alpha: float = 1.0,
    bins: int = 50,
    kernel: Kernel = "gaussian",
    sigma: float = 2.0,
    window: int = 5,
    bandwidth: float | str | None = None,
    eps: float = 1e-6,
    value_range: tuple[float, float] | None = None,
) -> NDArray[np.float64]:
    """One weight per training label, mean 1 (see :func:`fit_label_weights`)."""
    weights = fit_label_weights(
        labels,
        method,
        alpha=alpha,
        bins=bins,
        kernel=kernel,
        sigma=sigma,
        window=window,
        bandwidth=bandwidth,
        eps=eps,
        value_range=value_range,
    )
    values = weights(labels)
    return values / values.mean()


def _fit_kde(
    y: NDArray[np.float64],
    method: str,
    *,
    alpha: float,
    bandwidth: float | str | None,
    eps: float,
    value_range: tuple[float, float] | None,
) -> LabelWeights:
    from scipy.stats import gaussian_kde  # noqa: PLC0415 (scipy.stats is slow to import)

    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if np.ptp(y) == 0:  # one distinct value: no density shape to balance
        return LabelWeights(method, np.array([y[0]]), np.ones(1), None, "linear")
    low, high = value_range if value_range is not None else (float(y.min()), float(y.max()))
    grid = np.linspace(low, high, KDE_GRID_SIZE)
    density = gaussian_kde(y, bw_method=bandwidth or "silverman")(grid)
    if method == "kde":
        normalised = density / density.max()
    else:  # denseweight
        span = density.max() - density.min()
        normalised = (density - density.min()) / span if span > 0 else np.zeros_like(density)
    raw = np.maximum(1 - alpha * normalised, eps)
    scale = np.interp(y, grid, raw).mean()
    return LabelWeights(method, grid, raw / scale, None, "linear")


def _check_labels(labels: ArrayLike) -> NDArray[np.float64]:
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if y.size == 0:
        raise ValueError("cannot compute sample weights from an empty label array")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"labels must be finite; got {int((~np.isfinite(y)).sum())} NaN/inf")
    return y


def _edges(
    y: NDArray[np.float64], bins: int, value_range: tuple[float, float] | None
) -> NDArray[np.float64]:
    low, high = value_range if value_range is not None else (float(y.min()), float(y.max()))
    if not high > low:  # a single distinct label: one bin around it
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, bins + 1)
