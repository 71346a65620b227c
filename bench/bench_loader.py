"""Benchmark: CPU cost of one training sample at the real patch size, old path and new.

    python -m bench.bench_loader [--n 200] [--size 225] [--crop 224] [--gpu-rate 3000]
        [--paths-only | --workers-only]

On the train shards of a synthetic world (``--n`` records at ``--size`` px, converted
by split_and_batch; cached under ``runs/bench/``), one process, one core, CPU seconds
(``time.process_time``) per sample of:

* **read, h5py**: ``data[row]`` through h5py's filter pipeline (zlib inflate, unshuffle);
* **read, ISA-L**: :func:`utils.fast_chunks.read_sample` (the same values, bit for bit);
* **old item**: the per-sample path before (h5py read, crop, astype, concatenations,
  normalisation, one-hot DW, flips on the CPU), kept here as the baseline;
* **new item**: ``ShardDataset[i]`` with random crops and flips on the CPU (ISA-L read,
  one preallocated output; identical items, ``tests/test_fast_chunks.py``);
* **new item, whole patch**: ``ShardDataset(crop=None)[i]`` (whole patches), crops and
  flips left to :class:`utils.batch_transforms.BatchCropFlip` on the training device;
* **read** of the first shard recoded as float32 zstd, float32 uncompressed, float16
  gzip and float16 uncompressed (``ChunkCodec``), with the stored MB a sample of each,
  and the new item (cropped on the CPU, or whole) from the split recoded as float32
  uncompressed (exact);
* **data path**: a shuffled epoch through a 0-worker ``make_loader`` (items and the
  batch's collation, what a loader worker does) of gzip, zstd and uncompressed shards,
  with ``TrainConfig.augment_on`` ``"cpu"`` (crops and flips per sample) and ``"device"``
  (whole patches, then :class:`utils.batch_transforms.BatchCropFlip` on each batch, here
  on the CPU; without it, the loader's share when the transform runs on the GPU); the
  same items batched the way before (one array an item, stacked by ``default_collate``:
  "per item + stack"); raw items (``ShardDataset(raw=True)``: the stored channels,
  standardised and one-hot encoded on the device by ``batch_preparer()``), also from the
  split recoded as float16 uncompressed; and the CPU a sample of one real loader worker
  once it runs (the difference of epochs of 8 and 2 times the split, so that the
  worker's start, printed apart, cancels out as in a study's long epochs; its pool of
  shared batch memory reused, the default, and fresh shared memory a batch, torch's
  way, side by side), with the main process's CPU when it copies every batch (as the
  pin copy does). ``--workers-only`` runs only the worker rows of the gzip, zstd and
  uncompressed shards.

Each is printed as ms and samples/s per core, with the cores one GPU consuming
``--gpu-rate`` images/s would need, side by side in one run, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset, RandomSampler  # noqa: E402

from extract_GPS_images.schema import DW_CLASSES  # noqa: E402
from utils import hdf5_schema as hs  # noqa: E402
from utils.batch_transforms import BatchCropFlip  # noqa: E402
from utils.batching.shard_writer import ChunkCodec, write_chunk  # noqa: E402
from utils.dataloader import ShardDataset, augment, make_loader  # noqa: E402
from utils.fast_chunks import read_sample  # noqa: E402
from utils.heap import reuse_freed_memory  # noqa: E402
from utils.paths import project_root  # noqa: E402


def shards(n: int, size: int) -> Path:
    """The cached shards of the synthetic world of ``n`` records (made on first use)."""
    from bench.bench_split_and_batch import world  # noqa: PLC0415
    from utils.batching.split_and_batch import SplitConfig, run_split_and_batch  # noqa: PLC0415

    out = project_root() / "runs" / "bench" / f"shards_n{n}_s{size}"
    if not (out / "stats.json").exists():
        cfg = SplitConfig(workers=2, compression="gzip", progress=False)  # the rows recode it
        run_split_and_batch(world(n, size), out, cfg)
    return out


def old_item(ds: ShardDataset, handles: dict, index: int) -> np.ndarray:
    """The per-sample path before this change (the baseline)."""
    k, row = ds.locate(index)
    if k not in handles:
        handles[k] = h5py.File(ds.files[k], "r")
    raw = handles[k][hs.DATA][row]
    top, left = ds._window()
    raw = raw[:, top : top + ds.crop, left : left + ds.crop].astype(np.float32)
    image = (raw[ds._s2_index] - ds._mean[:, None, None]) / ds._std[:, None, None]
    codes = np.rint(np.nan_to_num(raw[ds._dw_index], nan=-1.0))
    onehot = codes[None] == np.arange(len(DW_CLASSES), dtype=np.float32)[:, None, None]
    image = augment(np.concatenate([image, onehot.astype(np.float32)]))
    return np.ascontiguousarray(image, dtype=np.float32)


def stored_mb(dataset: h5py.Dataset) -> float:
    """Mean stored (compressed) MB of one sample's chunk."""
    sizes = [dataset.id.get_chunk_info(i).size for i in range(dataset.id.get_num_chunks())]
    return float(np.mean(sizes)) / 1e6


