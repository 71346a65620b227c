"""Benchmark: records/s of the synthetic world's writer per TFRecord deflate, side by side.

    python -m bench.bench_synthetic [--n 24] [--size 225] [--codec isal:1 zlib:6]

One process, one core, CPU seconds per record of rendering the bands
(``render_record``), serialising them (``encode_example``) and writing the gzip
TFRecord (``write_tfrecord`` with each codec:level); records/s = 1 / their sum, i.e.
what ``generate_world`` (``workers=1``) writes with that codec, plus the file size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from extract_GPS_images.labels import read_labels
from extract_GPS_images.synthetic import WorldConfig, invent_places, render_record
from extract_GPS_images.tfrecord import encode_example, write_tfrecord


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="records")
    parser.add_argument("--size", type=int, default=225, help="patch side")
    parser.add_argument("--codec", nargs="+", default=["isal:1", "zlib:6"])
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    cfg = WorldConfig(n=args.n, size=args.size)
    table = read_labels(invent_places(cfg)).frame
    start = time.process_time()
    records = [
        encode_example(render_record(table.iloc[i], cfg), cell_id=table.cell_id[i])
        for i in range(len(table))
    ]
    make_ms = (time.process_time() - start) / len(records) * 1000
    print(f"{len(records)} records at {args.size} px: render + encode {make_ms:.1f} ms a record")
    result = {"render_encode_ms": round(make_ms, 2)}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.codec:
            codec, level = spec.split(":")[0], int(spec.split(":")[1])
            start, size = time.process_time(), 0
            for i, record in enumerate(records):
                path = write_tfrecord(Path(tmp) / f"{i}.tfrecord.gz", [record], int(level), codec)
                size += path.stat().st_size
            write_ms = (time.process_time() - start) / len(records) * 1000
            ratio = size / sum(len(r) for r in records)
            print(
                f"{spec:>7}: write {write_ms:6.1f} ms, size ratio {ratio:.3f}, "
                f"{1000 / (make_ms + write_ms):5.2f} records/s a core"
            )
            result[spec] = {
                "write_ms": round(write_ms, 2),
                "ratio": round(ratio, 4),
                "records_per_s": round(1000 / (make_ms + write_ms), 2),
            }
    return result


if __name__ == "__main__":
    main()
