"""Benchmark: bombs cost one quarantined input each and bounded memory; the CRC check's
cost on the conversion.

    python -m bench.bench_hostile_inputs [--bomb-gb 0.5 1.0] [--n 300] [--size 64] [--repeats 3]

1. **Bombs**: four inputs of about a megabyte each, beside a few good files, that would
   inflate to ``--bomb-gb`` GB each (4 x 0.5 GB, then 4 x 1 GB by default):

   * ``zeros.tfrecord.gz``: a gzip stream of zeros (no TFRecord framing at all);
   * ``huge_record.tfrecord.gz``: a valid length field (with its CRC) announcing a
     record of 2 GB, then zeros;
   * ``repeated.tfrecord.gz``: one valid record (an all-zero image) repeated until the
     stream is ``--bomb-gb`` GB: valid records up to the per-file inflate cap;
   * ``bomb.zip``: one zip entry of ``--bomb-gb`` GB of zeros.

   ``run_split_and_batch`` runs over them in a fresh process, which prints its own peak
   memory (max RSS); a good-files-only run gives the baseline. Goal: under 1 GB, the
   same whatever the bombs inflate to, and each bomb ONE quarantined row of the manifest.
2. **CRC cost**: the full conversion of ``--n`` good records of ``--size`` pixels with
   and without the CRC check (``SplitConfig.check_crc``), alternating in one process,
   best of ``--repeats``. Goal: the rate with the check within 5 % of the rate without.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np

from extract_GPS_images.tfrecord import encode_example, frame_record, sample_bands, write_tfrecord
from utils.batching.crc32c import masked_crc
from utils.batching.split_and_batch import SplitConfig, run_split_and_batch
from utils.batching.validate_records import ReadLimits, iter_frames

CHUNK = 16 << 20
BOMBS = (
    "zeros.tfrecord.gz",
    "huge_record.tfrecord.gz",
    "repeated.tfrecord.gz",
    "bomb.zip!zeros.tfrecord",
)


def good_record(seed: int, size: int) -> bytes:
    """A valid record at a place of its own."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.01, 0.5, (25, size, size)).astype(np.float32)
    image[24] = rng.integers(0, 9, (size, size))
    meta = {
        "label": 0.5 + (seed % 25) * 0.1,
        "latitude": -40 + (seed * 0.37) % 80,
        "longitude": -170 + (seed * 1.91) % 340,
        "year": 2019,
        "imagery_year": 2019,
    }
    return encode_example(sample_bands(image, meta), cell_id=f"cell-{seed}")


