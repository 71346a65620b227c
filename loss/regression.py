"""Point-wise regression losses with one interface.

Every loss here is a pure function ``(pred, target, weights=None) -> Tensor``:

* ``pred`` and ``target`` hold one value per sample, shape ``(N,)`` (``(N, 1)`` is
  accepted and flattened);
* ``weights`` (optional, shape ``(N,)``) are per-sample weights, usually the density
  weights of :func:`loss.weights.sample_weights` (mean 1 over the training set);
* the result is the scalar ``mean_i(w_i * l_i)`` (``w_i = 1`` without weights), the
  convention of the DIR reference code (Yang et al. 2021), so that weights with mean 1
  keep the loss on the scale of the unweighted one.

Weighted MSE / L1 are :func:`mse_loss` / :func:`l1_loss` called with ``weights``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Activation = Literal["sigmoid", "tanh"]


def flatten_pair(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``pred`` and ``target`` as matching 1-D tensors (``(N, 1)`` -> ``(N,)``).

    Raises:
        ValueError: when they do not hold the same number of values.
    """
    if pred.numel() != target.numel():
        raise ValueError(
            f"pred and target must hold one value per sample; got shapes "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )
    return pred.reshape(-1), target.reshape(-1).to(pred.dtype)


def weighted_mean(losses: Tensor, weights: Tensor | None = None) -> Tensor:
    """``mean_i(w_i * l_i)``; the plain mean when ``weights`` is None."""
    if weights is None:
        return losses.mean()
    weights = weights.reshape(-1).to(losses.dtype)
    if weights.numel() != losses.numel():
        raise ValueError(
            f"weights must hold one value per sample: got {weights.numel()} weights "
            f"for {losses.numel()} samples"
        )
    return (losses * weights).mean()


def mse_loss(pred: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean squared error, ``mean(w * (p - y)^2)`` (weighted MSE: Yang et al. 2021, DIR)."""
    pred, target = flatten_pair(pred, target)
    return weighted_mean((pred - target) ** 2, weights)


def l1_loss(pred: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean absolute error, ``mean(w * |p - y|)`` (weighted L1: Yang et al. 2021, DIR)."""
    pred, target = flatten_pair(pred, target)
    return weighted_mean((pred - target).abs(), weights)


def huber_loss(
    pred: Tensor, target: Tensor, weights: Tensor | None = None, *, delta: float = 1.0
) -> Tensor:
    """Huber loss, ``e^2/2`` if ``|e| <= delta`` else ``delta (|e| - delta/2)`` (Huber 1964)."""
    if delta <= 0:
        raise ValueError(f"huber delta must be > 0, got {delta}")
    pred, target = flatten_pair(pred, target)
    losses = F.huber_loss(pred, target, reduction="none", delta=delta)
    return weighted_mean(losses, weights)


def l3_loss(pred: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """L3, ``mean(w * (p - y)^2 * sg(|p - y|))`` with ``sg`` stop-gradient (the original study).

    The detached factor scales each squared error by its own size, so the gradient is
    ``2 |e| e``: large errors (typically the rare labels) are pushed harder than under
    MSE, without the third-power gradient ``3 e |e|`` of a true cubic loss.
    """
    pred, target = flatten_pair(pred, target)
    error = pred - target
    return weighted_mean(error**2 * error.detach().abs(), weights)


def focal_factor(abs_error: Tensor, *, beta: float, gamma: float, activate: Activation) -> Tensor:
    """Focal-R modulation ``sigma(beta |e|)^gamma`` in [0, 1) (Yang et al. 2021, DIR).

    ``activate="sigmoid"``: ``sigma(x) = 2 sigmoid(x) - 1``; ``"tanh"``: ``sigma = tanh``.
    """
    if activate == "sigmoid":
        scaled = 2 * torch.sigmoid(beta * abs_error) - 1
    elif activate == "tanh":
        scaled = torch.tanh(beta * abs_error)
    else:
        raise ValueError(f"unknown focal activation {activate!r}; valid: 'sigmoid', 'tanh'")
    return scaled**gamma


def focal_l1_loss(
    pred: Tensor,
    target: Tensor,
    weights: Tensor | None = None,
    *,
    beta: float = 0.2,
    gamma: float = 1.0,
    activate: Activation = "sigmoid",
) -> Tensor:
    """Focal-R L1, ``mean(w * sigma(beta |e|)^gamma * |e|)`` (Yang et al. 2021, DIR, Focal-R)."""
    return _focal_loss(pred, target, weights, 1, beta=beta, gamma=gamma, activate=activate)


def focal_mse_loss(
    pred: Tensor,
    target: Tensor,
    weights: Tensor | None = None,
    *,
    beta: float = 0.2,
    gamma: float = 1.0,
    activate: Activation = "sigmoid",
) -> Tensor:
    """Focal-R MSE, ``mean(w * sigma(beta |e|)^gamma * e^2)`` (Yang et al. 2021, DIR, Focal-R)."""
    return _focal_loss(pred, target, weights, 2, beta=beta, gamma=gamma, activate=activate)


def _focal_loss(
    pred: Tensor,
    target: Tensor,
    weights: Tensor | None,
    power: int,
    *,
    beta: float,
    gamma: float,
    activate: Activation,
) -> Tensor:
    """``mean(w * sigma(beta |e|)^gamma * |e|^power)``: the two Focal-R variants."""
    pred, target = flatten_pair(pred, target)
    abs_error = (pred - target).abs()
    factor = focal_factor(abs_error, beta=beta, gamma=gamma, activate=activate)
    return weighted_mean(factor * abs_error**power, weights)
