"""The knobs of one training run (:class:`TrainConfig`) and ``python -m utils.train``'s
options, in a module without torch: ``--help`` answers before torch loads.

:mod:`utils.train` re-exports both; ``fit`` and the training loop live there.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from utils.paths import RunPaths, resolve

#: Where training crops and flips (``augment_on``) and the standardisation and one-hot
#: encoding (``prepare_on``) run: per sample in the loader, or per batch on the device.
WORK_ON: tuple[str, ...] = ("cpu", "device")


@dataclass
class TrainConfig:
    """Every knob of one training run (saved in its checkpoints).

    Attributes:
        run_dir: run folder; shards are read from ``RunPaths.of(run_dir).shards`` unless
            ``shards_dir`` is set, outputs go to ``RunPaths.of(run_dir).train/experiment``.
        shards_dir: another shards folder (None: the run's).
        experiment: name of this run's output folder.
        model: a name of :data:`utils.models.MODEL_NAMES`.
        channels: channel preset (``"s2"``, ``"rgb"``; ``"s2_nl"``, ``"rgb_nl"`` add night
            lights ``NL``) or band names.
        dw_mode: Dynamic World as ``"onehot"``, ``"channel"`` or ``"none"``.
        crop: crop side in px (int), share of the patch (float) or None (whole patch).
        augment: random flips / rot90 on the training split.
        augment_on: where the training split's random crops and flips are applied:
            ``"cpu"`` per sample in the loader (the default), ``"device"`` per batch on
            the training device after the copy (the loader reads whole patches;
            ``utils.batch_transforms.BatchCropFlip``, its draws from seed, epoch and
            rank). Validation takes the same centre crops either way.
        prepare_on: where the training split's items are standardised and Dynamic World
            one-hot encoded: ``"cpu"`` in the loader (the default), ``"device"`` per
            batch on the training device (after the batch crop with
            ``augment_on="device"``): the loader then sends the stored channels in the
            shards' dtype (``ShardDataset(raw=True)``: 25 channels instead of 33, half
            the bytes again for float16 shards). The same values either way, bit for bit.
        epochs, batch_size, lr, weight_decay: the usual.
        optimizer: ``"adamw"`` or ``"adam"``.
        lr_decay: learning rate factor per epoch (the original: 0.95).
        grad_clip: max gradient norm (None: no clipping).
        amp: mixed precision on GPU (ignored on CPU).
        early_stopping: stop after this many epochs without a better val b-MAE (0: off).
        select_mae_within: None keeps the epoch of lowest val b-MAE (the original's);
            a share ``x`` keeps the lowest val b-MAE among the epochs whose val MAE is
            within ``x`` (0.1 = 10 %) of the best val MAE (:mod:`utils.selection`).
        seed: seed of everything (weights, data order, augmentation).
        deterministic: deterministic algorithms (warn-only where none exists).
        num_workers: DataLoader workers.
        loss, loss_kwargs: name and options for :func:`loss.get_loss`.
        loss_lr: learning rate of a loss module's own parameters (None: ``lr``).
        bins, label_range, quantile_bins: balanced-MAE bins; ``label_range`` None takes
            the range of the training labels.
        dropout, pretrained_path: model options (see :func:`utils.models.build_model`).
        device: ``"auto"`` (GPU when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        resume: continue from ``last.pt`` of the experiment folder when it exists.
        progress, tensorboard: tqdm bars and TensorBoard events.
    """

    run_dir: str = "runs/demo"
    shards_dir: str | None = None
    experiment: str = "l2_baseline"
    model: str = "resnet18"
    channels: str | list[str] = "s2"
    dw_mode: str = "onehot"
    crop: int | float | None = None
    augment: bool = True
    augment_on: str = "cpu"
    prepare_on: str = "cpu"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adamw"
    lr_decay: float = 0.95
    weight_decay: float = 1e-4
    grad_clip: float | None = 5.0
    amp: bool = True
    early_stopping: int = 0
    select_mae_within: float | None = None
    seed: int = 0
    deterministic: bool = True
    num_workers: int = 0
    loss: str = "mse"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    loss_lr: float | None = None
    bins: int = 6
    label_range: tuple[float, float] | list[float] | None = None
    quantile_bins: bool = False
    dropout: float = 0.0
    pretrained_path: str | None = None
    device: str = "auto"
    resume: bool = False
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        for name in ("augment_on", "prepare_on"):
            if getattr(self, name) not in WORK_ON:
                raise ValueError(
                    f"unknown {name} {getattr(self, name)!r}; valid: {', '.join(WORK_ON)}"
                )

    def resolved_shards_dir(self) -> Path:
        """The shards folder of this run."""
        return resolve(self.shards_dir) if self.shards_dir else RunPaths.of(self.run_dir).shards

    def out_dir(self) -> Path:
        """``RunPaths.of(run_dir).train / experiment``."""
        return RunPaths.of(self.run_dir).train / self.experiment

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of the fields."""
        return json.loads(json.dumps(asdict(self)))


# --- command line --------------------------------------------------------------------------
def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


#: TrainConfig fields holding paths: typed at a shell, they are taken from its folder.
PATH_FIELDS = ("run_dir", "shards_dir", "pretrained_path")


def get_args_parser() -> argparse.ArgumentParser:
    """``python -m utils.train`` options: one ``--field VALUE`` per :class:`TrainConfig`
    field (values parsed as JSON when they are JSON: ``44``, ``null``, ``true``,
    ``'["B4_q1","B3_q1"]'``, ``'{"delta": 1.0}'``; plain text otherwise)."""
    from utils.cli import field_help, make_parser, shell_path  # noqa: PLC0415

    parser = make_parser(
        "utils.train", "Train a regressor on HDF5 shards (the CLI twin of main.ipynb's fit)."
    )
    helps = field_help(TrainConfig)
    for f in fields(TrainConfig):
        default = f.default if f.default is not MISSING else f.default_factory()
        kind = shell_path if f.name in PATH_FIELDS else _parse_value
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=kind,
            default=default,
            metavar=f.name.upper(),
            help=f"{helps.get(f.name, '')} ({f.type})",
        )
    parser.add_argument(
        "--no-test", action="store_true", help="skip the test-split evaluation after training"
    )
    return parser
