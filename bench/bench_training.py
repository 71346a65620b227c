"""Benchmark of the training input pipeline, measured side by side in one run.

1. Dataloader throughput: ``ShardDataset`` + DataLoader (training mode: random crop,
   flips, normalisation, Dynamic World one-hot) with 0 and N workers, against a bare
   h5py read of the same samples (one ``data[i]`` per sample, shards in order).
   Goal: ratio >= 0.8 with 2 workers.
2. Training step split: time waiting for the next batch vs forward/backward/step
   (``train_one_epoch`` timings), with ``TrainConfig.augment_on`` ``"cpu"`` (crops and
   flips per sample in the loader) and ``"device"`` (whole patches, ``BatchCropFlip`` on
   each batch on the training device, counted as compute) side by side, and the latter
   with ``prepare_on="device"`` (raw items, standardised and one-hot encoded there too).
   Goal on GPU: data wait < 10 % of the step.

Usage::

    python -m bench.bench_training                       # synthetic 48 px shards
    python -m bench.bench_training --shards runs/demo/shards --model resnet18

Without ``--shards`` it writes seeded synthetic shards (``tests/shards_factory.py``)
to a temporary folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import h5py
import torch

from utils import hdf5_schema as hs
from utils.batch_transforms import BatchCropFlip
from utils.dataloader import ShardDataset, make_loader
from utils.device import resolve_device
from utils.models import build_model
from utils.paths import project_root
from utils.train import train_one_epoch


def bare_h5py_read(shards: Path, split: str) -> tuple[int, float]:
    """Read every sample of ``split`` with plain h5py; return (samples, seconds)."""
    start, count = time.perf_counter(), 0
    for path in hs.split_files(shards, split):
        with h5py.File(path, "r") as f:
            data = f[hs.DATA]
            for i in range(data.shape[0]):
                data[i]
                count += 1
    return count, time.perf_counter() - start


def loader_read(dataset: ShardDataset, batch_size: int, workers: int) -> tuple[int, float]:
    """Iterate one shuffled epoch of ``dataset``; return (samples, seconds)."""
    loader = make_loader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    start, count = time.perf_counter(), 0
    for batch in loader:
        count += len(batch["label"])
    return count, time.perf_counter() - start


def synthetic_shards(folder: Path, n_train: int, size: int) -> Path:
    """Seeded synthetic shards from the test helper (documented test data writer)."""
    sys.path.insert(0, str(project_root() / "tests"))
    from shards_factory import write_tiny_shards  # noqa: PLC0415

    return write_tiny_shards(folder, sizes={"train": n_train, "val": 32}, size=size, shard_size=256)


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    from utils.cli import make_parser  # noqa: PLC0415

    parser = make_parser("bench.bench_training", __doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, help="shards folder (default: synthetic)")
    parser.add_argument("--n", type=int, default=1024, help="synthetic train samples")
    parser.add_argument("--size", type=int, default=48, help="synthetic patch size")
    parser.add_argument("--crop", type=int, default=44)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2, help="best of N timings")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run both measurements and print the ratios."""
    args = get_args_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or synthetic_shards(Path(tmp), args.n, args.size)
        dataset = ShardDataset(shards, "train", crop=args.crop, train=True, augment=True)
        print(f"{dataset}")
        bare = min(
            (bare_h5py_read(shards, "train") for _ in range(args.repeats)), key=lambda r: r[1]
        )
        bare_rate = bare[0] / bare[1]
        print(f"bare h5py read          : {bare_rate:8.0f} samples/s")
        for workers in sorted({0, args.workers}):
            n, sec = min(
                (loader_read(dataset, args.batch_size, workers) for _ in range(args.repeats)),
                key=lambda r: r[1],
            )
            print(
                f"ShardDataset {workers} workers  : {n / sec:8.0f} samples/s "
                f"-> ratio {n / sec / bare_rate:.2f} of bare h5py (goal >= 0.8 with 2)"
            )

        device = resolve_device(args.device)
        whole = ShardDataset(shards, "train", crop=None, train=True)
        raw = ShardDataset(shards, "train", crop=None, train=True, raw=True)
        options = (("cpu", dataset), ("device", whole), ("device, prepare_on device", raw))
        for augment_on, data in options:
            transform = None
            if augment_on != "cpu":
                prepare = data.batch_preparer() if data.raw else None
                transform = BatchCropFlip(args.crop, seed=0, prepare=prepare)
            stats = training_split(data, args, device, transform)
            step = stats["data_s"] + stats["compute_s"]
            print(
                f"training ({args.model}, {device}, {args.workers} workers, batch "
                f"{args.batch_size}, augment_on {augment_on}): data wait "
                f"{stats['data_s']:.2f} s, compute {stats['compute_s']:.2f} s -> data wait "
                f"{100 * stats['data_s'] / step:.1f} % of the step (goal < 10 % on GPU)"
            )


def training_split(
    dataset: ShardDataset,
    args: argparse.Namespace,
    device: torch.device,
    transform: BatchCropFlip | None,
) -> dict:
    """``train_one_epoch``'s timings of a second (warm) epoch over ``dataset``, the
    batches mapped by ``transform`` on ``device`` when given."""
    torch.manual_seed(0)
    model = build_model(args.model, dataset.num_channels).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = make_loader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
    )
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    loss = torch.nn.functional.mse_loss
    kwargs = {"device": device, "scaler": scaler, "amp": amp, "batch_transform": transform}
    train_one_epoch(model, loader, loss, optimizer, **kwargs)
    return train_one_epoch(model, loader, loss, optimizer, **kwargs)  # second epoch: warm


if __name__ == "__main__":
    main()
