"""A write of the bytes a file already holds leaves it untouched (``keep_same``), so a
re-run of the synthetic world with the same settings keeps its tables' modification
times and the conversion's finished run of that world still holds."""

from __future__ import annotations

import os

import pytest

from extract_GPS_images.synthetic import generate_world
from utils.atomic import atomic_open
from utils.batching.split_and_batch import SplitConfig, run_split_and_batch


def _times(folder) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}


def test_keep_same_leaves_identical_bytes_alone_and_replaces_others(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    with atomic_open(path, keep_same=True) as handle:
        handle.write("a,b\n1,2\n")
    assert path.stat().st_mtime_ns == 1_000_000_000
    with atomic_open(path) as handle:  # without keep_same: always replaced
        handle.write("a,b\n1,2\n")
    assert path.stat().st_mtime_ns != 1_000_000_000
    with atomic_open(path, keep_same=True) as handle:  # other bytes: replaced
        handle.write("a,b\n1,3\n")
    assert path.read_text() == "a,b\n1,3\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]  # no temporary left
    with pytest.raises(RuntimeError), atomic_open(path, keep_same=True) as handle:
        handle.write("half")
        raise RuntimeError("killed")
    assert path.read_text() == "a,b\n1,3\n"


def test_a_rerun_world_keeps_its_files_and_the_conversion_its_run(tmp_path):
    world, shards = tmp_path / "world", tmp_path / "shards"
    generate_world(world, n=24, size=4, progress=False)
    first = run_split_and_batch(world, shards, SplitConfig(workers=1, progress=False))
    before = _times(world)
    generate_world(world, n=24, size=4, progress=False)  # the same settings again
    assert _times(world) == before
    again = run_split_and_batch(world, shards, SplitConfig(workers=1, progress=False))
    assert again.skipped and not first.skipped  # the finished run still holds
