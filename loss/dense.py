"""DenseLoss (Steininger et al. 2021, "Density-based weighting for imbalanced regression").

A cost-sensitive MSE whose weight is a function of the target value: DenseWeight,
``w(y) = max(1 - a p'(y), eps)`` with ``p'`` the KDE density of the training labels
min-max normalised over the KDE grid, fitted by the authors' package ``denseweight``
(:func:`loss.weights.fit_label_weights`, ``method="denseweight"``). The fitted weight
of each grid point is stored as buffers (it travels in checkpoints) and looked up for
each batch's targets at the grid point at or below them, as the package does, so no
sample indices are needed.
"""

from __future__ import annotations

import torch
from numpy.typing import ArrayLike
from torch import Tensor, nn

from loss.regression import flatten_pair, weighted_mean
from loss.weights import fit_label_weights


class DenseLoss(nn.Module):
    """DenseLoss: ``mean(w(y) * (p - y)^2)``, DenseWeight ``w`` (Steininger et al. 2021).

    Args:
        train_labels: the training labels the density is estimated on.
        alpha: DenseWeight's ``a`` (0 = plain MSE).
        eps: the smallest weight (the package's default, 1e-6).
        bandwidth: the package's KDE bandwidth (None = Silverman's rule, its default).
    """

    def __init__(
        self,
        train_labels: ArrayLike,
        alpha: float = 1.0,
        eps: float = 1e-6,
        bandwidth: float | str | None = None,
    ) -> None:
        super().__init__()
        fitted = fit_label_weights(
            train_labels, "denseweight", alpha=alpha, eps=eps, bandwidth=bandwidth
        )
        self.register_buffer("grid", torch.tensor(fitted.grid, dtype=torch.float32))
        self.register_buffer("grid_weights", torch.tensor(fitted.values, dtype=torch.float32))

    def label_weights(self, target: Tensor) -> Tensor:
        """DenseWeight of each target value (the weight of the grid point at or below it)."""
        index = torch.bucketize(target.reshape(-1).to(self.grid.dtype), self.grid, right=True)
        return self.grid_weights[(index - 1).clamp(0, self.grid.numel() - 1)]

    def forward(self, pred: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
        pred, target = flatten_pair(pred, target)
        dense = self.label_weights(target).to(pred.dtype)
        if weights is not None:
            dense = dense * weights.reshape(-1).to(pred.dtype)
        return weighted_mean((pred - target) ** 2, dense)
