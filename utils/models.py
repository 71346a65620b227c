"""CNN and transformer regressors for multispectral patches (docs/design.md).

torchvision backbones (ResNet-18/34/50, EfficientNet-B0, ConvNeXt-Tiny, Swin-T) with the
first convolution widened to C input channels and a one-output regression head, a tiny
CNN for tests and quick demos, and the video Swin transformers Swin3D-T / Swin3D-B
(Liu et al. 2022), which read the four quarters as time: their input is
``(N, C, T, H, W)``, C the per-quarter channels (the six Sentinel-2 bands, plus Dynamic
World and any other static channel repeated in every quarter, see
:class:`utils.dataloader.ShardDataset` with ``layout="time"``), T = 4. These are the
models of the original study (``models/resnet.py``, ``swin.py``, ``swin3D.py`` of
lhmtrinh/Remote-Sensing-VisionDL). :func:`utils.dataloader.input_layout` says which layout a model
takes.

Patch sizes: Swin-T's stride-4 patch convolution would silently drop the last rows and
columns of a crop that 4 does not divide; the input is zero-padded at the bottom/right to
the next multiple of 4 first (zero = the training mean on standardised data), which is
what torchvision's Swin3D patch embedding does itself for its (2, 4, 4) patches.

First-layer initialisation with pretrained RGB weights (from a local ``state_dict``
file; no network; Sentinel-2 self-supervised checkpoints too, see
:mod:`utils.pretrained`): channels named ``B4*``/``B3*``/``B2*`` take the red/green/blue
filters, every other channel the mean of the three, and the whole layer is scaled by
``sqrt(3 / C)`` so the activations keep the scale of the 3-channel layer (the original
study's recipe). Without pretrained weights every layer is randomly initialised.

:class:`RegressionModel` keeps ``features`` (backbone + global pooling, ``(N, D)``) and
``head`` (``Linear(D, 1)``) apart, so feature-level methods such as FDS (Yang et al.
2021) can wrap them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F

from utils.dataloader import input_layout
from utils.pretrained import TORCH_CACHE, load_pretrained, resolve_weights_path


class TinyCNN(nn.Module):
    """Three conv-BN-ReLU blocks and global average pooling (for tests and smoke runs)."""

    def __init__(self, in_channels: int, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for k in range(3):
            out = width * 2**k
            layers += [
                nn.Conv2d(channels, out, 3, stride=1 if k == 0 else 2, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            channels = out
        self.body = nn.Sequential(*layers)
        self.out_features = channels

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x).mean(dim=(-2, -1))


class PadToMultiple(nn.Module):
    """Zero-pad the last two axes at the bottom/right up to a multiple of ``multiple``."""

    def __init__(self, multiple: int) -> None:
        super().__init__()
        self.multiple = int(multiple)

    def forward(self, x: Tensor) -> Tensor:
        pad_h, pad_w = (-x.shape[-2]) % self.multiple, (-x.shape[-1]) % self.multiple
        return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


#: What a builder returns: (torchvision model, feature extractor, dotted name of its first
#: convolution, name of its classification head attribute or None when ``features``
#: already ends before the head).
Built = tuple[nn.Module, nn.Module, str, str | None]


def _resnet(factory: Callable[..., nn.Module]) -> Callable[[], Built]:
    def build() -> Built:
        net = factory(weights=None)
        return net, net, "conv1", "fc"

    return build


def _efficientnet() -> Built:
    net = torchvision.models.efficientnet_b0(weights=None)
    return net, nn.Sequential(net.features, net.avgpool, nn.Flatten(1)), "features.0.0", None


def _convnext() -> Built:
    net = torchvision.models.convnext_tiny(weights=None)
    pool = nn.Sequential(net.avgpool, net.classifier[0], nn.Flatten(1))  # LayerNorm2d
    return net, nn.Sequential(net.features, pool), "features.0.0", None


def _swin_t() -> Built:
    net = torchvision.models.swin_t(weights=None)
    patch = net.features[0][0].stride[0]
    return net, nn.Sequential(PadToMultiple(patch), net), "features.0.0", "head"


def _swin3d(factory: Callable[..., nn.Module]) -> Callable[[], Built]:
    def build() -> Built:
        net = factory(weights=None)  # its PatchEmbed3d pads T, H, W to the patch itself
        return net, net, "patch_embed.proj", "head"

    return build


#: name -> builder of a :data:`Built`.
BACKBONES: dict[str, Callable[[], Built]] = {
    "resnet18": _resnet(torchvision.models.resnet18),
    "resnet34": _resnet(torchvision.models.resnet34),
    "resnet50": _resnet(torchvision.models.resnet50),
    "efficientnet_b0": _efficientnet,
    "convnext_tiny": _convnext,
    "swin_t": _swin_t,
    "swin3d_t": _swin3d(torchvision.models.video.swin3d_t),
    "swin3d_b": _swin3d(torchvision.models.video.swin3d_b),
}
MODEL_NAMES: tuple[str, ...] = ("tiny_cnn", *BACKBONES)


def example_input(name: str, in_channels: int, size: int = 32, batch: int = 2) -> Tensor:
    """A random input of the shape model ``name`` takes (4 quarters for a temporal one)."""
    if input_layout(name) == "time":
        return torch.randn(batch, in_channels, 4, size, size)
    return torch.randn(batch, in_channels, size, size)


def cached_weights_path(name: str) -> Path:
    """Where torchvision's weights of ``name`` lie in the torch hub cache (any of its
    weight sets, the default first; the file a ``weights=...`` download writes).

    Raises:
        FileNotFoundError: when none is in the cache (nothing is downloaded).
    """
    return resolve_weights_path(name, TORCH_CACHE)


class RegressionModel(nn.Module):
    """``forward(x) = head(dropout(features(x)))``, one value per sample ``(N,)``.

    Attributes:
        features: backbone + global pooling, ``(N, C, H, W) -> (N, D)`` (``(N, C, T, H, W)``
            for a temporal model).
        dropout: dropout before the head (identity for p = 0).
        head: ``Linear(D, 1)``.
        spec: the arguments that rebuild this model (``name``, ``in_channels``, ``dropout``).
    """

    def __init__(self, features: nn.Module, dim: int, *, dropout: float, spec: dict) -> None:
        super().__init__()
        self.features = features
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(dim, 1)
        self.feature_dim = dim
        self.spec = dict(spec)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(x))).squeeze(-1)


def _replace(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def build_model(
    name: str,
    in_channels: int,
    *,
    pretrained_path: str | Path | None = None,
    dropout: float = 0.0,
    band_names: Sequence[str] | None = None,
) -> RegressionModel:
    """A regressor for ``in_channels``-channel images.

    Args:
        name: one of :data:`MODEL_NAMES`.
        in_channels: number of input channels C (per quarter for a temporal model).
        pretrained_path: a local ``state_dict`` file (torchvision's RGB ImageNet /
            Kinetics weights, or a torchgeo-format 13-band Sentinel-2 ResNet), a folder
            holding torchvision's file, or ``"torch-cache"`` (the torch hub cache); loaded
            with ``weights_only=True``, never downloaded (:mod:`utils.pretrained`).
        dropout: dropout probability before the head.
        band_names: channel names (to place the RGB filters), see
            :func:`utils.pretrained.widen_conv`.

    Raises:
        ValueError: for an unknown name (listing the valid ones).
        FileNotFoundError: when ``pretrained_path`` does not exist.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODEL_NAMES)}")
    spec = {"name": name, "in_channels": int(in_channels), "dropout": float(dropout)}
    if name == "tiny_cnn":
        if pretrained_path is not None:
            raise ValueError("tiny_cnn has no pretrained weights")
        body = TinyCNN(in_channels)
        return RegressionModel(body, body.out_features, dropout=dropout, spec=spec)
    net, features, first, head = BACKBONES[name]()
    if pretrained_path is not None:
        conv = load_pretrained(net, name, first, head, pretrained_path, in_channels, band_names)
    else:
        old = net.get_submodule(first)
        conv = type(old)(
            in_channels,
            old.out_channels,
            old.kernel_size,
            old.stride,
            old.padding,
            bias=old.bias is not None,
        )
    _replace(net, first, conv)
    if head is not None:
        dim = getattr(net, head).in_features
        setattr(net, head, nn.Identity())
    else:
        dim = _feature_dim(features, in_channels)
    return RegressionModel(features, dim, dropout=dropout, spec=spec)


def _feature_dim(features: nn.Module, in_channels: int) -> int:
    was_training = features.training
    features.eval()
    with torch.no_grad():
        dim = features(torch.zeros(1, in_channels, 32, 32)).shape[-1]
    features.train(was_training)
    return int(dim)


class StackedVideo(nn.Module):
    """A temporal model seen through stacked input: ``(N, C * T, H, W)`` is unflattened
    to ``(N, C, T, H, W)`` (``ShardDataset.flat_band_names`` order) before the model, so
    tools written for 2-D inputs (Captum baselines, deletion/insertion) run unchanged.
    ``features`` and ``head`` are the wrapped model's (LOTS layer ``"features"``)."""

    def __init__(self, model: RegressionModel, frames: int) -> None:
        super().__init__()
        self.model = model
        self.frames = int(frames)
        self.head = model.head
        self.spec = dict(getattr(model, "spec", {}))

    def _video(self, x: Tensor) -> Tensor:
        return x.unflatten(1, (-1, self.frames)) if x.ndim == 4 else x

    def features(self, x: Tensor) -> Tensor:
        return self.model.features(self._video(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self._video(x))