def recode(dataset: h5py.Dataset, path: Path, codec: ChunkCodec) -> tuple[Path, float]:
    """Write ``dataset``'s samples to ``path`` with ``codec``; (path, stored MB a sample)."""
    with h5py.File(path, "w") as f:
        out = f.create_dataset(hs.DATA, shape=dataset.shape, **codec.dataset_options())
        for i in range(len(dataset)):
            write_chunk(out, i, codec.encode(read_sample(dataset, i)), codec)
        return path, stored_mb(out)


def recode_split(root: Path, out: Path, codec_of: Callable[[tuple], ChunkCodec]) -> Path:
    """A copy of ``root``'s train split and stats.json with ``data`` stored by a codec."""
    (out / "train").mkdir(parents=True)
    shutil.copy(root / "stats.json", out / "stats.json")
    for path in sorted((root / "train").glob("*.h5")):
        target = out / "train" / path.name
        shutil.copy(path, target)
        with h5py.File(target, "a") as f:
            data = f[hs.DATA]
            codec = codec_of(data.shape[1:])
            samples = [read_sample(data, i) for i in range(len(data))]
            del f[hs.DATA]
            new = f.create_dataset(
                hs.DATA, shape=(len(samples), *codec.shape), **codec.dataset_options()
            )
            for i, sample in enumerate(samples):
                write_chunk(new, i, codec.encode(sample), codec)
    return out


def cpu_ms(fn: Callable[[int], object], count: int, repeats: int) -> float:
    """Best CPU milliseconds per call of ``fn(i)`` over ``i < count``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for i in range(count):
            fn(i)
        best = min(best, (time.process_time() - start) / count * 1000)
    return best


class PerItem(Dataset):
    """``dataset`` seen one item at a time (no ``__getitems__``), batched by torch's
    ``default_collate``: the batching before items were written into the batch."""

    def __init__(self, dataset: ShardDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return self.dataset[index]


def children_cpu() -> float:
    """CPU seconds of this process's finished (waited-for) children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def path_ms(
    dataset: Dataset,
    batch: int,
    repeats: int,
    transform: BatchCropFlip | None = None,
    workers: int = 0,
    reuse: bool = True,
) -> float:
    """Best CPU ms a sample of a shuffled epoch of a loader over ``dataset`` (items and
    collation), with ``transform`` applied to each batch when given. With ``workers``:
    the workers' CPU (their items, batches in shared memory and the sending) a sample in
    a long epoch (:func:`steady_worker_ms`); ``reuse`` False gives every worker batch
    fresh shared memory (torch's way)."""
    if workers:
        return steady_worker_ms(dataset, batch, repeats, transform, workers, reuse)[0]
    return worker_ms(dataset, batch, repeats, transform)[0]


