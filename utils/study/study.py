"""The balanced-regression study: train every method with the same seed and budget,
score each on the test split, and tabulate (docs/design.md).

An :class:`Experiment` names a loss, an optional density weighting of the training
labels (used as loss weights, or as resampling weights with ``resample=True``) and
optional FDS. :func:`run_study` trains each experiment with :func:`utils.train.fit`
(best checkpoint by validation b-MAE), evaluates that checkpoint on the test split and
caches the result under ``out_dir/<slug>-<hash>/result.json``, the hash covering the
experiment, the training config and the data: a re-run skips finished experiments and
resumes an interrupted one. :func:`results_table` writes the table as CSV and Markdown
with each method's change against the L2 baseline; :func:`per_bin_plot` draws the
per-bin test MAE of all methods side by side.

The study can also vary the model (:attr:`StudyConfig.models`, e.g. ``["tiny_cnn",
"resnet18", "swin3d_t", "mosaiks"]``): every model runs every experiment it supports
(MOSAIKS, :mod:`utils.study.mosaiks`, the squared-error ones), cached the same way, and the
table has one block per model, each compared with its own baseline.

Notebook: ``main.ipynb``; command line: ``python -m utils.study.run`` (``utils/study/run.py``).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from loss import get_loss
from loss.fds import FDS, FDSModel
from loss.weights import WEIGHTS_VERSION, sample_weights
from metrics import regression_report
from utils.atomic import atomic_open
from utils.checkpoint import load_checkpoint, load_weights
from utils.dataloader import (
    ShardDataset,
    augment,
    augments_per_sample,
    build_datasets,
    input_layout,
    make_loader,
)
from utils.device import resolve_device
from utils.models import build_model
from utils.ownership import OutputFolder
from utils.paths import RunPaths
from utils.selection import run_problems
from utils.study.calibration import BalancedCalibration
from utils.study.defaults import DEFAULT_ALPHAS, DEFAULT_CALIBRATE
from utils.study.mosaiks import MOSAIKS, MosaiksConfig, run_mosaiks, supports
from utils.study.results import (
    RESULT_FILE,
    TEST_PREDICTIONS,
    VAL_PREDICTIONS,
    json_ready,
    write_row_predictions,
)
from utils.train import TRAIN_MARKERS, TRAIN_STAGE, TrainConfig, evaluate, fit

#: Metrics of the results table, in column order (keys of ``regression_report``).
TABLE_METRICS: tuple[str, ...] = ("bmae", "mae", "rmse", "r2", "many_mae", "medium_mae", "few_mae")
#: TrainConfig fields that do not change a run's result (left out of the cache key).
NON_RESULT_FIELDS: frozenset[str] = frozenset(
    {"run_dir", "shards_dir", "experiment", "resume", "progress", "tensorboard", "num_workers"}
    | {"prepare_on"}  # where the items are standardised: the same values either way
)
#: Config fields added after runs were cached, left out of the cache key at these values
#: (their behaviour before the field existed), so those cached runs stay valid.
KEY_DEFAULTS: dict[str, object] = {"augment_on": "cpu"}
#: Initial noise sigma of Balanced MSE: about a tenth of the label spread (the wealth
#: index's std is about 0.45), the ratio of Ren et al.'s age runs (sigma 1 year). A
#: sigma near the label std (0.5) flattens BMC's batch softmax and the model barely learns.
NOISE_SIGMA_INIT = 0.05
#: Largest decoded data (all splits) that ``cache_data="auto"`` keeps in memory.
CACHE_LIMIT_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class Experiment:
    """One method of the study.

    Attributes:
        name: row label of the results table (unique within a study).
        loss: a name of :data:`loss.LOSSES`.
        loss_kwargs: options of that loss.
        weighting: a :data:`loss.weights.WEIGHT_METHODS` name (``"none"``: no weights).
        alpha: weighting strength ``a``.
        weight_kwargs: further :func:`loss.weights.sample_weights` options (``bins``,
            ``kernel``, ``sigma``, ``window``, ``bandwidth``, ``eps``).
        resample: use the weights for weighted random sampling (with replacement)
            instead of as loss weights.
        fds: wrap the model with feature-distribution smoothing.
        fds_kwargs: options of :class:`loss.fds.FDS` (``bins``, ``sigma``, ...).
    """

    name: str
    loss: str = "mse"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    weighting: str = "none"
    alpha: float = 1.0
    weight_kwargs: dict[str, Any] = field(default_factory=dict)
    resample: bool = False
    fds: bool = False
    fds_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        """File-name-safe form of ``name``."""
        text = "".join(c if c.isalnum() or c in "-." else "_" for c in self.name.lower())
        return "_".join(part for part in text.split("_") if part)


def default_experiments(alphas: Sequence[float] = DEFAULT_ALPHAS) -> list[Experiment]:
    """The study of the original work plus the balanced-regression literature.

    L2 (the baseline), L3, KDE-weighted L2 and KDE resampling at each ``alpha`` (the
    original study), LDS-weighted L2 (DIR's ``sqrt_inv`` LDS, Yang et al. 2021),
    focal-R (L1), Balanced MSE BMC and BNI (Ren et al. 2022) and DenseLoss
    (Steininger et al. 2021).
    """
    experiments = [Experiment("L2"), Experiment("L3", loss="l3")]
    experiments += [Experiment(f"weighted L2 a={a:g}", weighting="kde", alpha=a) for a in alphas]
    experiments += [
        Experiment(f"resampling a={a:g}", weighting="kde", alpha=a, resample=True) for a in alphas
    ]
    experiments += [
        Experiment("LDS", weighting="lds", alpha=0.5, weight_kwargs={"bins": 50, "sigma": 2.0}),
        Experiment("focal-R", loss="focal_l1"),
        Experiment("BMC", loss="bmc", loss_kwargs={"init_noise_sigma": NOISE_SIGMA_INIT}),
        Experiment(
            "BNI", loss="bni", loss_kwargs={"init_noise_sigma": NOISE_SIGMA_INIT, "bins": 50}
        ),
        Experiment("DenseLoss", loss="dense", loss_kwargs={"alpha": 1.0}),
    ]
    return experiments


def select_experiments(
    experiments: Sequence[Experiment], names: Sequence[str] | None
) -> list[Experiment]:
    """The experiments called ``names`` (all when None), in the given order.

    Raises:
        ValueError: for a name not in ``experiments`` (listing the valid ones).
    """
    if names is None:
        return list(experiments)
    by_name = {e.name: e for e in experiments}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; valid: {list(by_name)}")
    return [by_name[n] for n in names]


class MemoryCachedDataset(Dataset):
    """A :class:`ShardDataset` whose items are kept in memory after their first read.

    For studies that train many models on one small split: every run after the first
    skips HDF5 reads and decompression. The wrapped dataset must return deterministic
    items (no random crop, no augmentation of its own); the random flips/rot90 of
    training are applied here on the cached item (:func:`utils.dataloader.augment`,
    the dataset's own function and RNG) when ``augment`` is set. Memory: about
    ``len(dataset) * C * h * w * 4`` bytes, on ``device`` when given (e.g. the GPU, so
    that batches need no host-to-device copy; its loaders then run without workers and
    without pinned memory), else in host memory. Other attributes (``labels``,
    ``band_names``, ``patch``, ...) are the wrapped dataset's.

    Raises:
        ValueError: for a dataset whose items are random.
    """

    def __init__(
        self,
        dataset: ShardDataset,
        *,
        augment: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if dataset.train and (dataset.augment or dataset.crop < dataset.patch):
            raise ValueError(
                f"cannot cache {dataset!r}: its items are random (crop {dataset.crop} of "
                f"{dataset.patch} px, augment={dataset.augment}); build it with "
                "augment=False and crop=None, and pass augment= here"
            )
        self.dataset = dataset
        self.augment = augment
        self.device = None if device is None else torch.device(device)
        self._items: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def _store(self, index: int, item: dict[str, Any]) -> dict[str, Any]:
        if self.device is not None:
            item = {**item, "image": item["image"].to(self.device)}
        self._items[index] = item
        return item

    def fill(self, num_workers: int = 0, progress: bool = False) -> None:
        """Read every item not cached yet, with ``num_workers`` loader processes (the
        cache lives in this process: items cached inside loader workers are lost with
        them)."""
        missing = [i for i in range(len(self)) if i not in self._items]
        if not missing:
            return
        loader = DataLoader(Subset(self.dataset, missing), batch_size=None, num_workers=num_workers)
        bar = tqdm(loader, total=len(missing), desc="cache", leave=False, disable=not progress)
        for index, item in zip(missing, bar, strict=True):
            self._store(index, item)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        item = self._items.get(index)
        if item is None:
            item = self._store(index, self.dataset[index])
        if not self.augment:
            return item
        image = augment(item["image"] if self.device is not None else item["image"].numpy())
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image))
        return {**item, "image": image.contiguous()}

    def __getattr__(self, name: str) -> Any:
        # not "dataset" (not yet set while unpickling), nor protocol names such as
        # __getitems__: a DataLoader would read the wrapped dataset's batches past the cache
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def cached_datasets(
    cfg: TrainConfig,
    splits: Sequence[str] = ("train", "val", "test"),
    *,
    max_bytes: int | None = CACHE_LIMIT_BYTES,
    device: torch.device | str | None = None,
) -> dict[str, MemoryCachedDataset] | None:
    """In-memory datasets of ``splits`` for ``cfg``, or None when they cannot be cached
    (random crops, i.e. ``cfg.crop`` smaller than the patch) or would take more than
    ``max_bytes`` (None: no limit). Items are kept on ``device`` when given (see
    :class:`MemoryCachedDataset`); with ``cfg.num_workers`` the splits are read up
    front by that many loader processes."""
    built = build_datasets(replace(cfg, augment=False), splits)
    if any(ds.crop < ds.patch for ds in built.values()):
        return None
    size = sum(len(ds) * int(np.prod(ds.sample_shape)) * 4 for ds in built.values())
    if max_bytes is not None and size > max_bytes:
        return None
    cached = {
        split: MemoryCachedDataset(
            ds,
            augment=augments_per_sample(cfg, split),
            device=device,
        )
        for split, ds in built.items()
    }
    if cfg.num_workers > 0:
        for dataset in cached.values():
            dataset.fill(cfg.num_workers, progress=cfg.progress)
    return cached


def data_fingerprint(train: ShardDataset) -> str:
    """Hash of the training labels, shard files and band statistics (the data identity)."""
    digest = hashlib.sha256(np.ascontiguousarray(train.labels).tobytes())
    digest.update(json.dumps([p.name for p in train.files]).encode())
    stats = train.shards_dir / "stats.json"
    if stats.is_file():
        digest.update(stats.read_bytes())
    return digest.hexdigest()


def experiment_key(experiment: Experiment, cfg: TrainConfig, data: str) -> str:
    """Cache key: a hash of the experiment, the result-relevant config and the data."""
    config = {
        k: v
        for k, v in cfg.to_dict().items()
        if k not in NON_RESULT_FIELDS and KEY_DEFAULTS.get(k, object()) != v
    }
    payload = {"experiment": asdict(experiment), "train": config, "data": data}
    if experiment.weighting != "none" or experiment.loss == "dense":
        payload["weights_version"] = WEIGHTS_VERSION  # cached runs of older definitions are stale
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _build_model(experiment: Experiment, cfg: TrainConfig, train: ShardDataset) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)  # the same initial weights for every experiment
    model = build_model(
        cfg.model,
        train.num_channels,
        pretrained_path=cfg.pretrained_path,
        dropout=cfg.dropout,
        band_names=train.band_names,
    )
    if not experiment.fds:
        return model
    labels = train.labels
    value_range = (float(labels.min()), float(labels.max()))
    return FDSModel(model, FDS(model.feature_dim, value_range, **experiment.fds_kwargs))


def run_experiment(
    experiment: Experiment,
    cfg: TrainConfig,
    out_dir: str | Path,
    datasets: dict[str, ShardDataset],
) -> dict[str, Any]:
    """Train one experiment, evaluate its best checkpoint on test, write ``result.json``.

    Returns:
        The result dict (``name``, ``experiment``, ``best_epoch``, ``epochs``,
        ``train_seconds``, ``weights_max`` and ``test``: the test report).
    """
    out = Path(out_dir)
    train = datasets["train"]
    labels = train.labels
    weights = None
    if experiment.weighting != "none":
        weights = sample_weights(
            labels,
            experiment.weighting,
            alpha=experiment.alpha,
            **experiment.weight_kwargs,  # type: ignore[arg-type]
        )
    loss = get_loss(experiment.loss, train_labels=labels, **experiment.loss_kwargs)
    model = _build_model(experiment, cfg, train)
    run_cfg = replace(
        cfg,
        experiment=experiment.slug,
        loss=experiment.loss,
        loss_kwargs=dict(experiment.loss_kwargs),
        resume=True,
    )
    start = time.perf_counter()
    fitted = fit(
        run_cfg,
        loss=loss,
        model=model,
        datasets=datasets,
        out_dir=out,
        sample_weights=None if experiment.resample else weights,
        sampler_weights=weights if experiment.resample else None,
    )
    seconds = time.perf_counter() - start
    device = resolve_device(cfg.device)
    load_weights(model, load_checkpoint(fitted.best_checkpoint, device), fitted.best_checkpoint)
    test_loader = make_loader(datasets["test"], batch_size=cfg.batch_size, seed=cfg.seed)
    report, pred, target = evaluate(
        model.to(device),
        test_loader,
        device=device,
        train_labels=labels,
        bins=cfg.bins,
        label_range=cfg.label_range,
        quantile_bins=cfg.quantile_bins,
    )
    write_row_predictions(out / TEST_PREDICTIONS, target, pred)
    val_loader = make_loader(datasets["val"], batch_size=cfg.batch_size, seed=cfg.seed)
    _, val_pred, val_target = evaluate(model, val_loader, device=device)
    write_row_predictions(out / VAL_PREDICTIONS, val_target, val_pred)  # for calibration
    result = {
        "name": experiment.name,
        "experiment": asdict(experiment),
        "best_epoch": int(fitted.best.get("epoch", 0)),
        "epochs": len(fitted.history),
        "train_seconds": seconds,
        "weights_max": float(weights.max()) if weights is not None else 1.0,
        "steps": len(fitted.history) * math.ceil(len(train) / cfg.batch_size),
        "val_r2": float(fitted.best.get("val_r2", float("nan"))),
        "test": json_ready(report),
    }
    with atomic_open(out / RESULT_FILE) as handle:
        json.dump(result, handle, indent=1)
    return result


def study_datasets(
    cfg: TrainConfig, cache_data: bool | str = "auto"
) -> tuple[dict[str, Dataset], TrainConfig]:
    """The train/val/test datasets of a study and the config to train them with.

    Args:
        cfg: the shared training config.
        cache_data: True (keep decoded samples in host memory, any size), False,
            ``"auto"`` (in host memory when the patches are whole and the data is under
            :data:`CACHE_LIMIT_BYTES`) or ``"device"`` (any size, on the training
            device: GPU memory on a GPU; the returned config then has no loader workers,
            since the items are device tensors already).

    Raises:
        ValueError: for another ``cache_data``, or caching asked for with random crops.
    """
    if cache_data not in (True, False, "auto", "device"):
        raise ValueError(f"cache_data must be True, False, 'auto' or 'device', got {cache_data!r}")
    if cfg.model == MOSAIKS:  # the ridge reads items itself: they must be prepared ones
        cfg = replace(cfg, prepare_on="cpu")
    datasets = None
    if cache_data:
        datasets = cached_datasets(
            cfg,
            max_bytes=CACHE_LIMIT_BYTES if cache_data == "auto" else None,
            device=resolve_device(cfg.device) if cache_data == "device" else None,
        )
        if datasets is None and cache_data != "auto":
            raise ValueError(
                f"cache_data={cache_data!r} needs whole patches (crop=None); use 'auto' or False"
            )
        if cache_data == "device":
            cfg = replace(cfg, num_workers=0)
    return datasets or build_datasets(cfg, ("train", "val", "test")), cfg


def run_study(
    experiments: Sequence[Experiment],
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    datasets: dict[str, ShardDataset] | None = None,
    force: bool = False,
    cache_data: bool | str = "auto",
    mosaiks: MosaiksConfig | None = None,
) -> pd.DataFrame:
    """Run (or reuse) every experiment; one row per experiment, in the given order.

    Args:
        experiments: the methods (unique names).
        cfg: the shared training config (seed, budget, model, data); each experiment
            replaces only its loss and output folder.
        out_dir: study folder; each run in ``<slug>-<hash12>/``.
        datasets: ``train``/``val``/``test`` datasets (default: built from ``cfg``).
        force: re-run experiments whose result is cached.
        cache_data: keep the decoded samples in memory across the runs
            (:func:`study_datasets`); ignored when ``datasets`` are given.
        mosaiks: the featurisation and ridge of ``cfg.model == "mosaiks"`` (default
            :class:`utils.study.mosaiks.MosaiksConfig`); experiments it does not support
            (losses other than L2, FDS) are skipped with a message.

    Returns:
        A DataFrame with ``name``, the :data:`TABLE_METRICS`, ``per_bin_mae``,
        ``bin_edges``, ``bin_counts``, ``best_epoch``, ``train_seconds``, ``cached``, ``dir``.
    """
    names = [e.name for e in experiments]
    if len(set(names)) != len(names):
        raise ValueError(f"experiment names must be unique, got {names}")
    if datasets is None:
        datasets, cfg = study_datasets(cfg, cache_data)
    data = data_fingerprint(datasets["train"])
    ridge = cfg.model == MOSAIKS
    mosaiks = mosaiks or MosaiksConfig()
    rows = []
    for i, experiment in enumerate(experiments, 1):
        if ridge and not supports(experiment):
            print(f"[{i}/{len(experiments)}] {experiment.name}: no ridge counterpart, skipped")
            continue
        key = experiment_key(experiment, cfg, data + (str(asdict(mosaiks)) if ridge else ""))
        run_dir = Path(out_dir) / f"{experiment.slug}-{key[:12]}"
        cached = (run_dir / RESULT_FILE).is_file() and not force
        if cached:
            result = json.loads((run_dir / RESULT_FILE).read_text())
            print(f"[{i}/{len(experiments)}] {experiment.name}: cached ({run_dir.name})")
        else:
            if force and run_dir.exists():  # a fresh run, not a resume of the old one
                OutputFolder.claim(run_dir, TRAIN_STAGE, TRAIN_MARKERS)  # made by training
                shutil.rmtree(run_dir)
            print(f"[{i}/{len(experiments)}] {experiment.name}: training", flush=True)
            result = (
                run_mosaiks(experiment, cfg, mosaiks, run_dir, datasets, data)
                if ridge
                else run_experiment(experiment, cfg, run_dir, datasets)
            )
            print(
                f"    test b-MAE {result['test']['bmae']:.4f}, MAE {result['test']['mae']:.4f}"
                f" ({result['train_seconds']:.0f} s)",
                flush=True,
            )
        test = result["test"]
        rows.append(
            {
                "name": experiment.name,
                **{m: test.get(m, float("nan")) for m in TABLE_METRICS},
                "per_bin_mae": test["per_bin_mae"],
                "bin_edges": test["bin_edges"],
                "bin_counts": test["bin_counts"],
                "best_epoch": result["best_epoch"],
                "val_r2": result.get("val_r2", float("nan")),
                "steps": result.get("steps", float("nan")),
                "train_seconds": result["train_seconds"],
                "cached": cached,
                "dir": str(run_dir),
            }
        )
    return pd.DataFrame(rows)


def calibrated_rows(
    results: pd.DataFrame,
    alphas: Sequence[float],
    train_labels: np.ndarray,
    cfg: TrainConfig,
    *,
    base: str = "L2",
) -> pd.DataFrame:
    """Rows ``"<base> + calibration a=<alpha>"``: the ``base`` run of each seed, its
    predictions mapped by :class:`utils.study.calibration.BalancedCalibration` fitted on its
    validation predictions (no retraining), scored on test like every run.

    Runs without ``predictions_val.csv`` (cached before it was written) are skipped with
    a message; re-run them with ``force``.
    """
    rows = []
    for _, run in results[results["name"] == base].iterrows():
        folder = Path(run["dir"])
        if not (folder / VAL_PREDICTIONS).is_file():
            print(f"no {VAL_PREDICTIONS} in {folder}: no calibration rows (re-run with force)")
            continue
        val = pd.read_csv(folder / VAL_PREDICTIONS)
        test = pd.read_csv(folder / TEST_PREDICTIONS)
        for alpha in alphas:
            calibration = BalancedCalibration.fit(
                val["prediction"],
                val["label"],
                train_labels,
                alpha=alpha,
                bins=cfg.bins,
                value_range=cfg.label_range,
            )
            report = regression_report(
                calibration(test["prediction"]),
                test["label"],
                train_labels=train_labels,
                bins=cfg.bins,
                quantile=cfg.quantile_bins,
                value_range=tuple(cfg.label_range) if cfg.label_range is not None else None,
            )
            rows.append(
                {
                    **run.to_dict(),
                    "name": f"{base} + calibration a={alpha:g}",
                    **{m: report.get(m, float("nan")) for m in TABLE_METRICS},
                    "per_bin_mae": json_ready(report)["per_bin_mae"],
                    "train_seconds": 0.0,
                }
            )
    return pd.DataFrame(rows, columns=results.columns)


def results_table(
    results: pd.DataFrame, out_dir: str | Path | None = None, *, baseline: str = "L2"
) -> pd.DataFrame:
    """The study's table: metrics per method and the change against ``baseline``.

    With runs of several training seeds (a ``seed`` column), each seed's changes are taken
    against the same seed's baseline, then every column is averaged over the seeds and
    ``b-MAE vs <baseline> % sd`` gives the spread of the change. Writes ``results.csv``
    and ``results.md`` under ``out_dir`` when given.

    Returns:
        Columns ``method``, b-MAE, MAE, RMSE, R^2, many/medium/few-shot MAE, and
        ``b-MAE vs L2`` / ``MAE vs L2`` (relative change, %), ``best epoch``,
        ``val R2`` (of the kept epoch), ``steps`` (optimizer steps), ``warnings``
        (:func:`utils.selection.run_problems` marks: too few steps, negative test or
        validation R^2) (and ``b-MAE vs L2 % sd``, ``seeds`` for several seeds), ``seconds``
        (mean training time of a run); with several models (a ``model`` column) a first
        column ``model``, each model's rows compared with its own baseline.
    """
    if "model" in results and results["model"].nunique() > 1:
        blocks = [
            results_table(group.drop(columns="model"), baseline=baseline).assign(model=model)
            for model, group in results.groupby("model", sort=False)
        ]
        table = pd.concat(blocks, ignore_index=True)
        table = table[["model", *(c for c in table.columns if c != "model")]]
        _write_table(table, out_dir)
        return table
    seeds = results["seed"].nunique() if "seed" in results else 1
    if seeds > 1:
        stacked = pd.concat(
            [_seed_table(group, baseline) for _, group in results.groupby("seed", sort=True)]
        )
        by_method = stacked.groupby("method", sort=False)
        table = by_method.mean(numeric_only=True).reset_index()
        change = f"b-MAE vs {baseline} %"
        if change in table:
            spread = by_method[change].std().to_numpy()
            table.insert(table.columns.get_loc(change) + 1, f"{change} sd", spread)
        table["seeds"] = seeds
    else:
        table = _seed_table(results, baseline)
    table["warnings"] = [  # over several seeds: of the means
        ", ".join(run_problems(steps=st, test_r2=r2, val_r2=v))
        for st, r2, v in zip(table["steps"], table["R2"], table["val R2"], strict=True)
    ]
    if "train_seconds" in results:
        by_name = results.groupby("name", sort=False)["train_seconds"].mean()
        table["seconds"] = table["method"].map(by_name).astype(float).to_numpy()
    _write_table(table, out_dir)
    return table


def _write_table(table: pd.DataFrame, out_dir: str | Path | None) -> None:
    if out_dir is not None:
        out = Path(out_dir)
        with atomic_open(out / "results.csv") as handle:
            handle.write(table.to_csv(index=False, float_format="%.4f"))
        with atomic_open(out / "results.md") as handle:
            handle.write(to_markdown(table))


def _seed_table(results: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """:func:`results_table` of runs that share one training seed."""
    table = pd.DataFrame({"method": results["name"].to_numpy()})
    labels = {
        "bmae": "b-MAE",
        "mae": "MAE",
        "rmse": "RMSE",
        "r2": "R2",
        "many_mae": "many MAE",
        "medium_mae": "medium MAE",
        "few_mae": "few MAE",
    }
    for key, label in labels.items():
        table[label] = results[key].astype(float).to_numpy()
    if baseline in set(results["name"]):
        base = results.set_index("name").loc[baseline]
        table[f"b-MAE vs {baseline} %"] = 100 * (table["b-MAE"] / float(base["bmae"]) - 1)
        table[f"MAE vs {baseline} %"] = 100 * (table["MAE"] / float(base["mae"]) - 1)
    table["best epoch"] = results["best_epoch"].astype(int).to_numpy()
    for key, label in (("val_r2", "val R2"), ("steps", "steps")):
        table[label] = results[key].astype(float).to_numpy() if key in results else np.nan
    return table


def to_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub Markdown table (numbers rounded to ``digits``, NaN as a dash)."""

    def cell(value: Any) -> str:
        if isinstance(value, float | np.floating):
            return "–" if not np.isfinite(value) else f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |"]
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(table.shape[1])) + "|")
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(lines) + "\n"


