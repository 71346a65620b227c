"""MOSAIKS random convolutional features + ridge (Rolf et al. 2021) and the study over
models (tiny CNN, Swin3D-T and MOSAIKS crossed with a few methods, one table)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from shards_factory import write_tiny_shards

from utils.dataloader import ShardDataset
from utils.study.mosaiks import (
    MosaiksConfig,
    featurize,
    fixed_view,
    normalize_patches,
    ridge_path,
    sample_filters,
    select_ridge,
)
from utils.study.study import Experiment, MemoryCachedDataset, StudyConfig, run_study, study
from utils.train import TrainConfig

torch.set_num_threads(1)
SMALL = MosaiksConfig(num_filters=24, patch_pool=3000, batch_size=32)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mosaiks")
    write_tiny_shards(root / "shards", size=10)
    return root


def test_filters_and_features_are_deterministic_per_seed(root: Path) -> None:
    train = ShardDataset(root / "shards", "train", dw_mode="channel")
    a, b = sample_filters(train, SMALL, seed=0), sample_filters(train, SMALL, seed=0)
    other = sample_filters(train, SMALL, seed=1)
    assert a.shape == (24, 25, 3, 3) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.allclose(a, other)
    images = torch.stack([train[i]["image"] for i in range(4)])
    f1, f2 = featurize(images, a), featurize(images, b)
    assert f1.shape == (4, 48) and torch.equal(f1, f2) and (f1 >= 0).all()
    with pytest.raises(ValueError, match="patch positions"):
        sample_filters(train, replace(SMALL, num_filters=10_000, patch_images=1), seed=0)


def test_patch_normalisation_is_the_authors_double_zca() -> None:
    rng = np.random.default_rng(0)
    patches = rng.normal(size=(500, 2, 3, 3))
    out = normalize_patches(patches, zca_bias=1e-3)
    flat = patches.reshape(500, -1)
    flat = flat - flat.mean(1, keepdims=True)
    flat = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    eigval, eigvec = np.linalg.eig(flat.T @ flat / 500)  # their np.linalg.eig
    zca = eigvec @ np.diag((eigval + 1e-3) ** -0.5) @ eigvec.T
    expected = (flat @ zca @ zca.T).reshape(patches.shape)
    assert np.allclose(out, expected.real, atol=1e-4)


def test_featurize_is_mean_relu_of_both_signs() -> None:
    image = torch.tensor([[[1.0, -2.0], [3.0, -4.0]]])[None]  # (1, 1, 2, 2)
    filters = np.ones((1, 1, 1, 1), np.float32)
    feats = featurize(image, filters, bias=0.5)
    assert torch.allclose(feats, torch.tensor([[(0.5 + 2.5) / 4, (1.5 + 3.5) / 4]]))


def test_ridge_equals_the_closed_form() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 4)), rng.normal(size=30)
    w = rng.uniform(0.2, 3.0, size=30)
    lam = 0.3
    fit = ridge_path(x, y, [lam], w)[0]
    # normal equations of sum w (y - a - x b)^2 / sum w + lam ||b||^2, intercept free
    design = np.column_stack([np.ones(30), x])
    penalty = lam * w.sum() * np.diag([0.0, 1, 1, 1, 1])
    theta = np.linalg.solve(design.T @ (w[:, None] * design) + penalty, design.T @ (w * y))
    assert fit.intercept == pytest.approx(theta[0], abs=1e-10)
    assert np.allclose(fit.coef, theta[1:], atol=1e-10)
    ols = ridge_path(x, y, [0.0])[0]  # no penalty, unit weights: least squares
    lstsq = np.linalg.lstsq(design, y, rcond=None)[0]
    assert np.allclose(np.r_[ols.intercept, ols.coef], lstsq, atol=1e-10)
    fits = ridge_path(x, y, [1e-4, 1.0, 1e4], w)
    best, scores = select_ridge(fits, x, y, y, bins=3)
    assert best is fits[int(np.argmin(scores))] and scores[0] < scores[-1]
    with pytest.raises(ValueError, match="non-negative"):
        ridge_path(x, y, [lam], -w)


def test_mosaiks_study_rows_weights_and_cache(root: Path) -> None:
    cfg = TrainConfig(
        run_dir=str(root), model="mosaiks", progress=False, tensorboard=False, dw_mode="channel"
    )
    experiments = [
        Experiment("L2"),
        Experiment("weighted L2 a=1", weighting="kde"),
        Experiment("resampling a=1", weighting="kde", resample=True),
        Experiment("L3", loss="l3"),
    ]
    out = root / "train" / "ridge"
    results = run_study(experiments, cfg, out, mosaiks=SMALL)
    assert list(results["name"]) == ["L2", "weighted L2 a=1", "resampling a=1"]  # L3 skipped
    assert (results["bmae"] > 0).all() and results["bmae"].nunique() == 3
    saved = json.loads((Path(results["dir"][0]) / "result.json").read_text())
    assert saved["model"] == "mosaiks" and saved["mosaiks"]["lambda"] in SMALL.lambdas
    (npz,) = (out / "mosaiks_features").glob("*.npz")  # one featurisation for the rows
    with np.load(npz) as saved:
        featurised = float(saved["seconds"])
    seconds = results["train_seconds"]  # each row: the featurisation plus its own ridge
    assert (seconds >= featurised).all() and seconds.max() < 2 * featurised + 1.0
    val = pd.read_csv(Path(results["dir"][0]) / "predictions_val.csv")
    assert len(val) == len(ShardDataset(root / "shards", "val"))
    again = run_study(experiments, cfg, out, mosaiks=SMALL)
    assert again["cached"].all() and np.allclose(again["bmae"], results["bmae"])
    seed = run_study(experiments[:1], replace(cfg, seed=1), out, mosaiks=SMALL)
    assert not seed["cached"].any() and len(list((out / "mosaiks_features").glob("*.npz"))) == 2


def test_study_over_models_is_one_table(root: Path) -> None:
    train = TrainConfig(
        run_dir=str(root),
        epochs=1,
        batch_size=16,
        progress=False,
        tensorboard=False,
        augment=False,
        dw_mode="channel",
    )
    cfg = StudyConfig(
        run_dir=str(root),
        experiments=["L2", "weighted L2 a=1"],
        models=("tiny_cnn", "swin3d_t", "mosaiks"),
        out_name="models",
        calibration_alphas=(0.5,),
        calibrate=("L2",),
        mosaiks=SMALL,
        train=train,
    )
    outputs = study(cfg)
    table = outputs.table
    assert list(table.columns[:2]) == ["model", "method"]
    assert list(table["model"]) == ["tiny_cnn"] * 3 + ["swin3d_t"] * 3 + ["mosaiks"] * 3
    assert list(table["method"][:3]) == ["L2", "weighted L2 a=1", "L2 + calibration a=0.5"]
    l2 = table[table["method"] == "L2"]
    assert np.allclose(l2["b-MAE vs L2 %"], 0.0)  # each model against its own L2
    runs = outputs.results.dropna(subset=["model"])
    assert runs["dir"].nunique() == 6 and (table["seconds"] >= 0).all()
    assert "| model | method |" in outputs.table_md.read_text()
    again = study(cfg)
    assert again.results.query("train_seconds > 0")["cached"].all()


def test_features_read_deterministic_items(root: Path) -> None:
    cached = MemoryCachedDataset(ShardDataset(root / "shards", "train"), augment=True)
    view = fixed_view(cached)
    assert cached.augment and not view.augment and view._items is cached._items  # shared
    assert torch.equal(view[3]["image"], view[3]["image"])
    cropped = fixed_view(ShardDataset(root / "shards", "train", crop=8, train=True, augment=True))
    assert not cropped.train and torch.equal(cropped[0]["image"], cropped[0]["image"])
