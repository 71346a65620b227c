"""Batched, gradient-free prediction over a loader, and the predictions CSV.

:func:`predict` returns one row per sample (cell id and key, latitude, longitude, year,
label, prediction); :func:`evaluate_checkpoint` rebuilds a trained model and the inputs
it was trained on from its checkpoint, predicts a split, writes
``predictions_<split>.csv`` and ``metrics_<split>.json`` beside the checkpoint and
returns the table with the metric report. ``python -m utils.inference predict ...`` maps
places without labels (:mod:`utils.maps.maps`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from metrics import regression_report
from utils.atomic import atomic_open, atomic_path
from utils.checkpoint import load_model_from_checkpoint
from utils.dataloader import ShardDataset, input_layout, make_loader
from utils.device import resolve_device

PREDICTION_COLUMNS: tuple[str, ...] = (
    "cell_id",
    "cell_key",
    "latitude",
    "longitude",
    "year",
    "label",
    "prediction",
)


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: DataLoader,
    *,
    device: torch.device | str = "cpu",
    amp: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Predict every batch of ``loader`` (model in eval mode, no gradients).

    Returns:
        A DataFrame with :data:`PREDICTION_COLUMNS` (plus ``index``), in loader order.
    """
    device = torch.device(device)
    model.eval().to(device)
    rows: dict[str, list] = {c: [] for c in (*PREDICTION_COLUMNS, "index")}
    for batch in tqdm(loader, desc="predict", leave=False, disable=not progress):
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            pred = model(batch["image"].to(device)).float().cpu()
        rows["prediction"] += pred.tolist()
        rows["label"] += batch["label"].float().tolist()
        for key in ("cell_id", "cell_key"):
            rows[key] += list(batch[key])
        for key in ("latitude", "longitude", "year", "index"):
            rows[key] += torch.as_tensor(batch[key]).tolist()
    return pd.DataFrame(rows)


def write_predictions(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a predictions table as CSV, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        table.to_csv(handle, index=False)
    return path


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    split: str = "test",
    shards_dir: str | Path | None = None,
    batch_size: int | None = None,
    num_workers: int = 0,
    device: str = "auto",
    out_dir: str | Path | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Predict ``split`` with the model of ``checkpoint`` and score it.

    Inputs are rebuilt from the stored config (channels, Dynamic World mode, centre crop,
    normalisation of the shards' ``stats.json``); bins and shot counts use the train
    labels, as during training.

    Returns:
        The predictions table and :func:`metrics.regression_report` of it (both also
        written to ``out_dir``, default the checkpoint's folder).
    """
    dev = resolve_device(device)
    model, cfg = load_model_from_checkpoint(checkpoint, map_location=dev)
    shards = Path(shards_dir) if shards_dir is not None else Path(cfg["shards_dir"])
    kwargs = {
        "channels": cfg["channels"],
        "crop": cfg["crop"],
        "dw_mode": cfg["dw_mode"],
        "layout": input_layout(str(cfg.get("model", ""))),
    }
    dataset = ShardDataset(shards, split, train=False, **kwargs)
    if list(dataset.band_names) != list(cfg["band_names"]):
        raise ValueError(
            f"{shards} gives bands {dataset.band_names}; the model takes {cfg['band_names']}"
        )
    loader = make_loader(
        dataset, batch_size=batch_size or cfg["batch_size"], num_workers=num_workers
    )
    table = predict(model, loader, device=dev, amp=bool(cfg.get("amp")))
    train_labels = ShardDataset(shards, "train", **kwargs).labels
    label_range = cfg.get("label_range")
    report = regression_report(
        table["prediction"].to_numpy(np.float64),
        table["label"].to_numpy(np.float64),
        train_labels=train_labels,
        bins=cfg.get("bins", 6),
        value_range=tuple(label_range) if label_range else None,
        quantile=bool(cfg.get("quantile_bins")),
    )
    out = Path(out_dir) if out_dir is not None else Path(checkpoint).parent
    write_predictions(table, out / f"predictions_{split}.csv")
    with atomic_open(out / f"metrics_{split}.json") as handle:
        json.dump(report, handle, indent=2, allow_nan=True)
    return table, report


def main(argv: list[str] | None = None) -> None:
    """``python -m utils.inference predict --checkpoint CKPT --shards DIR --split predict
    --out DIR``: places with conformal intervals as map files (:mod:`utils.maps.maps`)."""
    # the map code (shapely, rasterio) loads only for this command
    from utils.maps.maps import main as predict_main  # noqa: PLC0415

    predict_main(argv)


if __name__ == "__main__":
    main()
