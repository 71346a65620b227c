"""MOSAIKS: random convolutional features and ridge regression, the cheap baseline.

Reference: E. Rolf, J. Proctor, T. Carleton et al., "A generalizable and accessible
approach to machine learning with global satellite imagery", Nature Communications 12,
4392 (2021); the authors' code, ``Global-Policy-Lab/mosaiks-paper``
(``code/mosaiks/featurization.py``, ``config.py``).

As the authors' featurisation does (their defaults in brackets):

1. draw ``patch_pool`` [100,000] random ``patch_size`` x ``patch_size`` [3] patches, all
   channels, from ``patch_images`` [10] random training images;
2. normalise them (their ``normalize_patches``): subtract each patch's mean, scale it to
   unit L2 norm, then ZCA-whiten with the patches' covariance ``S = V E V^T`` and
   ``zca_bias`` [1e-3] as ``P V (E + zca_bias)^-1 V^T`` (their ``P Z Z^T`` with
   ``Z = V (E + b)^-1/2 V^T``);
3. keep ``num_filters`` K [4096] of them, drawn without replacement, as filters;
4. features of an image: the filters convolved with it (no padding), ``ReLU(z - bias)``
   and ``ReLU(-z - bias)`` [bias 0], each averaged over the whole image (their 256 px
   pool over 256 px images): 2K numbers.

Ridge (:func:`ridge_path`): weighted least squares with an unpenalised intercept,
``min_b sum_i w_i (y_i - a - x_i b)^2 / sum_i w_i + lam ||b||^2``; the penalty is per
weighted-mean squared error, so one grid fits any n and any weight scale. The authors
pick ``lam`` by 5-fold cross-validation on the grid ``logspace(-4, 3, 9)``; here it is
picked on the validation split (the lowest validation b-MAE, as the CNN rows pick their
epoch) on the wider :data:`DEFAULT_LAMBDAS`. Sample weights let the study's balanced
weightings apply; a resampling experiment fits on a weighted draw with replacement.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from metrics import regression_report
from utils.atomic import atomic_path
from utils.study.results import (
    RESULT_FILE,
    TEST_PREDICTIONS,
    VAL_PREDICTIONS,
    json_ready,
    write_row_predictions,
)

#: Penalties tried on validation (the authors' grid, 1e-4 ... 1e3, widened both ways).
DEFAULT_LAMBDAS: tuple[float, ...] = tuple(float(v) for v in np.logspace(-7, 3, 21))


@dataclass(frozen=True)
class MosaiksConfig:
    """Knobs of the MOSAIKS featurisation and ridge (authors' defaults).

    Attributes:
        num_filters: K random patches used as filters (2K features).
        patch_size: filter side in pixels.
        patch_images: training images the patches are drawn from.
        patch_pool: patches drawn before the K filters are picked.
        bias: ReLU threshold of both feature halves.
        zca_bias: added to the patch covariance's eigenvalues before whitening.
        lambdas: ridge penalties tried on validation.
        batch_size: images per featurisation batch.
    """

    num_filters: int = 4096
    patch_size: int = 3
    patch_images: int = 10
    patch_pool: int = 100_000
    bias: float = 0.0
    zca_bias: float = 1e-3
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    batch_size: int = 64


# --------------------------------------------------------------------- features


def normalize_patches(patches: np.ndarray, zca_bias: float = 1e-3) -> np.ndarray:
    """Per-patch centring and unit norm, then ZCA whitening (the authors' recipe, whose
    whitening matrix is applied twice: ``P V (E + b)^-1 V^T``). Shape kept, float32."""
    shape = patches.shape
    flat = patches.reshape(shape[0], -1).astype(np.float64)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1)
    flat = flat / np.where(norms < 1e-8, 1.0, norms)[:, None]
    eigval, eigvec = np.linalg.eigh(flat.T @ flat / shape[0])
    whiten = (eigvec / (eigval + zca_bias)) @ eigvec.T
    return (flat @ whiten).reshape(shape).astype(np.float32)


def sample_filters(dataset: Any, cfg: MosaiksConfig, seed: int) -> np.ndarray:
    """K whitened random patches of ``dataset``'s images, (K, C, p, p) float32.

    Raises:
        ValueError: when the images are smaller than a patch or fewer patches exist
            than filters are asked for.
    """
    rng = np.random.default_rng(seed)
    images = rng.choice(len(dataset), size=min(cfg.patch_images, len(dataset)), replace=False)
    pixels = [np.asarray(dataset[int(i)]["image"], dtype=np.float32) for i in images]
    side = cfg.patch_size
    h, w = pixels[0].shape[-2:]
    if h < side or w < side:
        raise ValueError(f"images of {h} x {w} px are smaller than the {side} px patches")
    positions = len(images) * (h - side + 1) * (w - side + 1)
    if positions < cfg.num_filters:
        raise ValueError(f"{positions} patch positions for {cfg.num_filters} filters")
    which = rng.integers(0, len(images), cfg.patch_pool)
    top = rng.integers(0, h - side + 1, cfg.patch_pool)
    left = rng.integers(0, w - side + 1, cfg.patch_pool)
    patches = np.stack(
        [pixels[k][:, r : r + side, c : c + side] for k, r, c in zip(which, top, left, strict=True)]
    )
    patches = normalize_patches(patches, cfg.zca_bias)
    return patches[rng.choice(len(patches), size=cfg.num_filters, replace=False)]


@torch.no_grad()
def featurize(images: torch.Tensor, filters: np.ndarray | torch.Tensor, bias: float = 0.0):
    """MOSAIKS features of (N, C, H, W) images: ``[mean ReLU(z - bias), mean ReLU(-z -
    bias)]`` over the image for the filter responses ``z``, (N, 2K) float32 tensor."""
    weight = torch.as_tensor(filters, dtype=torch.float32, device=images.device)
    z = F.conv2d(images.float(), weight)
    positive = F.relu(z - bias).mean(dim=(-2, -1))
    negative = F.relu(-z - bias).mean(dim=(-2, -1))
    return torch.cat([positive, negative], dim=1)


def dataset_features(
    dataset: Any, filters: np.ndarray, cfg: MosaiksConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, 2K), labels (N,)) of every item of ``dataset``, in index order."""
    feats, labels = [], []
    for start in range(0, len(dataset), cfg.batch_size):
        items = [dataset[i] for i in range(start, min(start + cfg.batch_size, len(dataset)))]
        batch = torch.stack([torch.as_tensor(it["image"]) for it in items])
        feats.append(featurize(batch, filters, cfg.bias).numpy())
        labels.append(np.array([float(it["label"]) for it in items], dtype=np.float32))
    return np.concatenate(feats), np.concatenate(labels)


# ------------------------------------------------------------------------ ridge


@dataclass
class RidgeFit:
    """A ridge solution: ``predict(x) = intercept + x @ coef``."""

    coef: np.ndarray
    intercept: float
    lam: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        return (self.intercept + np.asarray(x, np.float64) @ self.coef).astype(np.float32)


def ridge_path(
    x: np.ndarray,
    y: np.ndarray,
    lambdas: Sequence[float],
    sample_weight: np.ndarray | None = None,
) -> list[RidgeFit]:
    """Weighted ridge for every penalty, from one SVD.

    Solves ``min sum_i w_i (y_i - a - x_i b)^2 / sum_i w_i + lam ||b||^2`` (intercept
    ``a`` unpenalised): with weighted means removed and rows scaled by ``sqrt(w_i)``,
    ``X_s = U S V^T`` gives ``b = V diag(s / (s^2 + lam sum w)) U^T y_s``.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    if w.shape != y.shape or (w < 0).any() or w.sum() <= 0:
        raise ValueError("sample_weight must be non-negative, one per sample, not all zero")
    total = w.sum()
    x_mean, y_mean = w @ x / total, float(w @ y / total)
    root = np.sqrt(w)[:, None]
    u, s, vt = np.linalg.svd((x - x_mean) * root, full_matrices=False)
    uty = u.T @ ((y - y_mean) * root[:, 0])
    fits = []
    for lam in lambdas:
        coef = vt.T @ (s / (s**2 + lam * total) * uty)
        fits.append(RidgeFit(coef, y_mean - float(x_mean @ coef), float(lam)))
    return fits


def select_ridge(
    fits: Sequence[RidgeFit],
    x_val: np.ndarray,
    y_val: np.ndarray,
    train_labels: np.ndarray,
    **metric_kwargs: Any,
) -> tuple[RidgeFit, list[float]]:
    """The fit with the lowest validation b-MAE (bins from the training labels) and the
    validation b-MAE of every penalty."""
    scores = [
        float(
            regression_report(f.predict(x_val), y_val, train_labels=train_labels, **metric_kwargs)[
                "bmae"
            ]
        )
        for f in fits
    ]
    return fits[int(np.nanargmin(scores))], scores


# ------------------------------------------------------------------ study runs


def fixed_view(dataset: Any) -> Any:
    """``dataset`` with deterministic items: a memory-cached split without its random
    flips (sharing the cache), a randomly cropped split rebuilt with centre crops."""
    if hasattr(dataset, "_items") and getattr(dataset, "augment", False):
        view = copy.copy(dataset)
        view.augment = False
        return view
    if getattr(dataset, "train", False) and (dataset.augment or dataset.crop < dataset.patch):
        from utils.dataloader import ShardDataset  # noqa: PLC0415

        return ShardDataset(
            dataset.shards_dir,
            dataset.split,
            channels=dataset.s2_names,
            crop=dataset.crop,
            dw_mode=dataset.dw_mode,
            stats=dataset.stats,
        )
    return dataset


def split_features(
    datasets: dict[str, Any], cfg: MosaiksConfig, seed: int, cache: Path | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Features and labels of the train/val/test splits, from filters drawn with
    ``seed`` on train; kept in ``cache`` (``.npz``) when given and reused from it."""
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as saved:
            return {s: (saved[f"{s}_x"], saved[f"{s}_y"]) for s in ("train", "val", "test")}
    start = time.perf_counter()
    views = {s: fixed_view(datasets[s]) for s in ("train", "val", "test")}
    filters = sample_filters(views["train"], cfg, seed)
    out = {s: dataset_features(v, filters, cfg) for s, v in views.items()}
    if cache is not None:
        arrays = {f"{s}_{k}": a for s, (x, y) in out.items() for k, a in (("x", x), ("y", y))}
        arrays["seconds"] = np.array(time.perf_counter() - start)
        with atomic_path(cache) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return out


def features_key(cfg: MosaiksConfig, seed: int, data: str, inputs: dict[str, Any]) -> str:
    """Hash naming a features cache: featurisation knobs, seed, data and input options."""
    knobs = {k: v for k, v in asdict(cfg).items() if k != "lambdas"}
    payload = {"mosaiks": knobs, "seed": seed, "data": data, "inputs": inputs}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def fit_mosaiks(
    features: dict[str, tuple[np.ndarray, np.ndarray]],
    cfg: MosaiksConfig,
    *,
    sample_weight: np.ndarray | None = None,
    resample: bool = False,
    seed: int = 0,
    **metric_kwargs: Any,
) -> tuple[RidgeFit, list[float]]:
    """Ridge on the train features, penalty picked on validation; with ``resample`` the
    weights draw a same-size training set with replacement (seeded) instead."""
    x, y = features["train"]
    train_labels = y
    if resample and sample_weight is not None:
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(y), size=len(y), p=sample_weight / sample_weight.sum())
        x, y, sample_weight = x[idx], y[idx], None
    fits = ridge_path(x, y, cfg.lambdas, sample_weight)
    return select_ridge(fits, *features["val"], train_labels, **metric_kwargs)


