"""FDS: per-bin statistics as DIR's fds.py, kernel smoothing over bins, calibration, buffers."""

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
        np.testing.assert_allclose(var, in_bin.var(0, ddof=1), rtol=1e-3, atol=1e-6)
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


def _dir_calibrate(z: np.ndarray, m1, v1, m2, v2) -> np.ndarray:
    """DIR's calibrate_mean_var, written out: a bin without variance unchanged, a
    zero-variance dimension unchanged, else (z - m1) sqrt(clip(v2 / v1, .1, 10)) + m2."""
    if v1.sum() < 1e-10:
        return z.copy()
    out = z.copy()
    for d in range(z.shape[1]):
        if v1[d] != 0:
            out[:, d] = (z[:, d] - m1[d]) * np.sqrt(np.clip(v2[d] / v1[d], 0.1, 10)) + m2[d]
    return out


def test_zero_variance_bins_and_dimensions_are_left_unchanged() -> None:
    # bin 0 seen once (3.48 was multiplied by ~1e4 before), bin 1: feature 0 zero
    # throughout (a ReLU unit), bin 2: an ordinary bin whose ratio exceeds the clip
    labels = torch.tensor([0.5, 1.2, 1.5, 1.8, 2.1, 2.4, 2.7])
    features = torch.tensor(
        [[3.48, 1.0], [0.0, 1.0], [0.0, 2.0], [0.0, 4.0], [5.0, 0.0], [5.1, 9.0], [4.9, 30.0]]
    )
    fds = FDS(2, (0.0, 3.0), bins=3, window=3, sigma=1.0, start_smooth=0)
    fds.accumulate(features, labels)
    fds.update(epoch=0)
    np.testing.assert_allclose(fds.running_var[0].numpy(), [0.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(fds.running_var[1, 1].item(), 7 / 3, rtol=1e-6)  # n - 1
    fds.train()
    out = fds(features, labels).numpy()
    np.testing.assert_allclose(out[0], [3.48, 1.0], rtol=1e-6)  # unchanged
    np.testing.assert_allclose(out[1:4, 0], 0.0, atol=1e-7)
    stats = [t.numpy().astype(np.float64) for t in (fds.running_mean, fds.running_var)]
    smooth = [t.numpy().astype(np.float64) for t in (fds.smoothed_mean, fds.smoothed_var)]
    for b, rows in ((0, [0]), (1, [1, 2, 3]), (2, [4, 5, 6])):
        expected = _dir_calibrate(
            features.numpy()[rows].astype(np.float64),
            stats[0][b],
            stats[1][b],
            smooth[0][b],
            smooth[1][b],
        )
        np.testing.assert_allclose(out[rows], expected, rtol=1e-5, atol=1e-5)
    assert np.all(np.abs(out) < 100)
    ratio = smooth[1][1, 0] / max(stats[1][1, 0], 1e-30)
    assert stats[1][1, 0] == 0 and ratio > 10  # the dimension the clip alone would not save


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
