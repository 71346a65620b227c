"""The point-wise losses against their formulas on hand-made numbers, and the registry."""

from __future__ import annotations

import math

import pytest
import torch

from loss import LOSSES, get_loss, needs_train_labels

PRED = torch.tensor([1.0, 2.0, 3.0, 0.0])
TARGET = torch.tensor([1.5, 2.0, 1.0, 3.0])  # errors p - y: -0.5, 0, 2, -3
WEIGHTS = torch.tensor([2.0, 1.0, 0.5, 0.5])


def test_mse_and_l1_by_hand() -> None:
    # errors p - y: -0.5, 0, 2, -3
    assert get_loss("mse")(PRED, TARGET).item() == pytest.approx((0.25 + 0 + 4 + 9) / 4)
    assert get_loss("l2")(PRED, TARGET).item() == pytest.approx((0.25 + 0 + 4 + 9) / 4)
    assert get_loss("l1")(PRED, TARGET).item() == pytest.approx((0.5 + 0 + 2 + 3) / 4)


def test_weighted_mse_and_l1_by_hand() -> None:
    mse = get_loss("mse")(PRED, TARGET, WEIGHTS).item()
    assert mse == pytest.approx((2 * 0.25 + 0 + 0.5 * 4 + 0.5 * 9) / 4)
    l1 = get_loss("l1")(PRED, TARGET, WEIGHTS).item()
    assert l1 == pytest.approx((2 * 0.5 + 0 + 0.5 * 2 + 0.5 * 3) / 4)


def test_huber_by_hand() -> None:
    # delta 1: |e| <= 1 -> e^2/2, else |e| - 1/2
    expected = (0.125 + 0 + 1.5 + 2.5) / 4
    assert get_loss("huber")(PRED, TARGET).item() == pytest.approx(expected)
    # delta 2.5: -0.5 -> .125, 2 -> 2, -3 -> 2.5 * (3 - 1.25)
    expected = (0.125 + 0 + 2.0 + 2.5 * 1.75) / 4
    assert get_loss("huber", delta=2.5)(PRED, TARGET).item() == pytest.approx(expected)


def test_l3_value_and_detached_gradient() -> None:
    pred = PRED.clone().requires_grad_(True)
    value = get_loss("l3")(pred, TARGET)
    assert value.item() == pytest.approx((0.125 + 0 + 8 + 27) / 4)
    value.backward()
    # d/dp of e^2 * sg(|e|) = 2 e |e|, over N
    error = PRED - TARGET
    assert torch.allclose(pred.grad, 2 * error * error.abs() / 4)


@pytest.mark.parametrize("activate", ["sigmoid", "tanh"])
def test_focal_losses_by_hand(activate: str) -> None:
    beta, gamma = 0.5, 2.0
    errors = [-0.5, 0.0, 2.0, -3.0]

    def factor(e: float) -> float:
        x = beta * abs(e)
        return (math.tanh(x) if activate == "tanh" else 2 / (1 + math.exp(-x)) - 1) ** gamma

    l1 = get_loss("focal_l1", beta=beta, gamma=gamma, activate=activate)(PRED, TARGET)
    assert l1.item() == pytest.approx(sum(factor(e) * abs(e) for e in errors) / 4, rel=1e-5)
    mse = get_loss("focal_mse", beta=beta, gamma=gamma, activate=activate)(PRED, TARGET, WEIGHTS)
    expected = sum(w * factor(e) * e * e for w, e in zip(WEIGHTS.tolist(), errors, strict=True))
    assert mse.item() == pytest.approx(expected / 4, rel=1e-5)


def test_shapes_n1_accepted_and_mismatch_refused() -> None:
    assert get_loss("mse")(PRED[:, None], TARGET).item() == pytest.approx(13.25 / 4)
    with pytest.raises(ValueError, match="one value per sample"):
        get_loss("mse")(PRED, TARGET[:3])
    with pytest.raises(ValueError, match="weights"):
        get_loss("l1")(PRED, TARGET, WEIGHTS[:2])


def test_registry_errors_list_valid_names_and_options() -> None:
    with pytest.raises(ValueError, match="valid: .*bmc.*mse"):
        get_loss("nope")
    with pytest.raises(ValueError, match="no option"):
        get_loss("mse", delta=1.0)
    with pytest.raises(ValueError, match="activation"):
        get_loss("focal_l1", activate="relu")(PRED, TARGET)
    with pytest.raises(ValueError, match="train_labels"):
        get_loss("bni")


def test_every_registered_loss_runs_and_backpropagates() -> None:
    labels = torch.linspace(0, 3, 64)
    for name in LOSSES:
        loss = get_loss(name, train_labels=labels.numpy() if needs_train_labels(name) else None)
        pred = (labels + 0.3 * torch.sin(7 * labels)).requires_grad_(True)
        value = loss(pred, labels, torch.ones(64))
        assert value.ndim == 0 and torch.isfinite(value), name
        value.backward()
        assert pred.grad is not None and pred.grad.abs().sum() > 0, name
