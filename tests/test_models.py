"""The original study's models: Swin-T (2-D, the quarters stacked as channels) and
Swin3D-T / Swin3D-B (the quarters as time), their widened first layers, the
``layout="time"`` dataset, and LOTS / the explanation stage on a video model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from shards_factory import write_tiny_shards
from torch import nn

from utils.dataloader import ShardDataset, input_layout, time_grid
from utils.inference import evaluate_checkpoint
from utils.models import StackedVideo, build_model, example_input
from utils.paths import RunPaths
from utils.pretrained import widen_conv
from utils.train import TrainConfig, fit
from visualization import explain as ex
from visualization.lots import frame_change, lots

# the 2-D models see 24 S2 channels (+ DW, + night lights); a video model 6 (+1, +2) a quarter
CHANNELS_2D = (24, 25, 26)
CHANNELS_3D = (6, 7, 8)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_shards(tmp_path_factory.mktemp("shards"), size=12, seed=0)


def _forward_backward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    y = model(x)
    assert y.shape == (x.shape[0],) and torch.isfinite(y).all()
    y.sum().backward()
    return y


@pytest.mark.parametrize("channels", CHANNELS_2D)
def test_swin_t_builds_and_trains_for_24_25_26_channels(channels: int) -> None:
    torch.manual_seed(0)
    model = build_model("swin_t", channels)
    _forward_backward(model, torch.randn(2, channels, 32, 32))
    first = model.features[1].features[0][0]
    assert first.in_channels == channels and first.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("name", "channels"), [("swin3d_t", c) for c in CHANNELS_3D] + [("swin3d_b", 7)]
)
def test_swin3d_takes_quarters_as_time(name: str, channels: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, channels)
    assert input_layout(name) == "time"
    x = example_input(name, channels, size=32)
    assert x.shape == (2, channels, 4, 32, 32)
    _forward_backward(model, x)
    proj = model.features.patch_embed.proj
    assert isinstance(proj, nn.Conv3d) and proj.in_channels == channels
    assert proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError):  # a stacked 2-D input is not silently accepted
        model(torch.randn(2, channels * 4, 32, 32))


def test_crops_not_divisible_by_the_patch_are_padded_not_cut() -> None:
    """A 30 px crop: the last two rows lie beyond the last whole 4-px patch; they still
    change the output (zero padding to 32), for Swin-T and Swin3D alike."""
    torch.manual_seed(0)
    for name, channels in (("swin_t", 24), ("swin3d_t", 6)):
        model = build_model(name, channels).eval()
        x = example_input(name, channels, size=30, batch=1)
        bumped = x.clone()
        bumped[..., 29, :] += 3.0
        with torch.no_grad():
            assert not torch.allclose(model(x), model(bumped)), name
    conv = nn.Conv2d(1, 1, 4, stride=4)  # what torchvision's stride-4 conv alone would do
    x = torch.randn(1, 1, 30, 30)
    bumped = x.clone()
    bumped[..., 29, :] += 3.0
    assert torch.equal(conv(x), conv(bumped))


def _rgb_file(tmp_path: Path, name: str) -> tuple[Path, nn.Module]:
    torch.manual_seed(1)
    factory = {"swin_t": torchvision.models.swin_t, "swin3d_t": torchvision.models.video.swin3d_t}[
        name
    ]
    net = factory(weights=None)
    path = tmp_path / f"{name}.pth"
    torch.save(net.state_dict(), path)
    return path, net


def test_widened_first_layer_keeps_rgb_filters_and_scales_by_sqrt_3_over_c(
    tmp_path: Path,
) -> None:
    path, net = _rgb_file(tmp_path, "swin_t")
    names = [f"{b}_q{q}" for q in range(1, 5) for b in ("B2", "B3", "B4", "B8", "B11", "B12")]
    model = build_model("swin_t", 25, pretrained_path=path, band_names=[*names, "DW"])
    w, w0 = model.features[1].features[0][0].weight, net.features[0][0].weight
    scale = math.sqrt(3 / 25)
    for q in range(4):
        assert torch.allclose(w[:, 6 * q + 2], w0[:, 0] * scale)  # B4 = red, every quarter
        assert torch.allclose(w[:, 6 * q + 1], w0[:, 1] * scale)  # B3 = green
        assert torch.allclose(w[:, 6 * q + 0], w0[:, 2] * scale)  # B2 = blue
        assert torch.allclose(w[:, 6 * q + 3], w0.mean(1) * scale)  # B8: mean of RGB
    assert torch.allclose(w[:, 24], w0.mean(1) * scale)  # DW
    assert torch.equal(model.features[1].features[0][0].bias, net.features[0][0].bias)
    assert torch.equal(
        model.features[1].features[1][0].mlp[0].weight, net.features[1][0].mlp[0].weight
    )  # the rest is loaded as is

    path3, net3 = _rgb_file(tmp_path, "swin3d_t")
    bands = ["B2", "B3", "B4", "B8", "B11", "B12"]
    video = build_model("swin3d_t", 6, pretrained_path=path3, band_names=bands)
    w, w0 = video.features.patch_embed.proj.weight, net3.patch_embed.proj.weight
    assert w.shape == (96, 6, 2, 4, 4)
    scale = math.sqrt(3 / 6)  # the original's swin3D.py: (3 / 6) ** 0.5
    assert torch.allclose(w[:, 2], w0[:, 0] * scale) and torch.allclose(w[:, 0], w0[:, 2] * scale)
    assert torch.allclose(w[:, 5], w0.mean(1) * scale)
    with pytest.raises(ValueError, match="expected an RGB first layer"):
        widen_conv(nn.Conv2d(4, 8, 3), 6)


def test_time_layout_puts_quarters_on_their_own_axis(shards: Path) -> None:
    stack = ShardDataset(shards, "val", dw_mode="channel")
    video = ShardDataset(shards, "val", dw_mode="channel", layout="time")
    assert video.band_names == ["B2", "B3", "B4", "B8", "B11", "B12", "DW"]
    assert video.frames == ("q1", "q2", "q3", "q4") and video.num_channels == 7
    assert video.sample_shape == (7, 4, 12, 12)
    a, b = stack[3]["image"], video[3]["image"]
    assert b.shape == (7, 4, 12, 12)
    assert torch.equal(b[2, 1], a[stack.band_names.index("B4_q2")])
    assert torch.equal(b[5, 3], a[stack.band_names.index("B12_q4")])
    for t in range(4):  # Dynamic World repeated in every quarter
        assert torch.equal(b[6, t], a[-1])
    assert video.flat_band_names[:5] == ["B2_q1", "B2_q2", "B2_q3", "B2_q4", "B3_q1"]
    assert torch.equal(
        b.reshape(28, 12, 12)[video.flat_band_names.index("B8_q3")],
        a[stack.band_names.index("B8_q3")],
    )
    onehot = ShardDataset(shards, "val", layout="time")
    assert onehot.num_channels == 6 + 9 and onehot[0]["image"].shape == (15, 4, 12, 12)
    with pytest.raises(ValueError, match="missing"):
        time_grid(["B4_q1", "B4_q2", "B3_q1"])
    with pytest.raises(ValueError, match="unknown layout"):
        ShardDataset(shards, "val", layout="video")
    index, names, quarters = time_grid(["B4_q1", "NL", "B4_q2"])  # a static channel
    assert names == ["B4", "NL"] and quarters == ["q1", "q2"]
    assert index.tolist() == [[0, 2], [1, 1]]


class SecondQuarter(nn.Module):
    """A video regressor that reads only quarter 2 (features = per-channel means)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.head = nn.Linear(channels, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 1].mean((-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(-1)


def test_lots_on_video_input_changes_only_the_quarter_the_model_reads() -> None:
    torch.manual_seed(0)
    model = SecondQuarter(3)
    x = 0.1 * torch.randn(4, 3, 4, 8, 8)
    goal = model.features(x) + 0.5
    upper = torch.full((3 * 4,), 5.0)
    upper[1 * 4 + 1] = 0.2  # channel 1 in quarter 2: its own range (C * T values)
    res = lots(model, x, goal, lower=-5.0, upper=upper, step=0.01, iterations=40)
    assert res.x_adv.shape == x.shape and (res.distances[:, -1] < res.distances[:, 0]).all()
    change = frame_change(x, res.x_adv)
    assert change.shape == (4, 4, 8, 8)
    assert change[:, 1].sum() > 0 and change[:, [0, 2, 3]].sum() == 0
    assert res.x_adv[:, 1, 1].max() <= 0.2 + 1e-6 < res.x_adv[:, 0, 1].max()  # its range
    with pytest.raises(ValueError, match="needs 1 or 12 values"):
        lots(model, x, goal, lower=torch.zeros(5), upper=5.0)


def test_video_model_trains_evaluates_and_is_explained(tmp_path: Path) -> None:
    """fit -> evaluate_checkpoint -> the explanation stage, all in the time layout."""
    paths = RunPaths.of(tmp_path)
    write_tiny_shards(paths.shards, sizes={"train": 24, "val": 8, "test": 12}, size=12)
    cfg = TrainConfig(
        run_dir=str(tmp_path),
        model="swin3d_t",
        dw_mode="channel",
        epochs=1,
        batch_size=12,
        progress=False,
        tensorboard=False,
    )
    result = fit(cfg)  # train/l2_baseline/best.pt, the checkpoint explained by default
    table, report = evaluate_checkpoint(result.best_checkpoint, split="val")
    assert report["mae"] == pytest.approx(result.best["val_mae"], rel=1e-4)
    assert len(table) == 8
    cfg = ex.ExplainConfig(
        run_dir=str(tmp_path),
        examples_per_bin=1,
        iterations=3,
        methods=("saliency",),
        faithfulness_steps=2,
        push=0.05,
    )
    session = ex.load_session(cfg)
    assert isinstance(session.model, StackedVideo) and len(session.band_names) == 28
    out = ex.explain_run(cfg)
    assert (paths.explain / "lots_quarters.png").is_file()
    assert np.isfinite(out["faithfulness"].to_numpy()).all()
