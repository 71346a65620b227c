"""Training loop: ``fit`` trains one regressor on the HDF5 shards and keeps the best
checkpoint by validation balanced MAE (docs/design.md).

Adam/AdamW, an exponential learning-rate decay per epoch (x0.95 in the original study),
AMP with GradScaler on GPU, gradient clipping, random crops and flips per sample in the
loader or per batch on the training device (``augment_on``), per-sample loss weights and
samplers, per-epoch train/val loss and every metric of :func:`metrics.regression_report`,
``best.pt`` / ``last.pt`` checkpoints, resume with identical results, early stopping,
tqdm bars, ``history.csv`` and TensorBoard logs, one seed. CPU or GPU is picked
automatically. Under ``torchrun`` (``WORLD_SIZE`` > 1) the same ``fit`` trains with
DistributedDataParallel: every rank draws its share of the training data
(``DistributedSampler``, or ``DistributedWeightedSampler`` when resampling weights are
given) and its own batch crops and flips, validation runs in full on every rank, rank 0
writes the files.

Notebook: ``fit(TrainConfig(...))``; command line: ``python -m utils.train --help``
(the same fields), or ``torchrun --nproc_per_node 2 -m utils.train ...``.
"""

from __future__ import annotations

if __name__ == "__main__":  # parse first: --help and bad options answer before torch loads
    from utils.train_config import get_args_parser

    get_args_parser().parse_args()

