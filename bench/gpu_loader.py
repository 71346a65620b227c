"""Training-input check on one GPU: a model at ``--crop`` px with AMP, fed from shards
through the loader with every core, data-wait share of the step, and the device-cached
path beside it (issue 21 item 5; run by ``bench/gpu_loader.sh``).

    python -m bench.gpu_loader SHARDS [--model resnet50] [--crop 224] [--batch 128]
        [--workers N] [--steps 60] [--warmup 10] [--batch-transform] [--prepare-on-device]

* **loader**: ``ShardDataset`` -> ``DataLoader`` (``num_workers``, pinned memory,
  persistent workers, prefetch) -> ``.to(device, non_blocking=True)``; per step the
  time spent waiting for the next batch (data wait) and the whole step, after CUDA
  synchronisation. With ``--batch-transform`` the dataset returns whole patches and
  :class:`utils.batch_transforms.BatchCropFlip` crops and flips on the GPU. With
  ``--prepare-on-device`` the dataset returns raw items (``ShardDataset(raw=True)``: the
  stored channels, 25 instead of 33) and the GPU standardises and one-hot encodes them
  (``TrainConfig(prepare_on="device")``: the same values).
* **device-cached**: the same number of samples held on the GPU (crops and flips by
  ``BatchCropFlip``): the model's own step rate, the bar the loader is measured against.

Goal: data wait under 10 % of the step. Prints one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from utils.batch_transforms import BatchCropFlip
from utils.dataloader import ShardDataset, make_loader
from utils.models import build_model


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", help="shards folder (train split and stats.json)")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--steps", type=int, default=60, help="measured steps per path")
    parser.add_argument("--warmup", type=int, default=10, help="steps before measuring")
    parser.add_argument(
        "--batch-transform",
        action="store_true",
        help="crop and flip on the GPU (dataset returns whole patches)",
    )
    parser.add_argument(
        "--prepare-on-device",
        action="store_true",
        help="standardise and one-hot encode on the GPU (dataset returns raw items)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_step(model, optimizer, scaler, images, labels, device) -> None:
    with torch.autocast(
        device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16
    ):
        loss = torch.nn.functional.mse_loss(model(images).reshape(-1), labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    on_gpu = BatchCropFlip(args.crop, seed=0)
    ds = ShardDataset(
        args.shards,
        "train",
        crop=None if args.batch_transform else args.crop,
        train=True,
        augment=not args.batch_transform,
        raw=args.prepare_on_device,
    )
    prepare = ds.batch_preparer() if args.prepare_on_device else None
    model = (  # num_channels: the prepared items' channels, raw or not
        build_model(args.model, ds.num_channels).to(device).to(memory_format=torch.channels_last)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    loader = make_loader(
        ds,
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=True,
    )
    total = args.warmup + args.steps
    waits, steps, seen = [], [], 0
    while len(steps) < total:
        batches = iter(loader)
        while len(steps) < total:
            start = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                break
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["label"].to(device, non_blocking=True)
            if args.batch_transform:
                images = on_gpu(images)
            if prepare is not None:
                images = prepare(images)
            _sync(device)
            got = time.perf_counter()
            _train_step(
                model,
                optimizer,
                scaler,
                images.contiguous(memory_format=torch.channels_last),
                labels,
                device,
            )
            _sync(device)
            waits.append(got - start)
            steps.append(time.perf_counter() - start)
            seen += len(labels)
    wait, step = sum(waits[args.warmup :]), sum(steps[args.warmup :])
    loader_rate = args.steps * args.batch / step

    # device-cached: every sample once on the GPU, whole patches, crops and flips there
    n_cached = min(len(ds), args.batch * 8)
    whole = ShardDataset(args.shards, "train", crop=None)
    cached = torch.stack([whole[i]["image"] for i in range(n_cached)]).to(device)
    cached_labels = whole.labels[:n_cached]
    cached_labels = torch.as_tensor(cached_labels, device=device)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(total):
        start = time.perf_counter()
        pick = torch.randint(0, n_cached, (args.batch,), generator=generator).to(device)
        images = on_gpu(cached[pick]).contiguous(memory_format=torch.channels_last)
        _train_step(model, optimizer, scaler, images, cached_labels[pick], device)
        _sync(device)
        times.append(time.perf_counter() - start)
    cached_rate = args.steps * args.batch / sum(times[args.warmup :])
    result = {
        "model": args.model,
        "crop": args.crop,
        "batch": args.batch,
        "workers": args.workers,
        "batch_transform": args.batch_transform,
        "prepare_on_device": args.prepare_on_device,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "loader_img_per_s": round(loader_rate, 1),
        "data_wait_share": round(wait / step, 3),
        "cached_img_per_s": round(cached_rate, 1),
        "loader_vs_cached": round(loader_rate / cached_rate, 3),
    }
    print(
        f"loader : {loader_rate:8.1f} img/s, data wait {100 * wait / step:5.1f} % of the "
        f"step (goal < 10 %), {args.workers} workers"
    )
    print(f"cached : {cached_rate:8.1f} img/s (samples on the device)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
