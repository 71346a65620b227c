"""Property tests of LOTS (visualization/lots.py) on a tiny CNN, on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from metrics import bin_index
from visualization.lots import (
    LotsTarget,
    bin_mean_target,
    feature_fn,
    lots,
    push_target,
    sample_target,
)

torch.set_num_threads(1)
C, H, W = 5, 12, 12


class TinyCNN(nn.Module):
    """A regressor with ``features(x) -> (N, D)`` and a linear ``head``, like build_model's."""

    def __init__(self, channels: int = C, width: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(width, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def model() -> TinyCNN:
    return TinyCNN().eval()


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    lower = torch.tensor([-1.0, -2.0, -0.5, -3.0, 0.0])
    upper = torch.tensor([1.0, 2.0, 3.0, 1.0, 1.0])
    x = lower.view(1, -1, 1, 1) + torch.rand(6, C, H, W, generator=g) * (upper - lower).view(
        1, -1, 1, 1
    )
    return x, lower, upper


def test_distance_decreases_and_converges_to_another_sample(model, data) -> None:
    x, lower, upper = data
    target = sample_target(model, x.roll(1, 0))
    res = lots(model, x, target, lower=lower, upper=upper, step=0.01, iterations=60, rtol=0.05)
    d = res.distances
    assert d.shape == (6, 61) and res.predictions.shape == (6, 61)
    assert torch.all(d[:, -1] < 0.5 * d[:, 0]), "LOTS did not approach the target features"
    # mostly monotone: a fixed step can overshoot near the target, but not early on
    first = d[:, :10]
    assert torch.all(first[:, 1:] <= first[:, :-1] + 1e-6)
    assert res.converged.dtype == torch.bool
    # a converged sample met the tolerance and stopped there
    for i in torch.nonzero(res.converged).flatten().tolist():
        k = int(res.iterations[i])
        assert d[i, k] <= 0.05 * d[i, 0] + 1e-6
        assert torch.all(d[i, k:] == d[i, k])


def test_no_pixel_moves_more_than_step_times_iterations(model, data) -> None:
    x, lower, upper = data
    step, iters = 0.02, 7
    res = lots(
        model,
        x,
        sample_target(model, x.flip(0)),
        lower=lower,
        upper=upper,
        step=step,
        iterations=iters,
        rtol=0.0,
    )
    bound = (step * (upper - lower) * iters).view(1, -1, 1, 1)
    change = (res.x_adv - x).abs()
    assert torch.all(change <= bound + 1e-5)
    assert torch.all(res.iterations <= iters)
    # per iteration too: the largest move of a sample in its busiest channel is one step
    assert change.amax((2, 3)).max() > 0


def test_clamps_hold_per_band(model, data) -> None:
    x, lower, upper = data
    # a large step pushes many pixels to the edges of their band's range
    res = lots(
        model, x, push_target(model, x, 50.0), lower=lower, upper=upper, step=0.3, iterations=15
    )
    lo, hi = lower.view(1, -1, 1, 1), upper.view(1, -1, 1, 1)
    assert torch.all(res.x_adv >= lo - 1e-6) and torch.all(res.x_adv <= hi + 1e-6)
    at_edge = (res.x_adv <= lo + 1e-6) | (res.x_adv >= hi - 1e-6)
    assert at_edge.any(), "the test should drive some pixels to a clamp"
    # a wider range elsewhere must not leak: channel 4 lives in [0, 1], not [-3, 3]
    assert res.x_adv[:, 4].min() >= 0.0 and res.x_adv[:, 4].max() <= 1.0


def test_batched_equals_one_by_one(model, data) -> None:
    x, lower, upper = data
    target = sample_target(model, x.roll(2, 0))
    kw = dict(lower=lower, upper=upper, step=0.01, iterations=25, rtol=0.2)
    batched = lots(model, x, target, **kw)
    for i in range(x.shape[0]):
        one = lots(model, x[i : i + 1], LotsTarget(target.features[i : i + 1]), **kw)
        assert torch.allclose(one.x_adv, batched.x_adv[i : i + 1], atol=1e-5)
        assert torch.allclose(one.distances, batched.distances[i : i + 1], atol=1e-4)
        assert bool(one.converged[0]) == bool(batched.converged[i])
        assert int(one.iterations[0]) == int(batched.iterations[i])
    # several samples stopped at different iterations: the freezing was exercised
    assert len(set(batched.iterations.tolist())) > 1


def test_inner_layer_by_module_name(model, data) -> None:
    x, lower, upper = data
    run = feature_fn(model, "body.3")
    feats, pred = run(x)
    with torch.no_grad():
        assert torch.allclose(feats, model.body[:4](x).flatten(1), atol=1e-6)
        assert torch.allclose(pred, model(x).squeeze(1), atol=1e-6)
    res = lots(
        model,
        x,
        sample_target(model, x.roll(1, 0), "body.3"),
        layer="body.3",
        lower=lower,
        upper=upper,
        step=0.01,
        iterations=30,
    )
    assert torch.all(res.distances[:, -1] < res.distances[:, 0])


@pytest.mark.parametrize("layer", ["features", "output"])
def test_up_raises_and_down_lowers_the_prediction(model, data, layer: str) -> None:
    x, lower, upper = data
    kw = dict(layer=layer, lower=lower, upper=upper, step=0.01, iterations=40)
    up = lots(model, x, push_target(model, x, 0.3, layer), **kw)
    down = lots(model, x, push_target(model, x, -0.3, layer), **kw)
    p0 = up.predictions[:, 0]
    assert torch.all(up.predictions[:, -1] > p0)
    assert torch.all(down.predictions[:, -1] < p0)
    with torch.no_grad():  # the recorded prediction is the model's on x_adv
        assert torch.allclose(model(up.x_adv).squeeze(1), up.predictions[:, -1], atol=1e-4)


def test_push_target_stops_at_the_goal(model, data) -> None:
    x, lower, upper = data
    target = push_target(model, x, 0.05)
    res = lots(model, x, target, lower=lower, upper=upper, step=0.01, iterations=200, rtol=0.02)
    assert res.converged.all() and torch.all(res.iterations < 200)
    final = res.predictions[torch.arange(6), res.iterations]
    assert torch.all(final >= target.prediction - 0.02 * 0.05 - 1e-6)


def test_nonlinear_head_push(data) -> None:
    x, lower, upper = data
    model = TinyCNN(seed=3)
    model.head = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    model.eval()
    target = push_target(model, x, 0.2)
    _, p = feature_fn(model, "features")(x)
    with torch.no_grad():
        reached = model.head(target.features).squeeze(1)
    assert torch.allclose(reached, p.detach() + 0.2, atol=1e-2)


def test_mutable_channels_are_left_alone(model, data) -> None:
    x, lower, upper = data
    mutable = [True, True, True, True, False]
    res = lots(
        model,
        x,
        push_target(model, x, 1.0),
        lower=lower,
        upper=upper,
        step=0.05,
        iterations=10,
        mutable=mutable,
    )
    assert torch.equal(res.x_adv[:, 4], x[:, 4])
    assert not torch.equal(res.x_adv[:, 0], x[:, 0])


def test_bin_mean_target(model, data) -> None:
    x, _, _ = data
    labels = np.array([0.1, 0.5, 0.9, 0.15, 1.2, -0.3])
    edges = [0.0, 0.33, 0.66, 1.0]
    assert bin_index(labels, np.array(edges)).tolist() == [0, 1, 2, 0, 2, 0]
    t = bin_mean_target(model, x, labels, edges, 0)
    with torch.no_grad():
        expected = model.features(x[[0, 3, 5]]).mean(0)
    assert torch.allclose(t.features, expected, atol=1e-6)
    with pytest.raises(ValueError, match="bin index"):
        bin_mean_target(model, x, labels, edges, 3)


def test_same_seed_same_output(data) -> None:
    x, lower, upper = data
    runs = []
    for _ in range(2):
        m = TinyCNN(seed=7).eval()
        runs.append(lots(m, x, push_target(m, x, -0.2), lower=lower, upper=upper, iterations=10))
    assert torch.equal(runs[0].x_adv, runs[1].x_adv)
    assert torch.equal(runs[0].distances, runs[1].distances)


def test_clear_errors(model, data) -> None:
    x, lower, upper = data
    t = sample_target(model, x)
    with pytest.raises(ValueError, match="unknown LOTS layer 'nope'"):
        lots(model, x, t, layer="nope", lower=lower, upper=upper)
    with pytest.raises(ValueError, match="lower needs 1 or 5 values"):
        lots(model, x, t, lower=[0.0, 1.0], upper=upper)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        lots(model, x[0], t, lower=lower, upper=upper)
    with pytest.raises(ValueError, match="push target needs layer"):
        push_target(model, x, 1.0, layer="body.0")


def test_anneal_shrinks_the_step_after_an_overshoot(model, data) -> None:
    x, lower, upper = data
    target = push_target(model, x, 0.01, "output")  # a tiny push: a big step overshoots it
    kw = dict(layer="output", lower=lower, upper=upper, step=0.2, iterations=20, rtol=0.0)
    fixed = lots(model, x, LotsTarget(target.features), anneal=1.0, **kw)
    annealed = lots(model, x, LotsTarget(target.features), anneal=0.5, **kw)
    assert annealed.distances[:, -1].mean() < 0.5 * fixed.distances[:, -1].mean()
    with pytest.raises(ValueError, match="anneal"):
        lots(model, x, target, lower=lower, upper=upper, anneal=0.0)


def test_growing_step_reaches_pushes_the_fixed_step_leaves_at_the_cap(model, data) -> None:
    x, lower, upper = data
    target = push_target(model, x, 0.1, "output")
    kw = dict(layer="output", lower=lower, upper=upper, step=1 / 255, iterations=40, rtol=0.01)
    fixed = lots(model, x, target, **kw)
    grown = lots(model, x, target, grow=1.2, **kw)
    assert fixed.converged.float().mean() < 0.5  # the fixed step is too short for 40 steps
    assert grown.converged.float().mean() >= 0.9
    # a converged push reached the planned change within rtol, and no pixel moved more
    # than max_gain steps in one iteration
    final = grown.predictions[torch.arange(len(x)), grown.iterations]
    reached = (final - target.prediction) * target.direction >= -0.01 * 0.1 - 1e-6
    assert bool(reached[grown.converged].all())
    one = lots(model, x, target, grow=1.2, max_gain=2.0, **{**kw, "iterations": 1})
    step_c = (upper - lower).view(1, -1, 1, 1) / 255
    assert bool(
        (
            (one.x_adv - x.clamp(lower.view(1, -1, 1, 1), upper.view(1, -1, 1, 1))).abs()
            <= step_c * 1.0001
        ).all()
    )  # no growth before a step has been judged
    with pytest.raises(ValueError, match="grow"):
        lots(model, x, target, lower=lower, upper=upper, grow=0.9)