import csv
import inspect
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from metrics import regression_report, scalar_metrics
from utils.atomic import atomic_path
from utils.batch_transforms import BatchCropFlip
from utils.checkpoint import (
    load_checkpoint,
    load_weights,
    save_checkpoint,
    set_rng_state,
    unwrap,
)
from utils.dataloader import ShardDataset, build_datasets, crop_size, make_loader
from utils.device import resolve_device
from utils.inference import evaluate_checkpoint
from utils.models import build_model
from utils.ownership import guard_output
from utils.quiet import quiet_tensorflow
from utils.selection import run_problems, select_epoch
from utils.train_config import PATH_FIELDS, TrainConfig, get_args_parser

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}
BEST_FILE, LAST_FILE, HISTORY_FILE, TB_DIR = "best.pt", "last.pt", "history.csv", "tensorboard"
TRAIN_STAGE = "training"  # the owner of a training run folder (utils.ownership)
TRAIN_MARKERS = (LAST_FILE, HISTORY_FILE)  # a folder an earlier version trained in
#: Metric that picks the best checkpoint and drives early stopping (lower is better).
SELECTION_METRIC = "val_bmae"


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        history: one dict per epoch (``epoch``, ``lr``, ``train_loss``, ``val_loss``,
            ``train_*`` / ``val_*`` metrics, timings ``data_s``/``compute_s``/``epoch_s``).
            ``train_*`` metrics score the predictions made while training (train mode,
            augmented inputs; under torchrun those of rank 0's share); ``train_loss`` is
            averaged over all ranks.
        best: the history row of the best epoch (lowest val b-MAE).
        best_checkpoint, last_checkpoint, history_csv, out_dir: files written.
        stopped_early: whether early stopping ended the run.
    """

    history: list[dict[str, float]]
    best: dict[str, float]
    best_checkpoint: Path
    last_checkpoint: Path
    history_csv: Path
    out_dir: Path
    stopped_early: bool = False


# --- seeds, distributed ------------------------------------------------------------
def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; optionally ask for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (third-party code may still use the global RNG)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


@dataclass(frozen=True)
class DistInfo:
    """Rank and world size of this process (1 process without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> tuple[DistInfo, bool]:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (NCCL on GPU, gloo on CPU).

    Returns:
        The rank info and whether this call created the process group.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), False
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if dist.is_initialized():
        return info, False
    use_cuda = resolve_device(device, info.local_rank).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info, True


def _all_reduce_sum(values: Sequence[float], info: DistInfo, device: torch.device) -> list[float]:
    if not info.enabled:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


# --- one epoch -----------------------------------------------------------------------------
def _call_loss(loss_fn: Callable, pred: torch.Tensor, target: torch.Tensor, weights=None):
    if weights is None:
        return loss_fn(pred, target)
    return loss_fn(pred, target, weights=weights)


def _takes_labels(model: nn.Module) -> bool:
    """Whether the model's forward takes ``labels`` (feature smoothing wrappers do)."""
    return "labels" in inspect.signature(unwrap(model).forward).parameters


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: Callable,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
    grad_clip: float | None = None,
    sample_weights: np.ndarray | None = None,
    clip_params: Sequence[nn.Parameter] | None = None,
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
    desc: str = "train",
) -> dict[str, Any]:
    """One pass over ``loader``; returns the mean loss, predictions, labels and timings.

    ``sample_weights[batch["index"]]`` are passed to the loss as ``weights`` when given.
    A model whose ``forward`` takes ``labels`` (e.g. ``loss.fds.FDSModel``) gets them.
    ``batch_transform`` (e.g. :class:`utils.batch_transforms.BatchCropFlip`) maps each
    batch of images on ``device`` before the forward pass; its time counts as compute.

    Returns:
        ``loss`` (sample mean), ``n``, ``pred``/``target`` (NumPy), ``data_s`` (time spent
        waiting for batches), ``compute_s`` (forward/backward/step, device-synchronised).
    """
    model.train()
    with_labels = _takes_labels(model)
    params = list(clip_params) if clip_params is not None else list(model.parameters())
    weights_all = None if sample_weights is None else torch.as_tensor(sample_weights).float()
    total, count, data_s, compute_s = 0.0, 0, 0.0, 0.0
    preds, targets = [], []
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress)
    iterator = iter(bar)
    while True:
        tick = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            break
        tock = time.perf_counter()
        data_s += tock - tick
        x = batch["image"].to(device, non_blocking=True)
        if batch_transform is not None:
            x = batch_transform(x)
        y = batch["label"].to(device, non_blocking=True)
        w = None if weights_all is None else weights_all[batch["index"]].to(device)
        with torch.autocast(device.type, enabled=amp):
            pred = model(x, labels=y) if with_labels else model(x)
        loss = _call_loss(loss_fn, pred.float(), y, w)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} ({desc})")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(params, grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        compute_s += time.perf_counter() - tock
        total += loss.item() * len(y)
        count += len(y)
        preds.append(pred.detach().float().cpu())
        targets.append(y.detach().cpu())
        bar.set_postfix(loss=f"{total / count:.4f}")
    if count == 0:
        raise ValueError(f"{desc}: the loader yielded no batch")
    return {
        "loss": total / count,
        "n": count,
        "pred": torch.cat(preds).numpy(),
        "target": torch.cat(targets).numpy(),
        "data_s": data_s,
        "compute_s": compute_s,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: Callable | None = None,
    *,
    device: torch.device,
    amp: bool = False,
    train_labels: np.ndarray | None = None,
    bins: int = 6,
    label_range: Sequence[float] | None = None,
    quantile_bins: bool = False,
    progress: bool = False,
    desc: str = "val",
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Predict ``loader`` without gradients; return (report, predictions, labels).

    The report is :func:`metrics.regression_report` plus ``loss`` (unweighted) when a
    loss is given. ``label_range`` None derives the bins from ``train_labels``.
    """
    model.eval()
    preds, targets = [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        x = batch["image"].to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=amp):
            preds.append(model(x).float().cpu())
        targets.append(batch["label"].float())
    pred, target = torch.cat(preds), torch.cat(targets)
    report = regression_report(
        pred.numpy(),
        target.numpy(),
        train_labels=train_labels,
        bins=bins,
        value_range=tuple(label_range) if label_range is not None else None,
        quantile=quantile_bins,
    )
    if loss_fn is not None:
        report["loss"] = float(_call_loss(loss_fn, pred.to(device), target.to(device)).item())
    return report, pred.numpy(), target.numpy()


# --- helpers of fit ------------------------------------------------------------------------
def _resolve_loss(cfg: TrainConfig, loss: Callable | nn.Module | None) -> Callable:
    if loss is not None:
        return loss
    from loss import get_loss  # noqa: PLC0415 (loss/ imports nothing from here)

    return get_loss(cfg.loss, **cfg.loss_kwargs)


def build_optimizer(
    cfg: TrainConfig, model: nn.Module, loss_module: nn.Module | None = None
) -> torch.optim.Optimizer:
    """Adam/AdamW over the model; a loss module's parameters (BMC's noise sigma) form
    their own group (learning rate ``loss_lr`` or ``lr``, no weight decay)."""
    key = cfg.optimizer.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; valid: {sorted(OPTIMIZERS)}")
    groups: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    extra = [p for p in (loss_module.parameters() if loss_module else []) if p.requires_grad]
    if extra:
        groups.append({"params": extra, "lr": cfg.loss_lr or cfg.lr, "weight_decay": 0.0})
    return OPTIMIZERS[key](groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _reseed_sampler(sampler: Any, seed: int, epoch: int) -> None:
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    generator = getattr(sampler, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(seed * 1_000_003 + epoch)


def _train_sampler(
    cfg: TrainConfig,
    train_ds: ShardDataset,
    info: DistInfo,
    sampler: Sampler | None,
    sampler_weights: np.ndarray | None,
) -> Sampler | None:
    if sampler is not None and sampler_weights is not None:
        raise ValueError("give either sampler or sampler_weights, not both")
    if sampler_weights is not None:
        from utils.samplers import DistributedWeightedSampler, weighted_sampler  # noqa: PLC0415

        if len(sampler_weights) != len(train_ds):
            raise ValueError(
                f"sampler_weights has {len(sampler_weights)} values for {len(train_ds)} "
                "training samples"
            )
        if info.enabled:
            return DistributedWeightedSampler(
                sampler_weights, info.world_size, info.rank, seed=cfg.seed
            )
        return weighted_sampler(sampler_weights, generator=torch.Generator())
    if info.enabled and sampler is None:
        return DistributedSampler(train_ds, info.world_size, info.rank, shuffle=True, seed=cfg.seed)
    return sampler


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def _stored_config(cfg: TrainConfig, train_ds: ShardDataset, model: nn.Module) -> dict:
    on_device = cfg.augment_on == "device"  # whole patches in, the batches cropped
    return {
        **cfg.to_dict(),
        "shards_dir": str(cfg.resolved_shards_dir()),
        "band_names": list(train_ds.band_names),
        "patch": train_ds.patch,
        "crop_px": crop_size(cfg.crop, train_ds.patch) if on_device else train_ds.crop,
        "model_spec": dict(getattr(unwrap(model), "spec", {})),
    }


def _check_resumable(stored: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    free = {"epochs", "resume", "progress", "num_workers", "early_stopping", "tensorboard"}
    free.add("prepare_on")  # the same values either way
    now = cfg.to_dict()
    changed = sorted(
        k
        for k in now
        if k not in free and k in stored and stored[k] != now[k] and k != "shards_dir"
    )
    if changed:
        raise ValueError(
            f"cannot resume from {path}: config differs in {changed}; "
            "use another experiment name or resume=False"
        )


def _keep_candidates(
    out: Path, epoch: int, candidates: set[int], restore: int | None, state: dict[str, Any]
) -> None:
    """Checkpoints of the epochs :func:`select_epoch` may still choose
    (``candidate_e<N>.pt``); ``restore``: the earlier one that becomes ``best.pt``."""
    if epoch in candidates:
        save_checkpoint(out / f"candidate_e{epoch}.pt", epoch=epoch, **state)
    if restore is not None:
        with atomic_path(out / BEST_FILE) as tmp:
            tmp.write_bytes((out / f"candidate_e{restore}.pt").read_bytes())
    for path in out.glob("candidate_e*.pt"):
        if int(path.stem.removeprefix("candidate_e")) not in candidates:
            path.unlink()


# --- fit -----------------------------------------------------------------------------------
def fit(
    cfg: TrainConfig,
    *,
    loss: Callable | nn.Module | None = None,
    sample_weights: np.ndarray | None = None,
    sampler: Sampler | None = None,
    sampler_weights: np.ndarray | None = None,
    model: nn.Module | None = None,
    datasets: dict[str, ShardDataset] | None = None,
    out_dir: str | Path | None = None,
) -> FitResult:
    """Train ``cfg.model`` on the train split, validate each epoch, keep the best.

    Args:
        cfg: the run's configuration.
        loss: a loss ``(pred, target, weights=None) -> Tensor`` (function or module);
            None resolves ``cfg.loss`` through :func:`loss.get_loss`.
        sample_weights: per-sample loss weights aligned with the train dataset's
            ``index`` (e.g. ``loss.weights.sample_weights(train.labels, ...)``).
        sampler: a training sampler (single process); re-seeded per epoch through its
            ``generator``/``set_epoch`` so that resumed runs draw the same batches.
        sampler_weights: weights for weighted resampling: ``utils.samplers.weighted_sampler``
            on one process, ``DistributedWeightedSampler`` under torchrun.
        model: a ready model (e.g. an FDS wrapper); default ``build_model(cfg.model, ...)``.
        datasets: ``{"train": ..., "val": ...}`` to use instead of building them from cfg.
        out_dir: output folder (default ``cfg.out_dir()``).

    Returns:
        A :class:`FitResult`.
    """
    info, own_group = init_distributed(cfg.device)
    out = Path(out_dir) if out_dir is not None else cfg.out_dir()
    try:
        with guard_output(out, TRAIN_STAGE, enabled=info.is_main, markers=TRAIN_MARKERS):
            return _fit(
                cfg, info, loss, sample_weights, sampler, sampler_weights, model, datasets, out
            )
    finally:
        if own_group:
            dist.destroy_process_group()


@dataclass
class _Parts:
    """What one run trains with: the model (wrapped for torchrun once resumed), the loss
    (and its module when it has parameters), optimizer, scheduler, AMP scaler."""

    model: nn.Module
    loss_fn: Callable
    loss_module: nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp: bool
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass
class _RunState:
    """Where a run stands: the epochs run, the kept row, epochs since it was kept."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_row: dict[str, float] = field(default_factory=dict)
    best_bmae: float = math.inf
    stale: int = 0
    start_epoch: int = 0

    def add(self, row: dict[str, float], select_mae_within: float | None) -> tuple[set, bool]:
        """Append epoch ``row`` and choose the kept epoch (:func:`select_epoch`).

        Returns:
            The candidate epochs still choosable, and whether the kept epoch moved back
            to an earlier candidate (its checkpoint becomes ``best.pt``).
        """
        epoch = int(row["epoch"])
        self.history.append(row)
        chosen, candidates = select_epoch(self.history, select_mae_within)
        moved = chosen != epoch and chosen != self.best_row.get("epoch")
        self.best_row = dict(next(r for r in self.history if r["epoch"] == chosen))
        self.best_bmae, self.stale = self.best_row[SELECTION_METRIC], epoch - chosen
        return candidates, moved

    def extra(self, val_report: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint's ``extra``: what a resumed run continues from."""
        return {
            "history": self.history,
            "best": self.best_row,
            "best_bmae": self.best_bmae,
            "stale": self.stale,
            "val_report": val_report,
        }


def _train_val_datasets(
    cfg: TrainConfig,
    datasets: dict[str, ShardDataset] | None,
    sample_weights: np.ndarray | None,
) -> tuple[ShardDataset, ShardDataset]:
    """The train and validation datasets (given, or built from ``cfg``); ``sample_weights``
    must have one value per training sample."""
    datasets = datasets or build_datasets(cfg, ("train", "val"))
    train_ds, val_ds = datasets["train"], datasets["val"]
    if sample_weights is not None and len(sample_weights) != len(train_ds):
        raise ValueError(
            f"sample_weights has {len(sample_weights)} values for {len(train_ds)} train samples"
        )
    return train_ds, val_ds


def _loaders(
    cfg: TrainConfig,
    train_ds: ShardDataset,
    val_ds: ShardDataset,
    info: DistInfo,
    device: torch.device,
    sampler: Sampler | None,
    sampler_weights: np.ndarray | None,
) -> tuple[DataLoader, DataLoader]:
    """The train loader (shuffled, or drawn by the run's sampler) and the validation one."""
    train_sampler = _train_sampler(cfg, train_ds, info, sampler, sampler_weights)
    # items already kept on a device (utils.study.study.MemoryCachedDataset) are not pinned
    pin = device.type == "cuda" and getattr(train_ds, "device", None) is None
    train_loader = make_loader(
        train_ds,
        batch_size=cfg.batch_size,
        shuffle=train_sampler is None,
        sampler=train_sampler,
        num_workers=cfg.num_workers,
        seed=cfg.seed,
        pin_memory=pin,
    )
    val_loader = make_loader(
        val_ds,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        seed=cfg.seed,
        pin_memory=pin,
    )
    return train_loader, val_loader


def _build_parts(
    cfg: TrainConfig,
    model: nn.Module | None,
    loss: Callable | nn.Module | None,
    train_ds: ShardDataset,
    device: torch.device,
) -> _Parts:
    """The model (``cfg.model`` from seeded weights unless one is given), loss, optimizer,
    scheduler and scaler, on ``device``."""
    if model is None:
        torch.manual_seed(cfg.seed)  # the initial weights of utils.study.study's runs, too
        model = build_model(
            cfg.model,
            train_ds.num_channels,
            pretrained_path=cfg.pretrained_path,
            dropout=cfg.dropout,
            band_names=train_ds.band_names,
        )
    model.to(device)
    loss_fn = _resolve_loss(cfg, loss)
    loss_module = loss_fn if isinstance(loss_fn, nn.Module) else None
    if loss_module is not None:
        loss_module.to(device)
    optimizer = build_optimizer(cfg, model, loss_module)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_decay)
    amp = bool(cfg.amp and device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    transform = _batch_transform(cfg, train_ds)
    return _Parts(model, loss_fn, loss_module, optimizer, scheduler, scaler, amp, transform)


def _batch_transform(
    cfg: TrainConfig, train_ds: ShardDataset
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What the training step applies to each batch on the device: with
    ``cfg.augment_on == "device"`` the random crops (``cfg.crop``) and flips
    (``cfg.augment``), reseeded every epoch (:func:`augment_seed`); with a raw train
    dataset (``prepare_on="device"``) its
    :meth:`~utils.dataloader.ShardDataset.batch_preparer` (after the crop); None when
    the loader does both per sample.

    Raises:
        ValueError: for ``augment_on="device"`` and a train dataset that crops or
            augments its items itself.
    """
    prepare = train_ds.batch_preparer() if getattr(train_ds, "raw", False) else None
    if cfg.augment_on != "device":
        return prepare
    if train_ds.crop < train_ds.patch or getattr(train_ds, "augment", False):
        raise ValueError(
            "augment_on='device' crops and flips the training batches: the train dataset "
            f"must return whole patches without augmentation (crop=None, augment=False), "
            f"got {train_ds!r} with augment={getattr(train_ds, 'augment', False)}"
        )
    return BatchCropFlip(cfg.crop, augment=cfg.augment, seed=cfg.seed, prepare=prepare)


def augment_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of the batch crops and flips of one epoch on one rank: from the run's seed,
    the 0-based epoch and the rank alone (so a resumed run draws what an uninterrupted
    one does, and every torchrun rank draws its own), mixed by NumPy's ``SeedSequence``
    so that it shares no stream with the loader's shuffling (``seed * 1_000_003 + epoch``)."""
    entropy = (seed % 2**64, epoch, rank, 0xC409)  # the last: this use's own stream
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def _resume(
    cfg: TrainConfig, parts: _Parts, last_path: Path, device: torch.device, info: DistInfo
) -> _RunState:
    """With ``cfg.resume`` and a ``last.pt``: its weights, optimizer, scheduler, scaler,
    loss state and RNG state restored; returns the progress to continue from (a fresh
    one otherwise)."""
    if not (cfg.resume and last_path.is_file()):
        return _RunState()
    ckpt = load_checkpoint(last_path, map_location=device)
    _check_resumable(ckpt["config"], cfg, last_path)
    load_weights(parts.model, ckpt, last_path)
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    parts.scheduler.load_state_dict(ckpt["scheduler"])
    if "scaler" in ckpt:
        parts.scaler.load_state_dict(ckpt["scaler"])
    if parts.loss_module is not None and "loss" in ckpt:
        parts.loss_module.load_state_dict(ckpt["loss"])
    extra = ckpt["extra"]
    progress = _RunState(
        history=list(extra["history"]),
        best_row=dict(extra["best"]),
        best_bmae=float(extra["best_bmae"]),
        stale=int(extra["stale"]),
        start_epoch=int(ckpt["epoch"]),
    )
    set_rng_state(ckpt["rng"])
    if info.is_main:
        print(f"resumed {last_path} after epoch {progress.start_epoch}")
    return progress


def _distribute(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel under torchrun, else itself."""
    if not info.enabled:
        return model
    ids = [info.local_rank] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _open_outputs(cfg: TrainConfig, out: Path, info: DistInfo) -> Any:
    """Create the run folder (rank 0); the TensorBoard writer when ``cfg.tensorboard``."""
    if not info.is_main:
        return None
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.tensorboard:
        return None
    quiet_tensorflow()  # TensorBoard imports TensorFlow when it is installed
    from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 (slow import)

    return SummaryWriter(str(out / TB_DIR))


def _train_and_validate(
    cfg: TrainConfig,
    epoch: int,
    parts: _Parts,
    loaders: tuple[DataLoader, DataLoader],
    *,
    device: torch.device,
    info: DistInfo,
    sample_weights: np.ndarray | None,
    clip_params: list[torch.Tensor],
    progress: bool,
    metric_kwargs: dict[str, Any],
) -> tuple[dict[str, float], dict[str, Any]]:
    """One epoch (0-based ``epoch``): reseed its draws from the seed alone, train, step the
    scheduler, validate.

    Returns:
        The history row of the epoch and the validation report.
    """
    train_loader, val_loader = loaders
    model = parts.model
    t0 = time.perf_counter()
    train_loader.generator.manual_seed(cfg.seed * 1_000_003 + epoch)
    # in-process draws (augmentation without workers, dropout) per epoch from the seed
    # alone, whatever ran before (a study's model building, another data path)
    torch.manual_seed(cfg.seed * 1_000_003 + epoch)
    _reseed_sampler(train_loader.sampler, cfg.seed, epoch)
    if isinstance(parts.batch_transform, BatchCropFlip):
        parts.batch_transform.reseed(augment_seed(cfg.seed, epoch, info.rank))
    lr = parts.optimizer.param_groups[0]["lr"]
    train = train_one_epoch(
        model,
        train_loader,
        parts.loss_fn,
        parts.optimizer,
        device=device,
        scaler=parts.scaler,
        amp=parts.amp,
        grad_clip=cfg.grad_clip,
        sample_weights=sample_weights,
        clip_params=clip_params,
        batch_transform=parts.batch_transform,
        progress=progress,
        desc=f"epoch {epoch + 1} train",
    )
    if hasattr(unwrap(model), "end_epoch"):
        unwrap(model).end_epoch(epoch)
    parts.scheduler.step()
    loss_sum, n = _all_reduce_sum([train["loss"] * train["n"], train["n"]], info, device)
    train_report = regression_report(
        train["pred"],
        train["target"],
        train_labels=metric_kwargs["train_labels"],
        bins=cfg.bins,
        value_range=tuple(cfg.label_range) if cfg.label_range else None,
        quantile=cfg.quantile_bins,
    )
    val_report, _, _ = evaluate(
        unwrap(model),
        val_loader,
        parts.loss_fn,
        device=device,
        amp=parts.amp,
        progress=progress,
        desc=f"epoch {epoch + 1} val",
        **metric_kwargs,
    )
    row = {
        "epoch": epoch + 1,
        "lr": lr,
        "train_loss": loss_sum / n,
        "val_loss": val_report["loss"],
    }
    row.update({f"train_{k}": v for k, v in scalar_metrics(train_report).items()})
    row.update({f"val_{k}": v for k, v in scalar_metrics(val_report).items()})
    row.update(
        {
            "data_s": train["data_s"],
            "compute_s": train["compute_s"],
            "epoch_s": time.perf_counter() - t0,
        }
    )
    return row, val_report


def _save_epoch(
    out: Path,
    cfg: TrainConfig,
    parts: _Parts,
    stored_config: dict,
    run: _RunState,
    val_report: dict[str, Any],
    candidates: set[int],
    moved: bool,
    writer: Any,
) -> None:
    """Rank 0's files after an epoch: ``best.pt`` when it is the kept one, the selection's
    candidates, ``last.pt``, ``history.csv`` and the TensorBoard scalars."""
    row = run.history[-1]
    epoch, chosen = int(row["epoch"]), int(run.best_row["epoch"])
    state = {
        "model": parts.model,
        "config": stored_config,
        "optimizer": parts.optimizer,
        "scaler": parts.scaler,
        "scheduler": parts.scheduler,
        "loss_module": parts.loss_module,
        "extra": run.extra(val_report),
    }
    if chosen == epoch:
        save_checkpoint(out / BEST_FILE, epoch=epoch, **state)
    if cfg.select_mae_within is not None:
        _keep_candidates(out, epoch, candidates, chosen if moved else None, state)
    save_checkpoint(out / LAST_FILE, epoch=epoch, **state)
    _write_history(out / HISTORY_FILE, run.history)
    if writer is not None:
        for key, value in row.items():
            if key != "epoch" and np.isfinite(value):
                writer.add_scalar(key.replace("_", "/", 1), value, epoch)
        writer.flush()


def _agree_to_stop(stop: bool, info: DistInfo, device: torch.device) -> bool:
    """Rank 0's early-stopping decision, shared with every rank under torchrun."""
    if not info.enabled:
        return stop
    flag = torch.tensor([int(stop)], device=device)
    dist.broadcast(flag, src=0)
    stop = bool(flag.item())
    dist.barrier()
    return stop


def _fit(
    cfg: TrainConfig,
    info: DistInfo,
    loss: Callable | nn.Module | None,
    sample_weights: np.ndarray | None,
    sampler: Sampler | None,
    sampler_weights: np.ndarray | None,
    model: nn.Module | None,
    datasets: dict[str, ShardDataset] | None,
    out_dir: str | Path | None,
) -> FitResult:
    """:func:`fit` inside its output guard: set up, resume, then train epoch by epoch."""
    device = resolve_device(cfg.device, info.local_rank)
    seed_everything(cfg.seed, cfg.deterministic)
    out = Path(out_dir) if out_dir is not None else cfg.out_dir()
    train_ds, val_ds = _train_val_datasets(cfg, datasets, sample_weights)
    loaders = _loaders(cfg, train_ds, val_ds, info, device, sampler, sampler_weights)
    parts = _build_parts(cfg, model, loss, train_ds, device)
    stored_config = _stored_config(cfg, train_ds, parts.model)
    run = _resume(cfg, parts, out / LAST_FILE, device, info)
    clip_params = [p for g in parts.optimizer.param_groups for p in g["params"]]
    parts.model = _distribute(parts.model, info, device)
    writer = _open_outputs(cfg, out, info)
    metric_kwargs = {
        "train_labels": train_ds.labels,
        "bins": cfg.bins,
        "label_range": cfg.label_range,
        "quantile_bins": cfg.quantile_bins,
    }
    stopped = False
    progress = cfg.progress and info.is_main
    epochs = tqdm(
        range(run.start_epoch, cfg.epochs),
        desc=cfg.experiment,
        disable=not progress,
        initial=run.start_epoch,
        total=cfg.epochs,
    )
    for epoch in epochs:
        row, val_report = _train_and_validate(
            cfg,
            epoch,
            parts,
            loaders,
            device=device,
            info=info,
            sample_weights=sample_weights,
            clip_params=clip_params,
            progress=progress,
            metric_kwargs=metric_kwargs,
        )
        candidates, moved = run.add(row, cfg.select_mae_within)
        stop = bool(cfg.early_stopping and run.stale >= cfg.early_stopping)
        if info.is_main:
            _save_epoch(out, cfg, parts, stored_config, run, val_report, candidates, moved, writer)
            epochs.set_postfix(train=f"{row['train_loss']:.4f}", val_bmae=f"{row['val_bmae']:.4f}")
        if _agree_to_stop(stop, info, device):
            stopped = True
            if info.is_main:
                print(
                    f"early stopping after epoch {epoch + 1}: no better val b-MAE for "
                    f"{cfg.early_stopping} epochs (best {run.best_bmae:.4f})"
                )
            break
    if writer is not None:
        writer.close()
    steps = len(run.history) * len(loaders[0])
    if info.is_main and (too_few := run_problems(steps=steps, test_r2=math.nan)):
        warnings.warn(f"{cfg.experiment}: {', '.join(too_few.values())}", stacklevel=3)
    return FitResult(
        run.history,
        run.best_row,
        out / BEST_FILE,
        out / LAST_FILE,
        out / HISTORY_FILE,
        out,
        stopped,
    )


# --- command line --------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> FitResult:
    """Entry point: parse options, :func:`fit`, then evaluate the best model on test."""
    args = vars(get_args_parser().parse_args(argv))
    args.update({k: str(args[k]) for k in PATH_FIELDS if args.get(k) is not None})
    skip_test = args.pop("no_test")
    cfg = TrainConfig(**args)
    result = fit(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return result
    best = result.best
    print(
        f"best epoch {int(best['epoch'])}: val b-MAE {best['val_bmae']:.4f}, "
        f"MAE {best['val_mae']:.4f}, R2 {best['val_r2']:.3f}; files in {result.out_dir}"
    )
    test_dir = cfg.resolved_shards_dir() / "test"
    if not skip_test and any(test_dir.glob("test_*.h5")):
        _, report = evaluate_checkpoint(result.best_checkpoint, split="test", device=cfg.device)
        print(f"test: b-MAE {report['bmae']:.4f}, MAE {report['mae']:.4f}, R2 {report['r2']:.3f}")
    return result


if __name__ == "__main__":
    main()
