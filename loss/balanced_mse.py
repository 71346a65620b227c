"""Balanced MSE (Ren et al. 2022, "Balanced MSE for Imbalanced Visual Regression").

Balanced MSE fits the *balanced* predictive distribution: the Gaussian likelihood
``N(y; p, s^2)`` is divided by its integral against the training label distribution
``p_train(y')``. With ``s^2`` the learnable noise variance:

``L(p, y) = (p - y)^2 / 2s^2 + log int N(y'; p, s^2) p_train(y') dy'``, times ``2 s^2``
(detached) to keep the MSE scale. The estimators differ in how ``p_train`` is known:

* BMC (batch-based Monte-Carlo): the batch labels stand for ``p_train``; the loss is a
  cross-entropy over the batch (:func:`bmc_loss`).
* BNI (bin-based numerical integration): a histogram of the training labels
  (:func:`bni_loss`).
* GAI (Gaussian-mixture analytic integration): a GMM fitted to the training labels
  (:func:`gai_loss`).

The pure functions take the noise variance; the modules :class:`BMCLoss`,
:class:`BNILoss`, :class:`GAILoss` hold the learnable ``noise_sigma`` (put it in its own
optimizer parameter group, as the reference implementation does) and the fitted
statistics as buffers, so they are saved in checkpoints.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch import Tensor, nn

from loss.regression import flatten_pair, weighted_mean


def bmc_loss(
    pred: Tensor, target: Tensor, noise_var: Tensor, weights: Tensor | None = None
) -> Tensor:
    """BMC, ``2s^2 * CE(softmax_j(-(p_i - y_j)^2 / 2s^2), i)`` (Ren et al. 2022, Balanced MSE).

    Args:
        pred, target: shape ``(N,)``.
        noise_var: scalar tensor ``s^2``.
        weights: optional per-sample weights of the cross-entropy terms.
    """
    pred, target = flatten_pair(pred, target)
    logits = -((pred[:, None] - target[None, :]) ** 2) / (2 * noise_var)  # (N, N)
    labels = torch.arange(pred.shape[0], device=pred.device)
    losses = F.cross_entropy(logits, labels, reduction="none")
    return weighted_mean(losses, weights) * (2 * noise_var).detach()


def bni_loss(
    pred: Tensor,
    target: Tensor,
    noise_var: Tensor,
    bucket_centers: Tensor,
    bucket_weights: Tensor,
    weights: Tensor | None = None,
) -> Tensor:
    """BNI, ``2s^2 [e^2/2s^2 + logsumexp_b(-(p - c_b)^2/2s^2 + log w_b)]`` (Ren et al. 2022).

    ``c_b`` are the bin centres of the training label histogram and ``w_b`` its bin
    shares (summing to 1).
    """
    pred, target = flatten_pair(pred, target)
    mse_term = (pred - target) ** 2 / (2 * noise_var)
    balancing = -((pred[:, None] - bucket_centers[None, :]) ** 2) / (2 * noise_var)
    balancing = torch.logsumexp(balancing + bucket_weights.log()[None, :], dim=1)
    return weighted_mean(mse_term + balancing, weights) * (2 * noise_var).detach()


def gai_loss(
    pred: Tensor,
    target: Tensor,
    noise_var: Tensor,
    means: Tensor,
    variances: Tensor,
    mix_weights: Tensor,
    weights: Tensor | None = None,
) -> Tensor:
    """GAI, ``2s^2 [e^2/2s^2 + log s + logsumexp_k(log N(p; m_k, v_k + s^2) + log pi_k)]``.

    (Ren et al. 2022.) ``m_k, v_k, pi_k``: the means, variances and weights of a Gaussian
    mixture fitted to the training labels; the Gaussian's ``-log sqrt(2 pi)`` constant is
    dropped.
    """
    pred, target = flatten_pair(pred, target)
    mse_term = (pred - target) ** 2 / (2 * noise_var) + 0.5 * noise_var.log()
    total_var = variances[None, :] + noise_var
    balancing = (
        -0.5 * total_var.log()
        - (pred[:, None] - means[None, :]) ** 2 / (2 * total_var)
        + mix_weights.log()[None, :]
    )
    balancing = torch.logsumexp(balancing, dim=1)
    return weighted_mean(mse_term + balancing, weights) * (2 * noise_var).detach()


class _NoiseSigma(nn.Module):
    """Holds the learnable noise standard deviation ``s``."""

    def __init__(self, init_noise_sigma: float) -> None:
        super().__init__()
        if init_noise_sigma <= 0:
            raise ValueError(f"init_noise_sigma must be > 0, got {init_noise_sigma}")
        self.noise_sigma = nn.Parameter(torch.tensor(float(init_noise_sigma)))

    @property
    def noise_var(self) -> Tensor:
        return self.noise_sigma**2


class BMCLoss(_NoiseSigma):
    """Balanced MSE, batch-based Monte-Carlo (Ren et al. 2022), with learnable ``noise_sigma``."""

    def __init__(self, init_noise_sigma: float = 1.0) -> None:
        super().__init__(init_noise_sigma)

    def forward(self, pred: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
        return bmc_loss(pred, target, self.noise_var, weights)


class BNILoss(_NoiseSigma):
    """Balanced MSE, bin-based numerical integration (Ren et al. 2022).

    Args:
        train_labels: the training labels (their histogram is the label prior).
        bins: number of equal-width histogram bins over the labels' range.
        init_noise_sigma: initial ``s``.
    """

    def __init__(self, train_labels: ArrayLike, bins: int = 50, init_noise_sigma: float = 1.0):
        super().__init__(init_noise_sigma)
        y = np.asarray(train_labels, dtype=np.float64).reshape(-1)
        if y.size == 0 or bins < 1:
            raise ValueError(f"BNI needs training labels and bins >= 1; got {y.size}, {bins}")
        low, high = float(y.min()), float(y.max())
        if high <= low:
            low, high = low - 0.5, high + 0.5
        counts, edges = np.histogram(y, bins=bins, range=(low, high))
        keep = counts > 0  # an empty bin adds nothing to the integral
        centres = ((edges[:-1] + edges[1:]) / 2)[keep]
        self.register_buffer("bucket_centers", torch.tensor(centres, dtype=torch.float32))
        self.register_buffer(
            "bucket_weights", torch.tensor(counts[keep] / counts.sum(), dtype=torch.float32)
        )

    def forward(self, pred: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
        return bni_loss(
            pred, target, self.noise_var, self.bucket_centers, self.bucket_weights, weights
        )


class GAILoss(_NoiseSigma):
    """Balanced MSE, Gaussian-mixture analytic integration (Ren et al. 2022).

    Args:
        train_labels: the training labels, fitted with a 1-D Gaussian mixture.
        components: number of mixture components.
        init_noise_sigma: initial ``s``.
        seed: seed of the mixture fit.
    """

    def __init__(
        self,
        train_labels: ArrayLike,
        components: int = 8,
        init_noise_sigma: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(init_noise_sigma)
        from sklearn.mixture import GaussianMixture  # noqa: PLC0415 (slow import)

        y = np.asarray(train_labels, dtype=np.float64).reshape(-1, 1)
        if len(y) < components:
            raise ValueError(f"GAI needs at least {components} training labels, got {len(y)}")
        gmm = GaussianMixture(components, covariance_type="full", random_state=seed).fit(y)
        self.register_buffer("means", _flat_tensor(gmm.means_))
        self.register_buffer("variances", _flat_tensor(gmm.covariances_))
        self.register_buffer("mix_weights", _flat_tensor(gmm.weights_))

    def forward(self, pred: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
        return gai_loss(
            pred, target, self.noise_var, self.means, self.variances, self.mix_weights, weights
        )


def _flat_tensor(values: ArrayLike) -> Tensor:
    return torch.tensor(np.asarray(values).reshape(-1), dtype=torch.float32)