def method_family(name: str) -> str:
    """The family a study row belongs to, for grouping figures: ``"calibration"``,
    ``"weighted L2"``, ``"resampling"``, ``"Balanced MSE"``, ``"LDS / FDS"``, ``"other"``."""
    if "+ calibration" in name:
        return "calibration"
    for prefix, family in (
        ("weighted", "weighted L2"),
        ("resampling", "resampling"),
        ("BMC", "Balanced MSE"),
        ("BNI", "Balanced MSE"),
        ("GAI", "Balanced MSE"),
        ("LDS", "LDS / FDS"),
        ("FDS", "LDS / FDS"),
    ):
        if name.startswith(prefix):
            return family
    return "other"


def per_bin_plot(results: pd.DataFrame, path: str | Path | None = None, baseline: str = "L2"):
    """Test MAE per label bin, one panel per method family (weighted L2, resampling,
    Balanced MSE, ...), each against ``baseline`` (black, dashed) so that a panel reads
    at a glance; with runs of several seeds, each method's mean over them.

    The x labels give each bin's range and test count. Returns the matplotlib figure
    (saved as PNG at ``path`` when given).
    """
    import matplotlib.pyplot as plt  # noqa: PLC0415 (heavy; only for figures)

    if "model" in results and results["model"].nunique() > 1:  # one bar per model/method
        results = results.assign(name=results["model"] + " " + results["name"])
    if "seed" in results and results["seed"].nunique() > 1:
        results = _mean_per_bin(results)
    edges = np.asarray(results["bin_edges"].iloc[0], dtype=float)
    counts = results["bin_counts"].iloc[0]
    n_bins = len(edges) - 1
    values = {
        row.name: np.array([np.nan if v is None else v for v in row.per_bin_mae], dtype=float)
        for row in results.itertuples()
    }
    families: dict[str, list[str]] = {}
    for name in values:
        if name != baseline:
            families.setdefault(method_family(name), []).append(name)
    if not families:  # the baseline alone
        families = {baseline: []}
    cols = min(3, len(families))
    rows = -(-len(families) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False, sharey=True
    )
    x = np.arange(n_bins)
    ticks = [f"{edges[b]:.2f}–{edges[b + 1]:.2f}\nn={counts[b]}" for b in range(n_bins)]
    for ax, (family, names) in zip(axes.flat, families.items(), strict=False):
        if baseline in values:
            ax.plot(x, values[baseline], "k--", lw=1.8, marker="o", ms=3, label=baseline)
        colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(len(names), 1)))
        for colour, name in zip(colours, names, strict=False):
            ax.plot(x, values[name], color=colour, lw=1.5, marker="o", ms=3, label=name)
        ax.set_title(family, fontsize=10)
        ax.set_xticks(x)
        ax.set_xticklabels(ticks, fontsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    for ax in axes.flat[len(families) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("test MAE")
    fig.suptitle(f"Per-bin test MAE, poorest bin left: each family against {baseline}", fontsize=11)
    fig.supxlabel("label bin (test count)", fontsize=9)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def _mean_per_bin(results: pd.DataFrame) -> pd.DataFrame:
    """One row per method with its per-bin MAE averaged over the seeds' runs."""
    rows = []
    for _, group in results.groupby("name", sort=False):
        values = np.array(
            [[np.nan if v is None else v for v in row] for row in group["per_bin_mae"]], float
        )
        seen = np.isfinite(values)
        total = np.where(seen, values, 0.0).sum(axis=0)
        mean = np.where(seen.any(axis=0), total / np.maximum(seen.sum(axis=0), 1), np.nan)
        rows.append({**group.iloc[0].to_dict(), "per_bin_mae": mean.tolist()})
    return pd.DataFrame(rows)


@dataclass
class StudyConfig:
    """Every knob of a study run (the notebook's and ``utils/study/run.py``'s).

    Attributes:
        run_dir: run folder; shards from ``<run_dir>/shards`` (or ``train.shards_dir``),
            results under ``<run_dir>/train/<out_name>``.
        experiments: names from :func:`default_experiments` to run (None: all).
        alphas: weighting strengths of the weighted-L2 and resampling experiments.
        baseline: the experiment the others are compared with.
        out_name: the study's folder under ``<run_dir>/train``.
        force: re-run cached experiments.
        cache_data: keep decoded samples in memory across the runs: True, False,
            ``"auto"`` (when ``train.crop`` is the whole patch and the data is small) or
            ``"device"`` (on the training device, e.g. GPU memory).
        seeds: training seeds; every experiment runs once per seed and the table shows
            means and the spread (empty: ``train.seed`` only).
        calibration_alphas: a row ``"<name> + calibration a=..."`` per value and per
            experiment of ``calibrate``: its predictions re-balanced after training
            (:func:`calibrated_rows`).
        calibrate: the experiments whose predictions get calibration rows (those not
            in the study are skipped): L2, and KDE-weighted L2 at a = 1, whose model
            calibrated back is the decoupled method (features learnt with balanced
            weights, values re-balanced on validation; README, "Results").
        select_mae_within: the epoch each run keeps (``TrainConfig.select_mae_within``;
            None: ``train``'s, whose default is the lowest validation b-MAE).
        models: models to cross with the experiments (names of
            :data:`utils.models.MODEL_NAMES` or ``"mosaiks"``); empty: ``train.model``.
        mosaiks: featurisation and ridge of the ``"mosaiks"`` model.
        train: the shared training config (model, epochs, seed, device, ...).
    """

    run_dir: str = "runs/demo"
    experiments: list[str] | None = None
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    baseline: str = "L2"
    out_name: str = "study"
    force: bool = False
    cache_data: bool | str = "auto"
    seeds: tuple[int, ...] = ()
    calibration_alphas: tuple[float, ...] = DEFAULT_ALPHAS
    calibrate: tuple[str, ...] = DEFAULT_CALIBRATE
    select_mae_within: float | None = None
    models: tuple[str, ...] = ()
    mosaiks: MosaiksConfig = field(default_factory=MosaiksConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def out_dir(self) -> Path:
        """``<run_dir>/train/<out_name>``."""
        return RunPaths.of(self.run_dir).train / self.out_name

    def selected(self) -> list[Experiment]:
        """The experiments of this study, in order."""
        return select_experiments(default_experiments(self.alphas), self.experiments)


@dataclass
class StudyOutputs:
    """What :func:`study` returns: the per-run results, the table and the files."""

    results: pd.DataFrame
    table: pd.DataFrame
    table_csv: Path
    table_md: Path
    per_bin_png: Path
    warnings: list[str] = field(default_factory=list)


def study(cfg: StudyConfig) -> StudyOutputs:
    """Run the study of ``cfg`` (cached runs reused), write the table and the plot."""
    out = cfg.out_dir()
    models = tuple(cfg.models) or (cfg.train.model,)
    runs, by_layout = [], {}
    for model in models:
        train_cfg = replace(cfg.train, run_dir=cfg.run_dir, model=model)
        if cfg.select_mae_within is not None:
            train_cfg = replace(train_cfg, select_mae_within=cfg.select_mae_within)
        layout = input_layout(model)
        if layout not in by_layout:  # read once for all seeds and models of a layout
            by_layout[layout] = study_datasets(train_cfg, cfg.cache_data)
        datasets, train_cfg = by_layout[layout][0], replace(train_cfg, **_loader(by_layout[layout]))
        runs += [
            run_study(
                cfg.selected(),
                replace(train_cfg, seed=seed),
                out,
                datasets=datasets,
                force=cfg.force,
                mosaiks=cfg.mosaiks,
            ).assign(seed=seed, **({"model": model} if len(models) > 1 else {}))
            for seed in cfg.seeds or (train_cfg.seed,)
        ]
    results = pd.concat(runs, ignore_index=True)
    present = set(results["name"])
    calibrated = [
        calibrated_rows(
            results, cfg.calibration_alphas, datasets["train"].labels, train_cfg, base=name
        )
        for name in cfg.calibrate
        if cfg.calibration_alphas and name in present
    ]
    results = pd.concat([results, *calibrated], ignore_index=True)
    table = results_table(results, out, baseline=cfg.baseline)
    per_bin_plot(results, out / "per_bin_mae.png")
    found = study_warnings(table)
    for message in found:
        warnings.warn(message, stacklevel=2)
    return StudyOutputs(
        results, table, out / "results.csv", out / "results.md", out / "per_bin_mae.png", found
    )


def study_warnings(table: pd.DataFrame) -> list[str]:
    """One message per problem of each row of a :func:`results_table` (what to raise)."""
    return [
        f"{method}: {advice}"
        for method, st, r2, v in zip(
            table["method"], table["steps"], table["R2"], table["val R2"], strict=True
        )
        for advice in run_problems(steps=st, test_r2=r2, val_r2=v).values()
    ]


def _loader(built: tuple[dict[str, Dataset], TrainConfig]) -> dict[str, Any]:
    """The loader setting :func:`study_datasets` chose (no workers for device caches)."""
    return {"num_workers": built[1].num_workers}
