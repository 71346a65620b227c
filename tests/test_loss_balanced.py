"""Balanced MSE (BMC/BNI/GAI) and DenseLoss against their formulas and limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from loss import BMCLoss, BNILoss, DenseLoss, GAILoss, bmc_loss, bni_loss, gai_loss, get_loss
from loss.weights import fit_label_weights

torch.set_num_threads(1)


def test_bmc_by_hand_on_two_samples() -> None:
    pred, target, var = torch.tensor([0.0, 1.0]), torch.tensor([0.0, 2.0]), torch.tensor(0.5)
    # logits l_ij = -(p_i - y_j)^2 / (2 var) = -(p_i - y_j)^2
    row0 = [0.0, -4.0]  # p0 = 0 against y = 0, 2
    row1 = [-1.0, -1.0]  # p1 = 1 against y = 0, 2
    ce0 = -row0[0] + math.log(math.exp(row0[0]) + math.exp(row0[1]))
    ce1 = -row1[1] + math.log(math.exp(row1[0]) + math.exp(row1[1]))
    expected = (ce0 + ce1) / 2 * (2 * 0.5)
    assert bmc_loss(pred, target, var).item() == pytest.approx(expected, rel=1e-5)
    assert BMCLoss(init_noise_sigma=math.sqrt(0.5))(pred, target).item() == pytest.approx(
        expected, rel=1e-5
    )


def test_bni_by_hand() -> None:
    pred, target, var = torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor(1.0)
    centres, shares = torch.tensor([0.0, 2.0]), torch.tensor([0.25, 0.75])
    balancing = math.log(0.25 * math.exp(-0.5) + 0.75 * math.exp(-0.5))
    expected = (0.5 + balancing) * 2
    # expected is 0: float32 leaves a few ulps of 1 (about 1e-7), so an absolute tolerance
    got = bni_loss(pred, target, var, centres, shares).item()
    assert got == pytest.approx(expected, abs=1e-6)


def test_gai_by_hand() -> None:
    pred, target, var = torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor(0.25)
    means, variances, mix = (
        torch.tensor([0.0, 3.0]),
        torch.tensor([0.75, 1.75]),
        torch.tensor([0.4, 0.6]),
    )
    mse_term = 0.25 / 0.5 + 0.5 * math.log(0.25)
    terms = [
        -0.5 * math.log(1.0) - 1.0 / 2.0 + math.log(0.4),  # total var 1, (1 - 0)^2
        -0.5 * math.log(2.0) - 4.0 / 4.0 + math.log(0.6),  # total var 2, (1 - 3)^2
    ]
    balancing = math.log(sum(math.exp(t) for t in terms))
    expected = (mse_term + balancing) * 0.5
    got = gai_loss(pred, target, var, means, variances, mix).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_bni_and_gai_with_one_bin_per_batch_label_reduce_to_bmc() -> None:
    """With p_train = the batch labels (one bin / one zero-variance component per label,
    share 1/N), BNI and GAI are BMC up to the constant -2 s^2 log N: same gradients."""
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(16, generator=gen) * 3
    var = torch.tensor(0.3)
    shares = torch.full((16,), 1 / 16)
    offset = 2 * 0.3 * math.log(16)
    values, grads = [], []
    for fn in (
        lambda p: bmc_loss(p, target, var),
        lambda p: bni_loss(p, target, var, target, shares),
        lambda p: gai_loss(p, target, var, target, torch.zeros(16), shares),
    ):
        pred = torch.linspace(0, 3, 16).requires_grad_(True)
        value = fn(pred)
        value.backward()
        values.append(value.item())
        grads.append(pred.grad.clone())
    assert values[1] == pytest.approx(values[0] - offset, abs=1e-5)
    assert values[2] == pytest.approx(values[0] - offset, abs=1e-5)
    assert torch.allclose(grads[1], grads[0], atol=1e-6)
    assert torch.allclose(grads[2], grads[0], atol=1e-6)


def test_bni_one_bin_and_gai_one_component_fitted_on_one_label_value() -> None:
    """The literal one-bin / one-component case: all training labels equal c. Then the
    balanced loss of a batch at c is BMC's (constant, zero gradient) minus 2 s^2 log N."""
    labels = np.full(50, 1.5)
    target = torch.full((8,), 1.5)
    pred = torch.linspace(1.0, 2.0, 8).requires_grad_(True)
    bmc = BMCLoss(0.7)(pred, target)
    assert bmc.item() == pytest.approx(2 * 0.49 * math.log(8), rel=1e-5)
    for loss in (BNILoss(labels, bins=1, init_noise_sigma=0.7), GAILoss(labels, components=1)):
        loss.noise_sigma.data.fill_(0.7)
        pred.grad = None
        value = loss(pred, target)
        value.backward()
        assert value.item() == pytest.approx(bmc.item() - 2 * 0.49 * math.log(8), abs=1e-4)
        assert pred.grad.abs().max() < 1e-4


def test_bmc_gradient_pulls_sigma_toward_the_noise_level() -> None:
    gen = torch.Generator().manual_seed(1)
    truth = torch.rand(512, generator=gen) * 10  # wide, uniform labels
    noise = 0.5
    target = truth + noise * torch.randn(512, generator=gen)
    pred = truth  # a perfect model of the noiseless signal
    for start, sign in ((0.15, -1), (2.0, 1)):
        loss = BMCLoss(init_noise_sigma=start)
        loss(pred, target).backward()
        assert torch.sign(loss.noise_sigma.grad).item() == sign  # descent moves toward 0.5
    loss = BMCLoss(init_noise_sigma=2.0)
    optimiser = torch.optim.Adam(loss.parameters(), lr=0.02)
    for _ in range(300):
        optimiser.zero_grad()
        loss(pred, target).backward()
        optimiser.step()
    assert loss.noise_sigma.item() == pytest.approx(noise, rel=0.15)


def test_balanced_modules_keep_statistics_in_state_dict() -> None:
    labels = np.random.default_rng(0).normal(2, 0.5, 300)
    bni = BNILoss(labels, bins=10)
    assert {"noise_sigma", "bucket_centers", "bucket_weights"} <= set(bni.state_dict())
    assert bni.bucket_weights.sum().item() == pytest.approx(1.0, rel=1e-5)
    gai = GAILoss(labels, components=3)
    assert {"means", "variances", "mix_weights"} <= set(gai.state_dict())
    assert gai.mix_weights.sum().item() == pytest.approx(1.0, rel=1e-5)
    assert [n for n, _ in gai.named_parameters()] == ["noise_sigma"]
    with pytest.raises(ValueError, match="init_noise_sigma"):
        BMCLoss(init_noise_sigma=0.0)


def test_dense_loss_is_mse_weighted_by_denseweight_of_the_target() -> None:
    labels = np.random.default_rng(0).normal(0, 1, 500)
    loss = get_loss("dense", train_labels=labels, alpha=0.8)
    assert isinstance(loss, DenseLoss)
    target = torch.tensor([-2.0, 0.0, 0.5, 1.8])
    pred = torch.tensor([-1.0, 0.5, 0.5, 1.0])
    w = fit_label_weights(labels, "denseweight", alpha=0.8)(target.numpy())
    expected = np.mean(w * (pred.numpy() - target.numpy()) ** 2)
    assert loss(pred, target).item() == pytest.approx(expected, rel=1e-4)
    # rare targets weigh more than common ones
    assert w[0] > w[1] and w[3] > w[2]
    alpha0 = get_loss("dense", train_labels=labels, alpha=0.0)
    assert alpha0(pred, target).item() == pytest.approx(
        get_loss("mse")(pred, target).item(), rel=1e-5
    )
