"""split_and_batch on the synthetic world: damaged files quarantined with the matching
reason, splits by location and reproducible, HDF5 contract, idempotent re-runs, and a
run killed half way (SIGKILL, twice) that recovers to the same result. Also the notebook."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from extract_GPS_images.schema import image_band_names
from extract_GPS_images.synthetic import generate_world
from utils import hdf5_schema as hs
from utils.batching.split_and_batch import SplitConfig, SplitReport, run_split_and_batch
from utils.batching.validate_records import RecordRules, read_file
from utils.fast_chunks import Codec, chunk_plan
from utils.paths import project_root

SIZE = 8
KIND_TO_REASON = {
    "truncated_gzip": "truncated",
    "missing_band": "missing_band",
    "wrong_length": "wrong_size",
    "nan": "nan_or_inf",
    "bad_label": "bad_label",
}
CFG = dict(shard_size=16, part_files=8, block_km=100.0, progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "exports"
    with pytest.warns(UserWarning, match="before 2016"):  # 2014 labels use 2016 imagery
        generate_world(
            out, n=45, size=SIZE, seed=3, corrupt_fraction=0.25, years=(2014, 2019), progress=False
        )
    return out


@pytest.fixture(scope="module")
def reference(world: Path, tmp_path_factory) -> tuple[Path, SplitReport]:
    out = tmp_path_factory.mktemp("ref") / "shards"
    return out, run_split_and_batch(world, out, SplitConfig(**CFG))


def _manifest(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / hs.MANIFEST_FILE, dtype={"cell_id": str, "cell_key": str})


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in folder.rglob("*")
        if p.name != ".lock"  # the run lock's holder line is rewritten by every run
    }


def test_corruptions_quarantined_with_matching_reason(world: Path, reference) -> None:
    out, report = reference
    corruptions = pd.read_csv(world / "corruptions.csv", keep_default_na=False)
    assert set(corruptions["kind"]) == set(KIND_TO_REASON)
    manifest = _manifest(out).set_index("file")
    for file, kind in zip(corruptions["file"], corruptions["kind"], strict=True):
        assert manifest.loc[file, "status"] == "quarantined"
        assert manifest.loc[file, "reason"] == KIND_TO_REASON[kind], manifest.loc[file, "detail"]
    assert report.quarantined == len(corruptions)
    assert report.ok + report.quarantined == report.inputs == 90
    assert report.balanced


def test_no_location_in_two_splits_and_labels_covered(reference) -> None:
    out, report = reference
    ok = _manifest(out).query("status == 'ok'")
    assert ok.groupby("cell_id")["split"].nunique().max() == 1  # both years, one split
    assert ok.groupby(["latitude", "longitude"])["split"].nunique().max() == 1
    assert set(ok["split"]) == set(hs.SPLITS)
    assert report.uncovered == []
    assert all(sum(report.label_bins[s]) == report.per_split[s] for s in hs.SPLITS)


def test_same_seed_same_split_other_seed_other_split(world: Path, reference, tmp_path) -> None:
    out, _ = reference
    again = run_split_and_batch(world, tmp_path / "again", SplitConfig(**CFG, workers=1))
    assert _manifest(tmp_path / "again").equals(_manifest(out))
    assert again.per_split == json.loads((out / "report.json").read_text())["per_split"]
    other = run_split_and_batch(world, tmp_path / "other", SplitConfig(**CFG, seed=7))
    assert not _manifest(tmp_path / "other")["split"].equals(_manifest(out)["split"])
    assert other.ok == again.ok


def test_hdf5_shards_follow_the_contract(world: Path, reference) -> None:
    out, report = reference
    manifest = _manifest(out)
    for split in hs.SPLITS:
        files = hs.split_files(out, split)
        assert len(files) == report.shards[split]
        total = 0
        for path in files:
            with h5py.File(path) as f:
                n = f[hs.DATA].shape[0]
                total += n
                assert n <= CFG["shard_size"]
                assert f[hs.DATA].shape == (n, 25, SIZE, SIZE)
                assert f[hs.DATA].dtype == np.float32
                assert f[hs.DATA].chunks == (1, 25, SIZE, SIZE)
                assert chunk_plan(f[hs.DATA]) == (True, Codec.ZSTD)  # shuffle + Zstandard
                assert f[hs.LABELS].dtype == np.float32 and f[hs.LABELS].shape == (n,)
                assert f[hs.LOCATIONS].shape == (n, 2) and f[hs.LOCATIONS].dtype == np.float64
                assert f[hs.YEAR].dtype == np.int32 and f[hs.IMAGERY_YEAR].dtype == np.int32
                assert list(f.attrs[hs.ATTR_BANDS]) == image_band_names()
                assert f.attrs[hs.ATTR_SPLIT] == split
                assert f.attrs[hs.ATTR_SCHEMA_VERSION] == hs.SCHEMA_VERSION
                assert json.loads(f.attrs[hs.ATTR_CONFIG])["seed"] == 42
                assert f.attrs[hs.ATTR_SOURCE] == str(world)
                cell_ids = f[hs.CELL_ID].asstr()[:]
                rows = manifest[manifest["shard"] == f"{split}/{path.name}"]
                assert list(rows["cell_id"]) == list(cell_ids)
                assert np.allclose(rows["label"], f[hs.LABELS][:])
                assert set(f[hs.IMAGERY_YEAR][:]) <= {2016, 2019}  # 2014 labels -> 2016
        assert total == report.per_split[split]
    # a sample round-trips exactly
    row = manifest.query("status == 'ok'").iloc[3]
    sample = read_file(world / row["file"], RecordRules(SIZE)).records[0].sample
    with h5py.File(out / row["shard"]) as f:
        assert np.array_equal(f[hs.DATA][int(row["index_in_shard"])], sample.image)
    stats = hs.read_stats(out)
    assert stats["split"] == "train" and stats["n_samples"] == report.per_split["train"]
    assert stats["bands"] == image_band_names()
    assert all(len(stats[k]) == 25 for k in ("mean", "std", "min", "max", "p01", "p99"))
    assert all(
        lo <= m <= hi for lo, m, hi in zip(stats["min"], stats["mean"], stats["max"], strict=True)
    )


def test_stats_describe_the_train_shards(reference) -> None:
    out, _ = reference
    train = np.concatenate([h5py.File(p)[hs.DATA][:] for p in hs.split_files(out, "train")]).astype(
        np.float64
    )
    bands = np.moveaxis(train, 1, 0).reshape(train.shape[1], -1)
    stats = hs.read_stats(out)
    assert np.allclose(stats["mean"], bands.mean(axis=1), atol=1e-6)
    assert np.allclose(stats["std"], bands.std(axis=1), atol=1e-5)
    assert np.allclose(stats["min"], bands.min(axis=1)) and np.allclose(
        stats["max"], bands.max(axis=1)
    )
    for key, q in (("p01", 1), ("p99", 99)):  # 8x8 patches: every pixel is on the grid
        expected = np.percentile(bands, q, axis=1, method="inverted_cdf")
        assert np.allclose(stats[key], expected, atol=1.5e-4), key


def test_second_run_writes_nothing(world: Path, reference) -> None:
    out, _ = reference
    before = _snapshot(out)
    report = run_split_and_batch(world, out, SplitConfig(**CFG))
    assert report.skipped
    assert _snapshot(out) == before


def test_float16_lzf_variant(world: Path, tmp_path: Path) -> None:
    cfg = SplitConfig(**CFG, dtype="float16", compression="lzf", split="random")
    report = run_split_and_batch(world, tmp_path / "f16", cfg)
    with h5py.File(hs.split_files(tmp_path / "f16", "train")[0]) as f:
        assert f[hs.DATA].dtype == np.float16 and f[hs.DATA].compression == "lzf"
        assert np.isfinite(f[hs.DATA][0]).all()
    assert hs.read_stats(tmp_path / "f16")["n_samples"] == report.per_split["train"]


KILLER = """
import os, signal, sys
import utils.batching.split_and_batch as sb
calls = {{"n": 0}}
original = sb.{target}
def killing(*args, **kwargs):
    calls["n"] += 1
    if calls["n"] > {after}:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: a real crash
    return original(*args, **kwargs)
