"""LOTS: Layerwise Origin-Target Synthesis, batched over samples (docs/design.md).

Reference: A. Rozsa, M. Günther, T. E. Boult, "LOTS about attacking deep features",
IEEE International Joint Conference on Biometrics (IJCB), 2017.

Given a layer ``l`` with features ``f_l(x)`` and a target feature vector ``t``, LOTS
iterates

    g = grad_x 1/2 ||t - f_l(x)||^2
    x <- clip(x - s * g / max|g|)

until ``||t - f_l(x)||`` is small or an iteration cap is hit. Here ``s`` is a step per
channel, a fraction of each channel's valid range, and ``clip`` clamps every channel to
its valid range *in the space the model sees* (normalised data are not clamped to
[0, 1]: that was a bug of the original code). The perturbation ``x_adv - x`` shows where
and in which bands the network must change the image to reach the target; summed over
bands it is the heatmap (:mod:`visualization.heatmaps`).

Targets: the features of another sample (:func:`sample_target`), the mean features of
a label bin (:func:`bin_mean_target`), or a push of the prediction up or down by a given
amount (:func:`push_target`). Every sample of a batch runs its own iteration: it stops
(and is frozen) as soon as it is close enough, the others go on.

This module computes arrays only; plotting lives in :mod:`visualization.heatmaps`, and
the explanation stage that drives it (``visualization.ipynb`` and its CLI twin
``python -m visualization.explain``) in :mod:`visualization.explain`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from extract_GPS_images.schema import DW_BAND, REFLECTANCE_RANGE, S2_BANDS
from metrics import bin_index

#: Layer names with a meaning of their own; any other name is a sub-module of the model.
FEATURES_LAYER = "features"  # the model's ``features(x) -> (N, D)`` (its head follows)
OUTPUT_LAYER = "output"  # the prediction itself


@dataclass(frozen=True)
class LotsTarget:
    """What LOTS steers towards.

    Attributes:
        features: (N, D) target features at the chosen layer (or (D,), broadcast).
        prediction: optional (N,) target predictions: a sample also stops once its
            prediction has reached this value (in the direction of the push).
        direction: (N,) +1 for a push up, -1 for a push down, 0 when the prediction
            does not decide the stop (needed only with ``prediction``).
    """

    features: Tensor
    prediction: Tensor | None = None
    direction: Tensor | None = None


@dataclass
class LotsResult:
    """Output of :func:`lots`, all on the CPU.

    Attributes:
        x_adv: (N, C, H, W) adversarial inputs, in the model's input space.
        distances: (N, T + 1) ``||t - f_l(x)||`` before the first step and after each
            step; a sample that stopped keeps its last value.
        predictions: (N, T + 1) the model's prediction along the way (same convention).
        converged: (N,) whether the sample got close enough before the cap.
        iterations: (N,) steps taken by each sample.
    """

    x_adv: Tensor
    distances: Tensor
    predictions: Tensor
    converged: Tensor
    iterations: Tensor


# --------------------------------------------------------------------------- layers


def _prediction(out: Tensor) -> Tensor:
    """Model output (N,) or (N, 1) -> (N,); a regressor has one output."""
    flat = out.reshape(out.shape[0], -1)
    if flat.shape[1] != 1:
        raise ValueError(
            f"LOTS pushes a scalar regression output; the model returned shape {tuple(out.shape)}"
        )
    return flat[:, 0]


def _get_module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        valid = [FEATURES_LAYER, OUTPUT_LAYER, *[n for n in modules if n]]
        shown = ", ".join(valid[:30]) + (" ..." if len(valid) > 30 else "")
        raise ValueError(f"unknown LOTS layer {name!r}; valid: {shown}")
    return modules[name]


def feature_fn(model: nn.Module, layer: str) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """A function ``x -> (features (N, D), prediction (N,))`` for ``layer``.

    Args:
        model: a regressor. For ``layer="features"`` it must expose ``features(x)`` and
            ``head`` (as the models of ``utils.models.build_model`` do).
        layer: ``"features"``, ``"output"`` or the dotted name of any sub-module (its
            output is flattened; the prediction is the model's output).
    """
    if layer == FEATURES_LAYER:
        if not (
            callable(getattr(model, "features", None)) and callable(getattr(model, "head", None))
        ):
            raise ValueError(
                "layer 'features' needs a model with features(x) and head; "
                f"{type(model).__name__} has not both: give a module name or 'output'"
            )

        def run(x: Tensor) -> tuple[Tensor, Tensor]:
            feats = model.features(x)
            return feats.reshape(feats.shape[0], -1), _prediction(model.head(feats))

        return run
    if layer == OUTPUT_LAYER:

        def run_output(x: Tensor) -> tuple[Tensor, Tensor]:
            pred = _prediction(model(x))
            return pred[:, None], pred

        return run_output

    module = _get_module(model, layer)

    def run_hooked(x: Tensor) -> tuple[Tensor, Tensor]:
        captured: list[Tensor] = []
        handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            pred = _prediction(model(x))
        finally:
            handle.remove()
        return captured[0].reshape(x.shape[0], -1), pred

    return run_hooked


# -------------------------------------------------------------------------- targets


@torch.no_grad()
def _features(
    model: nn.Module, x: Tensor, layer: str, batch_size: int = 64
) -> tuple[Tensor, Tensor]:
    run = feature_fn(model, layer)
    feats, preds = [], []
    for start in range(0, x.shape[0], batch_size):
        f, p = run(x[start : start + batch_size])
        feats.append(f)
        preds.append(p)
    return torch.cat(feats), torch.cat(preds)


def sample_target(model: nn.Module, x_target: Tensor, layer: str = FEATURES_LAYER) -> LotsTarget:
    """Target = the features of other samples ``x_target`` (N, C, H, W), one per origin."""
    model.eval()
    feats, _ = _features(model, x_target, layer)
    return LotsTarget(features=feats)


def bin_mean_target(
    model: nn.Module,
    x: Tensor,
    labels: Tensor | np.ndarray,
    edges: Sequence[float],
    index: int,
    layer: str = FEATURES_LAYER,
) -> LotsTarget:
    """Target = the mean features of the samples of ``x`` whose label is in bin ``index``.

    Args:
        x: (M, C, H, W) reference samples (e.g. the test split).
        labels: (M,) their labels.
        edges: the K + 1 bin edges (``metrics.bin_edges``); labels outside them count in
            the edge bins.
        index: which bin, 0 .. K - 1.
    """
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.float64)
    k = len(edges) - 1
    if not 0 <= index < k:
        raise ValueError(f"bin index must be in 0..{k - 1} for {k} bins, got {index}")
    which = bin_index(labels.numpy(), np.asarray(edges, dtype=np.float64)) == index
    if not which.any():
        raise ValueError(
            f"no sample has a label in bin {index} [{edges[index]}, {edges[index + 1]})"
        )
    model.eval()
    feats, _ = _features(model, x[torch.as_tensor(which)], layer)
    return LotsTarget(features=feats.mean(0))


def push_target(
    model: nn.Module,
    x: Tensor,
    amount: float | Tensor,
    layer: str = FEATURES_LAYER,
    *,
    solver_steps: int = 200,
) -> LotsTarget:
    """Target that moves each prediction by ``amount`` (positive: up, richer; negative:
    down, poorer).

    For ``layer="output"`` the target is the prediction plus ``amount``. For
    ``layer="features"`` it is the feature vector nearest to ``f(x)`` whose head output is
    the prediction plus ``amount``: exact (``f + amount * w / ||w||^2``) for a linear head,
    found by gradient descent on ``(head(t) - goal)^2`` from ``f(x)`` otherwise. Samples
    stop once their prediction has reached the goal.
    """
    model.eval()
    feats, preds = _features(model, x, layer)
    amount_t = torch.as_tensor(amount, dtype=preds.dtype).expand_as(preds)
    goal = preds + amount_t
    direction = torch.sign(amount_t)
    if layer == OUTPUT_LAYER:
        return LotsTarget(goal[:, None].clone(), goal, direction)
    if layer != FEATURES_LAYER:
        raise ValueError(
            "a push target needs layer 'features' (mapped through the head) or 'output', "
            f"got {layer!r}"
        )
    head = model.head
    floor = 0.0 if bool((feats >= 0).all()) else None  # ReLU features stay >= 0
    if isinstance(head, nn.Linear) and head.out_features == 1:
        return LotsTarget(_linear_push(feats, head, goal, floor), goal, direction)
    target = feats.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([target], lr=0.05 * float(feats.abs().mean().clamp_min(1e-3)))
    for _ in range(solver_steps):
        optimizer.zero_grad()
        loss = (_prediction(head(target)) - goal).pow(2).sum()
        loss.backward()
        optimizer.step()
        if floor is not None:
            with torch.no_grad():
                target.clamp_(min=floor)
    return LotsTarget(target.detach(), goal, direction)


def _linear_push(feats: Tensor, head: nn.Linear, goal: Tensor, floor: float | None) -> Tensor:
    """Features ``t = max(f + lam * w, floor)`` with ``head(t) = goal``: the nearest point
    along the head's weight (projected on ``t >= floor`` for ReLU features). ``head(t)``
    grows monotonically with ``lam``, so ``lam`` is found by bisection per sample."""
    w = head.weight.detach()[0]
    lam = (goal - _prediction(head(feats))) / w.pow(2).sum().clamp_min(1e-12)
    if floor is None:
        return feats + lam[:, None] * w[None]

    def value(lam_: Tensor) -> Tensor:
        return _prediction(head((feats + lam_[:, None] * w[None]).clamp_min(floor)))

    lo, hi = torch.minimum(lam, torch.zeros_like(lam)), torch.maximum(lam, torch.zeros_like(lam))
    for _ in range(60):  # widen the bracket until it holds the goal (or gives up)
        short = (value(hi) < goal) | (value(lo) > goal)
        if not bool(short.any()):
            break
        hi = torch.where(value(hi) < goal, hi * 2 + 1, hi)
        lo = torch.where(value(lo) > goal, lo * 2 - 1, lo)
    for _ in range(60):
        mid = (lo + hi) / 2
        below = value(mid) < goal
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (feats + ((lo + hi) / 2)[:, None] * w[None]).clamp_min(floor)


# ----------------------------------------------------------------------- input space


def is_dw_channel(name: str) -> bool:
    """Whether a channel is Dynamic World (``DW`` code or a ``DW_<class>`` one-hot)."""
    return name == DW_BAND or name.startswith(DW_BAND + "_")


def valid_range(
    band_names: Sequence[str], stats: dict, *, normalized: bool = True
) -> tuple[Tensor, Tensor]:
    """Per-channel valid range in the space the model sees.

    Raw ranges: Sentinel-2 reflectance ``schema.REFLECTANCE_RANGE``; one-hot Dynamic World
    channels [0, 1]; any other channel (the DW code) the data min/max of ``stats``. With
    ``normalized`` (the dataset standardised with ``stats``), a raw range ``[a, b]`` of a
    band with mean ``m`` and std ``s`` becomes ``[(a - m) / s, (b - m) / s]``; one-hot
    channels are not standardised.

    Args:
        band_names: channel names of the model input (``ShardDataset.band_names``).
        stats: ``stats.json`` (``utils.hdf5_schema.read_stats``).
    """
    bands = list(stats["bands"])
    lower, upper = [], []
    for name in band_names:
        if name.startswith(DW_BAND + "_"):
            lower.append(0.0)
            upper.append(1.0)
            continue
        if name not in bands:
            raise ValueError(f"channel {name!r} is not in stats.json (it has {bands})")
        i = bands.index(name)
        if name == DW_BAND or name.split("_")[0] not in S2_BANDS:
            lo, hi = float(stats["min"][i]), float(stats["max"][i])
        else:
            lo, hi = REFLECTANCE_RANGE
        if normalized:
            mean, std = float(stats["mean"][i]), float(stats["std"][i])
            std = std if std > 0 else 1.0
            lo, hi = (lo - mean) / std, (hi - mean) / std
        if hi <= lo:  # a constant band: give it a unit range so steps stay defined
            hi = lo + 1.0
        lower.append(lo)
        upper.append(hi)
    return torch.tensor(lower), torch.tensor(upper)


def data_range(band_names: Sequence[str], stats: dict, *, normalized: bool = True) -> Tensor:
    """Per-channel typical range ``p99 - p01`` of the train data (``stats.json``), in the
    model's space; one-hot Dynamic World channels 1. A natural unit for LOTS steps:
    the valid reflectance range [0, 2] is far wider than what a band really spans."""
    bands = list(stats["bands"])
    out = []
    for name in band_names:
        if name.startswith(DW_BAND + "_"):
            out.append(1.0)
            continue
        if name not in bands:
            raise ValueError(f"channel {name!r} is not in stats.json (it has {bands})")
        i = bands.index(name)
        span = float(stats["p99"][i]) - float(stats["p01"][i])
        if normalized:
            std = float(stats["std"][i])
            span /= std if std > 0 else 1.0
        out.append(span if span > 0 else 1.0)
    return torch.tensor(out)


# ----------------------------------------------------------------------------- core


def _per_channel(value: Tensor | float | Sequence[float], channels: int, name: str) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise ValueError(f"{name} needs 1 or {channels} values (one per channel), got {t.numel()}")
    return t.clone()


def _per_quarter(value: Tensor | float | Sequence[float], x: Tensor, name: str) -> Tensor:
    """Per-channel values for ``x``: 1, C or (for (N, C, T, H, W)) C * T values, as C * T
    (a value per channel is used in every quarter)."""
    shape = x.shape[1:-2]
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if len(shape) == 2 and t.numel() == shape[0] and shape[1] > 1:
        t = t[:, None].expand(*shape).flatten()
    return _per_channel(t, int(np.prod(shape)), name)


def frame_change(
    x: Tensor | np.ndarray, x_adv: Tensor | np.ndarray, scale: Tensor | np.ndarray | None = None
) -> np.ndarray:
    """How much LOTS changed each quarter of a video input: ``|x_adv - x|`` (divided by
    ``scale``, C * T values in ``flat_band_names`` order) summed over the channels of each
    quarter, (N, C, T, H, W) -> (N, T, H, W): the heatmap of every quarter."""
    delta = np.abs(np.asarray(x_adv, np.float64) - np.asarray(x, np.float64))
    if delta.ndim != 5:
        raise ValueError(f"expected (N, C, T, H, W) inputs, got shape {delta.shape}")
    if scale is not None:
        s = np.asarray(scale, np.float64).reshape(1, *delta.shape[1:3], 1, 1)
        delta = delta / np.where(s > 0, s, 1.0)
    return delta.sum(1)


def lots(
    model: nn.Module,
    x: Tensor,
    target: LotsTarget | Tensor,
    *,
    layer: str = FEATURES_LAYER,
    lower: Tensor | Sequence[float] | float,
    upper: Tensor | Sequence[float] | float,
    step: float = 1 / 255,
    iterations: int = 100,
    rtol: float = 0.01,
    atol: float = 0.0,
    mutable: Tensor | Sequence[bool] | None = None,
    step_range: Tensor | Sequence[float] | None = None,
    anneal: float = 0.5,
    grow: float = 1.0,
    max_gain: float = 16.0,
    batch_size: int = 32,
) -> LotsResult:
    """Run LOTS on a batch (Rozsa, Günther, Boult 2017).

    Args:
        model: a regressor in the input space of ``x`` (put in eval mode here).
        x: (N, C, H, W) origins, as the model sees them (e.g. normalised), or
            (N, C, T, H, W) for a video model (quarters as time); every per-channel
            argument then takes C or C * T values (``ShardDataset.flat_band_names``
            order), so each quarter of a channel can have its own range.
        target: a :class:`LotsTarget` (or its (N, D) / (D,) features).
        layer: see :func:`feature_fn`.
        lower, upper: per-channel valid range in the model's space (C values or one);
            every iterate is clamped to it.
        step: step size as a fraction of each channel's range: ``step_range`` when
            given (e.g. the data's 1-99 % range, see :func:`data_range`), else
            ``upper - lower``.
        iterations: cap on steps per sample.
        rtol, atol: a sample has converged once ``||t - f(x)|| <= atol + rtol * d0``
            (``d0`` its starting distance), or once its prediction has come within
            ``rtol`` of the planned change of ``target.prediction`` in the push direction.
        mutable: (C,) booleans; channels marked False are never changed (e.g. a
            categorical land-cover channel).
        step_range: see ``step``.
        anneal: a sample's step is multiplied by this factor whenever its distance
            grew (it overshot); 1.0 keeps the fixed step of the original LOTS.
        grow: a sample's step is multiplied by this factor after each step that brought
            it closer, up to ``max_gain`` times ``step`` (with ``anneal``, a step that
            adapts to how far the target is: a fixed step of 1/255 leaves most pushes of
            the demo at the cap, short of the planned change); 1.0 (the default, the
            original LOTS) keeps the step fixed.
        max_gain: the largest factor ``grow`` may reach.
        batch_size: samples per forward/backward pass.

    Returns:
        A :class:`LotsResult`. No pixel moves more than ``max_gain * step * range_c``
        per iteration (``step * range_c`` with ``grow=1``).
    """
    if x.ndim not in (4, 5):
        raise ValueError(f"x must be (N, C, H, W) or (N, C, T, H, W), got {tuple(x.shape)}")
    if not isinstance(target, LotsTarget):
        target = LotsTarget(features=target)
    if iterations < 0 or step <= 0 or not 0 < anneal <= 1 or grow < 1 or max_gain < 1:
        raise ValueError(
            "need iterations >= 0, step > 0, 0 < anneal <= 1, grow >= 1 and max_gain >= 1; "
            f"got {iterations}, {step}, {anneal}, {grow}, {max_gain}"
        )
    n = x.shape[0]
    device = x.device
    lo = _per_quarter(lower, x, "lower").to(device)
    hi = _per_quarter(upper, x, "upper").to(device)
    if bool((hi <= lo).any()):
        raise ValueError(
            f"every channel needs upper > lower; got lower={lo.tolist()}, upper={hi.tolist()}"
        )
    step_c = step * (hi - lo if step_range is None else _per_quarter(step_range, x, "step_range"))
    if bool((step_c <= 0).any()):
        raise ValueError(f"every channel needs a positive step range, got {step_c.tolist()}")
    if mutable is not None:
        step_c = step_c * _per_quarter(mutable, x, "mutable").to(device)
    view = (1, *x.shape[1:-2], 1, 1)
    lo, hi, step_c = lo.view(view), hi.view(view), step_c.view(view)

    feats_t = target.features.to(device, torch.float32)
    if feats_t.ndim == 1:
        feats_t = feats_t.expand(n, -1)
    if feats_t.shape[0] != n:
        raise ValueError(f"target features for {feats_t.shape[0]} samples, x has {n}")
    goal = None if target.prediction is None else target.prediction.to(device).expand(n)
    direction = None if target.direction is None else target.direction.to(device).expand(n)

    model.eval()
    run = feature_fn(model, layer)
    x_adv = x.detach().clamp(lo, hi).clone()
    # only grad_x is needed: parameters leave the graph, which saves their gradients
    frozen = [p for p in model.parameters() if p.requires_grad]
    distances = torch.zeros(n, iterations + 1)
    predictions = torch.zeros(n, iterations + 1)
    converged = torch.zeros(n, dtype=torch.bool)
    steps = torch.zeros(n, dtype=torch.long)
    try:
        for p in frozen:
            p.requires_grad_(False)
        for start in range(0, n, batch_size):
            sl = slice(start, min(start + batch_size, n))
            res = _lots_batch(
                run,
                x_adv[sl],
                feats_t[sl],
                None if goal is None else goal[sl],
                None if direction is None else direction[sl],
                lo,
                hi,
                step_c,
                iterations,
                rtol,
                atol,
                anneal,
                (grow, max_gain),
            )
            x_adv[sl], distances[sl], predictions[sl], converged[sl], steps[sl] = res
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return LotsResult(x_adv.cpu(), distances, predictions, converged, steps)


def _lots_batch(
    run: Callable[[Tensor], tuple[Tensor, Tensor]],
    x: Tensor,
    target: Tensor,
    goal: Tensor | None,
    direction: Tensor | None,
    lo: Tensor,
    hi: Tensor,
    step_c: Tensor,
    iterations: int,
    rtol: float,
    atol: float,
    anneal: float,
    growth: tuple[float, float] = (1.0, 1.0),
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One batch of LOTS; each sample is frozen once it has converged."""
    n = x.shape[0]
    x = x.clone()
    dist = torch.zeros(n, iterations + 1)
    pred = torch.zeros(n, iterations + 1)
    converged = torch.zeros(n, dtype=torch.bool, device=x.device)
    steps = torch.zeros(n, dtype=torch.long)
    active = torch.arange(n, device=x.device)
    d0 = p0 = torch.zeros(n, device=x.device)
    prev = torch.full((n,), float("inf"), device=x.device)
    gain = torch.ones(n, device=x.device)  # per-sample step factor, shrunk on overshoot
    for it in range(iterations + 1):
        xa = x[active].requires_grad_(True)
        feats, p = run(xa)
        diff = target[active] - feats
        d = diff.norm(dim=1)
        dist[active.cpu(), it] = d.detach().cpu()
        pred[active.cpu(), it] = p.detach().cpu()
        if it == 0:
            d0 = d.detach().clone()
            p0 = p.detach().clone()
        overshot = d.detach() > prev[active]
        gain[active[overshot]] *= anneal
        if it > 0 and growth[0] > 1:  # closer after the last step: take a longer one
            closer = active[~overshot]
            gain[closer] = (gain[closer] * growth[0]).clamp_max(growth[1])
        prev[active] = d.detach()
        done = d.detach() <= atol + rtol * d0[active]
        if goal is not None and direction is not None:
            moved = (p.detach() - goal[active]) * direction[active]
            slack = rtol * (goal[active] - p0[active]).abs()
            done |= (direction[active] != 0) & (moved >= -slack)
        converged[active] = done
        keep = ~done
        if it == iterations or not bool(keep.any()):
            break
        loss = 0.5 * diff.pow(2).sum()
        (grad,) = torch.autograd.grad(loss, xa)
        grad = grad[keep]
        per_sample = (-1,) + (1,) * (grad.ndim - 1)
        scale = grad.abs().flatten(1).amax(1).clamp_min(1e-12).view(per_sample)
        active = active[keep]
        move = step_c * gain[active].view(per_sample) * grad / scale
        x[active] = torch.minimum(torch.maximum(x[active] - move, lo), hi)
        steps[active.cpu()] += 1
    # a sample that stopped keeps its last distance/prediction in the remaining columns
    later = torch.arange(iterations + 1)[None] > steps[:, None]
    dist = torch.where(later, dist.gather(1, steps[:, None]), dist)
    pred = torch.where(later, pred.gather(1, steps[:, None]), pred)
    return x.detach(), dist, pred, converged.cpu(), steps
