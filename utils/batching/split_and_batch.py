"""Exported TFRecords -> quarantine + split by location + HDF5 shards (docs/design.md).

``run_split_and_batch(src, out, cfg)`` is what ``split_and_batch.ipynb`` and
``python -m utils.batching.split_and_batch --run-dir RUN`` (or ``SRC OUT``) call. It

1. unzips the archives under ``src`` into ``out/extracted/`` (unsafe entries refused);
2. reads and validates every record, in parallel, streaming: valid samples are
   encoded once into staging parts (``out/.staging/part_*.chunks`` + ``part_*.h5``,
   one per ``part_files`` inputs, each written atomically), damaged ones are copied to
   ``out/quarantine/`` with their reason;
3. assigns the samples to train/val/test by location (:mod:`utils.batching.spatial_split`);
   records without a label (places to predict) go to the ``predict`` split;
4. writes each sample's encoded chunk into ``out/<split>/<split>_00000.h5`` shards
   (written atomically, no re-encoding, one shard per task of a pool of ``workers``
   processes), computes ``stats.json`` on train and writes ``manifest.csv`` (one row
   per input record) and ``report.json``.

With a Dask scheduler (``cfg.scheduler``) or client, the staging parts of step 2 and
the shards of step 4 are tasks of the cluster (:mod:`utils.batching.executors`); every
path must be on storage its workers see. The outputs are the same bytes either way.

Memory holds one part's metadata and a few samples in flight, never the data of a
split; per record of the run only a few NumPy columns (what the split, the duplicate
check and the shards need: :mod:`utils.batching.staged_records`), while the manifest
rows stay in the staging parts and are streamed from there into ``manifest.csv``. An
interrupted run resumes from the finished parts and shards; a finished run with the
same inputs and config does nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import mmap
import os
import shutil
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import h5py
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from extract_GPS_images import schema
from extract_GPS_images.labels import FIRST_IMAGERY_YEAR
from utils import hdf5_schema as hs
from utils.atomic import atomic_open, atomic_path, remove_stale_temporaries
from utils.batching import record_quality as rq
from utils.batching.duplicates import REASON as DUPLICATE
from utils.batching.duplicates import duplicate_detail
from utils.batching.executors import TaskRunner, task_runner
from utils.batching.input_tree import Entry, file_kind, scan_inputs, skipped_kinds
from utils.batching.page_cache import drop_pages, write_behind
from utils.batching.quarantine import REASONS, REASONS_FILE, keep_bytes, keep_file
from utils.batching.shard_writer import (
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
from utils.batching.spatial_split import MODES, SplitResult, assign_splits, check_ratios
from utils.batching.staged_records import (
    BAND_LENGTH,
    ROWS,
    StagedRecords,
    duplicate_key,
    read_rows,
)
from utils.batching.unzip import extract_archives
from utils.batching.validate_records import (
    RecordError,
    RecordResult,
    RecordRules,
    first_record_layout,
    inflate_cap,
    iter_results,
)
from utils.heap import release_heap, reuse_freed_memory
from utils.ownership import OutputFolder, guard_output
from utils.paths import resolve

#: The manifest's reason of a skipped entry (a file that is no TFRecord or archive).
SKIP_REASON = "not_an_input"
EXTRACTED_DIR = "extracted"
QUARANTINE_DIR = "quarantine"
STAGING_DIR = ".staging"
#: The staging folder's stamp: the run fingerprint (and the settled patch size).
STAMP_FILE = "fingerprint"
#: Staging datasets of the per-sample summaries behind ``stats.json``.
STAT_MOMENTS, STAT_GRID = "stat_moments", "stat_grid"
#: Staging dataset of each staged chunk's (offset, size) in the part's ``.chunks`` file.
CHUNK_SPANS = "chunk_spans"
#: Version of the staging files' layout (part of the run fingerprint).
STAGING_VERSION = 4
#: Staging datasets of each staged sample's packed valid mask and clear shares.
STAGED_MASK, STAGED_CLEAR = "mask_bits", "clear"
REPORT_FILE = "report.json"
DONE_FILE = ".split_and_batch.done"
#: Separates the fingerprint and the settled patch size in the staging stamp.
SIZE_MARK = "|size="
STAGE = "split_and_batch"
#: The files of the output folder's top level this stage writes (and may replace).
OUTPUT_FILES: tuple[str, ...] = (hs.MANIFEST_FILE, hs.STATS_FILE, REPORT_FILE, DONE_FILE)
#: Patch side assumed for the zip-entry cap while the size is not known yet (the
#: default recipe's 225 px).
DEFAULT_PATCH = 225
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
    "valid_share",
    "clear_share",
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
    compression: str = "zstd"  # "zstd", "gzip", "lzf" or "none"
    compression_level: int = 1
    shuffle: bool = True  # HDF5 byte-shuffle filter before compression
    size: int | None = None  # patch side in pixels; None: inferred from the records
    label_range: tuple[float, float] = (-1000.0, 1000.0)
    imagery_year_floor: int = FIRST_IMAGERY_YEAR
    year: int | None = None  # year of original-schema files whose name lacks it
    min_valid: float = 0.5  # patches with a smaller valid-pixel share: mostly_nodata
    min_clear: float = 0.0  # patches with a smaller clear share (mean of quarters): cloudy
    # optional channel groups kept after DW (("NL",): night lights); None: as the records
    extra_channels: tuple[str, ...] | None = None
    check_crc: bool = True  # both masked CRC-32C of every TFRecord record
    follow_links: bool = False  # read symbolic links whose target lies inside the source
    max_inflate_bytes: int | None = None  # per input file; None: derived from the size
    part_files: int = 256  # input files per staging part (the unit of resumption)
    workers: int = 2  # reader threads and shard-writer processes (no effect on the result)
    progress: bool = True  # progress bars (no effect on the result)
    # a Dask scheduler ("tcp://host:port"): parts and shards are written by its workers,
    # which must see every path at the same place (no effect on the result)
    scheduler: str | None = None

    def __post_init__(self) -> None:
        self.ratios = check_ratios(tuple(self.ratios))
        self.label_range = tuple(float(v) for v in self.label_range)
        for name in ("shard_size", "part_files", "workers", "n_bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        # dtype, compression and its level are refused here, before any input is read
        ChunkCodec((1, 1, 1), self.dtype, self.compression, self.compression_level)

    def identity(self) -> dict:
        """The fields that decide the output (not ``workers``/``progress``/``scheduler``)."""
        values = dataclasses.asdict(self)
        for name in ("workers", "progress", "scheduler"):
            values.pop(name)
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
    skipped: bool = False  # nothing to do: the outputs were up to date
    skipped_files: int = 0  # entries of other kinds (labels.csv, .png, ...), in the manifest
    skipped_kinds: dict[str, int] = field(default_factory=dict)  # their count per suffix
    entries: int = 0  # entries (non-folders) under the source folder
    size_mix: dict[str, int] = field(default_factory=dict)  # records per patch size read

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
            f"skipped {self.skipped_files} file(s) of other kinds"
            + (
                f": {', '.join(f'{k} {n}' for k, n in self.skipped_kinds.items())}"
                if self.skipped_kinds
                else ""
            ),
        ]
        if len(self.size_mix) > 1:
            lines.append(f"patch sizes read (records): {self.size_mix}; kept {self.size}")
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
    return path.is_file() and not path.is_symlink() and file_kind(path.name) == "record"


def list_inputs(src: Path, follow_links: bool = False) -> tuple[list[Path], list[Path]]:
    """Archives and record files under ``src`` (recursive, sorted; see
    :func:`utils.batching.input_tree.scan_inputs` for links)."""
    entries = scan_inputs(src, follow_links)
    return [e.path for e in entries if e.kind == "archive"], [
        e.path for e in entries if e.kind == "record"
    ]


def input_fingerprint(src: Path, entries: Iterable[Entry], cfg: SplitConfig) -> str:
    """Hash of the config and each entry's name, kind, size and modification time (of
    the entry itself: a link's own, never a special file's contents)."""
    identity = {**cfg.identity(), "staging_version": STAGING_VERSION}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    for entry in entries:
        stat = os.stat(entry.path, follow_symlinks=False)
        digest.update(f"{entry.name}|{entry.kind}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class InputError(ValueError):
    """Inputs a run cannot be made of: no records at all, or an empty split."""


def _entry_rows(entries: list[Entry]) -> list[dict]:
    """Manifest rows of the entries that are not read: links and special files
    (quarantined, nothing copied) and files of other kinds (skipped)."""
    rows = []
    for e in entries:
        if e.kind in ("link", "special"):
            reason = "link" if e.kind == "link" else "special_file"
            rows.append(_quarantine_row(e.name, "", RecordError(reason, e.detail), ""))
        elif e.kind == "other":
            rows.append(_row(e.name, "", status="skipped", reason=SKIP_REASON, detail=e.detail))
    return rows


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
    row = _row(
        file,
        record,
        status="quarantined",
        reason=err.reason,
        detail=err.detail,
        quarantine_file=kept,
    )
    if err.band_length is not None:
        row[BAND_LENGTH] = err.band_length
    return row


class _PartWorker:
    """Reads, validates, encodes and summarises (for ``stats.json``) one file in a worker
    thread; quarantines what fails."""

    def __init__(self, rules: RecordRules, codec: ChunkCodec, quarantine: Path) -> None:
        self.rules, self.codec, self.quarantine = rules, codec, quarantine
        self.stride = stat_stride(rules.size * rules.size, STAT_GRID_PIXELS)
        self.grid_shape = (codec.shape[0], len(range(0, rules.size * rules.size, self.stride)))

    def __call__(
        self, item: InputFile, sink: _ChunkSink
    ) -> tuple[
        list[tuple[int, int]], list[SampleSummary], list[dict], list[tuple[np.ndarray, np.ndarray]]
    ]:
        """The spans in ``sink`` of the valid samples' encoded chunks (written there by
        this thread), their summaries and (packed mask, clear shares), and the manifest
        rows of every record.

        Records stream through one at a time (an image is encoded and written, then
        dropped; the chunks of a file that turns out ``oversized`` stay in the chunk
        file, unreferenced); a bad record is written to the quarantine as it comes,
        except the first, held until a second record shows the file holds more than one
        (a one-record file, or a file that fails as a whole, is copied whole; an
        ``oversized`` one is not copied). The input's pages are dropped once it is read."""
        rows: list[dict] = []
        chunks, summaries, qualities = [], [], []
        held: RecordResult | None = None  # the first bad record, until a second record
        count = 0
        for rec in iter_results(item.path, self.rules):
            if rec.file_level and rec.reason == "oversized":  # a bomb: one input, not copied
                for row in rows:
                    if row["quarantine_file"]:
                        (self.quarantine / row["quarantine_file"]).unlink(missing_ok=True)
                return [], [], [_quarantine_row(item.name, "", _error(rec), "")], []
            if rec.file_level:
                kept = keep_file(self.quarantine, item.name, item.path)
                if held is not None:
                    rows.append(_quarantine_row(item.name, held.index, _error(held), kept))
                rows.append(_quarantine_row(item.name, rec.index, _error(rec), kept))
                return chunks, summaries, rows, qualities
            count += 1
            if held is not None and count == 2:
                kept = keep_bytes(self.quarantine, item.name, held.payload, held.index)
                rows.append(_quarantine_row(item.name, held.index, _error(held), kept))
                held = None
            if rec.sample is None:
                if count == 1:
                    held = rec
                else:
                    kept = keep_bytes(self.quarantine, item.name, rec.payload, rec.index)
                    rows.append(_quarantine_row(item.name, rec.index, _error(rec), kept))
                continue
            s = rec.sample
            chunks.append(sink.append(self.codec.encode(s.image)))
            qualities.append((np.packbits(s.mask.reshape(len(s.mask), -1), axis=1), s.clear))
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
                    valid_share=round(float(s.mask.mean()), 4),
                    clear_share=round(rq.clear_share(s.clear), 4),
                    **{BAND_LENGTH: rec.band_length},
                )
            )
        if held is not None:  # a one-record file whose record is bad: keep the file
            kept = keep_file(self.quarantine, item.name, item.path)
            rows.append(_quarantine_row(item.name, held.index, _error(held), kept))
        _drop_input(item.path)
        return chunks, summaries, rows, qualities


