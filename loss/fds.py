"""Feature-distribution smoothing (FDS; Yang et al. 2021, "Delving into Deep Imbalanced
Regression").

FDS keeps, per label bin, running statistics (mean and variance) of the features a
network computes before its regression head, smooths them across neighbouring bins with
the same kernel window as LDS (:func:`loss.weights.kernel_window`), and during training
re-colours each feature with the smoothed statistics of its label's bin:

``z' = (z - mu_b) * sqrt(clip(v~_b / v_b, 0.1, 10)) + mu~_b``.

As DIR's code (``YyzHarry/imbalanced-regression`` ``fds.py``, ``utils.py``
``calibrate_mean_var``): the variance is the unbiased one (``n - 1``; 0 for a bin seen
once), the variance ratio is clipped to ``[0.1, 10]``, and a dimension whose variance is
zero (a bin seen once, a ReLU unit that is zero throughout a bin) is left unchanged, as
is a whole bin whose variances sum to under 1e-10. DIR's defaults: Gaussian window of 5
bins, sigma 2, momentum 0.9.

Rare bins thus borrow feature statistics from their neighbours. The statistics are
registered buffers (saved in checkpoints); they are updated once per epoch from the
features accumulated during that epoch (:meth:`FDS.update`). :class:`FDSModel` wraps a
model with a public ``features(x)`` and ``head``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from loss.weights import Kernel, kernel_window


class FDS(nn.Module):
    """Per-bin feature statistics, smoothed over label bins.

    Args:
        feature_dim: length of the feature vector.
        value_range: ``(low, high)`` label range of the equal-width bins (from the
            training labels; labels outside count in the edge bins).
        bins: number of label bins.
        kernel, sigma, window: the smoothing window over bins (as for LDS).
        momentum: weight of the previous running statistics at each epoch update.
        clip: the range of the variance ratio ``v~ / v`` (DIR's ``[0.1, 10]``).
        start_update: first epoch whose features update the statistics.
        start_smooth: first epoch whose training features are calibrated.
    """

    def __init__(
        self,
        feature_dim: int,
        value_range: tuple[float, float],
        bins: int = 50,
        kernel: Kernel = "gaussian",
        sigma: float = 2.0,
        window: int = 5,
        momentum: float = 0.9,
        start_update: int = 0,
        start_smooth: int = 1,
        clip: tuple[float, float] = (0.1, 10.0),
    ) -> None:
        super().__init__()
        low, high = value_range
        if not high > low:
            raise ValueError(f"FDS value_range must have high > low, got {value_range}")
        if window // 2 >= bins:
            raise ValueError(f"FDS kernel window {window} too wide for {bins} bins")
        self.feature_dim, self.bins, self.momentum = feature_dim, bins, momentum
        self.start_update, self.start_smooth = start_update, start_smooth
        self.clip = clip
        self.register_buffer("edges", torch.linspace(low, high, bins + 1))
        self.register_buffer(
            "kernel", torch.tensor(kernel_window(kernel, sigma=sigma, window=window)).float()
        )
        zeros = torch.zeros(bins, feature_dim)
        self.register_buffer("running_mean", zeros.clone())
        self.register_buffer("running_var", torch.ones(bins, feature_dim))
        self.register_buffer("smoothed_mean", zeros.clone())
        self.register_buffer("smoothed_var", torch.ones(bins, feature_dim))
        self.register_buffer("seen", torch.zeros(bins, dtype=torch.bool))
        # accumulators of the current epoch (float64: the variance is a difference of sums)
        self.register_buffer("acc_sum", zeros.double())
        self.register_buffer("acc_sq", zeros.double())
        self.register_buffer("acc_count", torch.zeros(bins))
        self.register_buffer("epoch", torch.tensor(0))

    def bin_of(self, labels: Tensor) -> Tensor:
        """Bin index of each label (edge bins catch the outside)."""
        index = torch.bucketize(labels.reshape(-1).to(self.edges.dtype), self.edges, right=True)
        return (index - 1).clamp(0, self.bins - 1)

    @torch.no_grad()
    def accumulate(self, features: Tensor, labels: Tensor) -> None:
        """Add a batch of (detached) features to the current epoch's sums."""
        if int(self.epoch) < self.start_update:
            return
        index = self.bin_of(labels)
        feats = features.detach().double().reshape(len(index), -1)
        self.acc_sum.index_add_(0, index, feats)
        self.acc_sq.index_add_(0, index, feats**2)
        self.acc_count.index_add_(0, index, torch.ones_like(index, dtype=torch.float32))

    @torch.no_grad()
    def update(self, epoch: int) -> None:
        """End of ``epoch``: fold the accumulated statistics in, smooth, reset sums."""
        have = self.acc_count > 0
        if have.any():
            count = self.acc_count[have, None]
            mean = self.acc_sum[have] / count
            # unbiased, as DIR's torch.var; a bin seen once has variance 0
            var = ((self.acc_sq[have] - count * mean**2) / (count - 1).clamp_min(1)).clamp_min(0)
            mean, var = mean.float(), var.float()
            fresh = have & ~self.seen
            old = have & self.seen
            self.running_mean[fresh] = mean[fresh[have]]
            self.running_var[fresh] = var[fresh[have]]
            m = self.momentum
            self.running_mean[old] = m * self.running_mean[old] + (1 - m) * mean[old[have]]
            self.running_var[old] = m * self.running_var[old] + (1 - m) * var[old[have]]
            self.seen |= have
            self.smoothed_mean.copy_(self.smooth(self.running_mean))
            self.smoothed_var.copy_(self.smooth(self.running_var))
        self.acc_sum.zero_()
        self.acc_sq.zero_()
        self.acc_count.zero_()
        self.epoch.fill_(epoch + 1)

    def smooth(self, stats: Tensor) -> Tensor:
        """Convolve ``(bins, D)`` statistics over the bin axis (reflect padding)."""
        half = (self.kernel.numel() - 1) // 2
        x = stats.t().unsqueeze(1)  # (D, 1, bins)
        x = F.pad(x, (half, half), mode="reflect") if half else x
        return F.conv1d(x, self.kernel.view(1, 1, -1)).squeeze(1).t()

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """Calibrated features (training, from ``start_smooth`` on, in seen bins)."""
        if not self.training or int(self.epoch) < self.start_smooth:
            return features
        index = self.bin_of(labels)
        shape = features.shape
        z = features.reshape(len(index), -1)
        var = self.running_var[index]
        ratio = self.smoothed_var[index] / torch.where(var > 0, var, torch.ones_like(var))
        factor = torch.sqrt(ratio.clamp(*self.clip))
        calibrated = (z - self.running_mean[index]) * factor + self.smoothed_mean[index]
        # zero-variance dimensions, and bins without variance at all, stay as they are
        change = self.seen[index][:, None] & (var > 0) & (var.sum(1, keepdim=True) >= 1e-10)
        z = torch.where(change, calibrated.to(z.dtype), z)
        return z.reshape(shape)


class FDSModel(nn.Module):
    """``model.head(FDS(model.features(x), labels))``: a regressor with FDS, output ``(N,)``.

    In training, call it with the batch labels (``model(x, labels)``); the features are
    accumulated for the epoch-end :meth:`FDS.update` (call :meth:`end_epoch`). Without
    labels (evaluation) it is the wrapped model.
    """

    def __init__(self, model: nn.Module, fds: FDS) -> None:
        super().__init__()
        if not hasattr(model, "features") or not hasattr(model, "head"):
            raise TypeError(f"FDSModel needs a model with features(x) and head; got {type(model)}")
        self.model, self.fds = model, fds

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        features = self.model.features(x)
        if labels is not None and self.training:
            self.fds.accumulate(features, labels)
            features = self.fds(features, labels)
        dropout = getattr(self.model, "dropout", None)
        if dropout is not None:
            features = dropout(features)
        out = self.model.head(features)
        return out.squeeze(-1) if out.ndim == 2 and out.shape[-1] == 1 else out

    def end_epoch(self, epoch: int) -> None:
        """Update the FDS statistics with the features of ``epoch``."""
        self.fds.update(epoch)
