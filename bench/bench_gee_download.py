"""Throughput of the direct download against a fake ``computePixels`` of fixed latency.

With ``k`` requests in flight and a latency of ``L`` seconds the ideal rate is ``k / L``
downloads per second. The benchmark runs the real downloader (expression building,
thread pool, retries bookkeeping, TFRecord writing, manifest) with a fake that sleeps
``L`` and returns patches of each ``--size``, and prints achieved / ideal for each ``k``,
patch size and TFRecord deflate (``--codec isal:1 zlib:6``: the writer's codec and
level), side by side in one run. Goal: at least 0.9 at ``k = 16`` at the real patch size
(225 px). Earth Engine is never called (the client library is set up offline with its
own test support).

    python bench/bench_gee_download.py [--latency 0.2] [--k 1 4 16] [--waves 50]
        [--size 225 48] [--codec isal:1 zlib:6]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from gee_fakes import fake_pixels, offline_ee  # noqa: E402

from extract_GPS_images.gee_download import (  # noqa: E402
    DownloadConfig,
    Location,
    download_locations,
)
from extract_GPS_images.gee_recipe import RecipeConfig  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    from utils.cli import make_parser  # noqa: PLC0415

    parser = make_parser("bench.bench_gee_download", __doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2, help="fake latency, seconds")
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
    parser.add_argument("--goal", type=float, default=0.9, help="goal ratio at the largest k")
    return parser


class CachedReplies:
    """A fake ``computePixels`` of fixed latency whose replies (the deterministic fake
    patches of ``tests/gee_fakes.py``) are made before the clock starts: the real
    service's CPU cost on this side is decoding the reply bytes, a copy, which each
    call pays; synthesising 35 random bands at 225 px (~16 ms) is not part of it."""

    def __init__(self, names: list[str], size: int, latency_s: float, distinct: int = 4) -> None:
        self.replies = [fake_pixels(names, size, f"reply {i}") for i in range(distinct)]
        self.latency_s = latency_s
        self._calls = itertools.count()

    def __call__(self, params: dict) -> object:
        time.sleep(self.latency_s)
        return self.replies[next(self._calls) % len(self.replies)].copy()


def measure(
    k: int, *, latency: float, waves: int, size: int, codec: str = "isal", level: int = 1
) -> tuple[float, float, float]:
    """(achieved downloads/s, ideal k/latency, CPU seconds per download) of one run."""
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
    fake = CachedReplies(recipe.record_bands, size, latency)
    with tempfile.TemporaryDirectory() as out:
        start, cpu = time.perf_counter(), time.process_time()
        report = download_locations(
            locations,
            out_dir=out,
            recipe=recipe,
            compute_pixels=fake,
            config=DownloadConfig(
                concurrency=k, progress=False, gzip_codec=codec, gzip_level=level
            ),
        )
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert report.fetched == len(locations), report.summary()
    return len(locations) / seconds, k / latency, cpu / len(locations)


def main(args: argparse.Namespace) -> float:
    """Print achieved / ideal per codec, concurrency and patch size; return the ratio of
    the first codec at the largest ``k`` and the first size."""
    codecs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.codec]
    result = 0.0
    with offline_ee():
        print(
            f"fake computePixels latency {args.latency * 1000:.0f} ms, {args.waves} waves "
            "per k; per patch size: achieved/s (ratio to ideal k/latency), CPU ms per "
            "download (all threads), cores the ideal rate needs at that CPU cost"
        )
        print(
            f"{'codec':>7} {'k':>4} {'ideal/s':>8} "
            + " ".join(f"{f'{s} px: /s (ratio) ms cores':>32}" for s in args.size)
        )
        for codec, level in codecs:
            for k in sorted(args.k):
                cells = []
                for size in args.size:
                    achieved, ideal, cpu = measure(
                        k,
                        latency=args.latency,
                        waves=args.waves,
                        size=size,
                        codec=codec,
                        level=level,
                    )
                    cells.append(
                        f"{achieved:7.1f} ({achieved / ideal:5.3f}) "
                        f"{1000 * cpu:6.1f} {ideal * cpu:5.2f}"
                    )
                    if (codec, level) == codecs[0] and k == max(args.k) and size == args.size[0]:
                        result = achieved / ideal
                print(f"{f'{codec}:{level}':>7} {k:>4} {ideal:>8.1f} " + " ".join(cells))
    verdict = "meets" if result >= args.goal else "misses"
    print(
        f"ratio at k={max(args.k)}, {args.size[0]} px, {args.codec[0]}: {result:.3f} "
        f"({verdict} the goal {args.goal})"
    )
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