def _drop_input(path: Path) -> None:
    """Hand an input's pages back to the kernel once it is read: the conversion reads it
    once, and the staged chunks written next reuse the pages
    (:mod:`utils.batching.page_cache`)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        drop_pages(fd)
    finally:
        os.close(fd)


def _error(rec: RecordResult) -> RecordError:
    err = RecordError(rec.reason, rec.detail)
    err.band_length = rec.band_length
    return err


class _ChunkSink:
    """A part's chunk file, appended to by every reader thread: each chunk's span is
    reserved under a lock, then written with ``pwrite`` (which releases the GIL), so the
    threads write their own chunks in parallel and no chunk passes through another
    thread; each chunk's write-back starts at once (:func:`write_behind`)."""

    def __init__(self, fd: int) -> None:
        self.fd, self.end, self.lock = fd, 0, threading.Lock()

    def append(self, chunk: bytes) -> tuple[int, int]:
        """Write ``chunk`` after the chunks before it; return its (offset, size)."""
        with self.lock:
            offset, self.end = self.end, self.end + len(chunk)
        view, done = memoryview(chunk), 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], offset + done)
        write_behind(self.fd, offset, len(chunk))
        return offset, len(chunk)


def _chunks_path(part: Path) -> Path:
    """The plain file beside staging part ``part`` that holds its encoded chunks."""
    return part.with_suffix(".chunks")


