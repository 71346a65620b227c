"""Benchmark: the full TFRecord -> HDF5 conversion against its codec limit and a bare
TensorFlow parse loop, with a per-phase breakdown; and its peak memory at 1x and 4x the
records.

    python -m bench.bench_split_and_batch [--n 250] [--size 225 48] [--workers 2] [--repeats 2]
    python -m bench.bench_split_and_batch --memory-only --n 500 --size 48

For each patch size (one column each, 225 px first), on the same synthetic world (cached
under ``runs/bench/``), side by side in one process:

* **codec limit**: what no conversion can beat on ``--workers`` cores: a pool of
  ``workers`` processes that only reads and inflates each input gzip TFRecord file and
  compresses its sample with the shard codec of ``--compression`` (byte shuffle +
  Zstandard by default, or ISA-L deflate: exactly the bytes the shards hold); records /
  (timed seconds / workers). The samples are decoded
  for it beforehand, untimed; its processes reuse freed memory as the conversion does
  (:func:`utils.heap.reuse_freed_memory`);
* **record work**: the same pool doing, with the conversion's own functions, what every
  record needs whatever the conversion's design: read, inflate, frame and CRC-check
  each file, decode and validate each record, summarise it for ``stats.json``, encode
  its sample and mask as the shards store them and write both once (no staging, no
  second copy, no HDF5, no manifest). "record work / codec limit" is thus the highest
  "full / codec limit" any conversion that checks and summarises every record reaches
  on this machine, and "full / record work" what the conversion's own design costs;
* **floor**, the bare TensorFlow parse-only loop: ``for x in TFRecordDataset(files,
  "GZIP")`` calling ``tf.io.parse_single_example(x, spec)`` (every band as
  ``FixedLenFeature([H, W])``, as Earth Engine's documentation reads exports), damaged
  records skipped; and the **parallel floor**, tf.data with ``workers`` parallel reads
  and parse calls;
* **full**: ``run_split_and_batch`` into a fresh folder (unzip, read, validate,
  quarantine, split, compress, write shards, stats, manifest), with the wall time of
  each of its phases.

Rates are records per second (valid records for the pools, input records for the
rest), best of ``--repeats``. Goals: full / codec limit >= 0.8 (at 225 px), full /
floor >= 0.7. The load average is printed with each result:
the ratios hold under load, the rates do not. Peak memory (max RSS) of the full
conversion runs in a fresh process started by a small one (so the figure is the
conversion's own, not this TensorFlow-laden process's) for ``n`` and ``4 n`` records.
Goal: flat within 10 %.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from extract_GPS_images.schema import all_band_names, image_band_names  # noqa: E402
from utils.batching.split_and_batch import SplitConfig, run_split_and_batch  # noqa: E402
from utils.heap import reuse_freed_memory  # noqa: E402
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


#: The conversion's phases as the functions of ``split_and_batch`` that run them (those
#: a version lacks are left out: ``infer_size`` is the size pre-read of earlier ones).
PHASES: dict[str, tuple[str, ...]] = {
    "size guess": ("first_record_layout", "infer_size", "infer_extra_channels"),
    "pass 1: read+validate+stage": ("_stage",),
    "splits (+ duplicates)": ("_choose_splits",),
    "shard writes": ("_write_shards",),
    "stats": ("_train_stats",),
    "manifest + reasons": ("_write_tables",),
    "report + cleanup": ("_finish",),
}


@contextmanager
def timed_phases(seconds: dict[str, float]) -> Iterator[None]:
    """Add the wall time of each of :data:`PHASES` to ``seconds`` while inside (the
    module's functions are wrapped, then restored)."""
    import utils.batching.split_and_batch as sb  # noqa: PLC0415

    originals = {n: getattr(sb, n) for names in PHASES.values() for n in names if hasattr(sb, n)}

    def timed(phase: str, fn: Callable) -> Callable:
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - start

        return run

    for phase, names in PHASES.items():
        for name in (n for n in names if n in originals):
            setattr(sb, name, timed(phase, originals[name]))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(sb, name, fn)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its waited-for children."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def full_run(
    src: Path,
    workers: int,
    compression: str,
    phases: dict[str, float] | None = None,
    cpu: list[float] | None = None,
) -> tuple[int, float]:
    """Input records and seconds of a complete conversion into a fresh folder (the wall
    time of each phase added to ``phases`` when given; shard writes without stats; the
    CPU seconds of the run, all threads and worker processes, appended to ``cpu``)."""
    out = Path(tempfile.mkdtemp(prefix="bench-split-"))
    seconds: dict[str, float] = {}
    try:
        cfg = SplitConfig(workers=workers, compression=compression, progress=False)
        with timed_phases(seconds) if phases is not None else nullcontext():
            start, used = time.perf_counter(), cpu_seconds()
            report = run_split_and_batch(src, out / "shards", cfg)
            total = time.perf_counter() - start
        if cpu is not None:
            cpu.append(cpu_seconds() - used)
        if phases is not None:
            seconds["shard writes"] -= seconds.get("stats", 0.0)  # stats run inside it
            seconds["other (unzip, fingerprint, ...)"] = total - sum(seconds.values())
            phases.clear()
            phases.update(seconds)
        return report.inputs, total
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _codec_work(paths: list[str], size: int, compression: str) -> tuple[float, float, int]:
    """Seconds and CPU seconds spent reading + inflating ``paths`` and deflating their
    samples with the shard codec (each sample decoded beforehand, untimed), and the
    records done."""
    from isal import igzip  # noqa: PLC0415

    from utils.batching.shard_writer import ChunkCodec  # noqa: PLC0415
    from utils.batching.validate_records import RecordRules, read_file  # noqa: PLC0415

    rules = RecordRules(size)
    images = [
        [r.sample.image for r in read_file(Path(p), rules).records if r.sample is not None]
        for p in paths
    ]
    codec = ChunkCodec((len(images[0][0]) if images[0] else 1, size, size), "float32", compression)
    seconds, cpu, done = 0.0, 0.0, 0
    for path, samples in zip(paths, images, strict=True):
        start, used = time.perf_counter(), time.process_time()
        with open(path, "rb") as handle:
            igzip.decompress(handle.read())
        for image in samples:
            codec.encode(image)
        seconds += time.perf_counter() - start
        cpu += time.process_time() - used
        done += len(samples)
    return seconds, cpu, done


