"""Training core: dataset, models, fit (learning, resume, samplers, loss modules),
checkpoints (no arbitrary pickles), inference, the CLI and a torchrun smoke test."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from shards_factory import write_tiny_shards

from extract_GPS_images.schema import DW_CLASSES
from utils.checkpoint import CheckpointError, load_checkpoint, load_model_from_checkpoint
from utils.dataloader import ShardDataset, make_loader
from utils.inference import evaluate_checkpoint, predict
from utils.models import MODEL_NAMES, build_model, example_input
from utils.paths import project_root
from utils.train import TrainConfig, fit, main

TIMING = {"data_s", "compute_s", "epoch_s"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_shards(tmp_path_factory.mktemp("shards"), size=12, seed=0)


def tiny_config(run_dir: Path, shards: Path, **overrides) -> TrainConfig:
    values = {
        "run_dir": str(run_dir),
        "shards_dir": str(shards),
        "model": "tiny_cnn",
        "crop": 10,
        "epochs": 3,
        "batch_size": 8,
        "lr": 3e-3,
        "progress": False,
        "tensorboard": False,
    }
    return TrainConfig(**{**values, **overrides})


# --- dataset -------------------------------------------------------------------------------
def test_dataset_items_channels_and_crops(shards: Path) -> None:
    ds = ShardDataset(shards, "val", channels="rgb", crop=8, dw_mode="onehot")
    assert len(ds) == 16 and ds.num_channels == 12 + len(DW_CLASSES)
    item = ds[5]
    assert item["image"].shape == (21, 8, 8) and item["image"].dtype == torch.float32
    assert item["label"].shape == () and item["index"] == 5
    assert item["cell_id"].startswith("POLYGON") and item["cell_key"].startswith("c")
    assert item["year"] == 2019 and -90 <= item["latitude"] <= 90
    onehot = item["image"][12:]
    assert torch.all(onehot.sum(0) == 1)  # one DW class per pixel
    assert torch.equal(ds[5]["image"], item["image"])  # eval: centre crop, no randomness
    assert ds.labels[5] == pytest.approx(float(item["label"]))
    channel = ShardDataset(shards, "train", crop=None, dw_mode="channel")
    assert channel.band_names[-1] == "DW" and channel[0]["image"].shape == (25, 12, 12)
    none = ShardDataset(shards, "train", channels=["B8_q2"], dw_mode="none")
    stacked = torch.stack([none[i]["image"] for i in range(len(none))])
    assert abs(float(stacked.mean())) < 0.1 and float(stacked.std()) == pytest.approx(1, abs=0.1)


def test_dataset_errors_name_the_problem(shards: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown channel preset"):
        ShardDataset(shards, "train", channels="rgbn")
    with pytest.raises(ValueError, match="dw_mode"):
        ShardDataset(shards, "train", channels=["B2_q1", "DW"])
    with pytest.raises(ValueError, match=r"crop 30 gives 30 px; must be in 1\.\.12"):
        ShardDataset(shards, "train", crop=30)
    with pytest.raises(FileNotFoundError, match="split_and_batch"):
        ShardDataset(tmp_path, "train")


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_two_workers_yield_every_sample_once(shards: Path, context: str) -> None:
    ds = ShardDataset(shards, "train", crop=10, train=True, augment=True)
    loader = make_loader(
        ds, batch_size=5, shuffle=True, num_workers=2, seed=1, multiprocessing_context=context
    )
    seen = Counter(i for batch in loader for i in batch["index"].tolist())
    assert sorted(seen) == list(range(len(ds))) and set(seen.values()) == {1}


# --- models --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_widen_and_regress(name: str) -> None:
    model = build_model(name, 7, dropout=0.2).eval()
    x = example_input(name, 7, size=32)
    feats = model.features(x)
    assert feats.shape == (2, model.feature_dim)
    assert torch.allclose(model(x), model.head(feats).squeeze(-1), atol=1e-6)


def test_pretrained_rgb_initialisation(tmp_path: Path, monkeypatch) -> None:
    rgb = torchvision.models.resnet18(weights=None)
    torch.save(rgb.state_dict(), tmp_path / "r18.pt")
    names = ["B2_q1", "B8_q1", "B4_q2", "B3_q2", "DW"]
    model = build_model("resnet18", 5, pretrained_path=tmp_path / "r18.pt", band_names=names)
    w, w0 = model.features.conv1.weight, rgb.conv1.weight
    scale = np.sqrt(3 / 5)
    assert torch.allclose(w[:, 0], w0[:, 2] * scale)  # B2 = blue
    assert torch.allclose(w[:, 2], w0[:, 0] * scale)  # B4 = red
    assert torch.allclose(w[:, 3], w0[:, 1] * scale)  # B3 = green
    assert torch.allclose(w[:, 1], w0.mean(1) * scale)
    assert torch.equal(model.features.layer1[0].conv1.weight, rgb.layer1[0].conv1.weight)
    with pytest.raises(ValueError, match="unknown model 'resnet19'"):
        build_model("resnet19", 3)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "cache"))  # the torch hub cache, offline
    with pytest.raises(FileNotFoundError, match="not in the torch cache"):
        build_model("resnet18", 5, pretrained_path="torch-cache")
    cached = tmp_path / "cache" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(rgb.state_dict(), cached)
    from_cache = build_model("resnet18", 5, pretrained_path="torch-cache", band_names=names)
    assert torch.equal(from_cache.features.conv1.weight, w)


# --- fit -----------------------------------------------------------------------------------
def test_fit_learns_and_beats_the_mean_predictor(shards: Path, tmp_path: Path) -> None:
    result = fit(tiny_config(tmp_path, shards, epochs=6, tensorboard=True))
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0]
    val = ShardDataset(shards, "val").labels
    mean_mae = np.abs(val - ShardDataset(shards, "train").labels.mean()).mean()
    assert result.best["val_mae"] < mean_mae
    history = pd.read_csv(result.history_csv)
    assert len(history) == 6 and {"val_bmae", "val_r2", "train_loss", "lr"} <= set(history)
    assert history["lr"].iloc[1] == pytest.approx(3e-3 * 0.95)
    assert list((result.out_dir / "tensorboard").glob("events.out.tfevents*"))
    model, config = load_model_from_checkpoint(result.best_checkpoint)
    assert config["band_names"][0] == "B2_q1" and config["crop_px"] == 10
    table, report = evaluate_checkpoint(result.best_checkpoint, split="val")
    assert report["mae"] == pytest.approx(result.best["val_mae"], rel=1e-5)
    assert list(table.columns[:7]) == [
        "cell_id",
        "cell_key",
        "latitude",
        "longitude",
        "year",
        "label",
        "prediction",
    ]
    loader = make_loader(ShardDataset(shards, "val", crop=10), batch_size=4)
    assert np.allclose(predict(model, loader)["prediction"], table["prediction"], atol=1e-6)


def _comparable(history: list[dict]) -> list[dict]:
    return [
        {k: ("nan" if v != v else v) for k, v in row.items() if k not in TIMING}  # NaN == NaN
        for row in history
    ]


def test_resume_equals_uninterrupted(shards: Path, tmp_path: Path) -> None:
    kwargs = {"epochs": 4, "augment": True, "dropout": 0.2}
    full = fit(tiny_config(tmp_path / "a", shards, **kwargs))
    fit(tiny_config(tmp_path / "b", shards, **{**kwargs, "epochs": 2}))
    resumed = fit(tiny_config(tmp_path / "b", shards, **kwargs, resume=True))
    assert len(resumed.history) == 4
    assert _comparable(resumed.history) == _comparable(full.history)
    a, b = load_checkpoint(full.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    with pytest.raises(ValueError, match=r"config differs in \['lr'\]"):
        fit(tiny_config(tmp_path / "b", shards, **{**kwargs, "epochs": 5}, lr=1.0, resume=True))


def test_weights_sampler_loss_module_and_early_stopping(shards: Path, tmp_path: Path) -> None:
    from loss import get_loss

    calls = []

    def recording_mse(pred, target, weights=None):
        calls.append(weights)
        w = torch.ones_like(target) if weights is None else weights
        return (w * (pred - target) ** 2).mean()

    n = len(ShardDataset(shards, "train").labels)
    weights = np.linspace(0.5, 1.5, n)
    fit(
        tiny_config(tmp_path / "w", shards, epochs=1),
        loss=recording_mse,
        sample_weights=weights,
        sampler_weights=weights,
    )
    assert calls[0] is not None and calls[0].shape == (8,)
    bmc = get_loss("bmc")
    sigma = [p.detach().clone() for p in bmc.parameters()]
    fit(tiny_config(tmp_path / "bmc", shards, epochs=1), loss=bmc)
    assert not torch.equal(sigma[0], next(bmc.parameters()).detach())  # in the optimizer
    stopped = fit(tiny_config(tmp_path / "es", shards, epochs=20, lr=0.0, early_stopping=2))
    assert stopped.stopped_early and len(stopped.history) < 20
    assert stopped.best["epoch"] == len(stopped.history) - 2  # 2 epochs without a better one


# --- checkpoints ---------------------------------------------------------------------------
class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_checkpoint_with_an_arbitrary_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "extra": _Payload()}, path)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(CheckpointError, match="refusing"):
            load_checkpoint(path)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


# --- command line and torchrun -------------------------------------------------------------
def test_cli_trains_and_evaluates_test(shards: Path, tmp_path: Path, capsys) -> None:
    result = main(
        [
            "--run-dir",
            str(tmp_path),
            "--shards-dir",
            str(shards),
            "--model",
            "tiny_cnn",
            "--epochs",
            "1",
            "--crop",
            "10",
            "--batch-size",
            "8",
            "--channels",
            '["B4_q1", "B3_q1", "B2_q1"]',
            "--dw-mode",
            "none",
            "--tensorboard",
            "false",
            "--progress",
            "false",
            "--experiment",
            "cli",
        ]
    )
    assert result.out_dir == tmp_path / "train" / "cli"
    assert (result.out_dir / "predictions_test.csv").is_file()
    assert "test: b-MAE" in capsys.readouterr().out


def test_torchrun_two_processes(shards: Path, tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "utils.train",
        "--run-dir",
        str(tmp_path),
        "--shards-dir",
        str(shards),
        "--model",
        "tiny_cnn",
        "--epochs",
        "2",
        "--crop",
        "10",
        "--batch-size",
        "8",
        "--tensorboard",
        "false",
        "--progress",
        "false",
        "--no-test",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        cmd, cwd=project_root(), env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    history = pd.read_csv(tmp_path / "train" / "l2_baseline" / "history.csv")
    assert len(history) == 2 and np.isfinite(history["val_bmae"]).all()
    assert "best epoch" in done.stdout


DDP_WEIGHTED_SCRIPT = """
import sys
from pathlib import Path