def _write_part(
    path: Path,
    items: list[InputFile],
    worker: _PartWorker,
    workers: int,
    on_file: Callable[[int], object] | None = None,
) -> int:
    """Process ``items`` into one staging part (the task of pass 1, also on a cluster)
    with ``workers`` reader threads: the encoded chunks appended to a plain file by the
    threads themselves (:class:`_ChunkSink`), then an HDF5 file with each chunk's
    offset and size, the samples' summaries for ``stats.json`` and the manifest rows.
    Both are written atomically, the HDF5 file last: it marks the part done. Freed
    record buffers are reused while the part is staged, and what the part freed goes
    back to the kernel after it (:mod:`utils.heap`).

    Returns:
        The number of input files (``on_file(1)`` is called after each, if given).
    """
    reuse_freed_memory()
    try:
        return _fill_part(path, items, worker, workers, on_file)
    finally:
        release_heap()


def _fill_part(
    path: Path,
    items: list[InputFile],
    worker: _PartWorker,
    workers: int,
    on_file: Callable[[int], object] | None,
) -> int:
    """The body of :func:`_write_part`."""
    rows: list[dict] = []
    spans: list[tuple[int, int]] = []
    summaries: list[SampleSummary] = []
    masks, clears = [], []
    with atomic_open(_chunks_path(path), "wb") as blob:
        sink = _ChunkSink(blob.fileno())
        results = _ordered_map(lambda item: worker(item, sink), items, workers)
        for file_spans, file_summaries, file_rows, quality in results:
            masks += [m for m, _ in quality]
            clears += [c for _, c in quality]
            ok = (r for r in file_rows if r["status"] == "ok")
            for span, row in zip(file_spans, ok, strict=True):
                row["staged"] = len(spans)
                spans.append(span)
            summaries += file_summaries
            rows.extend(file_rows)
            if on_file is not None:
                on_file(1)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        bands = worker.grid_shape[0]
        moments = np.array([s.moments for s in summaries], np.float64).reshape(-1, bands, 4)
        grid = np.array([s.grid for s in summaries], np.float32)
        handle.create_dataset(CHUNK_SPANS, data=np.array(spans, np.int64).reshape(-1, 2))
        handle.create_dataset(STAT_MOMENTS, data=moments)
        handle.create_dataset(STAT_GRID, data=grid.reshape(-1, *worker.grid_shape))
        _stage_quality(handle, masks, clears, worker.rules.size)
        handle.create_dataset(ROWS, data=[json.dumps(r) for r in rows], dtype=TEXT)
    return len(items)


def _stage_quality(
    handle: h5py.File, masks: list[np.ndarray], clears: list[np.ndarray], size: int
) -> None:
    """Stage the packed valid masks (n, M, bytes) and clear shares (n, Q) of a part."""
    width = (size * size + 7) // 8
    bits = np.array(masks, np.uint8).reshape(-1, len(rq.MASK_BANDS), width)
    handle.create_dataset(  # one chunk per sample: shards read them one by one
        STAGED_MASK,
        data=bits,
        chunks=(1, *bits.shape[1:]) if len(bits) else None,
        compression="gzip",
        compression_opts=1,
    )
    handle.create_dataset(
        STAGED_CLEAR, data=np.array(clears, np.float32).reshape(-1, len(rq.CLEAR_BANDS))
    )


def _write_quality(
    handle: h5py.File, members: pd.DataFrame, parts: _OpenParts, shape: tuple[int, int]
) -> None:
    """The shard's ``mask`` (n, M, H, W) uint8 and ``clear`` (n, Q) datasets."""
    n, pixels = len(members), shape[0] * shape[1]
    masks = handle.create_dataset(
        hs.MASK,
        shape=(n, len(rq.MASK_BANDS), *shape),
        dtype=np.uint8,
        chunks=(1, len(rq.MASK_BANDS), *shape),
        compression="gzip",
        compression_opts=1,
    )
    clear = np.empty((n, len(rq.CLEAR_BANDS)), np.float32)
    for i, (part, staged) in enumerate(zip(members["part"], members["staged"], strict=True)):
        meta = parts[int(part)].meta
        bits = meta[STAGED_MASK][int(staged)]
        masks[i] = np.unpackbits(bits, axis=1, count=pixels).reshape(-1, *shape)
        clear[i] = meta[STAGED_CLEAR][int(staged)]
    handle.create_dataset(hs.CLEAR, data=clear)
    handle.attrs[hs.ATTR_MASK_BANDS] = np.array(rq.MASK_BANDS, dtype=TEXT)


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
        """The encoded chunk of staged sample ``index`` (a copy)."""
        offset, size = self.spans[index]
        return os.pread(self.blob.fileno(), int(size), int(offset))

    @contextmanager
    def view(self, index: int) -> Iterator[memoryview]:
        """The encoded chunk of staged sample ``index`` as a view of the chunk file mapped
        for that chunk alone (no copy: the shard's write reads the page cache directly;
        unmapped after, so the pages do not add up in the process's memory)."""
        offset, size = (int(v) for v in self.spans[index])
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        mapped = mmap.mmap(
            self.blob.fileno(), offset + size - start, access=mmap.ACCESS_READ, offset=start
        )
        try:
            with memoryview(mapped) as whole, whole[offset - start :] as chunk:
                yield chunk
        finally:
            mapped.close()

    def drop(self, index: int) -> None:
        """Hand the pages of staged chunk ``index`` back (copied into its shard: the
        shard's next writes reuse them, see :mod:`utils.batching.page_cache`)."""
        offset, size = (int(v) for v in self.spans[index])
        drop_pages(self.blob.fileno(), offset, size)

    def close(self) -> None:
        self.meta.close()
        self.blob.close()


