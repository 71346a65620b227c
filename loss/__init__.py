"""Losses for (imbalanced) regression and the sample weights that balance them.

Every loss takes ``(pred, target, weights=None)`` (shapes ``(N,)``) and returns a scalar
tensor. :data:`LOSSES` is the explicit name -> loss table; :func:`get_loss` builds one
by name. Pure losses come back as functions (``functools.partial`` when keyword options
are given); stateful ones (Balanced MSE with its learnable ``noise_sigma``, DenseLoss
with its fitted weight function) come back as ``torch.nn.Module`` instances: put their
``parameters()`` into their own optimizer parameter group.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from numpy.typing import ArrayLike
from torch import Tensor, nn

from loss.balanced_mse import BMCLoss, BNILoss, GAILoss, bmc_loss, bni_loss, gai_loss
from loss.dense import DenseLoss
from loss.regression import (
    focal_l1_loss,
    focal_mse_loss,
    huber_loss,
    l1_loss,
    l3_loss,
    mse_loss,
)

LossFn = Callable[..., Tensor]

#: name -> pure loss function or loss module class.
LOSSES: dict[str, LossFn | type[nn.Module]] = {
    "mse": mse_loss,
    "l2": mse_loss,
    "l1": l1_loss,
    "huber": huber_loss,
    "l3": l3_loss,
    "focal_l1": focal_l1_loss,
    "focal_mse": focal_mse_loss,
    "bmc": BMCLoss,
    "bni": BNILoss,
    "gai": GAILoss,
    "dense": DenseLoss,
}


def _keyword_options(loss: LossFn | type[nn.Module]) -> set[str]:
    params = inspect.signature(loss).parameters
    positional = {"self", "pred", "target", "weights", "train_labels"}
    return {name for name in params if name not in positional}


def needs_train_labels(name: str) -> bool:
    """Whether the loss called ``name`` is fitted on the training labels (BNI, GAI, dense)."""
    return "train_labels" in inspect.signature(_lookup(name)).parameters


def _lookup(name: str) -> LossFn | type[nn.Module]:
    key = name.lower()
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(sorted(LOSSES))}")
    return LOSSES[key]


def get_loss(
    name: str, *, train_labels: ArrayLike | None = None, **kwargs: Any
) -> LossFn | nn.Module:
    """The loss called ``name``, configured with ``kwargs``.

    Args:
        name: a key of :data:`LOSSES` (case-insensitive).
        train_labels: the training labels; required by the losses fitted on them
            (``"bni"``, ``"gai"``, ``"dense"``), ignored by the others.
        **kwargs: the loss's keyword options, e.g. ``delta`` for ``"huber"``,
            ``beta``/``gamma`` for the focal losses, ``init_noise_sigma`` for ``"bmc"``.

    Returns:
        A function ``(pred, target, weights=None) -> Tensor`` or an ``nn.Module`` with
        the same call signature (its parameters, if any, belong in the optimizer).

    Raises:
        ValueError: for an unknown name (listing the valid ones), an unknown option, or
            missing ``train_labels``.
    """
    loss = _lookup(name)
    allowed = _keyword_options(loss)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(
            f"loss {name!r} has no option(s) {unknown}; valid: {sorted(allowed) or 'none'}"
        )
    if needs_train_labels(name):
        if train_labels is None:
            raise ValueError(f"loss {name!r} is fitted on the training labels; pass train_labels=")
        kwargs["train_labels"] = train_labels
    if isinstance(loss, type):
        return loss(**kwargs)
    return functools.partial(loss, **kwargs) if kwargs else loss


__all__ = [
    "LOSSES",
    "BMCLoss",
    "BNILoss",
    "DenseLoss",
    "GAILoss",
    "bmc_loss",
    "bni_loss",
    "gai_loss",
    "focal_l1_loss",
    "focal_mse_loss",
    "get_loss",
    "huber_loss",
    "l1_loss",
    "l3_loss",
    "mse_loss",
    "needs_train_labels",
]