import numpy as np
import utils.samplers as samplers
from utils.dataloader import ShardDataset
from utils.train import TrainConfig, fit

made = []
class Recording(samplers.DistributedWeightedSampler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        made.append((self.num_replicas, self.rank, len(self)))
samplers.DistributedWeightedSampler = Recording
run_dir, shards = sys.argv[1], sys.argv[2]
n = len(ShardDataset(shards, "train").labels)
w = np.linspace(0.2, 2.0, n)
cfg = TrainConfig(run_dir=run_dir, shards_dir=shards, model="tiny_cnn", crop=10, epochs=1,
                  batch_size=8, progress=False, tensorboard=False)
result = fit(cfg, sample_weights=w, sampler_weights=w)
assert made and made[0][0] == 2 and made[0][2] == n // 2, made
Path(run_dir, f"rank{made[0][1]}.txt").write_text(f"ok {len(result.history)}")
"""


def test_torchrun_weighted_sampler(shards: Path, tmp_path: Path) -> None:
    script = tmp_path / "ddp_weighted.py"
    script.write_text(DDP_WEIGHTED_SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(tmp_path),
        str(shards),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(project_root())}
    done = subprocess.run(
        cmd, cwd=project_root(), env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):  # each rank drew its half of one weighted draw and trained 1 epoch
        assert (tmp_path / f"rank{rank}.txt").read_text() == "ok 1"