class _OpenParts:
    """Staging parts by index, opened on demand, at most ``most`` at a time (the least
    recently used is closed first). A continental run has thousands of parts (a million
    records at 256 files a part: ~3,900); holding each one's two files and HDF5 chunk
    caches open at once would stop it at the open-file limit (often 1,024)."""

    def __init__(self, paths: Sequence[Path], most: int = 32) -> None:
        self.paths, self.most = list(paths), most
        self._open: OrderedDict[int, _StagedPart] = OrderedDict()

    def __getitem__(self, index: int) -> _StagedPart:
        part = self._open.pop(index, None)
        if part is None:
            part = _StagedPart.open(self.paths[index])
        self._open[index] = part  # the most recently used last
        while len(self._open) > self.most:
            self._open.popitem(last=False)[1].close()
        return part

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


@dataclass(frozen=True)
class _ShardJob:
    """One shard to write (the task of pass 2, also on a cluster): its path, its members
    (the staging part of each, an index of ``part_paths``, and its manifest row's
    position there, in manifest order) and its attributes."""

    path: Path
    parts: np.ndarray
    rows: np.ndarray
    part_paths: tuple[Path, ...]
    codec: ChunkCodec
    split: str
    source: str
    config: dict
    fingerprint: str


def _write_shard(job: _ShardJob) -> str:
    """Write one shard atomically from the staged chunks of its members (each staging
    part it needs opened here, so a worker process or cluster task holds its own handles).

    Returns:
        The shard's path, as text.
    """
    reuse_freed_memory()  # each chunk's buffers reused by the next (utils.heap)
    parts = _OpenParts(job.part_paths)
    try:
        members = _member_table(job, parts)
        with atomic_path(job.path) as tmp, h5py.File(tmp, "w") as handle:
            create_sample_datasets(handle, job.codec, len(members))
            write_shard_attrs(
                handle,
                split=job.split,
                source=job.source,
                config=job.config,
                bands=job.config.get("bands"),
            )
            handle.attrs[ATTR_FINGERPRINT] = job.fingerprint
            target, fd = handle[hs.DATA], handle.id.get_vfd_handle()
            for i, (part, staged) in enumerate(
                zip(members["part"], members["staged"], strict=True)
            ):
                with parts[int(part)].view(int(staged)) as chunk:
                    write_chunk(target, i, chunk, job.codec)
                parts[int(part)].drop(int(staged))
                write_behind(fd)  # the shard's write-back keeps pace with its writes
            write_metadata(handle, members.to_dict("records"))
            _write_quality(handle, members, parts, job.codec.shape[1:])
    finally:
        parts.close()
        release_heap()
    return str(job.path)


def _member_table(job: _ShardJob, parts: _OpenParts) -> pd.DataFrame:
    """The manifest rows of a shard's members, with their staging ``part``, read from
    their parts (the members are in manifest order: by part, then row)."""
    tables = []
    for k in np.unique(job.parts):
        rows = read_rows(parts[int(k)].meta, job.rows[job.parts == k])
        tables.append(_manifest_table([{**r, "part": int(k)} for r in rows]))
    table = _concat_tables(tables)
    return table.astype({"staged": int, "part": int, "year": int, "imagery_year": int})


def _train_stats(
    split: _Split, records: StagedRecords, part_paths: list[Path], stats: BandStats, pixels: int
) -> None:
    """Add the staged summaries of the train samples to ``stats``, one part at a time
    (each part's file open only while it is read: an open HDF5 file keeps its datasets'
    chunk caches, ~1 MB each, so a run of thousands of parts would add up)."""
    train = np.flatnonzero(split.code == SPLIT_NAMES.index("train"))
    in_part = records.part[train]
    for k in np.unique(in_part):
        index = np.sort(records.staged[train[in_part == k]])
        with h5py.File(part_paths[int(k)], "r") as meta:
            stats.add(meta[STAT_MOMENTS][index], meta[STAT_GRID][index], pixels)


def _shard_done(path: Path, fingerprint: str) -> bool:
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as handle:
            return handle.attrs.get(ATTR_FINGERPRINT) == fingerprint
    except OSError:
        return False


def _stage(
    items: list[InputFile],
    size: int,
    extra: tuple[str, ...],
    cfg: SplitConfig,
    staging: Path,
    quarantine: Path,
    runner: TaskRunner,
) -> tuple[list[Path], ChunkCodec, RecordRules]:
    """Pass 1: read, validate and stage ``items`` for patches of ``size`` pixels with the
    optional channel groups ``extra``, one part per ``cfg.part_files`` inputs (finished
    parts are kept). Locally the parts are staged in turn, each by ``cfg.workers`` reader
    threads; on a cluster each part is a task."""
    codec = ChunkCodec(
        (len(schema.image_band_names()) + len(extra), size, size),
        cfg.dtype,
        cfg.compression,
        cfg.compression_level,
        cfg.shuffle,
    )
    rules = RecordRules(
        size,
        cfg.label_range,
        imagery_year_floor=cfg.imagery_year_floor,
        year=cfg.year,
        min_valid=cfg.min_valid,
        min_clear=cfg.min_clear,
        extra=extra,
        check_crc=cfg.check_crc,
        max_inflate_bytes=cfg.max_inflate_bytes,
    )
    worker = _PartWorker(rules, codec, quarantine)
    groups = [items[i : i + cfg.part_files] for i in range(0, len(items), cfg.part_files)]
    part_paths = [staging / f"part_{k:05d}.h5" for k in range(len(groups))]
    todo = [(p, g) for p, g in zip(part_paths, groups, strict=True) if not p.is_file()]
    with (
        tqdm(total=len(items), desc="read + validate", disable=not cfg.progress) as bar,
        runner.executor(len(todo), processes=False) as pool,
    ):
        bar.update(len(items) - sum(len(g) for _, g in todo))
        on_file = None if runner.remote else bar.update
        futures = [
            pool.submit(_write_part, p, g, worker, runner.part_threads, on_file) for p, g in todo
        ]
        for future in futures:
            files = future.result()
            if runner.remote:
                bar.update(files)
    return part_paths, codec, rules


def _manifest_table(rows: list[dict]) -> pd.DataFrame:
    """Manifest rows as a table: the manifest's columns, then the staging part and index
    of each staged sample (missing values NaN), every column of objects."""
    return pd.DataFrame(rows, columns=[*MANIFEST_COLUMNS, "part", "staged"], dtype=object)