def _record_work(paths: list[str], size: int, compression: str) -> tuple[float, float, int]:
    """Seconds and CPU seconds of the work every record needs, whatever the conversion's
    design, with the conversion's own functions, and the records done: read, inflate and
    frame each file, check both CRCs, decode and validate each record (its masks too:
    :func:`~utils.batching.validate_records.iter_results`), summarise its sample for
    ``stats.json`` (:class:`~utils.batching.shard_writer.SampleSummary`), encode its
    sample with the shard codec and its valid mask as the shards store it (deflate
    level 1, by ISA-L: the fastest deflate at hand, so that the bound is not lowered by
    it), and write both once (``pwrite`` into a scratch file, no ``fsync``). No
    staging, second copy, HDF5, manifest or quarantine: what a conversion that wrote
    every output byte once, straight from this pass, would still do."""
    from isal import isal_zlib  # noqa: PLC0415

    from utils.batching.shard_writer import (  # noqa: PLC0415
        STAT_GRID_PIXELS,
        ChunkCodec,
        SampleSummary,
        stat_stride,
    )
    from utils.batching.validate_records import RecordRules, iter_results  # noqa: PLC0415

    rules = RecordRules(size)
    codec = ChunkCodec((len(image_band_names()), size, size), "float32", compression)
    stride = stat_stride(size * size, STAT_GRID_PIXELS)
    seconds, cpu, done, end = 0.0, 0.0, 0, 0
    with tempfile.TemporaryFile(prefix="bench-split-") as scratch:  # where full_run writes
        for path in paths:
            start, used = time.perf_counter(), time.process_time()
            for record in iter_results(Path(path), rules):
                if (sample := record.sample) is None:
                    continue
                SampleSummary.of(sample.image, stride, sample.band_min, sample.band_max)
                for chunk in (codec.encode(sample.image), isal_zlib.compress(sample.mask, 1)):
                    end += os.pwrite(scratch.fileno(), chunk, end)
                done += 1
            seconds += time.perf_counter() - start
            cpu += time.process_time() - used
    return seconds, cpu, done


