"""What the conversion keeps in memory per record: after pass 1 only compact NumPy
columns of the valid records (utils/batching/staged_records.py); every manifest row stays
in its staging part and is streamed from there into manifest.csv, so no Python object
per record of the whole run is held while the split, the shards and the manifest are
made (outputs unchanged: the byte-identity tests of tests/test_split_parallel.py and
others, and the streamed writes below)."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import tracemalloc

import numpy as np
import pandas as pd
import pytest

import utils.batching.split_and_batch as sb
from extract_GPS_images.synthetic import generate_world
from utils import hdf5_schema as hs
from utils import heap
from utils.batching.quarantine import REASONS_FILE
from utils.batching.spatial_split import assign_splits
from utils.paths import project_root


def _held_before_split(tmp_path, n: int, monkeypatch) -> int:
    """Bytes traced when the split starts, for a world of ``n`` records at 4 px."""
    src = tmp_path / f"world{n}"
    generate_world(src, n=n, size=4, corrupt_fraction=0, progress=False)
    held: list[int] = []
    choose = sb._choose_splits

    def measured(*args, **kwargs):
        gc.collect()  # garbage awaiting the collector is not held
        held.append(tracemalloc.get_traced_memory()[0])
        return choose(*args, **kwargs)

    monkeypatch.setattr(sb, "_choose_splits", measured)
    tracemalloc.start()
    try:
        sb.run_split_and_batch(
            src, tmp_path / f"out{n}", sb.SplitConfig(workers=1, part_files=64, progress=False)
        )
    finally:
        tracemalloc.stop()
    return held[0]


def test_pass_one_keeps_no_row_dict_per_record(tmp_path, monkeypatch):
    small, large = 200, 800
    per_record = (
        _held_before_split(tmp_path, large, monkeypatch)
        - _held_before_split(tmp_path, small, monkeypatch)
    ) / (large - small)
    # measured: ~70 bytes a record (the NumPy columns of StagedRecords); the rows' table,
    # the input list and its paths (the code before) ~1.2 KB; a dict per record beside
    # them (before that) ~2.7 KB
    assert per_record < 300, f"{per_record:.0f} bytes a record held after pass 1"


def test_concatenated_tables_equal_the_table_of_all_rows():
    rows = [
        {"file": "a", "record": 0, "status": "ok", "label": 1.5, "part": 0, "staged": 0},
        {"file": "b", "record": "", "status": "skipped", "reason": "not a record"},
        {"file": "c", "record": 2, "status": "quarantined", "detail": "x", "part": 1},
    ]
    whole = sb._manifest_table(rows)
    pieces = sb._concat_tables(
        [sb._manifest_table(rows[:1]), sb._manifest_table([]), sb._manifest_table(rows[1:])]
    )
    pd.testing.assert_frame_equal(pieces, whole)
    assert list(whole.dtypes.unique()) == [object]
    pd.testing.assert_frame_equal(sb._concat_tables([]), sb._manifest_table([]))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in /proc")
def test_a_run_of_many_staging_parts_keeps_few_open(tmp_path):
    """A continental run has thousands of staging parts (a million records at 256 files a
    part: ~3,900): the duplicate check, the shard writers and the train statistics must
    not hold them all open (two files each, and HDF5 chunk caches), or the run stops at
    the open-file limit; here 80 parts, fewer than 2 files a part allowed."""
    import resource

    src = tmp_path / "world"
    generate_world(src, n=80, size=4, corrupt_fraction=0, progress=False)
    cfg = sb.SplitConfig(workers=1, part_files=1, progress=False)  # 80 parts
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 100, hard))
    try:
        report = sb.run_split_and_batch(src, tmp_path / "out", cfg)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert report.ok == 80


def _traced_run(tmp_path, n: int, monkeypatch) -> dict[str, int]:
    """Bytes traced over a run of ``n`` records at 4 px in shards of 64: held when the
    report is written (the end of the run) and at the peak, above the start."""
    src = tmp_path / f"world{n}"
    generate_world(src, n=n, size=4, corrupt_fraction=0, progress=False)
    marks: dict[str, int] = {}
    finish = sb._finish

    def measured(*args, **kwargs):
        gc.collect()
        marks["end"] = tracemalloc.get_traced_memory()[0]
        return finish(*args, **kwargs)

    monkeypatch.setattr(sb, "_finish", measured)
    cfg = sb.SplitConfig(workers=1, part_files=64, shard_size=64, progress=False)
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        sb.run_split_and_batch(src, tmp_path / f"out{n}", cfg)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return {"end": marks["end"] - start, "peak": peak - start}


def _least_of_two_runs(tmp_path, n: int, monkeypatch) -> dict[str, int]:
    """:func:`_traced_run` twice, the smaller figure of each: a one-time growth of an
    interpreter-wide table lands in one run only (pathlib interns every path part, and the
    interned-strings dict, resized once the names alive pass a size, ~3.7 MB at this
    test's sizes, was traced inside one run when other tests had filled it)."""
    runs = [_traced_run(tmp_path / f"run{k}", n, monkeypatch) for k in range(2)]
    return {key: min(run[key] for run in runs) for key in runs[0]}


def test_the_whole_run_holds_no_row_per_record(tmp_path, monkeypatch):
    """Past pass 1 too: the split, the shards, the statistics and the streamed manifest
    add a few NumPy columns per record, never the records' rows (shards of 64, so a
    shard's member rows weigh the same at both sizes)."""
    small, large = 200, 800
    one, four = (_least_of_two_runs(tmp_path, n, monkeypatch) for n in (small, large))
    per_record = {k: (four[k] - one[k]) / (large - small) for k in one}
    # measured: ~0.1 KB a record held at the end, ~0.2 KB at the peak (the columns and
    # the sorts of the duplicate check); the manifest table (the code before) ~1.3 KB
    # held at the end and ~2.0 KB at the peak
    assert per_record["end"] < 400, per_record
    assert per_record["peak"] < 600, per_record


def test_the_streamed_manifest_is_the_same_in_any_pieces(tmp_path, monkeypatch):
    """manifest.csv and quarantine/reasons.csv written from 1 or 20 staging parts, a few
    rows at a time, are the same bytes; duplicates kept in an earlier part say so."""
    src = tmp_path / "world"
    world = generate_world(src, n=60, size=4, corrupt_fraction=0.1, progress=False)
    (src / "zz").mkdir()
    damaged = set(world.corruptions["file"])
    for path in [p for p in world.files if p.name not in damaged][:5]:
        shutil.copy(path, src / "zz" / path.name)  # later copies, in another staging part
    written = {}
    for part_files, rows in ((100, sb.WRITE_ROWS), (3, 5)):
        monkeypatch.setattr(sb, "WRITE_ROWS", rows)
        out = tmp_path / f"out{part_files}"
        cfg = sb.SplitConfig(workers=1, part_files=part_files, shard_size=16, progress=False)
        sb.run_split_and_batch(src, out, cfg)
        written[part_files] = [
            (out / name).read_bytes() for name in (hs.MANIFEST_FILE, f"quarantine/{REASONS_FILE}")
        ]
    assert written[100] == written[3]
    manifest = pd.read_csv(tmp_path / "out3" / hs.MANIFEST_FILE)
    copies = manifest[manifest["file"].str.startswith("zz/")]
    assert len(copies) == 5 and (copies["reason"] == "duplicate").all()
    assert copies["detail"].str.endswith("record 0; content identical").all()
    bad = manifest[(manifest["status"] == "quarantined") & (manifest["reason"] != "duplicate")]
    assert len(bad) == len(damaged) == 6
    reasons = pd.read_csv(tmp_path / "out3" / "quarantine" / REASONS_FILE)
    assert len(reasons) == len(bad) + 5
    ok = manifest[manifest["status"] == "ok"]
    assert ok["shard"].notna().all() and ok["index_in_shard"].between(0, 15).all()


def test_random_split_numbers_locations_in_the_order_of_the_cell_ids(tmp_path):
    """The random split draws locations in the sorted order of their cell ids: the run
    holds the ids as digests, and reads the ids back for that order; its splits are
    those of the split of the ids themselves."""
    src = tmp_path / "world"
    generate_world(src, n=80, size=4, years=(2016, 2019), corrupt_fraction=0, progress=False)
    out = tmp_path / "out"
    sb.run_split_and_batch(src, out, sb.SplitConfig(split="random", workers=1, progress=False))
    ok = pd.read_csv(out / hs.MANIFEST_FILE, dtype={"cell_id": str})
    ok = ok[ok["status"] == "ok"].reset_index(drop=True)
    expected = assign_splits(ok[["cell_id", "latitude", "longitude", "label"]], mode="random")
    assert len(ok) == 160 and np.array_equal(ok["split"].to_numpy(), expected.split)


@pytest.mark.skipif(heap._MALLOC_TRIM is None, reason="needs glibc's malloc_trim")
def test_freed_heap_memory_goes_back_to_the_kernel():
    """What a staging part frees goes back to the kernel before the next part, instead of
    staying in the allocator's arenas and stacking up with that part's peak."""

    def rss_mb() -> float:
        with open("/proc/self/status") as status:
            line = next(x for x in status if x.startswith("VmRSS"))
        return int(line.split()[1]) / 1024

    big, pins = [], []
    for _ in range(2000):  # 64 MB in malloc'ed blocks, each pinned in place by a small one
        big.append(bytes(bytearray(32 * 1024)))
        pins.append(bytes(bytearray(600)))
    del big
    gc.collect()
    held = rss_mb()
    assert heap.release_heap()
    assert rss_mb() < held - 40, (held, rss_mb())
    assert len(pins) == 2000


#: Run in a fresh interpreter: maps 12 MB with malloc and prints the bytes glibc served
#: by mmap for it, then what its arenas keep free once it is freed. ``tuned`` calls
#: ``reuse_freed_memory`` first; ``converted`` runs a small conversion first (the
#: conversion is what should set it).
_BLOCK_PROBE = """
import ctypes, sys
from utils import heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "tuned":
    assert heap.reuse_freed_memory()
if sys.argv[1] == "converted":
    from extract_GPS_images.synthetic import generate_world
    from utils.batching.split_and_batch import SplitConfig, run_split_and_batch
    generate_world(sys.argv[2] + "/src", n=12, size=4, corrupt_fraction=0, progress=False)
    cfg = SplitConfig(workers=1, progress=False)
    run_split_and_batch(sys.argv[2] + "/src", sys.argv[2] + "/out", cfg)
mapped = libc.mallinfo2().hblkhd
block = libc.malloc(12 << 20)
mapped = libc.mallinfo2().hblkhd - mapped
libc.free(block)
print(mapped >> 20, libc.mallinfo2().fordblks >> 20)
"""


@pytest.mark.skipif(heap._MALLOPT is None, reason="needs glibc's mallopt")
@pytest.mark.parametrize("mode", ["plain", "tuned", "converted"])
def test_record_sized_blocks_are_reused_not_mapped_afresh(mode, tmp_path):
    """Blocks of a record's size (MBs at 225 px) come from the heap and stay there once
    freed (the next record reuses their pages) after the conversion has run; glibc's
    defaults map such a block afresh and unmap it when freed."""
    done = subprocess.run(
        [sys.executable, "-c", _BLOCK_PROBE, mode, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(project_root())},
    )
    mapped_mb, kept_free_mb = (int(v) for v in done.stdout.split()[-2:])
    if mode == "plain":
        assert mapped_mb >= 12, done.stdout  # the defaults: a fresh mapping
    else:
        assert mapped_mb == 0 and kept_free_mb >= 12, done.stdout