#: The study's model name of this baseline.
MOSAIKS = "mosaiks"


def supports(experiment: Any) -> bool:
    """Whether a study experiment has a ridge counterpart: squared error, any weighting
    (as ridge sample weights or a weighted resample), no FDS."""
    return experiment.loss == "mse" and not experiment.fds


def run_mosaiks(
    experiment: Any,
    cfg: Any,
    mosaiks: MosaiksConfig,
    out_dir: str | Path,
    datasets: dict[str, Any],
    data: str,
) -> dict[str, Any]:
    """One study row: MOSAIKS features (cached beside the runs, per seed and data) and the
    experiment's weighting in the ridge; writes ``result.json`` and the test / validation
    predictions as :func:`utils.study.study.run_experiment` does.

    ``train_seconds`` is the featurisation (as first measured) plus this ridge fit.
    """
    from loss.weights import sample_weights  # noqa: PLC0415

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(datasets["train"].labels)
    weights = None
    if experiment.weighting != "none":
        weights = sample_weights(
            labels, experiment.weighting, alpha=experiment.alpha, **experiment.weight_kwargs
        )
    train = datasets["train"]
    inputs = {k: getattr(cfg, k) for k in ("channels", "dw_mode", "crop")}
    key = features_key(mosaiks, cfg.seed, data, inputs)
    cache = out.parent / "mosaiks_features" / f"{key[:16]}.npz"
    cache.parent.mkdir(parents=True, exist_ok=True)
    features = split_features(datasets, mosaiks, cfg.seed, cache)
    start = time.perf_counter()  # the featurisation's own time is in the cache
    metric = {
        "bins": cfg.bins,
        "quantile": cfg.quantile_bins,
        "value_range": tuple(cfg.label_range) if cfg.label_range else None,
    }
    best, scores = fit_mosaiks(
        features,
        mosaiks,
        sample_weight=weights,
        resample=experiment.resample,
        seed=cfg.seed,
        **metric,
    )
    seconds = time.perf_counter() - start + _featurize_seconds(cache)
    pred = {s: best.predict(features[s][0]) for s in ("val", "test")}
    report = regression_report(
        pred["test"], features["test"][1], train_labels=train.labels, **metric
    )
    write_row_predictions(out / TEST_PREDICTIONS, features["test"][1], pred["test"])
    write_row_predictions(out / VAL_PREDICTIONS, features["val"][1], pred["val"])
    result = {
        "name": experiment.name,
        "experiment": asdict(experiment),
        "model": MOSAIKS,
        "mosaiks": {**asdict(mosaiks), "lambda": best.lam, "val_bmae_per_lambda": scores},
        "best_epoch": 0,
        "epochs": 0,
        "train_seconds": seconds,
        "weights_max": float(weights.max()) if weights is not None else 1.0,
        "test": json_ready(report),
    }
    with atomic_path(out / RESULT_FILE) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    return result


def _featurize_seconds(cache: Path) -> float:
    with np.load(cache, allow_pickle=False) as saved:
        return float(saved["seconds"]) if "seconds" in saved else 0.0
