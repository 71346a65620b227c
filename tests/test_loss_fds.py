"""FDS: per-bin statistics, kernel smoothing over bins, calibration, buffers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import convolve1d
from torch import nn

from loss.fds import FDS, FDSModel
from loss.weights import kernel_window

torch.set_num_threads(1)


def test_update_computes_bin_statistics_and_smooths_them() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.rand(400, generator=gen) * 10
    features = torch.randn(400, 3, generator=gen) + labels[:, None]
    fds = FDS(3, (0.0, 10.0), bins=10, sigma=1.0, window=3, start_smooth=1)
    fds.accumulate(features[:200], labels[:200])
    fds.accumulate(features[200:], labels[200:])
    fds.update(epoch=0)
    index = np.minimum(labels.numpy().astype(int), 9)
    for b in range(10):
        in_bin = features.numpy()[index == b]
        # float32 sums against float64 NumPy: relative and (for values near 0) absolute slack
        mean, var = fds.running_mean[b].numpy(), fds.running_var[b].numpy()
        np.testing.assert_allclose(mean, in_bin.mean(0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(var, in_bin.var(0), rtol=1e-3, atol=1e-6)
    window = kernel_window("gaussian", sigma=1.0, window=3)
    expected = convolve1d(fds.running_mean.numpy(), window, axis=0, mode="mirror")
    np.testing.assert_allclose(fds.smoothed_mean.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert int(fds.epoch) == 1 and fds.acc_count.sum() == 0
    # second epoch: momentum blend
    old = fds.running_mean.clone()
    fds.accumulate(features + 1.0, labels)
    fds.update(epoch=1)
    np.testing.assert_allclose(
        fds.running_mean.numpy(), (0.9 * old + 0.1 * (old + 1)).numpy(), rtol=1e-4, atol=1e-6
    )


def test_calibration_formula_and_identity_cases() -> None:
    fds = FDS(2, (0.0, 2.0), bins=2, window=1, start_smooth=0)
    fds.running_mean.copy_(torch.tensor([[0.0, 1.0], [2.0, 2.0]]))
    fds.running_var.copy_(torch.tensor([[1.0, 4.0], [1.0, 1.0]]))
    fds.smoothed_mean.copy_(torch.tensor([[1.0, 1.0], [2.0, 2.0]]))
    fds.smoothed_var.copy_(torch.tensor([[4.0, 1.0], [1.0, 1.0]]))
    fds.seen[:] = True
    z = torch.tensor([[1.0, 3.0], [5.0, 6.0]])
    out = fds(z, torch.tensor([0.5, 1.5]))
    # bin 0: (1 - 0) * 2 + 1 = 3 ; (3 - 1) * 0.5 + 1 = 2 ; bin 1 unchanged stats -> identity
    torch.testing.assert_close(out, torch.tensor([[3.0, 2.0], [5.0, 6.0]]))
    fds.eval()
    torch.testing.assert_close(fds(z, torch.tensor([0.5, 1.5])), z)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.head = nn.Linear(3, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x))


def test_fds_model_trains_and_keeps_statistics_in_the_state_dict() -> None:
    torch.manual_seed(0)
    model = FDSModel(Tiny(), FDS(3, (0.0, 1.0), bins=5, window=3, start_smooth=1))
    x, y = torch.randn(64, 4), torch.rand(64)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(3):
        model.train()
        loss = ((model(x, y) - y) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        model.end_epoch(epoch)
    assert int(model.fds.epoch) == 3 and bool(model.fds.seen.any())
    assert "fds.running_mean" in model.state_dict()
    model.eval()
    torch.testing.assert_close(model(x), model.model.head(model.model.features(x)).squeeze(1))
    with pytest.raises(TypeError, match="features"):
        FDSModel(nn.Linear(2, 1), FDS(3, (0.0, 1.0), bins=5))