def _concat_tables(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """The rows of ``tables`` in order, as one table (the table of all their rows)."""
    filled = [t for t in tables if len(t)]
    if not filled:
        return _manifest_table([])
    return filled[0] if len(filled) == 1 else pd.concat(filled, ignore_index=True)


def _size_text(length: int) -> str:
    side = math.isqrt(length)
    return f"{side}x{side}" if side * side == length else f"{length} values"


def _staged_size(stamp: Path) -> int | None:
    """The size an earlier pass settled on (kept in the staging stamp), if any."""
    text = stamp.read_text() if stamp.is_file() else ""
    return int(text.split(SIZE_MARK)[1]) if SIZE_MARK in text else None


def _majority_size(mix: dict[int, int], src: Path) -> int | None:
    """The patch side of more than half of the records, or ``None`` without records.

    Raises:
        InputError: no length holds a majority, or the most common is not a square.
    """
    if not mix:
        return None
    total = sum(mix.values())
    length, count = next(iter(mix.items()))
    text = ", ".join(f"{n} record(s) of {v} values" for v, n in mix.items())
    if 2 * count <= total:
        raise InputError(
            f"the records under {src} disagree on the patch size without a clear majority "
            f"({text}); give size= (the patch side in pixels)"
        )
    side = math.isqrt(length)
    if side * side != length:
        raise InputError(
            f"most records hold {length} values per band, not a square patch; give size="
        )
    return side


@dataclass
class _Written:
    """What the manifest as written holds: rows per status, quarantine reason and split."""

    status: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    splits: Counter = field(default_factory=Counter)

    def add(self, rows: list[dict]) -> None:
        """Count ``rows``."""
        self.status.update(r["status"] for r in rows)
        self.reasons.update(r["reason"] for r in rows if r["status"] == "quarantined")
        self.splits.update(r["split"] for r in rows if r["split"] is not None)


#: Manifest rows written at a time (a few staging parts' worth).
WRITE_ROWS = 2048
#: The quarantine reasons file's columns (``quarantine/reasons.csv``).
REASON_COLUMNS: list[str] = ["file", "record", "reason", "detail", "quarantine_file"]


def _write_manifest(
    out: Path,
    entry_rows: list[dict],
    staged: _Staged,
    split: _Split,
    shard_size: int | None,
    reasons: bool = True,
) -> _Written:
    """Write ``manifest.csv`` (and with ``reasons`` the quarantine's ``reasons.csv``),
    atomically, streaming: the entries' rows, then each staging part's rows as staged,
    with each valid record's split (and with ``shard_size`` its shard and index there)
    or its duplicate's reason joined in; one part's rows in memory at a time.

    Returns:
        The counts of the rows written.
    """
    written = _Written()
    records = staged.records
    parts = _OpenParts(staged.part_paths)  # for the duplicates' kept rows and images
    columns = list(MANIFEST_COLUMNS)
    with (
        atomic_open(out / hs.MANIFEST_FILE) as handle,
        atomic_open(out / QUARANTINE_DIR / REASONS_FILE) if reasons else nullcontext() as bad,
    ):

        def write(rows: list[dict], header: bool = False) -> None:
            table = _manifest_table(rows)
            table.to_csv(handle, columns=columns, header=header, index=False, lineterminator="\n")
            if bad is not None:
                quarantined = table[table["status"] == "quarantined"]
                quarantined.to_csv(
                    bad, columns=REASON_COLUMNS, header=header, index=False, lineterminator="\n"
                )
            written.add(rows)

        try:
            write(entry_rows, header=True)
            pending: list[dict] = []  # a few parts' rows: fewer, larger writes
            for k, path in enumerate(staged.part_paths):
                with h5py.File(path, "r") as meta:  # one at a time (and its caches)
                    rows = read_rows(meta)
                lo, hi = records.bounds(k)
                for i in range(lo, hi):
                    _join_fate(rows, i, k, records, split, parts, shard_size)
                pending += rows
                if len(pending) >= WRITE_ROWS:
                    write(pending)
                    pending = []
            write(pending)
        finally:
            parts.close()
    return written


def _join_fate(
    rows: list[dict],
    i: int,
    k: int,
    records: StagedRecords,
    split: _Split,
    parts: _OpenParts,
    shard_size: int | None,
) -> None:
    """Fill, in ``rows`` (part ``k``'s manifest rows), valid record ``i``'s split, shard
    and index in it, or, for a later copy of a record, its duplicate reason."""
    row = rows[records.row[i]]
    code = int(split.code[i])
    if code >= 0:
        name = SPLIT_NAMES[code]
        row["split"] = name
        if shard_size is not None:
            shard, index = divmod(int(split.rank[i]), shard_size)
            row["shard"] = f"{name}/{hs.shard_name(name, shard)}"
            row["index_in_shard"] = index
        return
    j = int(split.kept[i])
    kj = int(records.part[j])
    kept = rows[records.row[j]] if kj == k else read_rows(parts[kj].meta, [records.row[j]])[0]
    if duplicate_key(row) != duplicate_key(kept):
        raise RuntimeError(f"digest collision: {duplicate_key(row)!r}, {duplicate_key(kept)!r}")

    def same_image() -> bool:
        return parts[k].chunk(int(records.staged[i])) == parts[kj].chunk(int(records.staged[j]))

    row.update(
        status="quarantined", reason=DUPLICATE, detail=duplicate_detail(row, kept, same_image)
    )


def _refuse_empty_splits(
    entry_rows: list[dict], staged: _Staged, split: _Split, cfg: SplitConfig, out: Path
) -> None:
    """An empty split whose ratio is not 0 is an error (the manifest is written first)."""
    counts = {s: int((split.code == SPLIT_NAMES.index(s)).sum()) for s in hs.SPLITS}
    empty = [s for s, r in zip(hs.SPLITS, cfg.ratios, strict=True) if r > 0 and not counts[s]]
    if empty:
        _write_manifest(out, entry_rows, staged, split, None, reasons=False)
        raise InputError(
            f"split(s) {empty} would be empty (samples per split: {counts}, ratios "
            f"{list(cfg.ratios)}): give more places, a smaller block_km, or ratio 0 for them"
        )


def _kinds_text(entries: list[Entry]) -> str:
    kinds = skipped_kinds(entries)
    others = [e.kind for e in entries if e.kind in ("link", "special")]
    parts = [f"{n} {k}" for k, n in kinds.items()] + [f"{others.count(k)} {k}" for k in set(others)]
    return ", ".join(parts) or "none"


def _inflate_cap(cfg: SplitConfig, size: int | None = None) -> int:
    """What one input file (or archive entry) may inflate to under ``cfg``."""
    if cfg.max_inflate_bytes is not None:
        return cfg.max_inflate_bytes
    return inflate_cap(size or cfg.size or DEFAULT_PATCH)


# ----------------------------------------------------------------------------- the run


def run_split_and_batch(
    src: str | Path, out: str | Path, cfg: SplitConfig | None = None, client: Any = None
) -> SplitReport:
    """Convert the exports under ``src`` into split HDF5 shards under ``out``.

    Args:
        src: folder of exported TFRecords and/or ``.zip`` downloads (nested folders ok).
        out: output folder: ``train/ val/ test/`` shards, ``manifest.csv``,
            ``stats.json``, ``quarantine/``, ``report.json``.
        cfg: the :class:`SplitConfig` (defaults if ``None``).
        client: a ``dask.distributed.Client``: staging parts and shards are written by
            its cluster's workers (as with ``cfg.scheduler``; the outputs are the same
            bytes as a local run's). ``src`` and ``out`` must be on storage every worker
            sees at the same path.

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
    entries = scan_inputs(src, cfg.follow_links)
    if not any(e.kind in ("record", "archive") for e in entries):
        raise InputError(
            f"no TFRecord (.tfrecord[.gz]) or .zip under {src} ({len(entries)} entries: "
            f"{_kinds_text(entries)}); give the folder the exports were written to"
        )
    with guard_output(out, STAGE, markers=(DONE_FILE, STAGING_DIR)) as owner:
        with task_runner(cfg.workers, cfg.scheduler, client) as runner:
            return _convert(src, out, cfg, entries, owner, start, runner)


@dataclass
class _Inputs:
    """What the input folder holds once its archives are unpacked.

    Attributes:
        rows: manifest rows of the entries that are no record (skipped kinds, links,
            archive problems), before any record is read.
        items: the record files to read, by name.
        extracted: unpacked files that are no record or archive (skipped, in the manifest).
    """

    rows: list[dict]
    items: list[InputFile]
    extracted: list[Entry]


@dataclass
class _Staged:
    """The read and validate pass: staging parts at the run's patch size.

    Attributes:
        part_paths: the staging parts, in input order.
        codec: how each sample's chunk is encoded (written once, copied into the shards).
        rules: the record rules the pass applied.
        records: what is held of the valid records (their rows stay in the parts).
        size: the patch side kept.
        band_names: the image bands and extra channels of every sample.
    """

    part_paths: list[Path]
    codec: ChunkCodec
    rules: RecordRules
    records: StagedRecords
    size: int
    band_names: list[str]


#: Splits by their code in :attr:`_Split.code`.
SPLIT_NAMES: tuple[str, ...] = hs.ALL_SPLITS


@dataclass
class _Split:
    """Each valid record's fate (per record of :class:`StagedRecords`), and what the
    split found.

    Attributes:
        code: the index in :data:`SPLIT_NAMES` of its split; -1: a duplicate.
        kept: the record it duplicates (itself if none).
        rank: its position among its split's records (its shard and index there).
        result: the train/val/test split of the labelled records.
        splits: the splits written.
    """

    code: np.ndarray
    kept: np.ndarray
    rank: np.ndarray
    result: SplitResult | None = None
    splits: tuple[str, ...] = hs.SPLITS


def _finished_run(out: Path, fingerprint: str) -> SplitReport | None:
    """The report of a finished run of the same inputs and config (marked skipped), if any."""
    done = out / DONE_FILE
    if done.is_file() and done.read_text() == fingerprint and (out / REPORT_FILE).is_file():
        report = SplitReport.load(out)
        report.skipped = True
        return report
    return None


def _prepare_folders(out: Path, fingerprint: str, owner: OutputFolder) -> tuple[Path, Path]:
    """The staging and quarantine folders: staging kept when it belongs to the same inputs
    and config (a resumed run), else everything this stage wrote is removed first; stale
    temporary files of a killed run are removed.

    Returns:
        The staging and quarantine folders.
    """
    staging, quarantine = out / STAGING_DIR, out / QUARANTINE_DIR
    stamp = staging / STAMP_FILE
    if not (stamp.is_file() and stamp.read_text().split(SIZE_MARK)[0] == fingerprint):
        owner.remove_recorded(keep_dirs=[EXTRACTED_DIR])  # only what this stage wrote
        owner.record(OUTPUT_FILES, (STAGING_DIR, QUARANTINE_DIR, EXTRACTED_DIR))
        staging.mkdir(parents=True)
        stamp.write_text(fingerprint)
    quarantine.mkdir(parents=True, exist_ok=True)
    for folder in (out, staging, quarantine, *(out / s for s in hs.ALL_SPLITS)):
        if folder.is_dir():
            remove_stale_temporaries(folder)
    return staging, quarantine


def _unzip_and_list(
    src: Path, out: Path, cfg: SplitConfig, entries: list[Entry], quarantine: Path
) -> _Inputs:
    """Step 1: unpack the archives into ``out/extracted/`` (an unsafe archive or entry is
    quarantined with its reason) and list the record files to read."""
    unzipped = extract_archives(
        src,
        out / EXTRACTED_DIR,
        _inflate_cap(cfg),
        [(e.path, e.name) for e in entries if e.kind == "archive"],
    )
    rows: list[dict] = _entry_rows(entries)
    for problem in unzipped.problems:
        name = problem.archive.relative_to(out if problem.archive.is_relative_to(out) else src)
        name = name.as_posix() + (f"!{problem.entry}" if problem.entry else "")
        kept = keep_file(quarantine, name, problem.archive) if not problem.entry else ""
        rows.append(_quarantine_row(name, "", RecordError(problem.reason, problem.detail), kept))
    items = [InputFile(e.name, e.path) for e in entries if e.kind == "record"]
    foreign: set[str] = set()  # extracted files that are no record or archive
    for target in unzipped.targets:
        for p in sorted(target.rglob("*")) if target.is_dir() else []:
            if _is_record_file(p):
                items.append(InputFile(p.relative_to(out).as_posix(), p))
            elif p.is_file() and file_kind(p.name) == "other":
                foreign.add(p.relative_to(out).as_posix())
    extracted = [Entry(n, out / n, "other") for n in sorted(foreign)]
    rows += _entry_rows([Entry(e.name, e.path, e.kind, f"kind {e.file_kind}") for e in extracted])
    return _Inputs(rows, sorted(set(items), key=lambda item: item.name), extracted)


def _read_and_validate(
    items: list[InputFile],
    cfg: SplitConfig,
    src: Path,
    staging: Path,
    quarantine: Path,
    fingerprint: str,
    runner: TaskRunner,
) -> _Staged:
    """Step 2: the read and validate pass over every record, staged at the patch size of
    ``cfg.size``, else of the staging stamp, else of the first readable record; the pass
    counts every record's size, and when most records turn out to have another one, it
    runs again at that size (kept in the stamp, so a resumed run does not guess again)."""
    paths = [i.path for i in items]
    guess, found = first_record_layout(paths)
    extra = tuple(cfg.extra_channels) if cfg.extra_channels is not None else found
    band_names = [*schema.image_band_names(), *extra]
    stamp = staging / STAMP_FILE
    size = _staged_size(stamp) or cfg.size or guess or 1
    while True:
        part_paths, codec, rules = _stage(items, size, extra, cfg, staging, quarantine, runner)
        records = StagedRecords.read(part_paths)
        best = cfg.size or _majority_size(records.sizes, src)
        if best in (None, size):
            break
        for path in [*staging.glob("part_*"), *quarantine.iterdir()]:
            path.unlink()
        stamp.write_text(f"{fingerprint}{SIZE_MARK}{best}")
        size = best
    return _Staged(part_paths, codec, rules, records, size, band_names)


def _choose_splits(
    entry_rows: list[dict], staged: _Staged, cfg: SplitConfig, src: Path, out: Path
) -> _Split:
    """Step 3: each staged valid record's fate: a later copy of a cell and year is a
    duplicate, each other one is assigned to train/val/test by location (records
    without a label: ``predict``).

    Raises:
        InputError: no valid record, or a split with a ratio above 0 left empty (the
            manifest is written first, with every reason).
    """
    records = staged.records
    kept = records.first_of_key()
    valid = kept == np.arange(len(records))
    split = _Split(np.full(len(records), -1, np.int8), kept, np.zeros(len(records), np.int32))
    if not valid.any():
        _write_manifest(out, entry_rows, staged, split, None, reasons=False)
        inputs = len(entry_rows) + int(records.part_rows.sum())
        raise InputError(
            f"no valid record among the {inputs} inputs under {src}; the reasons "
            f"are in {out / hs.MANIFEST_FILE}"
        )
    places = valid & np.isnan(records.label)  # no label: to predict, never train/val/test
    labelled = valid & ~places
    split.code[places] = SPLIT_NAMES.index(hs.PREDICT)
    ordered = cfg.split == "random"  # its locations are numbered in the cell ids' order
    cells = (
        records.ordered_cell_codes(labelled, staged.part_paths)
        if ordered
        else records.cell_codes(labelled)
    )
    samples = pd.DataFrame(
        {
            "cell_id": cells,
            "latitude": records.latitude[labelled],
            "longitude": records.longitude[labelled],
            "label": records.label[labelled],
        }
    )
    split.result = assign_splits(
        samples,
        mode=cfg.split,
        ratios=cfg.ratios,
        seed=cfg.seed,
        block_km=cfg.block_km,
        n_bins=cfg.n_bins,
    )
    split.code[labelled] = pd.Categorical(split.result.split, categories=SPLIT_NAMES).codes
    for code in range(len(SPLIT_NAMES)):
        members = np.flatnonzero(split.code == code)
        split.rank[members] = np.arange(len(members))
    if labelled.any():  # a run of places alone (to predict) has no labelled split to fill
        _refuse_empty_splits(entry_rows, staged, split, cfg, out)
    split.splits = (*hs.SPLITS, hs.PREDICT) if places.any() else hs.SPLITS
    return split


def _write_shards(
    split: _Split,
    staged: _Staged,
    cfg: SplitConfig,
    src: Path,
    out: Path,
    owner: OutputFolder,
    fingerprint: str,
    runner: TaskRunner,
) -> tuple[dict[str, int], BandStats]:
    """Step 4: copy each sample's staged chunk into ``out/<split>/`` shards (a shard of
    this fingerprint already there is kept) and gather the train statistics. The
    shards are written in parallel by ``runner`` (one task each); their bytes do not
    depend on it.

    Returns:
        Shards per split, and the train split's band statistics.
    """
    records = staged.records
    shard_counts, jobs = {}, []
    config = {**cfg.identity(), "bands": staged.band_names}
    for name in split.splits:
        members = np.flatnonzero(split.code == SPLIT_NAMES.index(name))
        starts = range(0, len(members), cfg.shard_size)
        shard_counts[name] = len(starts)
        for j, first in enumerate(starts):
            chunk = members[first : first + cfg.shard_size]
            path = out / name / hs.shard_name(name, j)
            owner.record([f"{name}/{path.name}"])
            if not _shard_done(path, fingerprint):
                used = np.unique(records.part[chunk])  # the parts it reads, numbered anew
                job = _ShardJob(
                    path,
                    np.searchsorted(used, records.part[chunk]).astype(np.int32),
                    records.row[chunk],
                    tuple(staged.part_paths[k] for k in used),
                    staged.codec,
                    name,
                    str(src),
                    config,
                    fingerprint,
                )
                jobs.append(job)
    with (
        runner.executor(len(jobs), processes=True) as pool,
        tqdm(total=len(jobs), desc="shards", disable=not cfg.progress) as bar,
    ):
        for future in [pool.submit(_write_shard, job) for job in jobs]:
            future.result()
            bar.update(1)
    stats = BandStats(staged.band_names, staged.rules.reflectance_range)
    _train_stats(split, records, staged.part_paths, stats, staged.size * staged.size)
    return shard_counts, stats


def _write_tables(
    out: Path,
    entry_rows: list[dict],
    staged: _Staged,
    split: _Split,
    shard_size: int,
    stats: BandStats,
) -> _Written:
    """Step 5: ``manifest.csv`` and the quarantine's reasons (streamed from the staging
    parts, :func:`_write_manifest`) and ``stats.json``.

    Returns:
        The counts of the manifest as written.
    """
    written = _write_manifest(out, entry_rows, staged, split, shard_size)
    with atomic_open(out / hs.STATS_FILE) as handle:
        json.dump(stats.result("train"), handle, indent=1)
    return written


def _make_report(
    out: Path,
    written: _Written,
    split: _Split,
    staged: _Staged,
    kinds: dict[str, int],
    entries: int,
    shard_counts: dict[str, int],
    start: float,
) -> SplitReport:
    """The run's :class:`SplitReport`, from the counts of the manifest as written."""
    ok, quarantined = written.status["ok"], written.status["quarantined"]
    result = split.result
    return SplitReport(
        out=str(out),
        inputs=ok + quarantined,
        ok=ok,
        quarantined=quarantined,
        skipped_files=written.status["skipped"],
        skipped_kinds=kinds,
        entries=entries,
        size_mix={_size_text(v): n for v, n in staged.records.sizes.items()},
        per_split={s: written.splits[s] for s in split.splits},
        per_reason={r: written.reasons[r] for r in REASONS if written.reasons[r]},
        shards=shard_counts,
        size=staged.size,
        label_bins={s: result.counts.loc[s].astype(int).tolist() for s in hs.SPLITS},
        bin_edges=result.bin_edges.tolist(),
        uncovered=[list(u) for u in result.uncovered],
        n_blocks=int(len(np.unique(result.block))),
        seconds=time.perf_counter() - start,
    )


