"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is a dict of tensors and plain Python values only (model, optimizer,
GradScaler, scheduler and loss-module states, epoch, the RNG states of Python, NumPy,
torch and CUDA, the run config as a JSON-able dict, and free ``extra`` values such as
the history). It is written atomically and read with ``torch.load(weights_only=True)``,
so a file holding arbitrary pickled objects is refused instead of executed.
"""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.atomic import atomic_path

CHECKPOINT_VERSION = 1
#: ``torch.save`` writes a zip archive (since torch 1.6).
TORCH_MAGIC = b"PK\x03\x04"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely or lacks what is asked of it."""


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel / DataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


def rng_state() -> dict[str, Any]:
    """RNG states of Python, NumPy, torch (CPU) and CUDA as tensors and plain values."""
    version, py_state, gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "python": {
            "version": version,
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached": float(np_cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by :func:`rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    np_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002 (the legacy global RNG some code still uses)
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _json_safe(config: dict[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(config))
    except TypeError as err:
        raise CheckpointError(f"checkpoint config must be JSON-serialisable: {err}") from err


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    epoch: int,
    config: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
    scheduler: Any | None = None,
    loss_module: nn.Module | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically; return its path.

    Args:
        path: file to write (``best.pt``, ``last.pt``).
        model: the model (a DDP wrapper is unwrapped); its ``spec`` is stored when present.
        epoch: number of finished epochs.
        config: the run config as a JSON-able dict.
        optimizer, scaler, scheduler, loss_module: states to store when given.
        extra: further tensors/plain values (history, best metric, ...).
    """
    inner = unwrap(model)
    checkpoint: dict[str, Any] = {
        "version": CHECKPOINT_VERSION,
        "epoch": int(epoch),
        "model": inner.state_dict(),
        "model_spec": dict(getattr(inner, "spec", {})),
        "config": _json_safe(config),
        "rng": rng_state(),
        "extra": extra or {},
    }
    for key, obj in (
        ("optimizer", optimizer),
        ("scaler", scaler),
        ("scheduler", scheduler),
        ("loss", loss_module),
    ):
        if obj is not None:
            checkpoint[key] = obj.state_dict()
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        CheckpointError: when the file holds objects other than tensors and plain values
            (an arbitrary pickle is never executed) or is not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    _check_container(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing {path}: it holds objects other than tensors and plain values "
            f"(torch.load(weights_only=True) failed: {str(err).splitlines()[0]})"
        ) from err
    except (RuntimeError, EOFError, IndexError, OSError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"{path} is truncated or damaged ({path.stat().st_size} bytes; torch.load: "
            f"{(str(err).splitlines() or [type(err).__name__])[0]}); use another checkpoint "
            "(best.pt / last.pt) or train again"
        ) from err
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise CheckpointError(f"{path} is not a training checkpoint (no 'model' entry)")
    return checkpoint


def _check_container(path: Path) -> None:
    """Refuse an empty file, or one that is no ``torch.save`` zip archive."""
    with open(path, "rb") as handle:
        head = handle.read(len(TORCH_MAGIC))
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint (a copy cut short?)")
    if head != TORCH_MAGIC:
        raise CheckpointError(
            f"{path} is not a checkpoint: not a torch.save archive (it starts with {head!r})"
        )


def load_weights(model: nn.Module, checkpoint: dict[str, Any], path: str | Path) -> None:
    """``model.load_state_dict(checkpoint["model"])``, or a :class:`CheckpointError`
    naming the file and both model specs when the weights belong to another model."""
    try:
        unwrap(model).load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        stored = checkpoint.get("model_spec") or "no spec"
        wanted = dict(getattr(unwrap(model), "spec", {})) or type(unwrap(model)).__name__
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"{path} holds the weights of another model: checkpoint {stored} vs this run's "
            f"{wanted} ({first})"
        ) from err


def load_model_from_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint, in eval mode.

    Returns:
        The model (on ``map_location``) and the run config stored with it (its
        ``band_names``, ``channels``, ``dw_mode``, ``crop``, ... rebuild the inputs).
    """
    from utils.models import build_model  # noqa: PLC0415 (torchvision loads only when a model is built)

    checkpoint = load_checkpoint(path, map_location)
    spec = checkpoint.get("model_spec") or {}
    if "name" not in spec:
        raise CheckpointError(f"{path} has no model spec; it was not written by save_checkpoint")
    model = build_model(spec["name"], spec["in_channels"], dropout=spec.get("dropout", 0.0))
    load_weights(model, checkpoint, path)
    model.to(map_location).eval()
    return model, checkpoint["config"]
