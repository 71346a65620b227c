"""``TrainConfig(augment_on="device")``: the loader reads whole patches and the training
step crops and flips each batch (``BatchCropFlip``); the crops reach the model, same
seed -> same weights, resume equals an uninterrupted run, evaluation is the per-sample
path's (centre crops), and the default path is unchanged by it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from shards_factory import write_tiny_shards

from utils.checkpoint import load_checkpoint
from utils.dataloader import ShardDataset, build_datasets
from utils.inference import evaluate_checkpoint
from utils.models import build_model
from utils.train import TrainConfig, augment_seed, fit
from utils.train_config import get_args_parser

TIMING = {"data_s", "compute_s", "epoch_s"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_shards(tmp_path_factory.mktemp("shards"), size=12, seed=0)


def config(run_dir: Path, shards: Path, **overrides) -> TrainConfig:
    values = {
        "run_dir": str(run_dir),
        "shards_dir": str(shards),
        "model": "tiny_cnn",
        "crop": 10,
        "epochs": 2,
        "batch_size": 8,
        "lr": 3e-3,
        "augment_on": "device",
        "progress": False,
        "tensorboard": False,
    }
    return TrainConfig(**{**values, **overrides})


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def comparable(history: list[dict]) -> list[dict]:
    return [
        {k: ("nan" if v != v else v) for k, v in row.items() if k not in TIMING} for row in history
    ]


@pytest.mark.filterwarnings("ignore:.*optimizer steps")
def test_train_batches_are_cropped_on_the_device(shards: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path, shards, epochs=1)
    built = build_datasets(cfg)
    assert built["train"].crop == 12 and not built["train"].augment  # whole patches in
    assert built["val"].crop == 10 and not built["val"].train  # centre crops
    model = build_model("tiny_cnn", built["train"].num_channels)
    seen: list[tuple[bool, tuple[int, ...]]] = []
    model.register_forward_pre_hook(lambda m, args: seen.append((m.training, args[0].shape)))
    result = fit(cfg, model=model)
    train = {shape[1:] for training, shape in seen if training}
    val = {shape[1:] for training, shape in seen if not training}
    assert train == val == {(built["train"].num_channels, 10, 10)}
    assert sum(shape[0] for training, shape in seen if training) == len(built["train"])
    assert load_checkpoint(result.best_checkpoint)["config"]["crop_px"] == 10
    _, report = evaluate_checkpoint(result.best_checkpoint, split="val")  # centre crops
    assert report["mae"] == pytest.approx(result.best["val_mae"], rel=1e-6)


@pytest.mark.filterwarnings("ignore:.*optimizer steps")
def test_same_seed_same_weights_and_resume_identical(shards: Path, tmp_path: Path) -> None:
    kwargs = {"epochs": 3, "augment": True, "dropout": 0.2}
    full = fit(config(tmp_path / "a", shards, **kwargs))
    again = fit(config(tmp_path / "b", shards, **kwargs))
    assert same_weights(full.last_checkpoint, again.last_checkpoint)
    fit(config(tmp_path / "c", shards, **{**kwargs, "epochs": 1}))
    resumed = fit(config(tmp_path / "c", shards, **kwargs, resume=True))
    assert comparable(resumed.history) == comparable(full.history)
    assert same_weights(full.last_checkpoint, resumed.last_checkpoint)
    per_sample = fit(config(tmp_path / "d", shards, **kwargs, augment_on="cpu"))
    assert not same_weights(full.last_checkpoint, per_sample.last_checkpoint)  # other draws
    with pytest.raises(ValueError, match=r"config differs in \['augment_on'\]"):
        fit(
            config(tmp_path / "c", shards, **{**kwargs, "epochs": 4}, augment_on="cpu", resume=True)
        )


@pytest.mark.filterwarnings("ignore:.*optimizer steps")
def test_without_random_draws_both_paths_train_alike(shards: Path, tmp_path: Path) -> None:
    """No crop, no flips: the batch path changes nothing else (data order, dropout draws,
    evaluation), so both give the same weights and history, bit for bit."""
    kwargs = {"crop": None, "augment": False, "dropout": 0.2}
    device = fit(config(tmp_path / "a", shards, **kwargs))
    cpu = fit(config(tmp_path / "b", shards, **kwargs, augment_on="cpu"))
    assert comparable(device.history) == comparable(cpu.history)
    assert same_weights(device.last_checkpoint, cpu.last_checkpoint)


def test_evaluation_items_are_the_same_on_both_paths(shards: Path, tmp_path: Path) -> None:
    for crop in (10, 0.75, None):
        on_device = build_datasets(config(tmp_path, shards, crop=crop), ("val", "test"))
        on_cpu = build_datasets(
            config(tmp_path, shards, crop=crop, augment_on="cpu"), ("val", "test")
        )
        for split, ds in on_device.items():
            assert len(ds) == len(on_cpu[split]) and ds.crop == on_cpu[split].crop
            for i in range(len(ds)):
                assert torch.equal(ds[i]["image"], on_cpu[split][i]["image"])


def test_refusals_and_seeds(shards: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown augment_on 'gpu'; valid: cpu, device"):
        config(tmp_path, shards, augment_on="gpu")
    cropped = {
        "train": ShardDataset(shards, "train", crop=10, train=True),
        "val": ShardDataset(shards, "val", crop=10),
    }
    with pytest.raises(ValueError, match="must return whole patches"):
        fit(config(tmp_path, shards), datasets=cropped)
    seeds = {augment_seed(s, e, r) for s in (0, 1) for e in range(3) for r in range(2)}
    assert len(seeds) == 12 and augment_seed(0, 1, 1) == augment_seed(0, 1, 1)
    assert get_args_parser().parse_args(["--augment-on", "device"]).augment_on == "device"
    help_text = " ".join(get_args_parser().format_help().split())
    assert "per batch on the training device" in help_text and "either way" in help_text
    torch.Generator().manual_seed(augment_seed(-1, 0))  # negative seeds: within its range
