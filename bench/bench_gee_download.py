"""Throughput of the direct download against a fake ``computePixels`` of fixed latency.

With ``k`` requests in flight and a latency of ``L`` seconds the ideal rate is ``k / L``
downloads per second. The benchmark runs the real downloader (expression building,
thread pool, retries bookkeeping, TFRecord writing, manifest) with a fake that sleeps
``L`` and replies as the real client does, and prints achieved / ideal for each ``k``,
patch size, latency and TFRecord deflate (``--codec isal:1 zlib:6``: the writer's codec
and level), side by side in one run. Goal: at least 0.9 at ``k = 16`` and 200 ms at the
real patch size (225 px). Earth Engine is never called (the client library is set up
offline with its own test support).

Achieved / ideal needs free cores: the run prints the load average, the CPU ms a
download (user and system, all threads; it hardly depends on the load), the cores the
ideal rate needs at that cost, and the bound that cost puts on the ratio on two free
cores (``min(1, 2 / cores)``).

    python bench/bench_gee_download.py [--latency 0.2 1.0] [--k 1 4 16] [--waves 50]
        [--size 225 48] [--codec isal:1 zlib:6] [--processes 1 2]
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from ee import serializer  # noqa: E402
from gee_fakes import fake_pixels, npy_reply, offline_ee  # noqa: E402

from extract_GPS_images.gee_download import (  # noqa: E402
    DownloadConfig,
    Location,
    download_locations,
)
from extract_GPS_images.gee_recipe import RecipeConfig  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    from utils.cli import make_parser  # noqa: PLC0415

    parser = make_parser("bench.bench_gee_download", __doc__.splitlines()[0])
    parser.add_argument(
        "--latency",
        type=float,
        nargs="+",
        default=[0.2, 1.0],
        help="fake latencies, seconds (one column group each; the first is the goal's)",
    )
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4, 16], help="concurrency")
    parser.add_argument("--waves", type=int, default=50, help="downloads = waves * k")
    parser.add_argument(
        "--size",
        type=int,
        nargs="+",
        default=[225, 48],
        help="patch sides of the fake replies (one column each)",
    )
    parser.add_argument(
        "--codec",
        nargs="+",
        default=["isal:1", "zlib:6"],
        help="TFRecord deflates as codec:level (one row group each)",
    )
    parser.add_argument("--writers", type=int, default=None, help="writer threads")
    parser.add_argument(
        "--processes",
        type=int,
        nargs="+",
        default=[1, 2],
        help="download processes (DownloadConfig.processes; one row group each)",
    )
    parser.add_argument(
        "--tmp",
        default=None,
        help="folder of the runs' output folders (default: the system's temporary "
        "folder); /dev/shm leaves the disk's state out of the CPU a download",
    )
    parser.add_argument("--goal", type=float, default=0.9, help="goal ratio at the largest k")
    return parser


class RealisticReplies:
    """A fake ``computePixels`` of fixed latency that costs this side what a real call
    costs it, not more: the expression's serialisation (``ee.serializer.encode``, done
    by ``ee.data.computePixels`` on the calling thread), a fresh copy of the reply's
    ``.npy`` bytes (standing in for the body received; the receiving itself, ~7 MB over
    HTTPS at 225 px, is not charged) and, where the request asks for
    ``"NUMPY_NDARRAY"``, the client's ``np.load`` of them. The replies (the
    deterministic fake patches of ``tests/gee_fakes.py``) are rendered before the clock
    starts: rendering 35 random bands at 225 px (~16 ms) is no part of a download."""

    def __init__(self, names: list[str], size: int, latency_s: float, distinct: int = 4) -> None:
        self.replies = [npy_reply(fake_pixels(names, size, f"reply {i}")) for i in range(distinct)]
        self.latency_s = latency_s
        self._calls = itertools.count()

    def __call__(self, params: dict) -> np.ndarray | bytes:
        serializer.encode(params["expression"])
        time.sleep(self.latency_s)
        body = bytes(memoryview(self.replies[next(self._calls) % len(self.replies)]))
        return body if params["fileFormat"] == "NPY" else np.load(io.BytesIO(body))


def measure(
    k: int,
    *,
    latency: float,
    waves: int,
    size: int,
    codec: str = "isal",
    level: int = 1,
    writers: int | None = None,
    processes: int = 1,
    tmp: str | None = None,
) -> dict[str, float]:
    """One run: achieved and ideal (``k / latency``) downloads/s, CPU seconds a
    download (all threads) and its user and system parts."""
    recipe = RecipeConfig(size=size)
    locations = [
        Location(
            cell_key=f"b{i:05d}",
            cell_id=f"cell {i}",
            year=2019,
            imagery_year=2019,
            lat=10 + i * 1e-3,
            lon=100 + i * 1e-3,
            label=1.0,
        )
        for i in range(k * waves)
    ]
    fake = RealisticReplies(recipe.record_bands, size, latency)
    extra = {} if writers is None else {"writers": writers}
    config = DownloadConfig(
        concurrency=k,
        progress=False,
        gzip_codec=codec,
        gzip_level=level,
        processes=processes,
        **extra,
    )
    with tempfile.TemporaryDirectory(dir=tmp) as out:
        start, before = time.perf_counter(), os.times()
        report = download_locations(
            locations, out_dir=out, recipe=recipe, compute_pixels=fake, config=config
        )
        seconds, after = time.perf_counter() - start, os.times()
    # os.times() counts the CPU of waited-for children: the download processes
    after_cpu = after.user + after.children_user, after.system + after.children_system
    before_cpu = before.user + before.children_user, before.system + before.children_system
    assert report.fetched == len(locations), report.summary()
    n = len(locations)
    user, system = ((a - b) / n for a, b in zip(after_cpu, before_cpu, strict=True))
    return {
        "achieved": n / seconds,
        "ideal": k / latency,
        "cpu": user + system,
        "user": user,
        "system": system,
    }


def _cell(run: dict[str, float]) -> str:
    cores = run["ideal"] * run["cpu"]
    return (
        f"{run['achieved']:6.1f} ({run['achieved'] / run['ideal']:5.3f}) "
        f"{1000 * run['cpu']:5.1f}={1000 * run['user']:4.1f}+{1000 * run['system']:4.1f} "
        f"{cores:5.2f} {min(1.0, 2 / cores):5.3f}"
    )


def main(args: argparse.Namespace) -> dict[int, float]:
    """Print achieved / ideal per codec, processes, concurrency, latency and patch size;
    return, per number of processes, the ratio of the first codec at the largest ``k``,
    the first latency and the first size (the goal's cell)."""
    codecs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.codec]
    results: dict[int, float] = {}
    loads = [os.getloadavg()[0]]
    with offline_ee():
        print(
            f"fake computePixels, {args.waves} waves per k; per latency and patch size: "
            "achieved/s (ratio to ideal k/latency), CPU ms a download = user + system "
            "(all threads and download processes), cores the ideal rate needs at that "
            "cost, bound on the ratio on 2 free cores (min(1, 2/cores))"
        )
        columns = [(lat, s) for lat in args.latency for s in args.size]
        print(
            f"{'codec':>7} {'proc':>4} {'k':>3} "
            + " ".join(
                f"{f'{1000 * lat:.0f} ms, {s} px: /s (ratio) ms cores 2-core':>45}"
                for lat, s in columns
            )
        )
        for codec, level in codecs:
            for processes in args.processes:
                for k in sorted(args.k):
                    cells = []
                    for latency, size in columns:
                        run = measure(
                            k,
                            latency=latency,
                            waves=args.waves,
                            size=size,
                            codec=codec,
                            level=level,
                            writers=args.writers,
                            processes=processes,
                            tmp=args.tmp,
                        )
                        loads.append(os.getloadavg()[0])
                        cells.append(f"{_cell(run):>45}")
                        first = (latency, size) == columns[0] and (codec, level) == codecs[0]
                        if first and k == max(args.k):
                            results[processes] = run["achieved"] / run["ideal"]
                    print(f"{f'{codec}:{level}':>7} {processes:>4} {k:>3} " + " ".join(cells))
    for processes, ratio in results.items():
        verdict = "meets" if ratio >= args.goal else "misses"
        print(
            f"ratio at k={max(args.k)}, {1000 * args.latency[0]:.0f} ms, {args.size[0]} px, "
            f"{args.codec[0]}, {processes} process(es): {ratio:.3f} ({verdict} the goal "
            f"{args.goal})"
        )
    print(
        f"load average (1 min) {min(loads):.2f}-{max(loads):.2f} on {os.cpu_count()} "
        "cores during the run"
    )
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
