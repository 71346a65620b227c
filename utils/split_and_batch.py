"""Exported TFRecords -> quarantine + split by location + HDF5 shards (DESIGN section 3).

``run_split_and_batch(src, out, cfg)`` is what ``split_and_batch.ipynb`` and
``python -m utils.split_and_batch SRC OUT`` call. It

1. unzips the archives under ``src`` into ``out/extracted/`` (unsafe entries refused);
2. reads and validates every record, in parallel, streaming: valid samples are
   encoded once into staging parts (``out/.staging/part_*.chunks`` + ``part_*.h5``,
   one per ``part_files`` inputs, each written atomically), damaged ones are copied to
   ``out/quarantine/`` with their reason;
3. assigns the samples to train/val/test by location (:mod:`utils.spatial_split`);
   records without a label (places to predict) go to the ``predict`` split;
4. writes each sample's encoded chunk into ``out/<split>/<split>_00000.h5`` shards
   (written atomically, no re-encoding), computes ``stats.json`` on train and writes
   ``manifest.csv`` (one row per input record) and ``report.json``.

Memory holds one part's metadata and a few samples in flight, never the data of a
split. An interrupted run resumes from the finished parts and shards; a finished run
with the same inputs and config does nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import h5py
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from extract_GPS_images import schema
from extract_GPS_images.labels import FIRST_IMAGERY_YEAR
from utils import hdf5_schema as hs
from utils.atomic import atomic_open, atomic_path, remove_stale_temporaries
from utils.paths import resolve
from utils.quarantine import REASONS, REASONS_FILE, keep_bytes, keep_file
from utils.shard_writer import (
    COMPRESSIONS,
    DTYPES,
    STAT_GRID_PIXELS,
    TEXT,
    BandStats,
    ChunkCodec,
    SampleSummary,
    create_sample_datasets,
    stat_stride,
    write_chunk,
    write_metadata,
    write_shard_attrs,
)
from utils.spatial_split import MODES, assign_splits, check_ratios
from utils.unzip import ARCHIVE_SUFFIX, extract_archives
from utils.validate_records import RecordError, RecordRules, infer_size, read_file

RECORD_SUFFIXES: tuple[str, ...] = (".tfrecord", ".tfrecord.gz", ".tfrecords", ".tfrecords.gz")
EXTRACTED_DIR = "extracted"
QUARANTINE_DIR = "quarantine"
STAGING_DIR = ".staging"
#: Staging datasets of the per-sample summaries behind ``stats.json``.
STAT_MOMENTS, STAT_GRID = "stat_moments", "stat_grid"
#: Staging dataset of each staged chunk's (offset, size) in the part's ``.chunks`` file.
CHUNK_SPANS = "chunk_spans"
#: Version of the staging files' layout (part of the run fingerprint).
STAGING_VERSION = 3
REPORT_FILE = "report.json"
DONE_FILE = ".split_and_batch.done"
ATTR_FINGERPRINT = "run_fingerprint"
MANIFEST_COLUMNS: tuple[str, ...] = (
    "file",
    "record",
    "cell_id",
    "cell_key",
    "year",
    "imagery_year",
    "status",
    "split",
    "shard",
    "index_in_shard",
    "reason",
    "detail",
    "quarantine_file",
    "label",
    "latitude",
    "longitude",
)


@dataclass
class SplitConfig:
    """Knobs of ``split_and_batch`` (saved in every shard's ``config`` attribute)."""

    split: str = "spatial"  # "spatial" (blocks of block_km) or "random" (locations)
    block_km: float = 50.0
    ratios: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 42
    n_bins: int = 6  # equal-width label bins for stratification and the report
    shard_size: int = 512
    dtype: str = "float32"  # or "float16"
    compression: str = "gzip"  # "gzip", "lzf" or "none"
    compression_level: int = 1
    shuffle: bool = True  # HDF5 byte-shuffle filter before compression
    size: int | None = None  # patch side in pixels; None: inferred from the records
    label_range: tuple[float, float] = (-1000.0, 1000.0)
    imagery_year_floor: int = FIRST_IMAGERY_YEAR
    part_files: int = 256  # input files per staging part (the unit of resumption)
    workers: int = 2  # reader threads (no effect on the result)
    progress: bool = True  # progress bars (no effect on the result)

    def __post_init__(self) -> None:
        self.ratios = check_ratios(tuple(self.ratios))
        self.label_range = tuple(float(v) for v in self.label_range)
        for name in ("shard_size", "part_files", "workers", "n_bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def identity(self) -> dict:
        """The fields that decide the output (not ``workers``/``progress``)."""
        values = dataclasses.asdict(self)
        values.pop("workers")
        values.pop("progress")
        return values


@dataclass
class SplitReport:
    """What a run produced; also saved as ``<out>/report.json``."""

    out: str
    inputs: int
    ok: int
    quarantined: int
    per_split: dict[str, int]
    per_reason: dict[str, int]
    shards: dict[str, int]
    size: int
    label_bins: dict[str, list[int]] = field(default_factory=dict)
    bin_edges: list[float] = field(default_factory=list)
    uncovered: list[list] = field(default_factory=list)
    n_blocks: int = 0
    seconds: float = 0.0
    skipped: bool = False

    @property
    def balanced(self) -> bool:
        """Every input accounted for: ``ok + quarantined == inputs`` and splits sum to ok."""
        return (
            self.ok + self.quarantined == self.inputs
            and sum(self.per_split.values()) == self.ok
            and sum(self.per_reason.values()) == self.quarantined
        )

    def summary(self) -> str:
        """A few lines for the notebook and the CLI."""
        status = "nothing to do (outputs up to date)" if self.skipped else f"{self.seconds:.1f} s"
        lines = [
            f"{self.inputs} input records -> {self.ok} ok + {self.quarantined} quarantined "
            f"({'counts add up' if self.balanced else 'COUNTS DO NOT ADD UP'}); {status}",
            "splits: "
            + ", ".join(f"{s} {n} ({self.shards[s]} shards)" for s, n in self.per_split.items()),
            "quarantine: " + (", ".join(f"{r} {n}" for r, n in self.per_reason.items()) or "none"),
        ]
        if self.uncovered:
            lines.append(f"label bins missing from a split: {self.uncovered}")
        return "\n".join(lines)

    @classmethod
    def load(cls, out: str | Path) -> SplitReport:
        """Read ``<out>/report.json``."""
        return cls(**json.loads((Path(out) / REPORT_FILE).read_text()))


@dataclass(frozen=True)
class InputFile:
    """One record file: its name in the manifest and its path."""

    name: str
    path: Path


# ----------------------------------------------------------------------------- inputs


def _is_record_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(RECORD_SUFFIXES)


def list_inputs(src: Path) -> tuple[list[Path], list[Path]]:
    """Archives and record files under ``src`` (recursive, sorted)."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    archives = [p for p in files if p.name.lower().endswith(ARCHIVE_SUFFIX)]
    return archives, [p for p in files if _is_record_file(p)]


def input_fingerprint(src: Path, files: Iterable[Path], cfg: SplitConfig) -> str:
    """Hash of the config and each input's relative path, size and modification time."""
    identity = {**cfg.identity(), "staging_version": STAGING_VERSION}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    for path in files:
        stat = path.stat()
        digest.update(
            f"{path.relative_to(src).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()


def _ordered_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """``map`` over a thread pool, results in order, at most ``2 * workers`` in flight."""
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# ----------------------------------------------------------------------------- pass 1


def _row(file: str, record: int | str, **values) -> dict:
    row = dict.fromkeys(MANIFEST_COLUMNS)
    row.update(file=file, record=record, **values)
    return row


def _quarantine_row(file: str, record: int | str, err: RecordError, kept: str) -> dict:
    return _row(
        file,
        record,
        status="quarantined",
        reason=err.reason,
        detail=err.detail,
        quarantine_file=kept,
    )


class _PartWorker:
    """Reads, validates, encodes and summarises (for ``stats.json``) one file in a worker
    thread; quarantines what fails."""

    def __init__(self, rules: RecordRules, codec: ChunkCodec, quarantine: Path) -> None:
        self.rules, self.codec, self.quarantine = rules, codec, quarantine
        self.stride = stat_stride(rules.size * rules.size, STAT_GRID_PIXELS)
        self.grid_shape = (codec.shape[0], len(range(0, rules.size * rules.size, self.stride)))

    def __call__(self, item: InputFile) -> tuple[list, list[SampleSummary], list[dict]]:
        """Encoded chunks and summaries of the valid samples, manifest rows of every record."""
        result = read_file(item.path, self.rules)
        single_bad = len(result.records) == 1 and result.records[0].sample is None
        kept_file = (
            keep_file(self.quarantine, item.name, item.path)
            if result.file_error is not None or single_bad
            else ""
        )
        rows: list[dict] = []
        chunks, summaries = [], []
        for rec in result.records:
            if rec.sample is None:
                kept = kept_file or keep_bytes(self.quarantine, item.name, rec.payload, rec.index)
                rows.append(
                    _quarantine_row(item.name, rec.index, RecordError(rec.reason, rec.detail), kept)
                )
                continue
            s = rec.sample
            chunks.append(self.codec.encode(s.image))
            if self.codec.dtype == "float32":
                summaries.append(SampleSummary.of(s.image, self.stride, s.band_min, s.band_max))
            else:  # the statistics describe what is stored
                summaries.append(SampleSummary.of(s.image.astype(self.codec.dtype), self.stride))
            rows.append(
                _row(
                    item.name,
                    rec.index,
                    cell_id=s.cell_id,
                    cell_key=s.cell_key,
                    year=s.year,
                    imagery_year=s.imagery_year,
                    status="ok",
                    label=s.label,
                    latitude=s.latitude,
                    longitude=s.longitude,
                )
            )
        if result.file_error is not None:
            rows.append(
                _quarantine_row(item.name, len(result.records), result.file_error, kept_file)
            )
        return chunks, summaries, rows


def _chunks_path(part: Path) -> Path:
    """The plain file beside staging part ``part`` that holds its encoded chunks."""
    return part.with_suffix(".chunks")


def _write_part(
    path: Path, items: list[InputFile], worker: _PartWorker, workers: int, bar: tqdm
) -> None:
    """Process ``items`` into one staging part: the encoded chunks appended to a plain
    file (a write that releases the GIL, unlike h5py's), then an HDF5 file with each
    chunk's offset and size, the samples' summaries for ``stats.json`` and the manifest
    rows. Both are written atomically, the HDF5 file last: it marks the part done."""
    rows: list[dict] = []
    spans: list[tuple[int, int]] = []
    summaries: list[SampleSummary] = []
    with atomic_open(_chunks_path(path), "wb") as blob:
        offset = 0
        for chunks, file_summaries, file_rows in _ordered_map(worker, items, workers):
            ok = (r for r in file_rows if r["status"] == "ok")
            for chunk, row in zip(chunks, ok, strict=True):
                row["staged"] = len(spans)
                spans.append((offset, len(chunk)))
                blob.write(chunk)
                offset += len(chunk)
            summaries += file_summaries
            rows.extend(file_rows)
            bar.update(1)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        bands = worker.grid_shape[0]
        moments = np.array([s.moments for s in summaries], np.float64).reshape(-1, bands, 4)
        grid = np.array([s.grid for s in summaries], np.float32)
        handle.create_dataset(CHUNK_SPANS, data=np.array(spans, np.int64).reshape(-1, 2))
        handle.create_dataset(STAT_MOMENTS, data=moments)
        handle.create_dataset(STAT_GRID, data=grid.reshape(-1, *worker.grid_shape))
        handle.create_dataset("rows", data=[json.dumps(r) for r in rows], dtype=TEXT)


# ----------------------------------------------------------------------------- pass 2


@dataclass
class _StagedPart:
    """An open staging part: chunk spans and summaries (HDF5) and the chunk file."""

    meta: h5py.File
    spans: np.ndarray
    blob: BinaryIO

    @classmethod
    def open(cls, path: Path) -> _StagedPart:
        meta = h5py.File(path, "r")
        return cls(meta, meta[CHUNK_SPANS][:], open(_chunks_path(path), "rb"))  # noqa: SIM115

    def chunk(self, index: int) -> bytes:
        offset, size = self.spans[index]
        return os.pread(self.blob.fileno(), int(size), int(offset))

    def close(self) -> None:
        self.meta.close()
        self.blob.close()


def _write_shard(
    path: Path,
    members: pd.DataFrame,
    parts: dict[int, _StagedPart],
    codec: ChunkCodec,
    *,
    split: str,
    source: str,
    config: dict,
    fingerprint: str,
) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        create_sample_datasets(handle, codec, len(members))
        write_shard_attrs(handle, split=split, source=source, config=config)
        handle.attrs[ATTR_FINGERPRINT] = fingerprint
        target = handle[hs.DATA]
        for i, (part, staged) in enumerate(zip(members["part"], members["staged"], strict=True)):
            write_chunk(target, i, parts[part].chunk(int(staged)), codec)
        write_metadata(handle, members.to_dict("records"))


def _train_stats(
    manifest: pd.DataFrame, parts: dict[int, _StagedPart], stats: BandStats, pixels: int
) -> None:
    """Add the staged summaries of the train samples to ``stats``, one part at a time."""
    train = manifest[manifest["split"] == "train"]
    for k, members in train.groupby("part"):
        index = np.sort(members["staged"].astype(int).to_numpy())
        meta = parts[int(k)].meta
        stats.add(meta[STAT_MOMENTS][index], meta[STAT_GRID][index], pixels)


def _shard_done(path: Path, fingerprint: str) -> bool:
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as handle:
            return handle.attrs.get(ATTR_FINGERPRINT) == fingerprint
    except OSError:
        return False


def _clear_outputs(out: Path) -> None:
    """Remove what an earlier run with other inputs or config left (never ``extracted/``)."""
    for name in (*hs.ALL_SPLITS, QUARANTINE_DIR, STAGING_DIR):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (hs.MANIFEST_FILE, hs.STATS_FILE, REPORT_FILE, DONE_FILE):
        (out / name).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the run


def run_split_and_batch(
    src: str | Path, out: str | Path, cfg: SplitConfig | None = None
) -> SplitReport:
    """Convert the exports under ``src`` into split HDF5 shards under ``out``.

    Args:
        src: folder of exported TFRecords and/or ``.zip`` downloads (nested folders ok).
        out: output folder: ``train/ val/ test/`` shards, ``manifest.csv``,
            ``stats.json``, ``quarantine/``, ``report.json``.
        cfg: the :class:`SplitConfig` (defaults if ``None``).

    Returns:
        The :class:`SplitReport` (also in ``out/report.json``).

    Raises:
        FileNotFoundError: ``src`` is not a folder.
        ValueError: ``out`` inside ``src``, a bad config, or bands that are not square
            patches (give ``cfg.size``).
    """
    cfg = cfg or SplitConfig()
    start = time.perf_counter()
    src, out = resolve(src), resolve(out)
    if not src.is_dir():
        raise FileNotFoundError(
            f"no export folder {src}; run extract_GPS_images/image.ipynb first (or give SRC)"
        )
    if out.resolve().is_relative_to(src.resolve()):
        raise ValueError(f"the output folder {out} may not lie inside the source folder {src}")
    archives, record_files = list_inputs(src)
    fingerprint = input_fingerprint(src, [*archives, *record_files], cfg)
    done = out / DONE_FILE
    if done.is_file() and done.read_text() == fingerprint and (out / REPORT_FILE).is_file():
        report = SplitReport.load(out)
        report.skipped = True
        return report

    staging, quarantine = out / STAGING_DIR, out / QUARANTINE_DIR
    stamp = staging / "fingerprint"
    if not (stamp.is_file() and stamp.read_text() == fingerprint):
        _clear_outputs(out)
        staging.mkdir(parents=True)
        stamp.write_text(fingerprint)
    quarantine.mkdir(parents=True, exist_ok=True)
    for folder in (out, staging, quarantine, *(out / s for s in hs.ALL_SPLITS)):
        if folder.is_dir():
            remove_stale_temporaries(folder)

    # 1. unzip
    unzipped = extract_archives(src, out / EXTRACTED_DIR)
    rows: list[dict] = []
    for problem in unzipped.problems:
        name = problem.archive.relative_to(out if problem.archive.is_relative_to(out) else src)
        name = name.as_posix() + (f"!{problem.entry}" if problem.entry else "")
        if problem.payload is not None:
            kept = keep_bytes(quarantine, name, problem.payload)
        else:
            kept = keep_file(quarantine, name, problem.archive) if not problem.entry else ""
        rows.append(_quarantine_row(name, "", RecordError(problem.reason, problem.detail), kept))
    items = [InputFile(p.relative_to(src).as_posix(), p) for p in record_files]
    for archive in unzipped.archives:
        target = (
            out / EXTRACTED_DIR / archive.relative_to(src).with_suffix("")
            if archive.is_relative_to(src)
            else archive.with_suffix("")
        )
        if target.is_dir():
            items += [
                InputFile(p.relative_to(out).as_posix(), p)
                for p in sorted(target.rglob("*"))
                if _is_record_file(p)
            ]
    items = sorted(set(items), key=lambda item: item.name)

    # 2. read, validate, stage
    size = cfg.size or infer_size([i.path for i in items]) or 1  # 1: nothing is readable
    codec = ChunkCodec(
        (len(schema.image_band_names()), size, size),
        cfg.dtype,
        cfg.compression,
        cfg.compression_level,
        cfg.shuffle,
    )
    rules = RecordRules(size, cfg.label_range, imagery_year_floor=cfg.imagery_year_floor)
    worker = _PartWorker(rules, codec, quarantine)
    groups = [items[i : i + cfg.part_files] for i in range(0, len(items), cfg.part_files)]
    part_paths = [staging / f"part_{k:05d}.h5" for k in range(len(groups))]
    with tqdm(total=len(items), desc="read + validate", disable=not cfg.progress) as bar:
        for path, group in zip(part_paths, groups, strict=True):
            if path.is_file():
                bar.update(len(group))
                continue
            _write_part(path, group, worker, cfg.workers, bar)

    # 3. split
    for k, path in enumerate(part_paths):
        with h5py.File(path, "r") as handle:
            for text in handle["rows"].asstr()[:]:
                rows.append({**json.loads(text), "part": k})
    manifest = pd.DataFrame(rows, columns=[*MANIFEST_COLUMNS, "part", "staged"], dtype=object)
    ok = manifest[manifest["status"] == "ok"]
    places = ok[ok["label"].astype(float).isna()]  # no label: to predict, never train/val/test
    manifest.loc[places.index, "split"] = hs.PREDICT
    labelled = ok.drop(index=places.index)
    result = assign_splits(
        labelled[["cell_id", "latitude", "longitude", "label"]].astype(
            {"latitude": float, "longitude": float, "label": float}
        ),
        mode=cfg.split,
        ratios=cfg.ratios,
        seed=cfg.seed,
        block_km=cfg.block_km,
        n_bins=cfg.n_bins,
    )
    manifest.loc[labelled.index, "split"] = result.split
    splits = (*hs.SPLITS, hs.PREDICT) if len(places) else hs.SPLITS

    # 4. shards + train statistics
    stats = BandStats(schema.image_band_names(), rules.reflectance_range)
    handles = {k: _StagedPart.open(p) for k, p in enumerate(part_paths)}
    shard_counts = {}
    try:
        for split in splits:
            members = manifest[manifest["split"] == split]
            starts = range(0, len(members), cfg.shard_size)
            shard_counts[split] = len(starts)
            for j, first in enumerate(
                tqdm(starts, desc=f"{split} shards", disable=not cfg.progress)
            ):
                chunk = members.iloc[first : first + cfg.shard_size]
                path = out / split / hs.shard_name(split, j)
                manifest.loc[chunk.index, "shard"] = f"{split}/{path.name}"
                manifest.loc[chunk.index, "index_in_shard"] = np.arange(len(chunk))
                if not _shard_done(path, fingerprint):
                    _write_shard(
                        path,
                        chunk.astype({"staged": int, "year": int, "imagery_year": int}),
                        handles,
                        codec,
                        split=split,
                        source=str(src),
                        config=cfg.identity(),
                        fingerprint=fingerprint,
                    )
        _train_stats(manifest, handles, stats, size * size)
    finally:
        for handle in handles.values():
            handle.close()

    # 5. manifest, reasons, stats, report
    table = manifest[list(MANIFEST_COLUMNS)]
    with atomic_open(out / hs.MANIFEST_FILE) as handle:
        table.to_csv(handle, index=False, lineterminator="\n")
    bad = table[table["status"] == "quarantined"]
    with atomic_open(quarantine / REASONS_FILE) as handle:
        bad[["file", "record", "reason", "detail", "quarantine_file"]].to_csv(
            handle, index=False, lineterminator="\n"
        )
    with atomic_open(out / hs.STATS_FILE) as handle:
        json.dump(stats.result("train"), handle, indent=1)
    counts = bad["reason"].value_counts()
    report = SplitReport(
        out=str(out),
        inputs=len(table),
        ok=len(ok),
        quarantined=len(bad),
        per_split={s: int((table["split"] == s).sum()) for s in splits},
        per_reason={r: int(counts[r]) for r in REASONS if r in counts},
        shards=shard_counts,
        size=size,
        label_bins={s: result.counts.loc[s].astype(int).tolist() for s in hs.SPLITS},
        bin_edges=result.bin_edges.tolist(),
        uncovered=[list(u) for u in result.uncovered],
        n_blocks=int(len(np.unique(result.block))),
        seconds=time.perf_counter() - start,
    )
    with atomic_open(out / REPORT_FILE) as handle:
        json.dump(dataclasses.asdict(report), handle, indent=1)
    with atomic_open(done) as handle:
        handle.write(fingerprint)
    shutil.rmtree(staging, ignore_errors=True)
    return report


# ----------------------------------------------------------------------------- CLI


def get_args_parser() -> argparse.ArgumentParser:
    """Options of ``python -m utils.split_and_batch SRC OUT``."""
    d = SplitConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="folder of exported TFRecords / .zip downloads")
    parser.add_argument("out", help="output folder of the shards")
    parser.add_argument("--split", choices=MODES, default=d.split)
    parser.add_argument("--block-km", type=float, default=d.block_km)
    parser.add_argument(
        "--ratios", type=float, nargs=3, default=list(d.ratios), metavar=("TRAIN", "VAL", "TEST")
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--n-bins", type=int, default=d.n_bins)
    parser.add_argument("--shard-size", type=int, default=d.shard_size)
    parser.add_argument("--dtype", choices=DTYPES, default=d.dtype)
    parser.add_argument("--compression", choices=COMPRESSIONS, default=d.compression)
    parser.add_argument("--compression-level", type=int, default=d.compression_level)
    parser.add_argument("--size", type=int, default=None, help="patch side (default: inferred)")
    parser.add_argument(
        "--label-range", type=float, nargs=2, default=list(d.label_range), metavar=("LOW", "HIGH")
    )
    parser.add_argument("--part-files", type=int, default=d.part_files)
    parser.add_argument("--workers", type=int, default=d.workers)
    parser.add_argument("--no-progress", action="store_true")
    return parser


def config_from_args(args: argparse.Namespace) -> SplitConfig:
    """The :class:`SplitConfig` of parsed CLI arguments."""
    return SplitConfig(
        split=args.split,
        block_km=args.block_km,
        ratios=tuple(args.ratios),
        seed=args.seed,
        n_bins=args.n_bins,
        shard_size=args.shard_size,
        dtype=args.dtype,
        compression=args.compression,
        compression_level=args.compression_level,
        size=args.size,
        label_range=tuple(args.label_range),
        part_files=args.part_files,
        workers=args.workers,
        progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> SplitReport:
    """Entry point of ``python -m utils.split_and_batch``."""
    args = get_args_parser().parse_args(argv)
    report = run_split_and_batch(args.src, args.out, config_from_args(args))
    print(report.summary())
    return report


if __name__ == "__main__":
    main()