def _deflate_stream(handle, prefix: bytes, unit: bytes, total: int, wbits: int) -> None:
    """Write ``prefix`` then ``unit`` repeated to ``total`` bytes, deflated (level 9)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    handle.write(compressor.compress(prefix))
    block = unit * max(1, CHUNK // len(unit))
    written = len(prefix)
    while written < total:
        handle.write(compressor.compress(block))
        written += len(block)
    handle.write(compressor.flush())


def write_bombs(src: Path, inflated: int, size: int) -> int:
    """Write the four bombs; return their total size on disk."""
    with open(src / "zeros.tfrecord.gz", "wb") as handle:
        _deflate_stream(handle, b"", b"\0", inflated, 31)
    header = struct.pack("<Q", 2 << 30)
    with open(src / "huge_record.tfrecord.gz", "wb") as handle:
        _deflate_stream(handle, header + struct.pack("<I", masked_crc(header)), b"\0", inflated, 31)
    zero = np.zeros((25, size, size), np.float32)
    meta = {"label": 1.0, "latitude": 0.5, "longitude": 0.5, "year": 2019, "imagery_year": 2019}
    frame = frame_record(encode_example(sample_bands(zero, meta), cell_id="zero"))
    with open(src / "repeated.tfrecord.gz", "wb") as handle:
        _deflate_stream(handle, b"", frame, inflated, 31)
    with zipfile.ZipFile(src / "bomb.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("zeros.tfrecord", "w", force_zip64=True) as entry:
            zeros = bytes(CHUNK)
            for _ in range(inflated // CHUNK):
                entry.write(zeros)
    return sum((src / b.split("!")[0]).stat().st_size for b in BOMBS)


CHILD = """
import json, resource, sys, time
from utils.batching.split_and_batch import SplitConfig, run_split_and_batch
from utils.batching.validate_records import ReadLimits, iter_frames
start = time.perf_counter()
report = run_split_and_batch(sys.argv[1], sys.argv[2], SplitConfig(progress=False, split="random"))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak": peak, "seconds": time.perf_counter() - start, "ok": report.ok}))
"""


def _child(src: Path, out: Path) -> dict:
    """Run the conversion in a fresh process; its peak memory, seconds and ok count."""
    path = os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(src), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    )
    if child.returncode:
        raise SystemExit(child.stderr)
    return json.loads(child.stdout.strip().splitlines()[-1])


def bomb_run(inflated: int, size: int, work: Path) -> None:
    """Convert good files alone, then beside the bombs; print what became of each bomb
    and both peaks."""
    good, src = work / "good_only", work / "bombs"
    for folder in (good, src):
        folder.mkdir()
        for i in range(12):
            write_tfrecord(folder / f"good{i:02d}_2019.tfrecord.gz", [good_record(i, size)])
    started = time.perf_counter()
    on_disk = write_bombs(src, inflated, size)
    made = time.perf_counter() - started
    baseline = _child(good, work / "good_out")
    out = work / "bombs_out"
    result = _child(src, out)
    import pandas as pd  # noqa: PLC0415

    manifest = pd.read_csv(out / "manifest.csv", dtype=str)
    print(
        f"bombs: {len(BOMBS)} files, {on_disk / 1e6:.1f} MB on disk, would inflate to "
        f"{len(BOMBS) * inflated / 1e9:.1f} GB (written in {made:.0f} s)"
    )
    for name in BOMBS:
        rows = manifest[manifest["file"] == name]
        pairs = zip(rows["reason"], rows["detail"].fillna(""), strict=True)
        reasons = ", ".join(f"{r} ({d[:70]})" for r, d in pairs)
        print(f"  {name}: {len(rows)} manifest row(s), {reasons}")
    quarantined = sorted(p.name for p in (out / "quarantine").iterdir())
    print(f"  quarantine/ holds {len(quarantined)} file(s): {quarantined}")
    print(
        f"  peak memory (fresh process, max RSS): {result['peak'] / 2**20:.0f} MiB with the "
        f"bombs (goal < 1024 MiB), {baseline['peak'] / 2**20:.0f} MiB for the good files "
        f"alone; {result['ok']} good records converted in {result['seconds']:.1f} s"
    )


def crc_cost(n: int, size: int, repeats: int, work: Path) -> None:
    """Conversion rates with and without the CRC check, alternating, best of
    ``repeats``: by wall time and by CPU time of the process (the fairer one on a
    loaded machine), and the read loop alone (``iter_frames``)."""
    src = work / "good"
    src.mkdir()
    for i in range(n):
        write_tfrecord(src / f"g{i:05d}_2019.tfrecord.gz", [good_record(i, size)], level=1)
    files = sorted(src.iterdir())
    best: dict[tuple[str, bool], float] = {}
    for r in range(repeats):
        for check in (True, False) if r % 2 == 0 else (False, True):
            out = work / f"crc_{check}_{r}"
            cfg = SplitConfig(progress=False, split="random", check_crc=check, size=size)
            wall, cpu = time.perf_counter(), time.process_time()
            report = run_split_and_batch(src, out, cfg)
            rates = {
                "wall": report.ok / (time.perf_counter() - wall),
                "cpu": report.ok / (time.process_time() - cpu),
            }
            limits = ReadLimits.for_size(size, check_crc=check)
            cpu = time.process_time()
            count = sum(1 for f in files for _ in iter_frames(f, limits))
            rates["read"] = count / (time.process_time() - cpu)
            for kind, rate in rates.items():
                best[kind, check] = max(best.get((kind, check), 0.0), rate)
            shutil.rmtree(out)
    print(f"CRC cost ({n} records of {size}x{size} px, best of {repeats}; goal: ratio >= 0.95):")
    for kind, what in (
        ("wall", "conversion, wall time"),
        ("cpu", "conversion, CPU time"),
        ("read", "read loop alone, CPU time"),
    ):
        on, off = best[kind, True], best[kind, False]
        print(f"  {what}: with the check {on:.0f} records/s, without {off:.0f} -> {on / off:.3f}")


def main(argv: list[str] | None = None) -> None:
    """Run both measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bomb-gb", type=float, nargs="+", default=[0.5, 1.0], help="inflated size of each bomb"
    )
    parser.add_argument("--bomb-size", type=int, default=16, help="patch side of the bomb run")
    parser.add_argument("--n", type=int, default=300, help="good records for the CRC cost")
    parser.add_argument("--size", type=int, default=64, help="their patch side")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_hostile_") as tmp:
        work = Path(tmp)
        for k, gb in enumerate(args.bomb_gb):  # peak memory flat whatever they inflate to
            (work / f"b{k}").mkdir()
            bomb_run(int(gb * 2**30), args.bomb_size, work / f"b{k}")
        crc_cost(args.n, args.size, args.repeats, work)


if __name__ == "__main__":
    main()
