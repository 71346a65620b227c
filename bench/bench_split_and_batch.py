"""Benchmark: the full TFRecord -> HDF5 conversion against a bare TensorFlow parse loop,
and its peak memory at 1x and 4x the number of samples.

    python -m bench.bench_split_and_batch [--n 1500] [--size 48] [--workers 2] [--repeats 2]

On the same synthetic world (demo size by default; worlds are cached under
``runs/bench/``):

* **floor**, the bare TensorFlow parse-only loop: ``for x in TFRecordDataset(files,
  "GZIP")`` calling ``tf.io.parse_single_example(x, spec)`` (every band as
  ``FixedLenFeature([H, W])``, as Earth Engine's documentation reads exports), damaged
  records skipped;
* **parallel floor**, TensorFlow's fastest form of the same: ``num_parallel_reads`` and a
  ``map`` with ``num_parallel_calls`` of ``workers`` (a stricter bar, also printed);
* **full**: ``run_split_and_batch`` into a fresh folder (unzip, read, validate,
  quarantine, split, compress, write shards, stats, manifest).

Both rates are input records per second, best of ``--repeats``, measured side by side
in one process. Goal: full / floor >= 0.7. Peak memory (max RSS) of the full
conversion runs in a fresh process started by a small one (so the figure is the
conversion's own, not this TensorFlow-laden process's) for ``n`` and ``4 n`` records.
Goal: flat within 10 %.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from extract_GPS_images.schema import all_band_names  # noqa: E402
from utils.batching.split_and_batch import SplitConfig, run_split_and_batch  # noqa: E402
from utils.paths import project_root  # noqa: E402


def world(n: int, size: int) -> Path:
    """The cached synthetic world of ``n`` records (generated on first use)."""
    from extract_GPS_images.synthetic import generate_world  # noqa: PLC0415

    folder = project_root() / "runs" / "bench" / f"world_n{n}_s{size}"
    generate_world(folder, n=n, size=size, seed=0, progress=True)
    return folder


def record_files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.glob("*.tfrecord.gz"))


def parse_floor(files: list[str], size: int, workers: int) -> tuple[int, float]:
    """Records parsed and seconds of a TensorFlow parse-only loop: the bare eager loop
    for ``workers=0``, else tf.data with ``workers`` parallel reads and parse calls."""
    import tensorflow as tf  # noqa: PLC0415

    spec = {b: tf.io.FixedLenFeature([size, size], tf.float32) for b in all_band_names()}
    start = time.perf_counter()
    if workers == 0:
        count = 0
        for raw in tf.data.TFRecordDataset(files, "GZIP").ignore_errors():
            try:
                tf.io.parse_single_example(raw, spec)
                count += 1
            except tf.errors.InvalidArgumentError:
                pass
        return count, time.perf_counter() - start
    dataset = (
        tf.data.TFRecordDataset(files, "GZIP", num_parallel_reads=workers)
        .map(lambda x: tf.io.parse_single_example(x, spec), num_parallel_calls=workers)
        .ignore_errors()
    )
    count = sum(1 for _ in dataset)
    return count, time.perf_counter() - start


def full_run(src: Path, workers: int, compression: str) -> tuple[int, float]:
    """Input records and seconds of a complete conversion into a fresh folder."""
    out = Path(tempfile.mkdtemp(prefix="bench-split-"))
    try:
        cfg = SplitConfig(workers=workers, compression=compression, progress=False)
        start = time.perf_counter()
        report = run_split_and_batch(src, out / "shards", cfg)
        return report.inputs, time.perf_counter() - start
    finally:
        shutil.rmtree(out, ignore_errors=True)


#: A small parent: it starts the measured child and reports the child's max RSS (KB).
#: The child is forked from this small process, so its high-water mark is its own (a
#: child forked from the TensorFlow-laden benchmark inherits the parent's RSS at fork
#: and Linux keeps that mark across exec: RUSAGE_SELF in it reported the parent's).
_LAUNCHER = (
    "import resource, subprocess, sys; "
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def peak_memory_mb(src: Path, workers: int, compression: str) -> float:
    """Max RSS (MB) of a fresh process running one full conversion of ``src`` (the
    largest of it and its worker processes, as ``/usr/bin/time -v`` reports it)."""
    code = (
        "from pathlib import Path; from bench.bench_split_and_batch import full_run; "
        f"full_run(Path({str(src)!r}), {workers}, {compression!r})"
    )
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, sys.executable, "-c", code],
        cwd=project_root(),
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout.strip().splitlines()[-1]) / 1024


def get_args_parser() -> argparse.ArgumentParser:
    from utils.cli import make_parser  # noqa: PLC0415

    parser = make_parser("bench.bench_split_and_batch", __doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1500, help="records at 1x (demo: 1500)")
    parser.add_argument("--size", type=int, default=48, help="patch side (demo: 48)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compression", default="gzip", choices=("gzip", "lzf", "none"))
    parser.add_argument("--skip-memory", action="store_true", help="only the throughput ratio")
    parser.add_argument("--memory-only", action="store_true", help="only the peak memory")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    small = world(args.n, args.size)
    files = record_files(small)
    result: dict = {"records": len(files)}
    if not args.memory_only:
        parse_floor(files[:8], args.size, args.workers)  # import and warm TensorFlow
        floors, parallel, fulls = [], [], []
        for _ in range(args.repeats):
            count, seconds = parse_floor(files, args.size, 0)
            floors.append(len(files) / seconds)
            count, seconds = parse_floor(files, args.size, args.workers)
            parallel.append(len(files) / seconds)
            inputs, seconds = full_run(small, args.workers, args.compression)
            fulls.append(inputs / seconds)
        floor, fast, full = max(floors), max(parallel), max(fulls)
        result.update(
            {
                "parsed_by_floor": count,
                "floor_per_s": round(floor, 1),
                "parallel_floor_per_s": round(fast, 1),
                "full_per_s": round(full, 1),
                "ratio": round(full / floor, 3),
                "ratio_parallel": round(full / fast, 3),
            }
        )
        print(
            f"floor (TF parse loop)    : {floor:8.1f} records/s  ({count} of {len(files)} parsed)"
        )
        print(
            f"parallel floor (tf.data) : {fast:8.1f} records/s  "
            f"({args.workers} reads + parse calls)"
        )
        print(f"full conversion          : {full:8.1f} records/s  ({args.compression})")
        print(f"ratio full / floor       : {full / floor:8.3f}   (goal >= 0.7)")
        print(f"ratio full / parallel    : {full / fast:8.3f}")
    if not args.skip_memory:
        large = world(4 * args.n, args.size)
        mem1 = peak_memory_mb(small, args.workers, args.compression)
        mem4 = peak_memory_mb(large, args.workers, args.compression)
        result.update(
            peak_mb_1x=round(mem1, 1),
            peak_mb_4x=round(mem4, 1),
            memory_growth=round(mem4 / mem1 - 1, 3),
        )
        print(f"peak memory 1x ({args.n:5d} records): {mem1:8.1f} MB")
        print(f"peak memory 4x ({4 * args.n:5d} records): {mem4:8.1f} MB")
        print(f"growth 4x / 1x       : {100 * (mem4 / mem1 - 1):+7.1f} %  (goal within 10 %)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
