"""Balanced calibration: re-balance a trained regressor after training.

A model trained with L2 predicts the mean label given the image under the training
label distribution, so its predictions shrink toward the frequent labels. Balanced
calibration learns a monotone map of its predictions on the validation split by
weighted isotonic regression, each validation label weighted by
``(1 / share of its training-label bin) ** alpha``: ``alpha = 0`` only recalibrates,
``alpha = 1`` aims at a uniform label distribution (the b-MAE's view). The post-hoc
counterpart of the density-weighted losses (cf. logit adjustment for classification,
Menon et al. 2021): no retraining, one fit per ``alpha``, and the model's ranking of
places is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import isotonic_regression

from metrics import bin_edges, bin_index


@dataclass(frozen=True)
class BalancedCalibration:
    """A fitted monotone map of predictions (piecewise linear between the knots,
    constant beyond them).

    Attributes:
        knots: the distinct validation predictions, increasing.
        values: the calibrated prediction at each knot (non-decreasing).
        alpha: the weighting strength it was fitted with.
    """

    knots: np.ndarray
    values: np.ndarray
    alpha: float

    @classmethod
    def fit(
        cls,
        pred: ArrayLike,
        target: ArrayLike,
        train_labels: ArrayLike,
        *,
        alpha: float,
        bins: int | Sequence[float] = 6,
        value_range: tuple[float, float] | None = None,
    ) -> BalancedCalibration:
        """Fit on validation predictions ``pred`` and labels ``target``.

        Args:
            train_labels: the training labels whose bin shares give the weights.
            alpha: weighting strength (0: plain isotonic recalibration).
            bins, value_range: the label bins (those of the b-MAE: equal-width over
                ``value_range``, or over the training labels' range when None).

        Raises:
            ValueError: for mismatched or empty inputs, or a negative ``alpha``.
        """
        p = np.asarray(pred, np.float64).ravel()
        t = np.asarray(target, np.float64).ravel()
        if p.size == 0 or p.size != t.size:
            raise ValueError(f"need as many predictions as labels (>0), got {p.size}, {t.size}")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        train = np.asarray(train_labels, np.float64).ravel()
        edges = bin_edges(bins, value_range, reference=train)
        counts = np.bincount(bin_index(train, edges), minlength=len(edges) - 1)
        share = np.maximum(counts, 1) / train.size  # a bin no training label fell in: 1
        weights = share[bin_index(t, edges)] ** -float(alpha)
        knots, at = np.unique(p, return_inverse=True)  # equal predictions: one block
        total = np.bincount(at, weights)
        mean = np.bincount(at, weights * t) / total
        return cls(knots, isotonic_regression(mean, weights=total).x, float(alpha))

    def __call__(self, pred: ArrayLike) -> np.ndarray:
        """The calibrated predictions."""
        return np.interp(np.asarray(pred, np.float64), self.knots, self.values)
