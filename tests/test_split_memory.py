"""What the conversion keeps in memory per record: the manifest rows of pass 1 are read
back a staging part at a time into one table, so no Python dict per record of the
whole run is held while the split and the shards are made (outputs unchanged: the
byte-identity tests of tests/test_split_parallel.py and others)."""

from __future__ import annotations

import os
import tracemalloc

import pandas as pd
import pytest

import utils.batching.split_and_batch as sb
from extract_GPS_images.synthetic import generate_world


def _held_before_split(tmp_path, n: int, monkeypatch) -> int:
    """Bytes traced when the split starts, for a world of ``n`` records at 4 px."""
    src = tmp_path / f"world{n}"
    generate_world(src, n=n, size=4, corrupt_fraction=0, progress=False)
    held: list[int] = []
    choose = sb._choose_splits

    def measured(*args, **kwargs):
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
    # measured: ~1.3 KB a record (the rows' table, the input list and its paths); with a
    # dict per record held beside them (the code before) ~2.7 KB
    assert per_record < 1800, f"{per_record:.0f} bytes a record held after pass 1"


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