#: Epoch lengths (in passes over the split) whose difference gives a worker's CPU a sample.
STEADY_PASSES = (2, 8)


def steady_worker_ms(
    dataset: Dataset,
    batch: int,
    repeats: int,
    transform: BatchCropFlip | None = None,
    workers: int = 1,
    reuse: bool = True,
    copy: bool = False,
) -> tuple[float, float, float]:
    """The workers' CPU ms a sample once they run (the extra CPU of an epoch of 8 passes
    over one of 2, per extra sample: a worker's start, ~0.3 s of forking, opening the
    shards and first touching its shared memory, cancels out, as in an epoch of a whole
    study's samples), the main process's CPU ms a sample over the long epoch
    (:func:`worker_ms`), and the workers' start in ms."""
    (short, _), (long, main) = (
        worker_ms(dataset, batch, repeats, transform, workers, reuse, copy, passes)
        for passes in STEADY_PASSES
    )
    few, many = (passes * len(dataset) for passes in STEADY_PASSES)
    per_sample = (long * many - short * few) / (many - few)
    return per_sample, main, short * few - per_sample * few


def worker_ms(
    dataset: Dataset,
    batch: int,
    repeats: int,
    transform: BatchCropFlip | None = None,
    workers: int = 0,
    reuse: bool = True,
    copy: bool = False,
    passes: int = 1,
) -> tuple[float, float]:
    """(:func:`path_ms`, the main process's best CPU ms a sample). With ``copy`` the main
    process copies each image batch into one preallocated tensor, as the pin copy does
    (it reads every page of the batch); ``passes`` > 1 makes one loader epoch that long
    (a random sampler drawing every sample that many times), as a real epoch of many
    batches, where a worker's pool of shared memory gets reused."""
    if isinstance(dataset, PerItem):  # the batching before: default_collate's stack
        generator = torch.Generator().manual_seed(0)
        loader = DataLoader(
            dataset, batch_size=batch, shuffle=True, generator=generator, num_workers=workers
        )
    else:
        sampler = None
        if passes > 1:
            generator = torch.Generator().manual_seed(0)
            count = passes * len(dataset)
            sampler = RandomSampler(dataset, num_samples=count, generator=generator)
        loader = make_loader(
            dataset,
            batch_size=batch,
            shuffle=sampler is None,
            sampler=sampler,
            seed=0,
            num_workers=workers,
            reuse_worker_memory=reuse,
        )
    best, best_main, target = float("inf"), float("inf"), None
    for _ in range(repeats):
        start, children, count = time.process_time(), children_cpu(), 0
        for item in loader:
            images = item["image"] if transform is None else transform(item["image"])
            if copy:
                target = torch.empty_like(images) if target is None else target
                target[: len(images)].copy_(images)
            count += len(images)
        main = time.process_time() - start
        spent = children_cpu() - children if workers else main
        best, best_main = min(best, spent / count * 1000), min(best_main, main / count * 1000)
    return best, best_main


def worker_rows(name: str, dataset: ShardDataset, batch: int, repeats: int) -> dict:
    """One loader worker's CPU a sample with its shared batch memory reused (the
    default) and fresh (torch's way), side by side (:func:`steady_worker_ms`), and the
    main process's CPU a sample for each when it copies every batch (as the pin copy
    does)."""
    rows = {}
    for label, reuse in (("reused shm", True), ("fresh shm", False)):
        worker, main, start = steady_worker_ms(dataset, batch, repeats, reuse=reuse, copy=True)
        print(f"  {name}, {label}: a worker's start {start:.0f} ms of CPU")
        rows[f"path {name}, cpu, 1 worker's CPU, {label}"] = worker
        rows[f"path {name}, cpu, main's CPU (copy), {label}"] = main
    return rows