def _finish(out: Path, report: SplitReport, fingerprint: str) -> None:
    """Write ``report.json``, then the done mark (the run is complete), then drop staging."""
    with atomic_open(out / REPORT_FILE) as handle:
        json.dump(dataclasses.asdict(report), handle, indent=1)
    with atomic_open(out / DONE_FILE) as handle:
        handle.write(fingerprint)
    shutil.rmtree(out / STAGING_DIR, ignore_errors=True)


def _convert(
    src: Path,
    out: Path,
    cfg: SplitConfig,
    entries: list[Entry],
    owner: OutputFolder,
    start: float,
    runner: TaskRunner,
) -> SplitReport:
    """The body of :func:`run_split_and_batch`, under the output folder's lock: the named
    steps in order (each resumable: a killed run continues from its staging parts and
    finished shards). ``entries`` is emptied once the inputs are listed, and the list
    of record files dropped after pass 1: ~0.5 KB a file, held to the end, would make
    the memory grow with the run."""
    fingerprint = input_fingerprint(src, entries, cfg)
    if (finished := _finished_run(out, fingerprint)) is not None:
        return finished
    staging, quarantine = _prepare_folders(out, fingerprint, owner)
    inputs = _unzip_and_list(src, out, cfg, entries, quarantine)
    kinds, n_entries = skipped_kinds([*entries, *inputs.extracted]), len(entries)
    entries.clear()
    items, inputs.items = inputs.items, []
    staged = _read_and_validate(items, cfg, src, staging, quarantine, fingerprint, runner)
    del items
    split = _choose_splits(inputs.rows, staged, cfg, src, out)
    shard_counts, stats = _write_shards(split, staged, cfg, src, out, owner, fingerprint, runner)
    written = _write_tables(out, inputs.rows, staged, split, cfg.shard_size, stats)
    report = _make_report(out, written, split, staged, kinds, n_entries, shard_counts, start)
    _finish(out, report, fingerprint)
    return report


