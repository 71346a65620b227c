"""Per-sample weights from the training labels' density (imbalanced regression).

One entry point, :func:`sample_weights` (``method`` picks the estimator), and its
reusable form :func:`fit_label_weights`, which returns a :class:`LabelWeights` that maps
any label value to its weight (DenseLoss uses it on the targets of each batch).
Weights are normalised to mean 1 over the training labels, so a weighted loss keeps
the scale of the unweighted one.

A name after a paper computes what its authors' code computes (``a`` is ``alpha``):

* ``"none"``: every weight 1.
* ``"kde"`` (the original study, ``lhmtrinh/Remote-Sensing-VisionDL``
  ``loss/dense_weight.py``): ``p`` = ``scipy.stats.gaussian_kde`` of the training labels
  (Scott's bandwidth, scipy's default) at each label, min-max normalised over the
  training labels, ``p' = (p - min p) / (max p - min p)``; ``w = max(1 - a p', 1e-4)``.
* ``"denseweight"`` (Steininger et al. 2021; the authors' package ``denseweight``, which
  fits it): KDEpy ``FFTKDE`` (Silverman's rule ``1.06 sd n^-1/5``) on a 4,096-point
  grid that reaches past the labels, min-max normalised over that grid, looked up at
  the grid point at or below the label; ``w = max(1 - a p', 1e-6)``.
* ``"lds"`` (label-distribution smoothing, Yang et al. 2021; DIR's code,
  ``YyzHarry/imbalanced-regression`` ``agedb-dir/datasets.py`` ``_prepare_weights`` and
  ``utils.py`` ``get_lds_kernel_window``): bin counts ``c``, transformed, then
  convolved with DIR's window (zero outside the bins), ``w = 1 / smoothed``. ``a = 0.5``
  is DIR's ``sqrt_inv`` (its default): the square root of the counts is smoothed;
  ``a = 1`` is DIR's ``inverse``: the counts, every bin (empty ones too) clipped to
  ``[5, 1000]``, are smoothed. DIR's defaults: Gaussian window, ``ks = 5`` bins,
  ``sigma = 2``. A bin here is one of ``bins`` equal-width intervals of the training
  labels' range (``value_range`` to fix it); DIR bins integer ages, one bin per year
  from 0 to 120 (``bins=121, value_range=(0, 121)`` reproduces it).
* ``"smoothed_inverse"`` (a variant, not DIR's): the bin counts convolved with the
  exact sampled window normalised to sum 1, ``w = smoothed^-a`` (the root taken after
  smoothing, nothing clipped).
* ``"inverse"``: ``w = count(bin)^-a`` (``a = 0.5``: square-root inverse frequency).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

WeightMethod = Literal["none", "kde", "denseweight", "inverse", "lds", "smoothed_inverse"]
Kernel = Literal["gaussian", "laplace", "triangular"]

WEIGHT_METHODS: tuple[str, ...] = (
    "none",
    "kde",
    "denseweight",
    "inverse",
    "lds",
    "smoothed_inverse",
)
KERNELS: tuple[str, ...] = ("gaussian", "laplace", "triangular")

#: Bumped when a method's definition changes (study caches key on it).
WEIGHTS_VERSION = 2
#: DIR's two LDS re-weightings, by ``alpha``: the transform of the bin counts before smoothing.
LDS_REWEIGHT: dict[float, str] = {0.5: "sqrt_inv", 1.0: "inverse"}
#: DIR clips the bin counts of its ``inverse`` re-weighting to this range.
LDS_INVERSE_CLIP: tuple[float, float] = (5.0, 1000.0)
#: Smallest weight of each KDE method (the original study's, the ``denseweight`` package's).
KDE_EPS: dict[str, float] = {"kde": 1e-4, "denseweight": 1e-6}
#: Points of the ``kde`` lookup grid (the training labels are added to it, so exact there).
KDE_GRID_SIZE = 1024
#: Grid points of the ``denseweight`` package's FFTKDE (its ``fit`` default).
DENSEWEIGHT_GRID_POINTS = 4096


@dataclass(frozen=True)
class LabelWeights:
    """A fitted label -> weight function.

    Attributes:
        method: the estimator that produced it.
        grid: bin centres or grid points (``kind="step"``) or KDE evaluation points
            (``kind="linear"``).
        values: the weight at each grid point, already scaled so that the weights of
            the training labels have mean 1.
        edges: left edges and a last right edge (``kind="step"``), else None.
        kind: ``"step"`` (the value of the interval ``[edges[i], edges[i+1])`` holding
            the label; labels outside count in the edge intervals) or ``"linear"``
            (interpolated, constant outside the grid).
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


