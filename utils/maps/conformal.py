"""Split-conformal prediction intervals for a trained regressor (docs/maps.md).

Calibrated on a held-out split (validation) that the model did not train on, with the
absolute residual ``|y - f(x)|`` as the score (Vovk et al. 2005; Lei et al. 2018,
"Distribution-free predictive inference for regression"):

* ``plain``: one quantile ``q`` of all calibration scores, interval ``f(x) +- q``.
  If calibration and new places are exchangeable, ``P(y in interval) >= coverage``
  on average over places (marginal coverage).
* ``mondrian``: label-conditional (Mondrian) conformal over ``K`` equal-width label bins
  (Vovk et al. 2005, ch. 4; the regression twin of class-conditional conformal): bin
  ``b`` has its own quantile ``q_b`` of the scores of the calibration places whose label
  lies in ``b``; the prediction set is every value ``y`` with ``|y - f(x)| <= q_bin(y)``
  and the interval is that set's hull. If the places of each bin are exchangeable with
  the calibration places of that bin, ``P(y in interval | y in bin b) >= coverage`` for
  every bin: the rare poor bins, where a regressor's errors are large, get the wide
  intervals they need instead of borrowing the narrow ones of the common bins. A bin
  with too few calibration places for a finite quantile is merged with its neighbours;
  the guarantee then holds for the merged bins together. (The set can have gaps; its
  hull, the interval, covers at least as often, more in the bins next to a bin with
  wide errors.)

Neither guarantees coverage for one given place, nor under a shift between calibration
and new places (other regions, years, sensors), nor independently for neighbours:
nearby cells share errors (spatial correlation), so the share covered over a small area
scatters far more than a binomial count would. See docs/maps.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from metrics import bin_index as label_bin  # outside the range: the edge bins

METHODS: tuple[str, ...] = ("plain", "mondrian")


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The ``ceil((n + 1) * coverage)``-th smallest score (inf when that exceeds ``n``)."""
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    scores = np.sort(np.asarray(scores, np.float64))
    k = math.ceil((len(scores) + 1) * coverage)
    return float(scores[k - 1]) if k <= len(scores) else math.inf


def merge_sparse_bins(counts: np.ndarray, min_count: int) -> list[list[int]]:
    """Runs of adjacent bins, each holding at least ``min_count`` of ``counts`` (unless all
    together hold fewer): the sparsest run is merged with its smaller neighbour until none
    is short."""
    groups = [[b] for b in range(len(counts))]
    sizes = [int(c) for c in counts]
    while len(groups) > 1 and min(sizes) < min_count:
        i = int(np.argmin(sizes))
        j = i + 1 if i == 0 or (i + 1 < len(groups) and sizes[i + 1] < sizes[i - 1]) else i - 1
        lo, hi = min(i, j), max(i, j)
        groups[lo : hi + 1] = [groups[lo] + groups[hi]]
        sizes[lo : hi + 1] = [sizes[lo] + sizes[hi]]
    return groups


