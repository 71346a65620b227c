"""Batched crops and flips: each sample of the batch equals the per-sample crop and
``augment`` with the same draws; seeded, centred when not training."""

from __future__ import annotations

import pytest
import torch

from utils.batch_transforms import BatchCropFlip


def _one(image: torch.Tensor, crop: int, draw: dict[str, int]) -> torch.Tensor:
    """The per-sample path's order: crop, horizontal flip, vertical flip, rot90."""
    out = image[:, draw["top"] : draw["top"] + crop, draw["left"] : draw["left"] + crop]
    if draw["flip_h"]:
        out = torch.flip(out, (-1,))
    if draw["flip_v"]:
        out = torch.flip(out, (-2,))
    return torch.rot90(out, draw["turns"], (-2, -1))


@pytest.mark.parametrize(("augment", "train"), [(True, True), (False, True), (True, False)])
def test_each_sample_is_its_own_crop_and_flips(augment: bool, train: bool) -> None:
    images = torch.randn(16, 3, 9, 9)
    transform = BatchCropFlip(crop=6, augment=augment, train=train, seed=3)
    out = transform(images)
    draws = BatchCropFlip(crop=6, augment=augment, train=train, seed=3).draws(16, 9)
    assert out.shape == (16, 3, 6, 6)
    for b in range(16):
        draw = {k: int(v[b]) for k, v in draws.items()}
        torch.testing.assert_close(out[b], _one(images[b], 6, draw), rtol=0, atol=0)
    if not train:
        torch.testing.assert_close(out, images[:, :, 1:7, 1:7], rtol=0, atol=0)
    if train and augment:  # some of every kind of draw in 16 samples
        assert set(draws["turns"].tolist()) > {0} and 0 < int(draws["flip_h"].sum()) < 16
    if not augment:
        assert int(draws["turns"].abs().sum() + draws["flip_h"].sum()) == 0


def test_same_seed_same_batches_and_errors() -> None:
    images = torch.randn(4, 2, 8, 8)
    a, b = BatchCropFlip(5, seed=1), BatchCropFlip(5, seed=1)
    for _ in range(3):
        torch.testing.assert_close(a(images), b(images), rtol=0, atol=0)
    assert not torch.equal(BatchCropFlip(5, seed=2)(images), BatchCropFlip(5, seed=1)(images))
    with pytest.raises(ValueError, match="larger than the patch"):
        BatchCropFlip(9)(images)
    with pytest.raises(ValueError, match="must be"):
        BatchCropFlip(5)(images[0])