# ----------------------------------------------------------------------------- CLI


def get_args_parser() -> argparse.ArgumentParser:
    """Options of ``python -m utils.batching.split_and_batch [--run-dir RUN | SRC OUT]``."""
    from utils.cli import add_run_dir, make_parser, shell_path  # noqa: PLC0415

    d = SplitConfig()
    parser = make_parser(
        "utils.batching.split_and_batch",
        "Exported TFRecords -> quarantine + split by "
        "location + HDF5 shards (the CLI twin of split_and_batch.ipynb).",
    )
    add_run_dir(parser, None, "read <run-dir>/exports, write <run-dir>/shards")
    parser.add_argument(
        "src",
        nargs="?",
        type=shell_path,
        help="folder of exported TFRecords / .zip downloads (instead of --run-dir)",
    )
    parser.add_argument(
        "out", nargs="?", type=shell_path, help="output folder of the shards (instead of --run-dir)"
    )
    parser.add_argument("--split", choices=MODES, default=d.split)
    parser.add_argument("--block-km", type=float, default=d.block_km)
    parser.add_argument(
        "--ratios", type=float, nargs=3, default=list(d.ratios), metavar=("TRAIN", "VAL", "TEST")
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--n-bins", type=int, default=d.n_bins)
    parser.add_argument("--shard-size", type=int, default=d.shard_size)
    parser.add_argument("--dtype", choices=DTYPES, default=d.dtype)
    parser.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        default=d.compression,
        help="shard codec: zstd (default: the size of gzip, ~3x faster to read; h5py reads "
        "it after `import hdf5plugin`), gzip (any HDF5 reader, no plugin), lzf or none",
    )
    parser.add_argument(
        "--compression-level", type=int, default=d.compression_level, help="gzip 0-9, zstd 1-22"
    )
    parser.add_argument("--size", type=int, default=None, help="patch side (default: inferred)")
    parser.add_argument(
        "--label-range", type=float, nargs=2, default=list(d.label_range), metavar=("LOW", "HIGH")
    )
    parser.add_argument(
        "--year", type=int, default=None, help="year of original-study files whose name lacks it"
    )
    parser.add_argument(
        "--min-valid",
        type=float,
        default=d.min_valid,
        help="quarantine patches with a smaller valid-pixel share",
    )
    parser.add_argument(
        "--min-clear",
        type=float,
        default=d.min_clear,
        help="quarantine patches with a smaller clear share (0: off)",
    )
    parser.add_argument("--part-files", type=int, default=d.part_files)
    parser.add_argument(
        "--follow-links", action="store_true", help="read links that stay inside SRC"
    )
    parser.add_argument(
        "--max-inflate-bytes", type=int, default=None, help="cap on one file (default: from size)"
    )
    parser.add_argument("--workers", type=int, default=d.workers)
    parser.add_argument(
        "--scheduler",
        default=None,
        metavar="tcp://HOST:PORT",
        help="a Dask scheduler: its workers stage the parts and write the shards (every "
        "path on storage they all see; the same outputs as a local run)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
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
        year=args.year,
        min_valid=args.min_valid,
        min_clear=args.min_clear,
        part_files=args.part_files,
        follow_links=args.follow_links,
        max_inflate_bytes=args.max_inflate_bytes,
        workers=args.workers,
        progress=not args.no_progress,
        scheduler=args.scheduler,
    )


def main(argv: list[str] | None = None) -> SplitReport:
    """Entry point of ``python -m utils.batching.split_and_batch``."""
    from utils.cli import writable_folder  # noqa: PLC0415
    from utils.paths import RunPaths  # noqa: PLC0415

    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.out is None and args.run_dir is None:
        parser.error("give --run-dir RUN (reads RUN/exports, writes RUN/shards) or SRC OUT")
    if args.run_dir is not None and args.src is not None:
        parser.error("give either --run-dir or SRC OUT, not both")
    run = RunPaths.of(args.run_dir) if args.run_dir is not None else None
    src = args.src if run is None else run.exports
    if not Path(src).is_dir():
        raise SystemExit(
            f"error: no export folder {src}: give the folder that holds the "
            "TFRecords (a relative path is taken from the current folder)"
        )
    out = writable_folder(
        args.out if run is None else run.shards, "OUT" if run is None else "--run-dir"
    )
    report = run_split_and_batch(src, out, config_from_args(args))
    print(report.summary())
    return report


if __name__ == "__main__":
    main()
