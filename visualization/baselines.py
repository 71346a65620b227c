"""Attribution baselines from Captum and a deletion/insertion faithfulness score.

Saliency (Simonyan et al. 2014), integrated gradients (Sundararajan et al. 2017) and
occlusion (Zeiler and Fergus 2014) explain the same regression output as LOTS; their
heatmaps (``|attribution|`` summed over channels) and the LOTS heatmaps are scored with
the same deletion/insertion test (Petsiuk et al. 2018, "RISE"), adapted to regression:

* deletion: the most salient pixels (all channels) are replaced by a baseline value, a
  growing fraction at a time; the curve is ``|f(x_k) - f(x)|``. A faithful map changes
  the prediction early: higher area under the curve (AUC) is better.
* insertion: start from the baseline image and put back the most salient pixels; the
  curve is again ``|f(x_k) - f(x)|``; a faithful map recovers the prediction early:
  lower AUC is better.

AUCs are in label units (the prediction's own scale) over the fraction [0, 1]; a random
ranking gives the reference row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from visualization.explain_config import METHODS  # the Captum methods offered here
from visualization.lots import _prediction


def _forward(model: nn.Module):  # noqa: ANN202
    def f(x: Tensor) -> Tensor:
        return _prediction(model(x))

    return f


def _baseline_tensor(baseline: float | Tensor, x: Tensor) -> Tensor:
    b = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    if b.ndim == 1:
        if b.numel() != x.shape[1]:
            raise ValueError(f"baseline needs 1 or {x.shape[1]} values, got {b.numel()}")
        b = b.view(1, -1, 1, 1)
    return b.expand_as(x).contiguous()


def attribute(
    model: nn.Module,
    x: Tensor,
    method: str,
    *,
    baseline: float | Tensor = 0.0,
    ig_steps: int = 16,
    occlusion_window: int = 8,
    batch_size: int = 32,
) -> Tensor:
    """Captum attribution of the model's scalar output, (N, C, H, W) on the CPU.

    Args:
        model: a regressor (put in eval mode here).
        x: (N, C, H, W) inputs as the model sees them.
        method: one of :data:`METHODS`.
        baseline: reference input of integrated gradients and the occluding value:
            a scalar or one value per channel (0 = the training mean on normalised data).
        ig_steps: integration steps of integrated gradients.
        occlusion_window: side in pixels of the occluding square (all channels at once),
            slid with half that stride.
        batch_size: samples per call.
    """
    from captum.attr import IntegratedGradients, Occlusion, Saliency  # noqa: PLC0415

    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; valid: {', '.join(METHODS)}")
    model.eval()
    f = _forward(model)
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size].detach()
        base = _baseline_tensor(baseline, xb)
        if method == "saliency":
            a = Saliency(f).attribute(xb.clone().requires_grad_(True), abs=True)
        elif method == "integrated_gradients":
            a = IntegratedGradients(f).attribute(
                xb, baselines=base, n_steps=ig_steps, internal_batch_size=batch_size * ig_steps
            )
        else:
            c, h, w = xb.shape[1:]
            win = max(1, min(occlusion_window, h, w))
            stride = max(1, win // 2)
            a = Occlusion(f).attribute(
                xb,
                sliding_window_shapes=(c, win, win),
                strides=(c, stride, stride),
                baselines=base,
                perturbations_per_eval=16,
            )
        out.append(a.detach().cpu())
    return torch.cat(out)


@dataclass
class Faithfulness:
    """Deletion/insertion curves of one heatmap method.

    Attributes:
        fractions: (K + 1,) fraction of pixels removed / inserted.
        deletion: (N, K + 1) ``|f(x_k) - f(x)|`` as salient pixels are removed.
        insertion: (N, K + 1) ``|f(x_k) - f(x)|`` as salient pixels are put back.
    """

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray

    @property
    def deletion_auc(self) -> np.ndarray:
        """(N,) area under the deletion curve (higher is more faithful)."""
        return np.trapezoid(self.deletion, self.fractions, axis=1)

    @property
    def insertion_auc(self) -> np.ndarray:
        """(N,) area under the insertion curve (lower is more faithful)."""
        return np.trapezoid(self.insertion, self.fractions, axis=1)


@torch.no_grad()
def deletion_insertion(
    model: nn.Module,
    x: Tensor,
    heatmaps: np.ndarray | Tensor,
    *,
    steps: int = 16,
    baseline: float | Tensor = 0.0,
    batch_size: int = 64,
) -> Faithfulness:
    """Deletion and insertion curves for (N, H, W) heatmaps of the inputs ``x``.

    Pixels are ranked by heat (highest first, ties by position); at step ``k`` the top
    ``k / steps`` of the pixels are replaced by ``baseline`` in every channel (deletion),
    or only they keep their values on a baseline image (insertion).
    """
    model.eval()
    heat = torch.as_tensor(np.asarray(heatmaps), dtype=torch.float64)
    n, c, h, w = x.shape
    if heat.shape != (n, h, w):
        raise ValueError(f"heatmaps must be (N, H, W) = {(n, h, w)}, got {tuple(heat.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    order = torch.argsort(-heat.reshape(n, -1), dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w).expand(n, -1).contiguous())
    rank = rank.view(n, 1, h, w)
    base = _baseline_tensor(baseline, x)
    f = _forward(model)
    counts = [round(k * h * w / steps) for k in range(steps + 1)]
    p0 = torch.cat([f(x[s : s + batch_size]) for s in range(0, n, batch_size)])
    deletion = np.zeros((n, steps + 1))
    insertion = np.zeros((n, steps + 1))
    for k, count in enumerate(counts):
        top = rank < count  # (N, 1, H, W): the `count` most salient pixels
        for s in range(0, n, batch_size):
            sl = slice(s, s + batch_size)
            xd = torch.where(top[sl], base[sl], x[sl])
            xi = torch.where(top[sl], x[sl], base[sl])
            deletion[sl, k] = (f(xd) - p0[sl]).abs().cpu().numpy()
            insertion[sl, k] = (f(xi) - p0[sl]).abs().cpu().numpy()
    return Faithfulness(np.linspace(0.0, 1.0, steps + 1), deletion, insertion)


def faithfulness_table(results: Mapping[str, Faithfulness]) -> list[dict[str, float | str]]:
    """One row per method: mean deletion AUC (higher better), mean insertion AUC (lower
    better) and their difference (higher better), over the samples."""
    rows = []
    for name, res in results.items():
        d, i = float(res.deletion_auc.mean()), float(res.insertion_auc.mean())
        rows.append(
            {
                "method": name,
                "deletion_auc": d,
                "insertion_auc": i,
                "deletion_minus_insertion": d - i,
            }
        )
    return rows


def random_heatmaps(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Uniform random maps, the chance reference of the faithfulness table."""
    return np.random.default_rng(seed).random(shape)
