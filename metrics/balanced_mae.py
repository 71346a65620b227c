"""Balanced MAE and the other regression metrics (docs/design.md).

The balanced MAE (b-MAE) splits the label range into ``K`` bins (equal width by
default, K=6 over (0.28095, 3.09452) in the original study; or quantile bins), takes
the MAE inside each bin and averages the bins, so that the rare (poorest) places weigh
as much as the common ones. Labels outside the range count in the nearest edge bin,
as the original did. Bins that hold no sample are reported, never silently NaN-ed.

Many/medium/few-shot MAE follow the DIR convention (Yang et al. 2021, "Delving into
Deep Imbalanced Regression"): a bin is *many*-shot with more than ``many`` training
samples, *few*-shot with fewer than ``few``, *medium* otherwise.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Label range of the original study's Vietnamese wealth index.
ORIGINAL_RANGE: tuple[float, float] = (0.28095, 3.09452)
#: Number of bins of the original study's balanced MAE.
ORIGINAL_BINS = 6
#: DIR shot thresholds: many-shot bins hold > MANY_SHOT train samples, few-shot < FEW_SHOT.
MANY_SHOT = 100
FEW_SHOT = 20

ArrayLike = Any  # numpy array, torch tensor, list


def as_numpy(values: ArrayLike) -> np.ndarray:
    """A flat float64 NumPy copy of a tensor (any device, with grad) or array-like."""
    if hasattr(values, "detach"):  # torch.Tensor, without importing torch here
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _pair(pred: ArrayLike, target: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, t = as_numpy(pred), as_numpy(target)
    if p.shape != t.shape:
        raise ValueError(f"pred and target differ in size: {p.size} vs {t.size}")
    return p, t


def bin_edges(
    bins: int | Sequence[float],
    value_range: tuple[float, float] | None = None,
    *,
    reference: ArrayLike | None = None,
    quantile: bool = False,
) -> np.ndarray:
    """Bin edges (K+1 increasing values).

    Args:
        bins: number of bins K, or the edges themselves.
        value_range: (low, high) for equal-width bins; None takes the min/max of
            ``reference``.
        reference: labels the range or the quantiles come from (the training labels).
        quantile: bins holding equal shares of ``reference`` instead of equal widths.

    Raises:
        ValueError: when neither a range nor reference labels are given, or for bad bins.
    """
    if not isinstance(bins, int | np.integer):
        edges = np.asarray(bins, dtype=np.float64)
        if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
            raise ValueError(f"bin edges must be >= 2 increasing values, got {list(edges)}")
        return edges
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if quantile:
        if reference is None:
            raise ValueError("quantile bins need reference labels (the training labels)")
        ref = as_numpy(reference)
        edges = np.quantile(ref, np.linspace(0.0, 1.0, bins + 1))
        if np.any(np.diff(edges) <= 0):
            raise ValueError(f"{bins} quantile bins collapse on tied labels: edges {edges}")
        return edges
    if value_range is None:
        if reference is None:
            raise ValueError("give value_range or reference labels to derive it from")
        ref = as_numpy(reference)
        value_range = (float(ref.min()), float(ref.max()))
    low, high = float(value_range[0]), float(value_range[1])
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    return np.linspace(low, high, bins + 1)


def bin_index(target: ArrayLike, edges: np.ndarray) -> np.ndarray:
    """Bin of each label: bins are [e_k, e_k+1), the last one closed; values outside
    the range go to the nearest edge bin."""
    return np.searchsorted(edges[1:-1], as_numpy(target), side="right")


@dataclass(frozen=True)
class BalancedMAEResult:
    """Outcome of :meth:`BalancedMAE.compute`.

    Attributes:
        value: mean of the per-bin MAEs over the non-empty bins.
        per_bin: MAE of each bin, NaN where the bin is empty (see ``empty``).
        counts: number of samples per bin.
        edges: the K+1 bin edges.
        empty: indices of the bins that held no sample.
    """

    value: float
    per_bin: np.ndarray
    counts: np.ndarray
    edges: np.ndarray
    empty: tuple[int, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``None`` for empty bins)."""
        return {
            "bmae": self.value,
            "per_bin_mae": [
                None if k in self.empty else float(v) for k, v in enumerate(self.per_bin)
            ],
            "bin_counts": [int(c) for c in self.counts],
            "bin_edges": [float(e) for e in self.edges],
            "empty_bins": list(self.empty),
        }


