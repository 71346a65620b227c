"""Damaged shards and checkpoints are named, never used silently."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pytest
import torch
from hostile_factory import spread_records

from extract_GPS_images.tfrecord import write_tfrecord
from utils import hdf5_schema as hs
from utils.batching.split_and_batch import SplitConfig, run_split_and_batch
from utils.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_from_checkpoint,
    load_weights,
    save_checkpoint,
)
from utils.dataloader import ShardDataset
from utils.models import build_model
from utils.shard_check import ShardError


@pytest.fixture(scope="module", params=["gzip", "zstd"])
def shards(tmp_path_factory, request) -> Path:
    src = tmp_path_factory.mktemp("src")
    for i, rec in enumerate(spread_records(40)):
        write_tfrecord(src / f"p{i:03d}_2019.tfrecord.gz", [rec])
    out = tmp_path_factory.mktemp("out") / "shards"
    cfg = SplitConfig(split="random", shard_size=6, compression=request.param, progress=False)
    run_split_and_batch(src, out, cfg)
    return out


def _copy(shards: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    return copy


def test_a_deleted_shard_is_refused_by_name(shards: Path, tmp_path: Path) -> None:
    copy = _copy(shards, tmp_path)
    assert len(ShardDataset(copy, "train")) == 24  # the manifest and the shards agree
    (copy / "train" / "train_00001.h5").unlink()
    with pytest.raises(ShardError, match=r"missing \['train_00001.h5'\].*split_and_batch"):
        ShardDataset(copy, "train")


def test_a_truncated_shard_names_the_file(shards: Path, tmp_path: Path) -> None:
    copy = _copy(shards, tmp_path)
    path = copy / "val" / "val_00000.h5"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ShardError, match=f"cannot read {path}.*rebuild"):
        ShardDataset(copy, "val")


def test_a_zeroed_chunk_names_the_file_and_the_sample(shards: Path, tmp_path: Path) -> None:
    copy = _copy(shards, tmp_path)
    path = copy / "train" / "train_00000.h5"
    with h5py.File(path, "r") as f:
        info = f[hs.DATA].id.get_chunk_info(2)
    with open(path, "r+b") as handle:  # the chunk of sample 2 overwritten by zeros
        handle.seek(info.byte_offset)
        handle.write(bytes(info.size))
    dataset = ShardDataset(copy, "train", dw_mode="none")
    dataset[1]  # the others still read
    with pytest.raises(ShardError, match=f"sample 2 of {path}.*split_and_batch"):
        dataset[2]


def _saved(tmp_path: Path, name: str = "tiny_cnn", channels: int = 4) -> Path:
    model = build_model(name, channels)
    return save_checkpoint(tmp_path / "ok.pt", model=model, epoch=1, config={})


def test_damaged_checkpoints_name_the_file_and_the_problem(tmp_path: Path) -> None:
    good = _saved(tmp_path)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"{empty} is empty"):
        load_checkpoint(empty)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"{cut} is truncated or damaged"):
        load_checkpoint(cut)
    text = tmp_path / "notes.pt"
    text.write_text("not weights")
    with pytest.raises(CheckpointError, match=f"{text} is not a checkpoint"):
        load_checkpoint(text)
    other = build_model("tiny_cnn", 7)  # another number of input channels
    with pytest.raises(CheckpointError, match=f"{good} holds the weights of another model.*vs"):
        load_weights(other, load_checkpoint(good), good)
    model, _ = load_model_from_checkpoint(good)  # the intact one still loads
    assert isinstance(model, torch.nn.Module)
