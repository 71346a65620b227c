"""split_and_batch writes the same bytes wherever its tasks run: in one process
(``workers=1``), with a pool of shard-writer processes (``workers=2``) and on a Dask
cluster of two worker processes (a ``Client``, or ``scheduler=`` its address). A killed
shard writer fails the run, and the re-run resumes to the same bytes. A local run does
not import Dask."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
from hostile_factory import flip_byte, spread_records, write_framed

from extract_GPS_images.synthetic import generate_world
from extract_GPS_images.tfrecord import frame_record
from utils.batching import split_and_batch as sb
from utils.batching.split_and_batch import SplitConfig, run_split_and_batch
from utils.paths import project_root

CFG = SplitConfig(
    split="random", shard_size=4, part_files=4, workers=1, progress=False, check_crc=True
)
#: Written by every run with its own values (the lock's holder, the folder's owner).
RUN_OWN = {".lock", ".owner.json"}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("parallel") / "exports"
    generate_world(src, n=20, size=8, seed=5, corrupt_fraction=0.2, progress=False)
    a, b, c = (frame_record(r) for r in spread_records(3, first_seed=70))
    write_framed(src / "crc.tfrecord.gz", [a, flip_byte(b, 40), c])  # one bad record of 3
    return src


@pytest.fixture(scope="module")
def serial(world: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "shards"
    report = run_split_and_batch(world, out, CFG)
    assert report.balanced and report.quarantined >= 3 and sum(report.shards.values()) >= 4
    return out


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    )
    with cluster, distributed.Client(cluster) as connected:
        yield connected


def _outputs(out: Path) -> dict[str, bytes]:
    """Every file a run wrote, by name (``report.json`` without its seconds and folder)."""
    files = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file() and p.name not in RUN_OWN):
        data = path.read_bytes()
        if path.name == sb.REPORT_FILE:
            report = json.loads(data)
            report.pop("seconds"), report.pop("out")
            data = json.dumps(report).encode()
        files[path.relative_to(out).as_posix()] = data
    return files


def _assert_same(out: Path, reference: Path) -> None:
    mine, theirs = _outputs(out), _outputs(reference)
    assert sorted(mine) == sorted(theirs)
    assert any(name.startswith("quarantine/") for name in mine)
    differ = [name for name in mine if mine[name] != theirs[name]]
    assert not differ, f"files differ from the one-process run: {differ}"


def test_shard_writer_processes_write_the_same_bytes(world: Path, serial: Path, tmp_path) -> None:
    out = tmp_path / "shards"
    run_split_and_batch(world, out, dataclasses.replace(CFG, workers=2))
    _assert_same(out, serial)


def test_a_dask_cluster_writes_the_same_bytes(world: Path, serial: Path, client, tmp_path) -> None:
    by_client = tmp_path / "client"
    run_split_and_batch(world, by_client, dataclasses.replace(CFG, workers=2), client=client)
    _assert_same(by_client, serial)
    by_address = tmp_path / "address"
    cfg = dataclasses.replace(CFG, scheduler=client.scheduler.address)
    report = run_split_and_batch(world, by_address, cfg)
    _assert_same(by_address, serial)
    assert report.balanced


def test_a_killed_shard_writer_fails_the_run_and_the_rerun_recovers(
    world: Path, serial: Path, tmp_path, monkeypatch
) -> None:
    parent, original = os.getpid(), sb.write_chunk

    def killing(*args, **kwargs):
        if os.getpid() != parent:  # a forked shard writer dies mid-shard, no cleanup
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    monkeypatch.setattr(sb, "write_chunk", killing)
    out = tmp_path / "shards"
    with pytest.raises(BrokenProcessPool):
        run_split_and_batch(world, out, dataclasses.replace(CFG, workers=2))
    assert (out / sb.STAGING_DIR).is_dir() and not (out / sb.DONE_FILE).exists()
    monkeypatch.setattr(sb, "write_chunk", original)
    run_split_and_batch(world, out, dataclasses.replace(CFG, workers=2))
    assert not list(out.rglob(".tmp-*"))
    _assert_same(out, serial)


def test_a_local_run_does_not_import_dask(world: Path, tmp_path) -> None:
    code = (
        "import sys; from utils.batching.split_and_batch import SplitConfig, "
        "run_split_and_batch as run; "
        f"run({str(world)!r}, {str(tmp_path / 'out')!r}, SplitConfig(split='random', "
        "shard_size=4, progress=False)); print(sorted({'dask', 'distributed'} & set(sys.modules)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=project_root(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