sb.{target} = killing
sb.main(sys.argv[1:])
"""


def _killed_run(world: Path, out: Path, target: str, after: int, *extra: str) -> None:
    code = textwrap.dedent(KILLER.format(target=target, after=after))
    args = [
        *extra,
        str(world),
        str(out),
        "--shard-size",
        "16",
        "--part-files",
        "8",
        "--block-km",
        "100",
        "--no-progress",
    ]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=project_root(),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == -9, proc.stderr[-2000:]


def test_killed_run_recovers_to_the_same_result(world: Path, reference, tmp_path: Path) -> None:
    ref, ref_report = reference
    out = tmp_path / "shards"
    # killed inside the third staging part, while its temporary file is open
    _killed_run(world, out, "_PartWorker.__call__", after=20)  # reading file 21
    assert not (out / "manifest.csv").exists()
    assert 0 < len(list((out / ".staging").glob("part_*.h5"))) < 90 // 8
    assert list((out / ".staging").glob(".tmp-*"))  # the half-written part
    # killed again while writing the shards (in this process: --workers 1; a killed
    # shard-writer process of a parallel run: tests/test_split_parallel.py)
    _killed_run(world, out, "write_chunk", 20, "--workers", "1")
    assert len(list((out / "train").glob("train_*.h5"))) == 1
    report = run_split_and_batch(world, out, SplitConfig(**CFG))
    assert not (out / ".staging").exists() and not list(out.rglob(".tmp-*"))
    assert _manifest(out).equals(_manifest(ref))
    assert (out / hs.STATS_FILE).read_text() == (ref / hs.STATS_FILE).read_text()
    assert report.per_split == ref_report.per_split and report.per_reason == ref_report.per_reason
    for split in hs.SPLITS:
        for mine, theirs in zip(
            hs.split_files(out, split), hs.split_files(ref, split), strict=True
        ):
            with h5py.File(mine) as a, h5py.File(theirs) as b:
                assert np.array_equal(a[hs.DATA][:], b[hs.DATA][:])
                assert np.array_equal(a[hs.LABELS][:], b[hs.LABELS][:])
                assert list(a[hs.CELL_ID][:]) == list(b[hs.CELL_ID][:])
    assert sorted(p.name for p in (out / "quarantine").iterdir()) == sorted(
        p.name for p in (ref / "quarantine").iterdir()
    )


@pytest.mark.notebook
def test_notebook_runs_and_checks_counts(world: Path, tmp_path: Path, run_notebook) -> None:
    run = tmp_path / "run"
    (run / "exports").mkdir(parents=True)
    for path in world.iterdir():
        shutil.copyfile(path, run / "exports" / path.name)  # links are refused by default
    executed = run_notebook(
        "split_and_batch.ipynb", run_dir=str(run), block_km=100.0, shard_size=32
    )
    text = executed.read_text()
    assert "counts add up" in text and "no cell in two splits" in text
    assert (run / "figures" / "split_labels.png").is_file()
    assert (run / "figures" / "split_map.png").is_file()
    assert SplitReport.load(run / "shards").balanced