def kernel_window(
    kernel: Kernel,
    *,
    sigma: float,
    window: int,
    exact: bool = False,
    normalise: Literal["sum", "max"] = "sum",
) -> NDArray[np.float64]:
    """A symmetric smoothing window over ``window`` bins (odd; DIR's ``ks``).

    ``k`` is the bin offset, ``h = window // 2``. ``gaussian``: DIR's window (``exact``
    False), ``scipy.ndimage.gaussian_filter1d`` of a unit impulse over the ``window``
    taps (scipy's defaults: reflect at the border, truncated at 4 sigma), so the tails
    fold back and at DIR's ``window=5, sigma=2`` it is nearly flat; ``exact``: the
    sampled ``exp(-k^2 / 2 sigma^2)``. ``laplace``: ``exp(-|k| / sigma)``;
    ``triangular``: ``1 - |k| / (h + 1)`` (scipy's ``triang``); both are DIR's too.
    ``normalise``: divide by the sum (DIR's FDS) or by the maximum (DIR's LDS).
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"kernel window must be a positive odd number of bins, got {window}")
    if sigma <= 0:
        raise ValueError(f"kernel sigma must be > 0 (in bins), got {sigma}")
    if normalise not in ("sum", "max"):
        raise ValueError(f"normalise must be 'sum' or 'max', got {normalise!r}")
    half = window // 2
    k = np.arange(-half, half + 1, dtype=np.float64)
    if kernel == "gaussian" and not exact:
        from scipy.ndimage import gaussian_filter1d  # noqa: PLC0415 (slow to import)

        w = gaussian_filter1d((k == 0).astype(np.float64), sigma=sigma)
    elif kernel == "gaussian":
        w = np.exp(-(k**2) / (2 * sigma**2))
    elif kernel == "laplace":
        w = np.exp(-np.abs(k) / sigma)
    elif kernel == "triangular":
        w = 1 - np.abs(k) / (half + 1)
    else:
        raise ValueError(f"unknown kernel {kernel!r}; valid: {', '.join(KERNELS)}")
    return w / (w.sum() if normalise == "sum" else w.max())


def bin_counts(
    labels: ArrayLike, *, bins: int, value_range: tuple[float, float] | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Counts of the training labels in ``bins`` equal-width bins; ``(counts, edges)``."""
    y = _check_labels(labels)
    edges = _edges(y, bins, value_range)
    return np.bincount(bin_index(y, edges), minlength=bins).astype(np.float64), edges


def smooth_bins(values: NDArray[np.float64], window: NDArray[np.float64]) -> NDArray[np.float64]:
    """``values`` (one per bin) convolved with ``window``, zero beyond the end bins."""
    from scipy.ndimage import convolve1d  # noqa: PLC0415 (slow to import)

    return convolve1d(np.asarray(values, np.float64), window, mode="constant")