def pool_rate(
    files: list[str], size: int, workers: int, compression: str, work: Callable = _codec_work
) -> tuple[float, float]:
    """Records/s of ``work`` (:func:`_codec_work`: the codec limit; :func:`_record_work`)
    on a pool of ``workers`` processes: records / (timed seconds / workers), and its CPU
    seconds a record. Damaged files (that do not decode) are left out."""
    from utils.batching.validate_records import RecordRules, read_file  # noqa: PLC0415

    readable = [f for f in files if read_file(Path(f), RecordRules(size)).file_error is None]
    batches = [readable[i : i + 8] for i in range(0, len(readable), 8)]
    context = multiprocessing.get_context("fork")
    # the conversion's own heap settings, so that the limit's buffers are reused as its are
    with ProcessPoolExecutor(workers, mp_context=context, initializer=reuse_freed_memory) as pool:
        results = list(pool.map(work, batches, [size] * len(batches), [compression] * len(batches)))
    seconds, cpu, done = map(sum, zip(*results, strict=True))
    return done / (seconds / workers), cpu / done


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
    parser.add_argument("--n", type=int, default=250, help="records at 1x")
    parser.add_argument(
        "--size", type=int, nargs="+", default=[225, 48], help="patch sides, one column each"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--compression", default=SplitConfig.compression, choices=("zstd", "gzip", "none")
    )
    parser.add_argument(
        "--memory-only", action="store_true", help="only the peak memory (first --size)"
    )
    return parser


def _load() -> str:
    return "load " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def throughput(n: int, size: int, workers: int, repeats: int, compression: str) -> dict:
    """The rates, ratios and phase times of one patch size (best of ``repeats``)."""
    src = world(n, size)
    files = record_files(src)
    parse_floor(files[:8], size, workers)  # import and warm TensorFlow
    limits, bounds, floors, parallel, fulls, loads = [], [], [], [], [], []
    limit_cpu, bound_cpu, full_cpu = [], [], []
    phases: dict[str, float] = {}
    best_phases: dict[str, float] = {}
    for _ in range(repeats):
        rate, cpu = pool_rate(files, size, workers, compression)
        limits.append(rate)
        limit_cpu.append(cpu)
        rate, cpu = pool_rate(files, size, workers, compression, _record_work)
        bounds.append(rate)
        bound_cpu.append(cpu)
        count, seconds = parse_floor(files, size, 0)
        floors.append(len(files) / seconds)
        count, seconds = parse_floor(files, size, workers)
        parallel.append(len(files) / seconds)
        inputs, seconds = full_run(src, workers, compression, phases, full_cpu)
        if not fulls or inputs / seconds > max(fulls):
            best_phases = dict(phases)
        fulls.append(inputs / seconds)
        loads.append(_load())
        print(
            f"  {size} px: limit {limits[-1]:.1f}, record work {bounds[-1]:.1f}, floor "
            f"{floors[-1]:.1f}, parallel floor {parallel[-1]:.1f}, full {fulls[-1]:.1f} "
            f"records/s; CPU ms a record: limit {1e3 * limit_cpu[-1]:.1f}, record work "
            f"{1e3 * bound_cpu[-1]:.1f}, full {1e3 * full_cpu[-1] / inputs:.1f} ({loads[-1]})",
            flush=True,
        )
    limit, bound, floor, fast = max(limits), max(bounds), max(floors), max(parallel)
    full = max(fulls)
    total = sum(best_phases.values())
    return {
        "size": size,
        "records": len(files),
        "parsed_by_floor": count,
        "codec_limit_per_s": round(limit, 1),
        "record_work_per_s": round(bound, 1),
        "floor_per_s": round(floor, 1),
        "parallel_floor_per_s": round(fast, 1),
        "full_per_s": round(full, 1),
        "ratio_limit": round(full / limit, 3),
        "ratio_work_limit": round(bound / limit, 3),
        "ratio_work": round(full / bound, 3),
        "ratio": round(full / floor, 3),
        "ratio_parallel": round(full / fast, 3),
        "codec_cpu_ms": round(1e3 * min(limit_cpu), 2),
        "record_work_cpu_ms": round(1e3 * min(bound_cpu), 2),
        "full_cpu_ms": round(1e3 * min(full_cpu) / inputs, 2),
        "ratio_cpu": round(min(limit_cpu) * inputs / min(full_cpu), 3),
        "phase_share": {k: round(v / total, 3) for k, v in best_phases.items()},
        "phase_s": {k: round(v, 2) for k, v in best_phases.items()},
        "load": loads,
    }


