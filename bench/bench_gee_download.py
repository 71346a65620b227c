"""Throughput of the direct download against a fake ``computePixels`` of fixed latency.

With ``k`` requests in flight and a latency of ``L`` seconds the ideal rate is ``k / L``
downloads per second. The benchmark runs the real downloader (expression building,
thread pool, retries bookkeeping, TFRecord writing, manifest) with a fake that sleeps
``L`` and returns small patches, and prints achieved / ideal for each ``k``. Goal:
at least 0.9 at ``k = 16``. Earth Engine is never called (the client library is set up
offline with its own test support).

    python bench/bench_gee_download.py [--latency 0.2] [--k 1 4 16] [--waves 50] [--size 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from gee_fakes import FakeComputePixels, offline_ee  # noqa: E402

from extract_GPS_images.gee_download import (  # noqa: E402
    DownloadConfig,
    Location,
    download_locations,
)
from extract_GPS_images.gee_recipe import FALLBACK_BAND, RecipeConfig  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    from utils.cli import make_parser  # noqa: PLC0415

    parser = make_parser("bench.bench_gee_download", __doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2, help="fake latency, seconds")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4, 16], help="concurrency")
    parser.add_argument("--waves", type=int, default=50, help="downloads = waves * k")
    parser.add_argument("--size", type=int, default=32, help="patch side of the fake replies")
    parser.add_argument("--goal", type=float, default=0.9, help="goal ratio at the largest k")
    return parser


def measure(k: int, *, latency: float, waves: int, size: int) -> tuple[float, float]:
    """(achieved downloads/s, ideal k/latency) of one run."""
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
    fake = FakeComputePixels([*recipe.channel_names, FALLBACK_BAND], size, latency_s=latency)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        report = download_locations(
            locations,
            out_dir=out,
            recipe=recipe,
            compute_pixels=fake,
            config=DownloadConfig(concurrency=k, progress=False),
        )
        seconds = time.perf_counter() - start
    assert report.fetched == len(locations), report.summary()
    return len(locations) / seconds, k / latency


def main(args: argparse.Namespace) -> float:
    """Print achieved / ideal per concurrency; return the ratio at the largest ``k``."""
    ratio = 0.0
    with offline_ee():
        print(
            f"fake computePixels latency {args.latency * 1000:.0f} ms, {args.size}x{args.size} "
            f"patches, {args.waves} waves per k"
        )
        print(f"{'k':>4} {'achieved/s':>11} {'ideal/s':>8} {'ratio':>6}")
        for k in sorted(args.k):
            achieved, ideal = measure(k, latency=args.latency, waves=args.waves, size=args.size)
            ratio = achieved / ideal
            print(f"{k:>4} {achieved:>11.1f} {ideal:>8.1f} {ratio:>6.3f}")
    verdict = "meets" if ratio >= args.goal else "misses"
    print(f"ratio at k={max(args.k)}: {ratio:.3f} ({verdict} the goal {args.goal})")
    return ratio


if __name__ == "__main__":
    main(get_args_parser().parse_args())
