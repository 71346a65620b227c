"""Benchmark: predicting places without labels (``utils.maps.maps.predict_map``): places per
second (shard reading + decoding + model + writing the map files) on CPU, and peak memory
at two numbers of places, each in a fresh process.

    python -m bench.bench_predict [--places 10000 40000] [--size 64] [--model tiny_cnn]

Set-up (cached under ``--workdir``, default ``runs/bench/predict``): a synthetic world of
``--train`` places at ``--size`` px, converted and trained for one epoch (the checkpoint
only has to run; its skill does not matter here); one shard file of 512 real synthetic
places of a 6,750 m grid (gzip chunks as ``split_and_batch`` writes them), linked as many
times as a run needs places (the disk holds one copy; every place is read and decoded).

Each size runs ``predict_map`` in a fresh Python process (calibration on the training
run's val split included) and reports its wall time, places/s and peak RSS. Goal: peak
memory flat within 20 % from the smaller to the larger number of places.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from utils import hdf5_schema as hs  # noqa: E402
from utils.paths import project_root  # noqa: E402

SHARD = 512


def prepare(workdir: Path, size: int, model: str, n_train: int) -> tuple[Path, Path]:
    """The trained checkpoint and the one predict shard file (built on first use)."""
    from extract_GPS_images.grid import Grid, make_grid, write_places  # noqa: PLC0415
    from extract_GPS_images.synthetic import generate_world  # noqa: PLC0415
    from utils.batching.split_and_batch import SplitConfig, run_split_and_batch  # noqa: PLC0415
    from utils.train import TrainConfig, fit  # noqa: PLC0415

    checkpoint = workdir / "train" / model / "best.pt"
    shard = workdir / "places" / hs.PREDICT / hs.shard_name(hs.PREDICT, 0)
    if not checkpoint.is_file():
        generate_world(workdir / "exports", n=n_train, size=size, seed=0, corrupt_fraction=0.0)
        run_split_and_batch(
            workdir / "exports", workdir / "shards", SplitConfig(split="random", progress=False)
        )
        fit(
            TrainConfig(
                run_dir=str(workdir),
                experiment=model,
                model=model,
                crop=None,
                epochs=1,
                batch_size=64,
                device="cpu",
                progress=False,
                tensorboard=False,
            )
        )
    if not shard.is_file():
        grid = make_grid((15.0, 17.0, 105.0, 107.0), years=(2019,))
        frame = grid.frame.iloc[:SHARD]
        write_places(Grid(frame, grid.crs, grid.cell_m, grid.origin), workdir / "places.csv")
        generate_world(
            workdir / "places_exports",
            labels=workdir / "places.csv",
            n=n_train,
            size=size,
            seed=0,
            corrupt_fraction=0.0,
        )
        run_split_and_batch(
            workdir / "places_exports",
            workdir / "places",
            SplitConfig(shard_size=SHARD, progress=False),
        )
    return checkpoint, shard


def link_places(workdir: Path, shard: Path, n: int) -> Path:
    """A shards folder whose ``predict`` split holds ``n`` places (whole shard files)."""
    folder = workdir / f"n{n}"
    split = folder / hs.PREDICT
    shutil.rmtree(folder, ignore_errors=True)
    split.mkdir(parents=True)
    shutil.copy(shard.parent.parent / hs.STATS_FILE, folder / hs.STATS_FILE)
    for k in range(math.ceil(n / SHARD)):
        (split / hs.shard_name(hs.PREDICT, k)).symlink_to(shard)
    return folder


def child(checkpoint: str, shards: str, out: str, batch_size: int) -> None:
    """One measured run (in a fresh process): prints a JSON line."""
    import torch  # noqa: PLC0415

    from utils.maps.maps import MapConfig, predict_map  # noqa: PLC0415

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    start = time.perf_counter()
    result = predict_map(
        MapConfig(
            checkpoint=checkpoint,
            shards_dir=shards,
            out_dir=out,
            batch_size=batch_size,
            device="cpu",
            progress=False,
        )
    )
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "places": result.n,
                "seconds": seconds,
                "places_per_s": result.n / seconds,
                "peak_rss_mib": peak_mib,
                "geotiffs": len(result.geotiffs),
            }
        )
    )


def run_size(checkpoint: Path, folder: Path, batch_size: int) -> dict:
    """Run :func:`child` for one shards folder in a fresh Python process."""
    cmd = [
        sys.executable,
        "-m",
        "bench.bench_predict",
        "--child",
        str(checkpoint),
        str(folder),
        str(folder / "out"),
        "--batch-size",
        str(batch_size),
    ]
    env = {**os.environ, "PYTHONPATH": str(project_root())}
    done = subprocess.run(
        cmd, capture_output=True, text=True, cwd=project_root(), env=env, check=False
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m bench.bench_predict``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--places", type=int, nargs="+", default=[10_000, 40_000])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--model", default="tiny_cnn")
    parser.add_argument("--train", type=int, default=600, help="places of the training world")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workdir", default="runs/bench/predict")
    parser.add_argument(
        "--child", nargs=3, metavar=("CKPT", "SHARDS", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child, batch_size=args.batch_size)
        return
    workdir = project_root() / args.workdir / f"s{args.size}_{args.model}"
    checkpoint, shard = prepare(workdir, args.size, args.model, args.train)
    rows = []
    for n in args.places:
        row = run_size(checkpoint, link_places(workdir, shard, n), args.batch_size)
        rows.append(row)
        print(
            f"{row['places']:>7} places: {row['seconds']:7.1f} s, {row['places_per_s']:7.1f} "
            f"places/s, peak RSS {row['peak_rss_mib']:7.1f} MiB",
            flush=True,
        )
    if len(rows) > 1:
        ratio = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
        print(
            f"peak memory {rows[-1]['places']} / {rows[0]['places']} places: {ratio:.3f} "
            f"({'flat within 20 %' if ratio <= 1.2 else 'NOT flat within 20 %'}); "
            f"{args.model} at {args.size} px on {os.cpu_count()} CPU cores"
        )


if __name__ == "__main__":
    main()
