"""Batched crops and flips: each sample of the batch equals the per-sample crop and
``augment`` with the same draws; seeded, centred (as the datasets' evaluation crops)
when not training; time-layout batches and per-pixel companions transformed alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from shards_factory import write_tiny_shards

from utils.batch_transforms import BatchCropFlip
from utils.dataloader import ShardDataset


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


def test_time_batches_share_each_samples_window_and_flips() -> None:
    images = torch.randn(8, 3, 4, 9, 9)  # (B, C, T, H, W): layout "time"
    transform = BatchCropFlip(crop=6, seed=4)
    draws = transform.draws(8, 9)
    out = transform.apply(images, draws)
    assert out.shape == (8, 3, 4, 6, 6)
    for q in range(4):
        torch.testing.assert_close(out[:, :, q], transform.apply(images[:, :, q], draws))
    for b in range(8):
        draw = {k: int(v[b]) for k, v in draws.items()}
        flat = _one(images[b].reshape(12, 9, 9), 6, draw)
        torch.testing.assert_close(out[b], flat.reshape(3, 4, 6, 6), rtol=0, atol=0)
    torch.testing.assert_close(BatchCropFlip(6, seed=4)(images), out, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\(B, C, T, H, H\)"):
        BatchCropFlip(6)(images[..., :8])


def test_crop_as_the_config_takes_it_and_masks_alike() -> None:
    images, mask = torch.randn(6, 2, 8, 8), (torch.rand(6, 5, 8, 8) > 0.5).float()
    assert BatchCropFlip(0.5, seed=0)(images).shape == (6, 2, 4, 4)  # a share of the side
    whole = BatchCropFlip(None, seed=0)
    draws = whole.draws(6, 8)
    assert int(draws["top"].abs().sum() + draws["left"].abs().sum()) == 0  # flips only
    assert whole.apply(images, draws).shape == images.shape
    crop = BatchCropFlip(5, seed=2)
    draws = crop.draws(6, 8)
    both = crop.apply(torch.cat([images, mask], 1), draws)  # cropped together
    torch.testing.assert_close(crop.apply(images, draws), both[:, :2], rtol=0, atol=0)
    torch.testing.assert_close(crop.apply(mask, draws), both[:, 2:], rtol=0, atol=0)
    crop.reseed(2)  # the draws start again: those of a new transform of that seed
    torch.testing.assert_close(crop(images), both[:, :2], rtol=0, atol=0)
    for bad in (0, -3, 0.0):
        with pytest.raises(ValueError, match="must be positive"):
            BatchCropFlip(bad)
    with pytest.raises(ValueError, match=r"gives 12 px; must be in 1\.\.8"):
        BatchCropFlip(1.5)(images)


@pytest.mark.parametrize("layout", ["stack", "time"])
def test_centre_crops_equal_the_datasets(tmp_path: Path, layout: str) -> None:
    """``train=False`` crops whole patches where ``ShardDataset(train=False)`` does."""
    shards = write_tiny_shards(tmp_path, sizes={"train": 4, "val": 5}, size=12, seed=1)
    centred = ShardDataset(shards, "val", crop=9, layout=layout)
    whole = ShardDataset(shards, "val", crop=None, layout=layout)
    batch = torch.stack([whole[i]["image"] for i in range(len(whole))])
    expected = torch.stack([centred[i]["image"] for i in range(len(centred))])
    out = BatchCropFlip(9, train=False)(batch)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
