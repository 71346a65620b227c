"""The Earth Engine extraction keeps to its own folder: a
non-empty folder it did not make is refused naming it, a second run into one folder
is refused naming the process that holds it, a folder an earlier version made is
adopted and resumed, and a dry run touches no folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gee_fakes import FakeComputePixels, offline_ee

from extract_GPS_images.__main__ import main as cli
from extract_GPS_images.gee import STAGE, GeeConfig, extract_gee
from extract_GPS_images.gee_manifest import Manifest
from extract_GPS_images.gee_recipe import RecipeConfig
from utils.folder_lock import FolderLockedError
from utils.ownership import OWNER_FILE, ForeignFolderError, guard_output

LABELS = (
    "year,cell id,centroid latitude,centroid longitude,label\n"
    "2019,A1,21.0,105.8,1.2\n2019,B2,21.1,105.9,2.4\n2020,C3,21.2,106.0,0.7\n"
)
SIZE = 8


@pytest.fixture(autouse=True)
def _ee():
    with offline_ee():
        yield


def _config(tmp_path: Path, out: Path, **kw) -> GeeConfig:
    labels = tmp_path / "labels_in.csv"
    labels.write_text(LABELS)
    return GeeConfig.from_flat(
        labels=str(labels), out_dir=str(out), size=SIZE, progress=False, **kw
    )


def _fake() -> FakeComputePixels:
    return FakeComputePixels(RecipeConfig(size=SIZE).record_bands, SIZE)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("mode", ["download", "export"])
def test_a_foreign_folder_is_refused_and_left_alone(tmp_path, mode):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    (home / "labels.csv").write_text("mine")
    before = _snapshot(home)
    fake = _fake()
    with pytest.raises(ForeignFolderError, match=f"{home}.*not made by {STAGE}.*thesis.tex"):
        extract_gee(_config(tmp_path, home, mode=mode), initialize=False, compute_pixels=fake)
    assert _snapshot(home) == before  # labels.csv not replaced, no record, no lock file
    assert fake.keys == []


def test_the_cli_says_which_folder_it_refuses(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("x")
    (tmp_path / "labels_in.csv").write_text(LABELS)
    args = ["gee", "--labels", str(tmp_path / "labels_in.csv"), "--out", str(home)]
    with pytest.raises(SystemExit, match=f"error: refusing .* into {home}.*notes.txt"):
        cli([*args, "--project", "p", "--no-progress"])
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt"]


def test_a_dry_run_needs_no_folder_and_writes_nothing(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    for out in (home, tmp_path / "new"):
        report = extract_gee(_config(tmp_path, out, dry_run=True), initialize=False)
        assert "3 computePixels request(s)" in report.summary()
    assert sorted(p.name for p in home.iterdir()) == ["thesis.tex"]
    assert not (tmp_path / "new").exists()


def test_a_second_run_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    cfg = _config(tmp_path, out)
    fake = _fake()
    with guard_output(out, STAGE), pytest.raises(FolderLockedError, match=f"{os.getpid()}"):
        extract_gee(cfg, initialize=False, compute_pixels=fake)
    assert fake.keys == [] and not (out / "labels.csv").exists()
    holder = subprocess.Popen(  # another process holds the folder
        [sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLockedError, match=f"process {holder.pid} .*{STAGE}"):
            extract_gee(cfg, initialize=False, compute_pixels=fake)
    finally:
        holder.kill()
        holder.wait()
    report = extract_gee(cfg, initialize=False, compute_pixels=fake)  # the lock went with it
    assert report.result.fetched == 3
    record = json.loads((out / OWNER_FILE).read_text())
    assert record["stage"] == STAGE and "labels.csv" in record["files"]


HOLD_LOCK = """
import sys, time
from extract_GPS_images.gee import STAGE
from utils.ownership import guard_output
with guard_output(sys.argv[1], STAGE):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_folder_an_earlier_version_made_is_adopted_and_resumed(tmp_path):
    out = tmp_path / "out"
    first = extract_gee(_config(tmp_path, out, limit=2), initialize=False, compute_pixels=_fake())
    assert first.result.fetched == 2
    (out / OWNER_FILE).unlink()  # as an extraction made before records were kept
    (out / ".lock").unlink()
    fake = _fake()
    again = extract_gee(_config(tmp_path, out), initialize=False, compute_pixels=fake)
    assert (again.result.fetched, again.result.skipped) == (1, 2)
    assert len(fake.keys) == 1
    assert Manifest(out / "gee_manifest.csv").counts()["done"] == 3
    assert json.loads((out / OWNER_FILE).read_text())["stage"] == STAGE


def test_a_folder_holding_only_the_labels_being_extracted_is_taken(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "labels.csv").write_text(LABELS)
    cfg = GeeConfig.from_flat(
        labels=str(out / "labels.csv"), out_dir=str(out), size=SIZE, progress=False
    )
    assert extract_gee(cfg, initialize=False, compute_pixels=_fake()).result.fetched == 3
    assert (out / "labels.csv").read_text() == LABELS  # the user's file, not rewritten
    assert "labels.csv" not in json.loads((out / OWNER_FILE).read_text())["files"]