class BalancedMAE:
    """Streaming balanced MAE: ``update(pred, target)`` per batch, then ``compute()``.

    Args:
        bins: number of bins (or explicit edges).
        value_range: (low, high) of the equal-width bins; the original study's range by
            default. None: taken from ``reference`` or, failing that, from the targets
            seen (then the result depends on the evaluated data; prefer a fixed range).
        quantile: quantile bins of ``reference`` instead of equal widths.
        reference: training labels for a derived range or quantile bins.
        warn_empty: emit a warning naming the empty bins in ``compute``.
    """

    def __init__(
        self,
        bins: int | Sequence[float] = ORIGINAL_BINS,
        value_range: tuple[float, float] | None = ORIGINAL_RANGE,
        quantile: bool = False,
        *,
        reference: ArrayLike | None = None,
        warn_empty: bool = True,
    ) -> None:
        self.bins = bins
        self.value_range = value_range
        self.quantile = quantile
        self.warn_empty = warn_empty
        self.edges: np.ndarray | None = None
        if not isinstance(bins, int | np.integer) or quantile or value_range is not None:
            self.edges = bin_edges(bins, value_range, reference=reference, quantile=quantile)
        elif reference is not None:
            self.edges = bin_edges(bins, None, reference=reference)
        self.reset()

    def reset(self) -> None:
        """Forget every update."""
        n_bins = len(self.edges) - 1 if self.edges is not None else 0
        self._abs_sum = np.zeros(n_bins)
        self._count = np.zeros(n_bins, dtype=np.int64)
        self._buffer: list[tuple[np.ndarray, np.ndarray]] = []  # when edges are not known yet

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add a batch of predictions and labels (tensors, arrays or lists)."""
        p, t = _pair(pred, target)
        if self.edges is None:
            self._buffer.append((p, t))
            return
        idx = bin_index(t, self.edges)
        self._abs_sum += np.bincount(idx, np.abs(p - t), minlength=len(self._count))
        self._count += np.bincount(idx, minlength=len(self._count))

    def compute(self) -> BalancedMAEResult:
        """The balanced MAE of everything added since the last ``reset``.

        Raises:
            ValueError: when no sample was added.
        """
        abs_sum, count, edges = self._abs_sum, self._count, self.edges
        if edges is None:
            if not self._buffer:
                raise ValueError("BalancedMAE.compute() before any update()")
            p = np.concatenate([b[0] for b in self._buffer])
            t = np.concatenate([b[1] for b in self._buffer])
            edges = bin_edges(self.bins, None, reference=t)
            idx = bin_index(t, edges)
            abs_sum = np.bincount(idx, np.abs(p - t), minlength=len(edges) - 1)
            count = np.bincount(idx, minlength=len(edges) - 1)
        if count.sum() == 0:
            raise ValueError("BalancedMAE.compute() before any update()")
        per_bin = np.full(len(count), np.nan)
        filled = count > 0
        per_bin[filled] = abs_sum[filled] / count[filled]
        empty = tuple(int(k) for k in np.flatnonzero(~filled))
        if empty and self.warn_empty:
            warnings.warn(
                f"balanced MAE: bin(s) {list(empty)} of edges {np.round(edges, 5).tolist()} "
                "hold no sample; averaged over the other bins",
                stacklevel=2,
            )
        return BalancedMAEResult(
            float(per_bin[filled].mean()), per_bin, count.copy(), edges.copy(), empty
        )


def balanced_mae(
    pred: ArrayLike,
    target: ArrayLike,
    bins: int | Sequence[float] = ORIGINAL_BINS,
    value_range: tuple[float, float] | None = ORIGINAL_RANGE,
    *,
    quantile: bool = False,
    reference: ArrayLike | None = None,
) -> float:
    """One-shot balanced MAE (see :class:`BalancedMAE`)."""
    return per_bin_mae(
        pred, target, bins, value_range, quantile=quantile, reference=reference
    ).value


def mae(pred: ArrayLike, target: ArrayLike) -> float:
    """Mean absolute error."""
    p, t = _pair(pred, target)
    return float(np.mean(np.abs(p - t)))


def rmse(pred: ArrayLike, target: ArrayLike) -> float:
    """Root mean squared error."""
    p, t = _pair(pred, target)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def r2(pred: ArrayLike, target: ArrayLike) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot (as scikit-learn's ``r2_score``);
    NaN when the targets are constant."""
    p, t = _pair(pred, target)
    ss_tot = np.sum((t - t.mean()) ** 2)
    if ss_tot == 0:
        return float("nan")
    return float(1.0 - np.sum((t - p) ** 2) / ss_tot)