def print_table(results: list[dict], workers: int, compression: str) -> None:
    """The results side by side, one column per patch size."""
    head = "".join(f"{r['size']:>10d} px" for r in results)
    rows = [
        (f"codec limit ({workers} processes)", "codec_limit_per_s", "{:13.1f}"),
        (f"record work ({workers} processes)", "record_work_per_s", "{:13.1f}"),
        ("floor (TF parse loop)", "floor_per_s", "{:13.1f}"),
        (f"parallel floor (tf.data, {workers})", "parallel_floor_per_s", "{:13.1f}"),
        (f"full conversion ({compression})", "full_per_s", "{:13.1f}"),
        ("full / codec limit (goal >= 0.8)", "ratio_limit", "{:13.3f}"),
        ("record work / codec limit", "ratio_work_limit", "{:13.3f}"),
        ("full / record work", "ratio_work", "{:13.3f}"),
        ("full / floor       (goal >= 0.7)", "ratio", "{:13.3f}"),
        ("full / parallel floor", "ratio_parallel", "{:13.3f}"),
        ("CPU ms a record: codec limit", "codec_cpu_ms", "{:13.2f}"),
        ("CPU ms a record: record work", "record_work_cpu_ms", "{:13.2f}"),
        ("CPU ms a record: full conversion", "full_cpu_ms", "{:13.2f}"),
        ("codec CPU / full CPU", "ratio_cpu", "{:13.3f}"),
    ]
    print(f"{'records/s':36s}{head}")
    for label, key, form in rows:
        print(f"{label:36s}" + "".join(form.format(r[key]) for r in results))
    print("share of the full conversion's wall time:")
    for phase in results[0]["phase_share"]:
        values = "".join(f"{100 * r['phase_share'].get(phase, 0.0):12.1f} %" for r in results)
        print(f"  {phase:34s}{values}")
    for r in results:
        print(f"{r['size']} px load averages (1, 5, 15 min) after each repeat: {r['load']}")


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    result: dict = {"workers": args.workers, "compression": args.compression}
    if not args.memory_only:
        sizes = [
            throughput(args.n, size, args.workers, args.repeats, args.compression)
            for size in args.size
        ]
        print_table(sizes, args.workers, args.compression)
        result["sizes"] = sizes
    else:
        size = args.size[0]
        small, large = world(args.n, size), world(4 * args.n, size)
        mem1 = peak_memory_mb(small, args.workers, args.compression)
        mem4 = peak_memory_mb(large, args.workers, args.compression)
        result.update(
            size=size,
            peak_mb_1x=round(mem1, 1),
            peak_mb_4x=round(mem4, 1),
            memory_growth=round(mem4 / mem1 - 1, 3),
            load=_load(),
        )
        print(f"peak memory 1x ({args.n:5d} records): {mem1:8.1f} MB")
        print(f"peak memory 4x ({4 * args.n:5d} records): {mem4:8.1f} MB")
        print(f"growth 4x / 1x       : {100 * (mem4 / mem1 - 1):+7.1f} %  (goal within 10 %)")
        print(_load())
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
