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

from torch import Tensor, nn

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
}


def _keyword_options(loss: LossFn | type[nn.Module]) -> set[str]:
    params = inspect.signature(loss).parameters
    positional = {"self", "pred", "target", "weights"}
    return {name for name in params if name not in positional}


def get_loss(name: str, **kwargs: Any) -> LossFn | nn.Module:
    """The loss called ``name``, configured with ``kwargs``.

    Args:
        name: a key of :data:`LOSSES` (case-insensitive).
        **kwargs: the loss's keyword options, e.g. ``delta`` for ``"huber"``,
            ``beta``/``gamma`` for the focal losses, ``init_noise_sigma`` for ``"bmc"``.

    Returns:
        A function ``(pred, target, weights=None) -> Tensor`` or an ``nn.Module`` with
        the same call signature.

    Raises:
        ValueError: for an unknown name (listing the valid ones) or an unknown option.
    """
    key = name.lower()
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(sorted(LOSSES))}")
    loss = LOSSES[key]
    allowed = _keyword_options(loss)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(
            f"loss {name!r} has no option(s) {unknown}; valid: {sorted(allowed) or 'none'}"
        )
    if isinstance(loss, type):
        return loss(**kwargs)
    return functools.partial(loss, **kwargs) if kwargs else loss


__all__ = [
    "LOSSES",
    "focal_l1_loss",
    "focal_mse_loss",
    "get_loss",
    "huber_loss",
    "l1_loss",
    "l3_loss",
    "mse_loss",
]