def smoothed_histogram(
    labels: ArrayLike,
    *,
    bins: int,
    kernel: Kernel = "gaussian",
    sigma: float = 2.0,
    window: int = 5,
    value_range: tuple[float, float] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The ``smoothed_inverse`` density: counts convolved with the exact window (sum 1).

    Zero-padded at both ends (the effective density of Yang et al. 2021).
    Returns ``(smoothed, edges)``.
    """
    counts, edges = bin_counts(labels, bins=bins, value_range=value_range)
    window_ = kernel_window(kernel, sigma=sigma, window=window, exact=True)
    return smooth_bins(counts, window_), edges


def lds_density(
    labels: ArrayLike,
    *,
    alpha: float = 0.5,
    bins: int = 50,
    kernel: Kernel = "gaussian",
    sigma: float = 2.0,
    window: int = 5,
    value_range: tuple[float, float] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """DIR's smoothed bin value (the LDS weight is its inverse); ``(smoothed, edges)``.

    ``alpha=0.5``: DIR's ``sqrt_inv``, ``smooth(sqrt(counts))``; ``alpha=1``: DIR's
    ``inverse``, ``smooth(clip(counts, 5, 1000))``. The window is DIR's
    ``get_lds_kernel_window`` (:func:`kernel_window`, ``normalise="max"``).
    """
    if alpha not in LDS_REWEIGHT:
        raise ValueError(
            f"DIR's LDS has alpha 0.5 (sqrt_inv) or 1 (inverse), got {alpha}; "
            "use method='smoothed_inverse' for other strengths"
        )
    counts, edges = bin_counts(labels, bins=bins, value_range=value_range)
    if LDS_REWEIGHT[alpha] == "sqrt_inv":
        transformed = np.sqrt(counts)
    else:
        transformed = np.clip(counts, *LDS_INVERSE_CLIP)
    window_ = kernel_window(kernel, sigma=sigma, window=window, normalise="max")
    return smooth_bins(transformed, window_), edges


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
    eps: float | None = None,
    value_range: tuple[float, float] | None = None,
) -> LabelWeights:
    """Fit the label -> weight function of ``method`` on the training ``labels``.

    Args:
        labels: training labels, shape ``(N,)``.
        method: one of :data:`WEIGHT_METHODS` (see the module docstring).
        alpha: strength ``a``; 0 gives uniform weights. ``"lds"``: 0.5 (DIR's
            ``sqrt_inv``) or 1 (DIR's ``inverse``).
        bins: number of equal-width bins over the labels' range (``"inverse"``,
            ``"lds"``, ``"smoothed_inverse"``).
        kernel: LDS kernel, one of :data:`KERNELS` (DIR's default: gaussian).
        sigma: LDS kernel width, in bins (DIR's default: 2).
        window: LDS kernel window length, in bins, odd (DIR's ``ks``, default 5).
        bandwidth: KDE bandwidth; None = the reference's default. ``"kde"``: scipy
            ``gaussian_kde`` ``bw_method`` (a factor, ``"scott"``, ``"silverman"``;
            default Scott); ``"denseweight"``: the package's ``bandwidth`` (the kernel's
            standard deviation or a KDEpy rule name; default Silverman's rule).
        eps: the smallest weight before normalisation (``"kde"``, ``"denseweight"``);
            None = :data:`KDE_EPS` (1e-4 the original study's, 1e-6 the package's).
        value_range: ``(low, high)`` of the bins / ``kde`` grid; default the labels' range.

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
    if method in ("kde", "denseweight"):
        eps = KDE_EPS[method] if eps is None else eps
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if np.ptp(y) == 0 or alpha == 0:  # no density shape to balance
            return LabelWeights(method, np.array([y[0]]), np.ones(1), None, "linear")
        fit = _fit_kde if method == "kde" else _fit_denseweight
        return fit(y, alpha=alpha, bandwidth=bandwidth, eps=eps, value_range=value_range)
    edges = _edges(y, 1 if method == "none" or alpha == 0 else bins, value_range)
    if method == "none" or alpha == 0:
        density = np.ones(1)
    elif method == "inverse":
        density = bin_counts(y, bins=bins, value_range=value_range)[0] ** alpha
    elif method == "lds":
        density, _ = lds_density(
            y,
            alpha=alpha,
            bins=bins,
            kernel=kernel,
            sigma=sigma,
            window=window,
            value_range=value_range,
        )
    else:  # smoothed_inverse
        smoothed, _ = smoothed_histogram(
            y, bins=bins, kernel=kernel, sigma=sigma, window=window, value_range=value_range
        )
        density = smoothed**alpha
    with np.errstate(divide="ignore"):
        raw = np.where(density > 0, 1 / np.where(density > 0, density, 1), np.nan)
    values = raw / np.mean(raw[bin_index(y, edges)])
    # a bin without density (only reachable by labels not in the training set) gets
    # the weight of the rarest bin
    values = np.where(np.isnan(values), np.nanmax(values), values)
    centres = (edges[:-1] + edges[1:]) / 2
    return LabelWeights(method, centres, values, edges, "step")


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
    eps: float | None = None,
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
    *,
    alpha: float,
    bandwidth: float | str | None,
    eps: float,
    value_range: tuple[float, float] | None,
) -> LabelWeights:
    """The original study's weights; exact at the training labels (they are grid points)."""
    from scipy.stats import gaussian_kde  # noqa: PLC0415 (scipy.stats is slow to import)

    kde = gaussian_kde(y, bw_method=bandwidth)  # None: Scott, scipy's default
    at_labels = kde(y)
    low, high = value_range if value_range is not None else (float(y.min()), float(y.max()))
    grid = np.unique(np.concatenate([np.linspace(low, high, KDE_GRID_SIZE), y]))
    span = at_labels.max() - at_labels.min()
    normalised = (kde(grid) - at_labels.min()) / span if span > 0 else np.zeros_like(grid)
    raw = np.maximum(1 - alpha * normalised, eps)
    scale = np.interp(y, grid, raw).mean()
    return LabelWeights("kde", grid, raw / scale, None, "linear")


def _fit_denseweight(
    y: NDArray[np.float64],
    *,
    alpha: float,
    bandwidth: float | str | None,
    eps: float,
    value_range: tuple[float, float] | None,
) -> LabelWeights:
    """The ``denseweight`` package's fit, as a step function over its KDE grid."""
    if value_range is not None:
        raise ValueError("denseweight fits its own grid; value_range is not an option of it")
    from denseweight import DenseWeight  # noqa: PLC0415 (imports scikit-learn)

    dense = DenseWeight(alpha=alpha, bandwidth=bandwidth, eps=eps)
    dense.fit(y, grid_points=DENSEWEIGHT_GRID_POINTS)
    grid = np.asarray(dense.x, np.float64)
    values = np.maximum(1 - alpha * np.asarray(dense.y_dens_grid), eps) / dense.mean_w_star
    # the package looks a label up at the grid point at or below it (its ``bisection``)
    edges = np.append(grid, np.inf)
    return LabelWeights("denseweight", grid, values, edges, "step")


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