def data_paths(
    roots: dict[str, Path], crop: int | None, batch: int, repeats: int, gpu_only: set[str]
) -> dict:
    """:func:`path_ms` of both ``augment_on`` options on the shards of ``roots`` (name ->
    shards folder), batches written in place (``make_loader``) and per item
    (``default_collate``), raw items (standardised on the device), and the CPU of one
    loader worker; for the names in ``gpu_only`` only the raw rows."""
    rows = {}
    for name, root in roots.items():
        per_sample = ShardDataset(root, "train", crop=crop, train=True, augment=True)
        whole = ShardDataset(root, "train", crop=None, train=True)
        raw = ShardDataset(root, "train", crop=None, train=True, raw=True)
        raw_cropped = ShardDataset(root, "train", crop=crop, train=True, augment=True, raw=True)
        if name not in gpu_only:
            transform = BatchCropFlip(crop, seed=0)
            rows[f"path {name}, cpu: item crop+flip"] = path_ms(per_sample, batch, repeats)
            rows[f"path {name}, cpu, per item + stack"] = path_ms(
                PerItem(per_sample), batch, repeats
            )
            rows.update(worker_rows(name, per_sample, batch, repeats))
            rows[f"path {name}, device: whole + batch crop"] = path_ms(
                whole, batch, repeats, transform
            )
            rows[f"path {name}, device: loader share"] = path_ms(whole, batch, repeats)
            rows[f"path {name}, device, per item + stack"] = path_ms(PerItem(whole), batch, repeats)
        rows[f"path {name}, cpu raw: loader share"] = path_ms(raw_cropped, batch, repeats)
        rows[f"path {name}, cpu raw, 1 worker's CPU"] = path_ms(
            raw_cropped, batch, repeats, workers=1
        )
        rows[f"path {name}, device raw: loader share"] = path_ms(raw, batch, repeats)
        rows[f"path {name}, device raw, 1 worker's CPU"] = path_ms(raw, batch, repeats, workers=1)
    return rows


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="records of the world")
    parser.add_argument("--size", type=int, default=225, help="patch side")
    parser.add_argument("--crop", type=int, default=224, help="training crop side")
    parser.add_argument("--batch", type=int, default=32, help="batch of the batch transform")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--paths-only", action="store_true", help="only the data-path rows (a shorter run)"
    )
    parser.add_argument(
        "--workers-only",
        action="store_true",
        help="only one loader worker's rows, shared memory reused and fresh (shortest)",
    )
    parser.add_argument(
        "--gpu-rate",
        type=float,
        default=3000.0,
        help="images/s one GPU trains (ResNet-50 AMP at 224 px: ~3,000)",
    )
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    torch.set_num_threads(1)
    reuse_freed_memory()  # the training process's heap, as make_loader sets it (every row)
    load_before = os.getloadavg()
    root = shards(args.n, args.size)
    crop = args.crop if args.crop < args.size else None
    per_sample = ShardDataset(root, "train", crop=crop, train=True, augment=True)
    whole = ShardDataset(root, "train", crop=None)
    count = len(per_sample)
    handles: dict = {}
    data = [h5py.File(p, "r")[hs.DATA] for p in per_sample.files]

    def located(fn: Callable) -> Callable[[int], object]:
        def call(i: int) -> object:
            k, row = per_sample.locate(i)
            return fn(data[k], row)

        return call

    sizes = {"float32 gzip (ISA-L 1)": stored_mb(data[0])}
    transform = BatchCropFlip(crop, seed=0)
    batch = torch.stack([whole[i]["image"] for i in range(min(args.batch, count))])
    transform_ms = cpu_ms(lambda _: transform(batch), 3, args.repeats) / len(batch)
    rows = {}
    args.paths_only |= args.workers_only
    if not args.paths_only:
        rows = {
            "read, h5py": cpu_ms(located(lambda d, r: d[r]), count, args.repeats),
            "read, ISA-L": cpu_ms(located(read_sample), count, args.repeats),
            "old item": cpu_ms(lambda i: old_item(per_sample, handles, i), count, args.repeats),
            "new item": cpu_ms(lambda i: per_sample[i], count, args.repeats),
            "new item, whole patch": cpu_ms(lambda i: whole[i], count, args.repeats),
        }
    with tempfile.TemporaryDirectory() as tmp:
        codecs = (
            ("float32", "zstd"),
            ("float32", "none"),
            ("float16", "gzip"),
            ("float16", "none"),
        )
        for dtype, compression in () if args.paths_only else codecs:
            recoded, stored = recode(
                data[0],
                Path(tmp) / f"{dtype}_{compression}.h5",
                ChunkCodec(data[0].shape[1:], dtype, compression),
            )
            with h5py.File(recoded, "r") as f:
                ms = cpu_ms(
                    lambda i, d=f[hs.DATA]: read_sample(d, i), len(f[hs.DATA]), args.repeats
                )
            rows[f"read, {dtype} {compression}"] = ms
            sizes[f"{dtype} {compression}"] = stored
        raw = recode_split(
            root, Path(tmp) / "none", lambda shape: ChunkCodec(shape, "float32", "none")
        )
        if not args.paths_only:
            uncompressed = ShardDataset(raw, "train", crop=crop, train=True, augment=True)
            rows["new item, float32 none"] = cpu_ms(lambda i: uncompressed[i], count, args.repeats)
            whole_raw = ShardDataset(raw, "train", crop=None)
            rows["new item, float32 none, whole patch"] = cpu_ms(
                lambda i: whole_raw[i], count, args.repeats
            )
        zstd = recode_split(
            root, Path(tmp) / "zstd", lambda shape: ChunkCodec(shape, "float32", "zstd")
        )
        if args.workers_only:
            for name, folder in (("gzip", root), ("zstd", zstd), ("none", raw)):
                ds = ShardDataset(folder, "train", crop=crop, train=True, augment=True)
                rows.update(worker_rows(name, ds, args.batch, args.repeats))
        else:
            half = recode_split(
                root, Path(tmp) / "f16", lambda shape: ChunkCodec(shape, "float16", "none")
            )
            roots = {"gzip": root, "zstd": zstd, "none": raw, "f16 none": half}
            rows.update(data_paths(roots, crop, args.batch, args.repeats, {"f16 none"}))
    load_after = os.getloadavg()
    print(
        f"{count} train samples of {root.name} ({whole.num_channels} channels, crop "
        f"{args.crop}), one core, CPU ms per sample; cores for {args.gpu_rate:.0f} img/s; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print(f"{'':48} {'ms':>7} {'samples/s/core':>15} {'cores':>7}")
    for name, ms in rows.items():
        print(f"{name:48} {ms:7.2f} {1000 / ms:15.1f} {args.gpu_rate * ms / 1000:7.1f}")
    print(
        f"batch crop+flip on the CPU: {transform_ms:.2f} ms a sample (batch {len(batch)}; "
        "meant for the GPU, where it leaves the loader's cores)"
    )
    print("stored MB a sample: " + ", ".join(f"{k} {v:.2f}" for k, v in sizes.items()))
    result = {k: round(v, 3) for k, v in rows.items()}
    if not args.paths_only:
        speedup = rows["old item"] / rows["new item"]
        print(f"new item / old item: {speedup:.2f}x less CPU per sample")
        result["speedup"] = speedup
    for name in () if args.workers_only else ("gzip", "zstd", "none"):
        cpu, loader = (
            rows[f"path {name}, cpu: item crop+flip"],
            rows[f"path {name}, device: loader share"],
        )
        print(f"{name}: loader CPU per sample, augment_on device / cpu: {loader / cpu:.2f}")
    result.update(
        batch_transform_ms=round(transform_ms, 3),
        samples=count,
        load_average=[round(load_before[0], 2), round(load_after[0], 2)],
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
