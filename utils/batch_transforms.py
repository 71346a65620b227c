"""Random crops and flips of a whole batch, on the device that holds it.

The per-sample path (:class:`utils.dataloader.ShardDataset` with ``train=True``) crops
and flips every sample on a CPU core. With ``crop=None, augment=False`` the dataset
returns whole patches instead and :class:`BatchCropFlip` crops and augments the batch
after the loader, e.g. on the GPU, in one gather: the CPU does only the reading and the
standardisation. ``TrainConfig(augment_on="device")`` trains this way. The draws come
from the transform's own generator, not from torch's per-worker RNG, so the two paths
give different (each reproducible) augmentations; the per-sample path stays the default
(see docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from utils.dataloader import crop_size

#: The per-sample draws of :meth:`BatchCropFlip.draws`.
DRAWS: tuple[str, ...] = ("top", "left", "flip_h", "flip_v", "turns")


@dataclass
class BatchCropFlip:
    """Random ``crop`` x ``crop`` windows, horizontal and vertical flips and multiples of
    90 degrees, drawn per sample, applied to a (B, C, H, H) batch, or to the last two
    axes of a (B, C, T, H, H) one (layout ``"time"``: every quarter of a sample alike).

    Args:
        crop: side of the output windows as :attr:`utils.train.TrainConfig.crop` takes
            it: pixels (int), a share of the patch side (float) or None (the whole
            patch: only flips and turns).
        augment: also flip and rotate (else only random crops).
        train: random windows; ``False`` takes the centre window (that of
            ``ShardDataset(train=False)``) and never augments.
        seed: seed of the transform's CPU generator (draws are moved to the batch's
            device); :meth:`reseed` starts it again.
        prepare: applied to each cropped batch, e.g. a dataset's
            :meth:`~utils.dataloader.ShardDataset.batch_preparer` for batches of raw
            items (standardised and one-hot encoded after the crop, on the device).
    """

    crop: int | float | None
    augment: bool = True
    train: bool = True
    seed: int = 0
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.crop, (int, float)) and not self.crop > 0:
            raise ValueError(f"crop must be positive (px or a share), got {self.crop}")
        self.generator = torch.Generator().manual_seed(self.seed)

    def reseed(self, seed: int) -> None:
        """Start the draws again from ``seed`` (e.g. once per epoch and rank)."""
        self.seed = seed
        self.generator.manual_seed(seed)

    def side(self, patch: int) -> int:
        """The crop side in px for a ``patch`` px patch (:func:`~utils.dataloader.crop_size`)."""
        if isinstance(self.crop, int) and self.crop > patch:
            raise ValueError(f"crop {self.crop} is larger than the patch ({patch} px)")
        return crop_size(self.crop, patch)

    def draws(self, batch: int, patch: int) -> dict[str, torch.Tensor]:
        """Per-sample draws: window corners ``top``/``left``, ``flip_h``/``flip_v`` (0/1)
        and quarter ``turns`` (0-3), as CPU int64 tensors of length ``batch``."""
        free = patch - self.side(patch)
        if not self.train:
            corner = torch.full((batch,), free // 2, dtype=torch.int64)
            zero = torch.zeros(batch, dtype=torch.int64)
            return {"top": corner, "left": corner, "flip_h": zero, "flip_v": zero, "turns": zero}
        g = self.generator
        top, left = torch.randint(0, free + 1, (2, batch), generator=g)
        flips = torch.randint(0, 2, (2, batch), generator=g)
        turns = torch.randint(0, 4, (batch,), generator=g)
        if not self.augment:
            flips, turns = torch.zeros_like(flips), torch.zeros_like(turns)
        return {"top": top, "left": left, "flip_h": flips[0], "flip_v": flips[1], "turns": turns}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The transformed (B, C, crop, crop) or (B, C, T, crop, crop) batch, on the
        device of ``images``, with new draws (then ``prepare``, when given)."""
        _check_shape(images)
        out = self.apply(images, self.draws(len(images), images.shape[-1]))
        return out if self.prepare is None else self.prepare(out)

    def apply(self, images: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """``images`` transformed by given :meth:`draws`: per-pixel companions of a batch
        (e.g. its valid-pixel ``mask``) stay aligned with the image given the same draws."""
        shape = _check_shape(images)
        if images.ndim == 5:  # the quarters of a sample share its window and flips
            flat = self.apply(images.reshape(shape[0], -1, *shape[-2:]), draws)
            return flat.reshape(*shape[:3], *flat.shape[-2:])
        n, patch, device = self.side(shape[-1]), shape[-1], images.device
        packed = torch.stack([draws[k] for k in DRAWS])  # one copy, without a host sync
        if device.type == "cuda":
            packed = packed.pin_memory().to(device, non_blocking=True)
        d = dict(zip(DRAWS, packed.to(device), strict=True))
        steps = torch.arange(n, device=device)
        # a flip reverses the window's index order; a quarter turn k reads output pixel
        # (i, j) from the flipped window's (a_k, b_k): torch.rot90's order, one gather
        rows = d["top"][:, None] + torch.where(d["flip_v"][:, None] == 1, steps.flip(0), steps)
        cols = d["left"][:, None] + torch.where(d["flip_h"][:, None] == 1, steps.flip(0), steps)
        i, j = steps[:, None].expand(n, n), steps[None, :].expand(n, n)
        a = torch.stack([i, j, n - 1 - i, n - 1 - j])[d["turns"]].reshape(len(images), -1)
        b = torch.stack([j, n - 1 - i, n - 1 - j, i])[d["turns"]].reshape(len(images), -1)
        pixel = rows.gather(1, a) * patch + cols.gather(1, b)  # (B, n * n) in the patch
        flat = images.reshape(*shape[:2], patch * patch)
        out = flat.gather(2, pixel[:, None, :].expand(-1, shape[1], -1))
        return out.reshape(*shape[:2], n, n)


def _check_shape(images: torch.Tensor) -> tuple[int, ...]:
    """The shape of a (B, C, H, H) or (B, C, T, H, H) batch, else a ``ValueError``."""
    if images.ndim not in (4, 5) or images.shape[-1] != images.shape[-2]:
        raise ValueError(
            f"images must be (B, C, H, H) or (B, C, T, H, H), got {tuple(images.shape)}"
        )
    return tuple(images.shape)