def pearson_r(pred: ArrayLike, target: ArrayLike) -> float:
    """Pearson correlation; NaN when either side is constant."""
    p, t = _pair(pred, target)
    dp, dt = p - p.mean(), t - t.mean()
    denom = np.sqrt(np.sum(dp**2) * np.sum(dt**2))
    return float(np.sum(dp * dt) / denom) if denom > 0 else float("nan")


def per_bin_mae(
    pred: ArrayLike,
    target: ArrayLike,
    bins: int | Sequence[float] = ORIGINAL_BINS,
    value_range: tuple[float, float] | None = ORIGINAL_RANGE,
    *,
    quantile: bool = False,
    reference: ArrayLike | None = None,
) -> BalancedMAEResult:
    """MAE of each bin, with counts, edges and the empty bins (no warning)."""
    metric = BalancedMAE(bins, value_range, quantile, reference=reference, warn_empty=False)
    metric.update(pred, target)
    return metric.compute()


def shot_mae(
    pred: ArrayLike,
    target: ArrayLike,
    train_labels: ArrayLike,
    bins: int | Sequence[float] = ORIGINAL_BINS,
    many: int = MANY_SHOT,
    few: int = FEW_SHOT,
    *,
    value_range: tuple[float, float] | None = ORIGINAL_RANGE,
) -> dict[str, float | int]:
    """Many/medium/few-shot MAE (DIR convention).

    A bin is many-shot when it holds more than ``many`` training labels, few-shot when
    fewer than ``few``, medium otherwise; each MAE is the mean over the evaluated samples
    whose label falls in such bins (NaN, with ``*_n`` = 0, when there are none).

    Returns:
        ``many_mae, medium_mae, few_mae`` and the sample counts ``many_n, medium_n, few_n``.
    """
    p, t = _pair(pred, target)
    edges = bin_edges(bins, value_range, reference=train_labels)
    train_counts = np.bincount(bin_index(train_labels, edges), minlength=len(edges) - 1)
    shot = np.where(train_counts > many, 0, np.where(train_counts < few, 2, 1))
    sample_shot = shot[bin_index(t, edges)]
    err = np.abs(p - t)
    out: dict[str, float | int] = {}
    for code, name in enumerate(("many", "medium", "few")):
        mask = sample_shot == code
        out[f"{name}_mae"] = float(err[mask].mean()) if mask.any() else float("nan")
        out[f"{name}_n"] = int(mask.sum())
    return out


def regression_report(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    train_labels: ArrayLike | None = None,
    bins: int | Sequence[float] = ORIGINAL_BINS,
    value_range: tuple[float, float] | None = ORIGINAL_RANGE,
    quantile: bool = False,
    many: int = MANY_SHOT,
    few: int = FEW_SHOT,
) -> dict[str, Any]:
    """Every metric of docs/design.md in one dict.

    Args:
        pred, target: predictions and labels.
        train_labels: training labels: the reference of a derived range or quantile
            bins and the counts behind the shot MAEs (omitted when not given).
        bins, value_range, quantile: the b-MAE bins (see :class:`BalancedMAE`).
        many, few: shot thresholds.

    Returns:
        ``bmae, mae, rmse, r2, pearson_r, n`` (floats/int), ``per_bin_mae`` (list, None
        for empty bins), ``bin_counts``, ``bin_edges``, ``empty_bins`` and, with
        ``train_labels``, ``many_mae, medium_mae, few_mae, many_n, medium_n, few_n``.
    """
    p, t = _pair(pred, target)
    reference = train_labels if train_labels is not None else None
    if value_range is None and reference is None:
        reference = t
    binned = per_bin_mae(p, t, bins, value_range, quantile=quantile, reference=reference)
    report: dict[str, Any] = {
        "bmae": binned.value,
        "mae": mae(p, t),
        "rmse": rmse(p, t),
        "r2": r2(p, t),
        "pearson_r": pearson_r(p, t),
        "n": int(p.size),
    }
    if train_labels is not None:
        report.update(shot_mae(p, t, train_labels, binned.edges, many, few))
    report.update({k: v for k, v in binned.to_dict().items() if k != "bmae"})
    return report


def scalar_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The scalar entries of a :func:`regression_report` (for CSV/TensorBoard rows)."""
    return {
        k: float(v)
        for k, v in report.items()
        if isinstance(v, int | float | np.floating | np.integer) and not isinstance(v, bool)
    }