@dataclass
class Conformal:
    """A fitted split-conformal interval maker (see the module docstring).

    Attributes:
        method: ``"plain"`` or ``"mondrian"``.
        coverage: target coverage (0.9: 90 % of places inside their interval).
        edges: label bin edges (K + 1), from the training labels' range.
        quantiles: ``q`` (one value for plain, one per bin for mondrian).
        counts: calibration places per bin.
        groups: Mondrian categories: runs of adjacent bins merged until each holds
            ``min_count`` calibration places (the guarantee holds per group).
    """

    method: str
    coverage: float
    edges: np.ndarray
    quantiles: np.ndarray
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    groups: list[list[int]] = field(default_factory=list)  # Mondrian: bins sharing a q

    @classmethod
    def fit(
        cls,
        predictions: np.ndarray,
        labels: np.ndarray,
        *,
        method: str = "mondrian",
        coverage: float = 0.9,
        edges: np.ndarray | None = None,
        bins: int = 6,
        min_count: int | None = None,
    ) -> Conformal:
        """Calibrate on held-out ``predictions`` and their ``labels``.

        Args:
            method: ``"plain"`` or ``"mondrian"``.
            coverage: target coverage in (0, 1).
            edges: label bin edges; default ``bins`` equal-width bins over ``labels``.
            bins: number of bins when ``edges`` is None.
            min_count: fewest calibration places of a Mondrian group; a bin with fewer is
                merged with its neighbours (default ``ceil(coverage / (1 - coverage))``,
                9 at 90 %: the fewest that give a finite quantile).
        """
        if method not in METHODS:
            raise ValueError(f"unknown interval method {method!r}; valid: {', '.join(METHODS)}")
        pred, y = np.asarray(predictions, np.float64), np.asarray(labels, np.float64)
        keep = np.isfinite(pred) & np.isfinite(y)
        pred, y = pred[keep], y[keep]
        if not len(y):
            raise ValueError("no calibration place with a finite label and prediction")
        if edges is None:
            edges = np.linspace(y.min(), y.max() if y.max() > y.min() else y.min() + 1, bins + 1)
        edges = np.asarray(edges, np.float64)
        scores = np.abs(y - pred)
        which = label_bin(y, edges)
        counts = np.bincount(which, minlength=len(edges) - 1)
        if method == "plain":
            return cls(
                method,
                float(coverage),
                edges,
                np.array([conformal_quantile(scores, coverage)]),
                counts,
            )
        groups = merge_sparse_bins(counts, min_count or math.ceil(coverage / (1 - coverage)))
        quantiles = np.empty(len(counts))
        for group in groups:
            quantiles[group] = conformal_quantile(scores[np.isin(which, group)], coverage)
        return cls(method, float(coverage), edges, quantiles, counts, groups)

    def interval(self, predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds for ``predictions``.

        A bin whose calibration places are too few for the coverage (``q_b`` infinite)
        contributes the whole bin: its bounds are the bin edges; an edge bin, unbounded
        outward, stops at the label range or the prediction, whichever is further out (a
        finite stand-in, honest inside the label range).
        """
        pred = np.asarray(predictions, np.float64)
        outer_low, outer_high = np.minimum(pred, self.edges[0]), np.maximum(pred, self.edges[-1])
        if self.method == "plain":
            q = self.quantiles[0]
            return (outer_low, outer_high) if math.isinf(q) else (pred - q, pred + q)
        k = len(self.edges) - 1
        low, high = np.full_like(pred, np.inf), np.full_like(pred, -np.inf)
        for b, q in enumerate(self.quantiles):
            if math.isinf(q):
                lo = outer_low if b == 0 else np.full_like(pred, self.edges[b])
                hi = outer_high if b == k - 1 else np.full_like(pred, self.edges[b + 1])
            else:
                lo = pred - q if b == 0 else np.maximum(pred - q, self.edges[b])
                hi = pred + q if b == k - 1 else np.minimum(pred + q, self.edges[b + 1])
            some = lo <= hi
            low = np.where(some, np.minimum(low, lo), low)
            high = np.where(some, np.maximum(high, hi), high)
        return low, high

    def contains(self, predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Whether each label lies in its conformal *set* (``|y - f(x)| <= q_bin(y)``; for
        plain, the interval itself): the event the guarantee is about. The interval, the
        set's hull, holds it too and may hold more (near a bin with wide errors)."""
        pred, y = np.asarray(predictions, np.float64), np.asarray(labels, np.float64)
        if self.method == "plain":
            low, high = self.interval(pred)
            return (low <= y) & (y <= high)
        which = label_bin(y, self.edges)
        q = self.quantiles[which]
        inside_bin = (self.edges[which] <= y) & (y <= self.edges[which + 1])
        return np.where(np.isinf(q), inside_bin, np.abs(y - pred) <= q)

    def to_dict(self) -> dict:
        """JSON-able description (for ``intervals.json``)."""
        return {
            "method": self.method,
            "coverage": self.coverage,
            "edges": self.edges.tolist(),
            "quantiles": [None if math.isinf(q) else float(q) for q in self.quantiles],
            "calibration_counts": self.counts.astype(int).tolist(),
            "groups": [list(map(int, g)) for g in self.groups],
        }


def coverage_report(conformal: Conformal, predictions: np.ndarray, labels: np.ndarray) -> dict:
    """Share of places inside their interval (``coverage``) and inside their conformal set
    (``set_coverage``, what is guaranteed; equal for plain), overall and per label bin,
    with the mean interval width, on places with labels (e.g. the test split).

    Also gives the binomial sampling error of each share, ``sqrt(c (1 - c) / n)``: a share
    more than about two of them from the target is suspect (if places are independent;
    neighbouring cells are not, see the module docstring).
    """
    pred, y = np.asarray(predictions, np.float64), np.asarray(labels, np.float64)
    keep = np.isfinite(pred) & np.isfinite(y)
    pred, y = pred[keep], y[keep]
    low, high = conformal.interval(pred)
    inside = (low <= y) & (y <= high)
    in_set = conformal.contains(pred, y)
    which = label_bin(y, conformal.edges)
    target = conformal.coverage
    per_bin = []
    for b in range(len(conformal.edges) - 1):
        mask = which == b
        n = int(mask.sum())
        per_bin.append(
            {
                "bin": b,
                "low": float(conformal.edges[b]),
                "high": float(conformal.edges[b + 1]),
                "n": n,
                "coverage": float(inside[mask].mean()) if n else None,
                "set_coverage": float(in_set[mask].mean()) if n else None,
                "mean_width": float((high - low)[mask].mean()) if n else None,
                "sampling_error": math.sqrt(target * (1 - target) / n) if n else None,
            }
        )
    n = len(y)
    return {
        "method": conformal.method,
        "target": target,
        "n": n,
        "coverage": float(inside.mean()) if n else None,
        "set_coverage": float(in_set.mean()) if n else None,
        "mean_width": float((high - low).mean()) if n else None,
        "sampling_error": math.sqrt(target * (1 - target) / n) if n else None,
        "per_bin": per_bin,
    }
