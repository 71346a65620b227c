"""Random crops and flips of a whole batch, on the device that holds it.

The per-sample path (:class:`utils.dataloader.ShardDataset` with ``train=True``) crops
and flips every sample on a CPU core. With ``crop=None, augment=False`` the dataset
returns whole patches instead and :class:`BatchCropFlip` crops and augments the batch
after the loader, e.g. on the GPU, in one gather: the CPU does only the reading and the
standardisation. The draws come from the transform's own generator (one per batch),
not from torch's per-worker RNG, so the two paths give different (each reproducible)
augmentations; the per-sample path stays the default (see docs/performance.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BatchCropFlip:
    """Random ``crop`` x ``crop`` windows, horizontal and vertical flips and (for square
    crops) multiples of 90 degrees, drawn per sample, applied to a (B, C, H, W) batch.

    Args:
        crop: side of the output windows (pixels, at most the patch side).
        augment: also flip and rotate (else only random crops).
        train: random windows; ``False`` takes the centre window and never augments.
        seed: seed of the transform's CPU generator (draws are moved to the batch's device).
    """

    crop: int
    augment: bool = True
    train: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.crop < 1:
            raise ValueError(f"crop must be a positive number of pixels, got {self.crop}")
        self.generator = torch.Generator().manual_seed(self.seed)

    def draws(self, batch: int, patch: int) -> dict[str, torch.Tensor]:
        """Per-sample draws: window corners ``top``/``left``, ``flip_h``/``flip_v`` (0/1)
        and quarter ``turns`` (0-3), as CPU int64 tensors of length ``batch``."""
        free = patch - self.crop
        if free < 0:
            raise ValueError(f"crop {self.crop} is larger than the patch ({patch} px)")
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
        """The transformed (B, C, crop, crop) batch, on the device of ``images``."""
        if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
            raise ValueError(f"images must be (B, C, H, H), got {tuple(images.shape)}")
        d = {k: v.to(images.device) for k, v in self.draws(len(images), images.shape[-1]).items()}
        steps = torch.arange(self.crop, device=images.device)
        # a flip reverses the window's index order, so crop and flips are one gather
        rows = d["top"][:, None] + torch.where(d["flip_v"][:, None] == 1, steps.flip(0), steps)
        cols = d["left"][:, None] + torch.where(d["flip_h"][:, None] == 1, steps.flip(0), steps)
        batch = torch.arange(len(images), device=images.device)[:, None, None]
        out = images[batch, :, rows[:, :, None], cols[:, None, :]]  # (B, crop, crop, C)
        out = out.permute(0, 3, 1, 2).contiguous()
        for k in (1, 2, 3):
            chosen = d["turns"] == k
            if bool(chosen.any()):
                out[chosen] = torch.rot90(out[chosen], k, (-2, -1))
        return out
