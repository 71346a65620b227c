"""Pretrained weights from local files only: torchvision's files (by torchvision's own
names, from a path, a folder or the torch hub cache) and a torchgeo-format Sentinel-2
ResNet whose first-layer filters are mapped to the project's bands by name. The weight
files are fabricated here (the right keys and shapes, random values)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchvision

from extract_GPS_images.schema import s2_channel_names
from utils.models import build_model
from utils.pretrained import SENTINEL2_BANDS, read_state_dict, torchvision_files

NAMES = [*s2_channel_names(), "DW"]  # the 25 channels of dw_mode="channel"


def ssl4eo_file(path: Path, arch: str = "resnet18", *, wrap: bool = False) -> dict:
    """A torchgeo-format SSL4EO-S12 checkpoint: timm/torchvision ResNet keys, a first
    layer over the 13 Sentinel-2 bands, no classifier."""
    torch.manual_seed(3)
    state = getattr(torchvision.models, arch)(weights=None).state_dict()
    state["conv1.weight"] = torch.randn(64, len(SENTINEL2_BANDS), 7, 7)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    saved = {"state_dict": {f"module.{k}": v for k, v in state.items()}} if wrap else state
    torch.save(saved, path)
    return state


def test_sentinel2_checkpoint_filters_are_picked_by_band_name(tmp_path: Path) -> None:
    state = ssl4eo_file(tmp_path / "ssl4eo.pth")
    model = build_model("resnet18", 25, pretrained_path=tmp_path / "ssl4eo.pth", band_names=NAMES)
    w, w13 = model.features.conv1.weight, state["conv1.weight"]
    scale = math.sqrt(13 / 25)
    for name in ("B2_q1", "B3_q2", "B4_q4", "B8_q3", "B11_q1", "B12_q4"):
        band = SENTINEL2_BANDS.index(name.split("_")[0])
        assert torch.allclose(w[:, NAMES.index(name)], w13[:, band] * scale), name
    assert SENTINEL2_BANDS.index("B8") == 7 and SENTINEL2_BANDS.index("B11") == 11
    assert torch.allclose(w[:, NAMES.index("DW")], w13.mean(1) * scale)
    dropped = [SENTINEL2_BANDS.index(b) for b in ("B1", "B5", "B6", "B7", "B8A", "B9", "B10")]
    for c in range(24):  # no channel took a band the project does not have
        assert not any(torch.allclose(w[:, c], w13[:, d] * scale) for d in dropped)
    assert torch.equal(model.features.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
    assert torch.equal(model.features.bn1.running_var, state["bn1.running_var"])

    wrapped = ssl4eo_file(tmp_path / "wrapped.pth", wrap=True)  # {"state_dict": module.*}
    assert set(read_state_dict(tmp_path / "wrapped.pth")) == set(wrapped)


def test_sentinel2_checkpoint_errors(tmp_path: Path) -> None:
    ssl4eo_file(tmp_path / "r50.pth", arch="resnet50")
    with pytest.raises(ValueError, match="does not fit resnet18"):
        build_model("resnet18", 25, pretrained_path=tmp_path / "r50.pth", band_names=NAMES)
    with pytest.raises(ValueError, match="give the 25 band names"):
        build_model("resnet50", 25, pretrained_path=tmp_path / "r50.pth")
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["conv1.weight"] = torch.randn(64, 4, 7, 7)
    torch.save(state, tmp_path / "four.pth")
    with pytest.raises(ValueError, match="over 4 bands; expected 3"):
        build_model("resnet18", 25, pretrained_path=tmp_path / "four.pth", band_names=NAMES)


def test_torchvision_file_names_come_from_its_enums() -> None:
    names = {n: [f for _, f, _ in torchvision_files(n)] for n in ("resnet50", "swin3d_b")}
    assert names["resnet50"][0] == "resnet50-11ad3fa6.pth"  # the default (V2) first
    assert "resnet50-0676ba61.pth" in names["resnet50"]  # V1, the original study's
    assert set(names["swin3d_b"]) == {"swin3d_b_1k-24f7c7c6.pth", "swin3d_b_22k-7c6ae6fa.pth"}
    assert [f for _, f, _ in torchvision_files("swin_t")] == ["swin_t-704ceda3.pth"]


def test_kinetics_weights_from_the_torch_cache_or_a_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    cache = tmp_path / "home" / "hub" / "checkpoints"
    with pytest.raises(FileNotFoundError) as missing:
        build_model("swin3d_t", 7, pretrained_path="torch-cache")
    text = str(missing.value)
    assert "swin3d_t-7615ae03.pth not in the torch cache" in text and str(cache) in text
    assert "https://download.pytorch.org/models/swin3d_t-7615ae03.pth" in text
    torch.manual_seed(5)
    net = torchvision.models.video.swin3d_t(weights=None)
    cache.mkdir(parents=True)
    torch.save(net.state_dict(), cache / "swin3d_t-7615ae03.pth")
    bands = ["B2", "B3", "B4", "B8", "B11", "B12", "DW"]
    model = build_model("swin3d_t", 7, pretrained_path="torch-cache", band_names=bands)
    w, w0 = model.features.patch_embed.proj.weight, net.patch_embed.proj.weight
    assert torch.allclose(w[:, 2], w0[:, 0] * math.sqrt(3 / 7))  # B4 = red
    assert torch.equal(
        model.features.features[0][0].attn.qkv.weight, net.features[0][0].attn.qkv.weight
    )
    same = build_model("swin3d_t", 7, pretrained_path=cache, band_names=bands)  # a folder
    assert torch.equal(same.features.patch_embed.proj.weight, w)
    with pytest.raises(FileNotFoundError, match=r"swin_t-704ceda3\.pth not in the folder"):
        build_model("swin_t", 7, pretrained_path=cache)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded") as gone:
        build_model("resnet50", 7, pretrained_path=tmp_path / "nope.pth")
    assert "SENTINEL2_ALL_MOCO" in str(gone.value) and "resnet50-11ad3fa6.pth" in str(gone.value)
