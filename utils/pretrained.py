"""Pretrained weights from local files only: nothing is downloaded at run time.

Two kinds of ``state_dict`` file are read (``torch.load(weights_only=True)``):

* torchvision's ImageNet / Kinetics-400 weights (an RGB first layer), from a file, a
  folder, or the torch hub cache (``torch.hub.get_dir()/checkpoints``), under the file
  names torchvision's weight enums give (``resnet50-11ad3fa6.pth``,
  ``swin_t-704ceda3.pth``, ``swin3d_t-7615ae03.pth``, ...: :func:`torchvision_files`).
  The first layer is widened to the project's channels by
  :func:`widen_conv` (the original study's recipe).
* a Sentinel-2 self-supervised ResNet in the format torchgeo publishes (e.g. the
  SSL4EO-S12 MoCo / DINO ResNet-18/50 of Wang et al. 2022: timm ResNet keys, which are
  torchvision's, and a first layer over the 13 Sentinel-2 bands B1 ... B12 with B8A,
  :data:`SENTINEL2_BANDS`). Each project channel takes the filter of its band by name
  (``B4_q2`` -> ``B4``), the checkpoint's other bands are dropped, channels without a
  Sentinel-2 band (Dynamic World, night lights) take the mean of the 13 filters, and the
  layer is scaled by ``sqrt(13 / C)``: the original's ``sqrt(3 / C)`` with the
  checkpoint's own channel count (each band appears once per quarter here).

Those SSL models were trained on top-of-atmosphere reflectance divided by 10000 (the
project's raw scale), while the project standardises every band; the first layer's
filters then see inputs of another scale, which its BatchNorm largely absorbs during
fine-tuning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from utils.dataloader import RGB_BANDS

#: ``pretrained_path`` value that looks in the torch hub cache (never downloading).
TORCH_CACHE = "torch-cache"
#: Band order of torchgeo's 13-band Sentinel-2 weights (SSL4EO-S12 and others).
SENTINEL2_BANDS: tuple[str, ...] = (
    "B1",
    "B2",
    "B3",
    "B4",
    "B5",
    "B6",
    "B7",
    "B8",
    "B8A",
    "B9",
    "B10",
    "B11",
    "B12",
)
#: torchgeo's published Sentinel-2 ResNets (for the missing-file message).
TORCHGEO_HINT = (
    "torchgeo.models.ResNet50_Weights.SENTINEL2_ALL_MOCO (or ResNet18_Weights...): "
    "its .url, e.g. https://hf.co/torchgeo/ssl4eo_s12_resnet50_sentinel2_all_moco"
)


def torchvision_files(name: str) -> list[tuple[str, str, str]]:
    """``(weights name, file name, url)`` of every torchvision weight set of model
    ``name``, the default first (read from torchvision's enums, offline)."""
    enum = torchvision.models.get_model_weights(name)
    ordered = [enum.DEFAULT, *(w for w in enum if w is not enum.DEFAULT)]
    return [(w.name, Path(w.url).name, w.url) for w in ordered]


def cache_dir() -> Path:
    """The torch hub cache folder torchvision downloads weights to."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights_path(name: str, pretrained_path: str | Path) -> Path:
    """The local weights file of ``pretrained_path`` for model ``name``.

    Args:
        name: a torchvision model name (for the cache file names).
        pretrained_path: a file, a folder holding torchvision's file, or
            :data:`TORCH_CACHE`.

    Raises:
        FileNotFoundError: saying where it looked and how to get the file.
    """
    given = str(pretrained_path)
    folder = cache_dir() if given == TORCH_CACHE else Path(given)
    if given != TORCH_CACHE and not folder.is_dir():
        if folder.is_file():
            return folder
        raise FileNotFoundError(
            f"pretrained weights {folder} not found (a local file; nothing is downloaded). "
            f"{_how_to_get(name)}"
        )
    files = _known_files(name)
    for _, filename, _ in files:
        if (folder / filename).is_file():
            return folder / filename
    where = "the torch cache" if given == TORCH_CACHE else "the folder"
    names = ", ".join(f for _, f, _ in files) or "(torchvision has no weights for it)"
    raise FileNotFoundError(f"{names} not in {where} {folder}. {_how_to_get(name)}")


def _known_files(name: str) -> list[tuple[str, str, str]]:
    try:
        return torchvision_files(name)
    except (KeyError, ValueError):
        return []


def _how_to_get(name: str) -> str:
    files = _known_files(name)
    tv = (
        f"torchvision {name}: download {files[0][2]} (or run, where there is internet, "
        f"python -c \"import torchvision; torchvision.models.get_model('{name}', "
        f"weights='DEFAULT')\", which writes it to {cache_dir()}) and pass "
        "pretrained_path=<that file> or 'torch-cache'"
        if files
        else ""
    )
    ssl = f"a Sentinel-2 ResNet: {TORCHGEO_HINT}" if name.startswith("resnet") else ""
    return "Get " + "; or ".join(p for p in (tv, ssl) if p) + "." if tv or ssl else ""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a weights file (``weights_only=True``); a ``state_dict`` nested
    under ``"state_dict"`` or ``"model"`` is unwrapped, a ``module.`` prefix dropped.

    Raises:
        ValueError: when the file holds no tensor dict.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state_dict (a dict of tensors)")
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def sentinel2_conv(
    weight: Tensor,
    template: nn.Conv2d,
    band_names: Sequence[str],
    *,
    bias: Tensor | None = None,
    source_bands: Sequence[str] = SENTINEL2_BANDS,
) -> nn.Conv2d:
    """A first layer over ``band_names`` from a Sentinel-2 first layer ``weight``
    (out, len(source_bands), k, k): each channel takes its band's filter (the part of
    the name before ``_``), a channel of no Sentinel-2 band the mean filter, the whole
    scaled by ``sqrt(len(source_bands) / C)``."""
    if weight.shape[1] != len(source_bands):
        raise ValueError(f"first layer has {weight.shape[1]} inputs, {len(source_bands)} bands")
    mean = weight.mean(dim=1)
    channels = len(band_names)
    new = torch.stack(
        [
            weight[:, list(source_bands).index(b)] if b in source_bands else mean
            for b in (name.split("_")[0] for name in band_names)
        ],
        dim=1,
    )
    layer = nn.Conv2d(
        channels,
        template.out_channels,
        template.kernel_size,
        template.stride,
        template.padding,
        template.dilation,
        template.groups,
        bias is not None,
    )
    with torch.no_grad():
        layer.weight.copy_(new * math.sqrt(len(source_bands) / channels))
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def widen_conv(
    conv: nn.Conv2d | nn.Conv3d, in_channels: int, band_names: Sequence[str] | None = None
) -> nn.Conv2d | nn.Conv3d:
    """A copy of a 3-channel (RGB) ``conv`` (2-D, or the 3-D patch embedding of Swin3D)
    taking ``in_channels`` inputs.

    Red/green/blue filters go to channels named B4/B3/B2 (any quarter), the mean filter
    to the others, all scaled by ``sqrt(3 / in_channels)`` (the original study's recipe;
    for Swin3D, C is the per-quarter channel count, its ``sqrt(3 / 6)``). The bias is
    kept (the original dropped it for Swin-T and re-drew it for Swin3D). Without
    ``band_names`` the first three channels are taken as R, G, B.
    """
    weight = conv.weight.detach()
    if weight.shape[1] != 3:
        raise ValueError(f"expected an RGB first layer, got {weight.shape[1]} input channels")
    names = list(band_names) if band_names is not None else ["B4", "B3", "B2"]
    if len(names) != in_channels and band_names is not None:
        raise ValueError(f"{len(names)} band names for {in_channels} channels")
    mean = weight.mean(dim=1)
    new = torch.empty(weight.shape[0], in_channels, *weight.shape[2:], dtype=weight.dtype)
    for c in range(in_channels):
        band = names[c].split("_")[0] if c < len(names) else ""
        new[:, c] = weight[:, RGB_BANDS.index(band)] if band in RGB_BANDS else mean
    layer = type(conv)(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
    )
    with torch.no_grad():
        layer.weight.copy_(new * math.sqrt(3.0 / in_channels))
        if conv.bias is not None:
            layer.bias.copy_(conv.bias)
    return layer


def load_pretrained(
    net: nn.Module,
    name: str,
    first: str,
    head: str | None,
    pretrained_path: str | Path,
    in_channels: int,
    band_names: Sequence[str] | None,
) -> nn.Module:
    """Load a local weights file into torchvision model ``net`` and return its first
    layer widened to ``in_channels`` (the caller puts it in place).

    Args:
        net: the freshly built torchvision model ``name``.
        first: dotted name of its first convolution; head: its classifier attribute.
        pretrained_path: see :func:`resolve_weights_path`.
        in_channels, band_names: the project's input channels.

    Raises:
        FileNotFoundError: see :func:`resolve_weights_path`.
        ValueError: for a first layer of neither 3 (RGB) nor 13 (Sentinel-2) inputs, a
            Sentinel-2 checkpoint without ``band_names``, or keys that do not fit.
    """
    path = resolve_weights_path(name, pretrained_path)
    state = read_state_dict(path)
    key = f"{first}.weight"
    if key not in state:
        raise ValueError(
            f"{path} has no {key!r} (the first layer of {name}); its keys start {sorted(state)[:5]}"
        )
    inputs = state[key].shape[1]
    if inputs == 3:
        _load(net, state, name, path, strict=True)
        return widen_conv(net.get_submodule(first), in_channels, band_names)
    if inputs != len(SENTINEL2_BANDS):
        raise ValueError(
            f"{path}: first layer over {inputs} bands; expected 3 (RGB) or "
            f"{len(SENTINEL2_BANDS)} (Sentinel-2 {', '.join(SENTINEL2_BANDS)})"
        )
    if not isinstance(net.get_submodule(first), nn.Conv2d):
        raise ValueError(f"{path}: Sentinel-2 checkpoints are 2-D ResNets; {name} is not")
    if band_names is None or len(band_names) != in_channels:
        raise ValueError(f"{path} is a Sentinel-2 checkpoint: give the {in_channels} band names")
    own = (f"{first}.",) + ((f"{head}.",) if head else ())
    rest = {k: v for k, v in state.items() if not k.startswith(own)}
    result = _load(net, rest, name, path, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(own)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{path} does not fit {name}: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return sentinel2_conv(
        state[key], net.get_submodule(first), band_names, bias=state.get(f"{first}.bias")
    )


def _load(net: nn.Module, state: dict[str, Tensor], name: str, path: Path, *, strict: bool):
    try:
        return net.load_state_dict(state, strict=strict)
    except RuntimeError as err:  # shapes or keys of another architecture
        first = str(err).splitlines()[1:2] or [str(err)]
        raise ValueError(f"{path} does not fit {name}: {first[0].strip()}") from err
