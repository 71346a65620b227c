"""Benchmark: shard codecs on 225 px samples, size and encode / decode CPU, side by side.

    python -m bench.bench_codecs [--n 200] [--size 225] [--samples 30]

On the train samples of the synthetic world of ``bench.bench_loader`` (converted there on
first use), one thread: each sample as ``ChunkCodec.encode`` stores it (byte shuffle, then
the codec) and as ``utils.fast_chunks.read_sample`` gets it back (decode, unshuffle), for
Zstandard (levels 1, 3) and deflate (ISA-L levels 0-1, zlib 6: the bytes of an older
default); optional codecs (``lz4``, ``blosc``) are measured when installed, as plain
buffers. Prints compressed size / raw, encode and decode CPU ms a sample, and decode
beside Zstandard level 1's (the shards' default).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from collections.abc import Callable

import h5py
import numpy as np

from bench.bench_loader import cpu_ms, shards
from utils import hdf5_schema as hs
from utils.batching.shard_writer import ChunkCodec, write_chunk
from utils.byte_shuffle import shuffle
from utils.fast_chunks import read_sample

#: (name, compression, level) of the shard codecs measured.
CODECS: tuple[tuple[str, str, int], ...] = (
    ("zstd 1 (default)", "zstd", 1),
    ("zstd 3", "zstd", 3),
    ("deflate ISA-L 1", "gzip", 1),
    ("deflate ISA-L 0", "gzip", 0),
    ("deflate zlib 6", "gzip", 6),
)


def _ms(fn: Callable[[object], object], inputs: list) -> float:
    """Best CPU ms a call of ``fn`` on each of ``inputs`` (:func:`bench.bench_loader.cpu_ms`);
    each result is dropped before the next call, as a loader does (keeping them all
    would charge fresh memory: ~3 ms more a 5 MB sample)."""
    return cpu_ms(lambda i: fn(inputs[i]), len(inputs), repeats=3)


def shard_codec(samples: list[np.ndarray], compression: str, level: int, path: str) -> dict:
    """Size, encode and decode (``read_sample``) of ``samples`` stored by one codec."""
    codec = ChunkCodec(samples[0].shape, "float32", compression, level)
    chunks = [codec.encode(s) for s in samples]
    encode = _ms(codec.encode, samples)
    with h5py.File(path, "w") as f:
        data = f.create_dataset(
            hs.DATA, shape=(len(samples), *codec.shape), **codec.dataset_options()
        )
        for i, chunk in enumerate(chunks):
            write_chunk(data, i, chunk, codec)
    with h5py.File(path, "r") as f:
        data = f[hs.DATA]
        assert all(read_sample(data, i).tobytes() == s.tobytes() for i, s in enumerate(samples))
        decode = _ms(lambda i: read_sample(data, i), list(range(len(samples))))
    return {"size": sum(map(len, chunks)) / len(chunks), "encode": encode, "decode": decode}


def optional_codecs(samples: list[np.ndarray]) -> dict[str, dict]:
    """LZ4 (after the byte shuffle) and Blosc-LZ4 (its own shuffle), where installed."""
    rows = {}
    raw = [shuffle(s).tobytes() for s in samples]
    if importlib.util.find_spec("lz4"):
        import lz4.block  # noqa: PLC0415

        packed = [lz4.block.compress(r) for r in raw]
        rows["lz4 block (no unshuffle)"] = {
            "size": sum(map(len, packed)) / len(packed),
            "encode": _ms(lz4.block.compress, raw),
            "decode": _ms(lz4.block.decompress, packed),
        }
    if importlib.util.find_spec("blosc"):
        import blosc  # noqa: PLC0415

        blosc.set_nthreads(1)
        values = [s.tobytes() for s in samples]
        out = np.empty_like(samples[0])

        def pack(v: bytes) -> bytes:
            return blosc.compress(v, typesize=4, clevel=5, shuffle=blosc.SHUFFLE, cname="lz4")

        packed = [pack(v) for v in values]
        rows["blosc lz4 5 (unshuffled)"] = {
            "size": sum(map(len, packed)) / len(packed),
            "encode": _ms(pack, values),
            "decode": _ms(lambda p: blosc.decompress_ptr(p, out.ctypes.data), packed),
        }
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="records of the world")
    parser.add_argument("--size", type=int, default=225, help="patch side")
    parser.add_argument("--samples", type=int, default=30, help="samples measured")
    parser.add_argument("--tmp", default="/tmp", help="scratch folder for the shard files")
    args = parser.parse_args(argv)
    root = shards(args.n, args.size)
    first = sorted((root / "train").glob("*.h5"))[0]
    with h5py.File(first, "r") as f:
        samples = [read_sample(f[hs.DATA], i) for i in range(min(args.samples, len(f[hs.DATA])))]
    raw = samples[0].nbytes
    load = os.getloadavg()[0]
    rows = {}
    for name, compression, level in CODECS:
        path = os.path.join(args.tmp, f"bench_codecs_{os.getpid()}.h5")
        try:
            rows[name] = shard_codec(samples, compression, level, path)
        finally:
            if os.path.exists(path):
                os.unlink(path)
    rows.update(optional_codecs(samples))
    base = rows[CODECS[0][0]]["decode"]
    print(
        f"{len(samples)} samples {samples[0].shape} float32 ({raw / 1e6:.2f} MB) of "
        f"{root.name}, one thread, CPU ms a sample; load {load:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after"
    )
    print(f"{'codec':30} {'size/raw':>9} {'encode':>8} {'decode':>8} {'decode/default':>15}")
    for name, row in rows.items():
        print(
            f"{name:30} {row['size'] / raw:9.3f} {row['encode']:8.2f} {row['decode']:8.2f} "
            f"{row['decode'] / base:15.2f}"
        )
    result = {k: {m: round(v, 4) for m, v in r.items()} for k, r in rows.items()}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
