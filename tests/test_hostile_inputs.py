"""split_and_batch on hostile inputs: each test builds its bad input itself."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hostile_factory import (
    flip_byte,
    gzip_bomb,
    huge_frame_header,
    record,
    spread_records,
    write_framed,
)

from extract_GPS_images.tfrecord import frame_record, write_tfrecord
from utils import hdf5_schema as hs
from utils.batching import validate_records
from utils.batching.split_and_batch import InputError, SplitConfig, run_split_and_batch
from utils.batching.unzip import extract_archives
from utils.batching.validate_records import RecordError, iter_records
from utils.folder_lock import FolderLockedError
from utils.ownership import ForeignFolderError

CFG = SplitConfig(split="random", shard_size=8, progress=False)


def _manifest(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / hs.MANIFEST_FILE, dtype={"cell_id": str, "detail": str})


def _good_files(src: Path, n: int = 12, first_seed: int = 0) -> None:
    for i, rec in enumerate(spread_records(n, first_seed)):
        write_tfrecord(src / f"good{first_seed + i:03d}_2019.tfrecord.gz", [rec])


def test_crc_mismatches_quarantine_the_record_and_keep_the_rest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _good_files(src)
    a, b, c, d, e = (frame_record(r) for r in spread_records(5, first_seed=50))
    # payload CRC: one byte of the second record's payload flipped; the others are kept
    write_framed(src / "payload.tfrecord.gz", [a, flip_byte(b, 40), c])
    # length CRC: the third record's length field damaged; the two before are kept
    write_framed(src / "length.tfrecord.gz", [d, e, flip_byte(a, 0)])
    out = tmp_path / "out"
    report = run_split_and_batch(src, out, CFG)
    rows = _manifest(out)
    payload = rows[rows["file"] == "payload.tfrecord.gz"].set_index("record")
    assert payload["status"].tolist() == ["ok", "quarantined", "ok"]
    assert payload.loc[1, "reason"] == "unreadable"
    assert "payload CRC" in payload.loc[1, "detail"]
    length = rows[rows["file"] == "length.tfrecord.gz"].set_index("record")
    assert length["status"].tolist() == ["ok", "ok", "quarantined"]
    assert "length CRC" in length.loc[2, "detail"]
    assert report.ok == 12 + 4 and report.balanced
    with pytest.raises(RecordError, match="payload CRC"):
        list(iter_records(src / "payload.tfrecord.gz"))


def test_bombs_are_one_quarantined_input_each(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _good_files(src)
    gzip_bomb(src / "zeros.tfrecord.gz", 64 << 20)  # garbage: stops at the first length CRC
    gzip_bomb(src / "huge_record.tfrecord.gz", 8 << 20, prefix=huge_frame_header(1 << 40))
    many = [frame_record(r) for r in spread_records(1, first_seed=70)] * 400  # ~3 MB inflated
    write_framed(src / "many.tfrecord.gz", many)
    with zipfile.ZipFile(src / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("big.tfrecord", bytes(8 << 20))  # declares more than the cap
    with zipfile.ZipFile(src / "ratio.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("dense.tfrecord", bytes(1 << 20))  # 1000:1 past the floor
    monkeypatch.setattr("utils.batching.unzip.RATIO_FLOOR", 1 << 19)
    out = tmp_path / "out"
    report = run_split_and_batch(src, out, dataclasses.replace(CFG, max_inflate_bytes=2 << 20))
    rows = _manifest(out).set_index("file")
    expected = {
        "zeros.tfrecord.gz": ("unreadable", "length CRC"),
        "huge_record.tfrecord.gz": ("oversized", "declares 1099511627776 bytes"),
        "many.tfrecord.gz": ("oversized", "max_inflate_bytes"),
        "bomb.zip!big.tfrecord": ("oversized", "more than the cap"),
        "ratio.zip!dense.tfrecord": ("oversized", ":1"),
    }
    for name, (reason, detail) in expected.items():
        row = rows.loc[[name]]
        assert len(row) == 1, name  # one input, never a record per block of zeros
        assert (row["reason"].iloc[0], row["status"].iloc[0]) == (reason, "quarantined"), name
        assert detail in row["detail"].iloc[0], (name, row["detail"].iloc[0])
    kept = sorted(p.name for p in (out / "quarantine").iterdir())
    assert kept == ["reasons.csv", "zeros.tfrecord.gz"]  # oversized inputs are not copied
    assert not list((out / "extracted").rglob("*.tfrecord"))  # nothing of a bomb written
    assert report.ok == 12 and report.balanced


def test_inflate_steps_are_bounded(tmp_path: Path, monkeypatch) -> None:
    """A stream of valid records inflates in steps of INFLATE_STEP, not all at once."""
    monkeypatch.setattr("utils.batching.validate_records.INFLATE_STEP", 4096)
    seen: list[int] = []
    real = validate_records._frame

    def spy(data, start, limits, index):
        seen.append(len(data))
        return real(data, start, limits, index)

    monkeypatch.setattr("utils.batching.validate_records._frame", spy)
    frames = [frame_record(r) for r in spread_records(1)] * 50
    path = write_framed(tmp_path / "many.tfrecord.gz", frames)
    assert len(list(iter_records(path))) == 50
    assert max(seen) <= 4096 + len(frames[0])  # one step plus one cut record


def test_unsafe_entries_are_never_read(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("../escape.tfrecord.gz", b"secret")
        archive.writestr("ok/x.tfrecord.gz", b"fine")
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def spy(self, name, *args, **kw):
        opened.append(getattr(name, "filename", name))
        return real_open(self, name, *args, **kw)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    report = extract_archives(tmp_path, tmp_path.parent / "dest")
    assert [p.reason for p in report.problems] == ["unsafe_archive_entry"]
    assert opened == ["ok/x.tfrecord.gz"]


def test_leftovers_of_a_killed_unzip_are_removed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _good_files(src)
    with zipfile.ZipFile(src / "more.zip", "w") as archive:
        for i, rec in enumerate(spread_records(3, first_seed=30)):
            archive.writestr(f"m{i}_2019.tfrecord", frame_record(rec))
    out = tmp_path / "out"
    run_split_and_batch(src, out, CFG)
    stale = out / "extracted" / "more" / ".tmp-m0_2019.tfrecord.abc123"
    stale.write_bytes(b"half an entry")
    (src / "more.zip").touch()  # a changed input: the next run starts over
    os.utime(src / "more.zip", ns=(1, 1))
    report = run_split_and_batch(src, out, CFG)
    assert not stale.exists() and report.ok == 15


def _bad_folder(root: Path) -> tuple[Path, Path]:
    """An input folder with good files and every kind of hostile entry beside them, and
    a secret file outside it."""
    src, secret = root / "src", root / "secret.tfrecord.gz"
    src.mkdir()
    _good_files(src)
    write_tfrecord(secret, spread_records(1, first_seed=90))
    (src / "outside_link.tfrecord.gz").symlink_to(secret)
    (src / "zero_link.tfrecord.gz").symlink_to("/dev/zero")
    (src / "dangling.tfrecord.gz").symlink_to(root / "nowhere")
    (src / "sub").mkdir()
    (src / "sub" / "inside_link_2019.tfrecord.gz").symlink_to(src / "good000_2019.tfrecord.gz")
    (src / "folder_link").symlink_to(root)
    os.mkfifo(src / "pipe.tfrecord.gz")
    (src / "labels.csv").write_text("year,cell_id\n")
    (src / "notes.txt").write_text("hello")
    (src / "map.png").write_bytes(b"\x89PNG")
    gzip_bomb(src / "zeros.tfrecord.gz", 16 << 20)
    (src / "empty.tfrecord.gz").write_bytes(b"")
    bad_crc = flip_byte(frame_record(spread_records(1, first_seed=95)[0]), 30)
    write_framed(src / "bad_crc.tfrecord.gz", [bad_crc])
    with zipfile.ZipFile(src / "slip.zip", "w") as archive:
        archive.writestr("../slip.tfrecord", b"never read")
    with zipfile.ZipFile(src / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("big.tfrecord", bytes(100 << 20))  # 1000:1 past the ratio floor
    return src, secret


def _snapshot(root: Path, skip: Path) -> dict[str, tuple]:
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            if path == skip or skip in path.parents:
                continue
            st = os.lstat(path)
            found[str(path)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found


def test_links_and_special_files_are_listed_never_followed(tmp_path: Path) -> None:
    src, _ = _bad_folder(tmp_path)
    out = tmp_path / "out"
    before = _snapshot(tmp_path, out)
    report = run_split_and_batch(src, out, CFG)
    rows = _manifest(out).set_index("file")
    for name in (
        "outside_link.tfrecord.gz",
        "zero_link.tfrecord.gz",
        "dangling.tfrecord.gz",
        "sub/inside_link_2019.tfrecord.gz",
        "folder_link",
    ):
        assert (rows.loc[name, "reason"], rows.loc[name, "quarantine_file"]) == ("link", np.nan)
    assert (
        "dangling" in rows.loc["dangling.tfrecord.gz", "detail"]
        or "not followed" in rows.loc["dangling.tfrecord.gz", "detail"]
    )
    assert rows.loc["pipe.tfrecord.gz", "reason"] == "special_file"
    assert "FIFO" in rows.loc["pipe.tfrecord.gz", "detail"]
    kept = {p.name for p in (out / "quarantine").iterdir()}
    assert not any("link" in k or "pipe" in k for k in kept)  # nothing of a link copied
    assert report.skipped_kinds == {".csv": 1, ".png": 1, ".txt": 1}
    assert (rows.loc[["labels.csv", "notes.txt", "map.png"], "status"] == "skipped").all()
    # every entry under the input folder is in the manifest, once per single-record entry
    entries = [Path(f) / n for f, d, fs in os.walk(src) for n in [*d, *fs]]
    entries = [p for p in entries if p.is_symlink() or not p.is_dir()]
    counts = rows["status"].value_counts()
    assert (
        counts["ok"] + counts["quarantined"] + counts["skipped"] == len(entries) == report.entries
    )
    names = sorted(p.relative_to(src).as_posix() for p in entries)
    assert sorted(name.split("!")[0] for name in rows.index) == names  # archives: their entry
    assert rows.loc["bomb.zip!big.tfrecord", "reason"] == "oversized"
    assert rows.loc["slip.zip!../slip.tfrecord", "reason"] == "unsafe_archive_entry"
    assert rows.loc["bad_crc.tfrecord.gz", "reason"] == "unreadable"
    assert _snapshot(tmp_path, out) == before  # nothing written outside the output folder

    followed = run_split_and_batch(
        src, tmp_path / "out2", dataclasses.replace(CFG, follow_links=True)
    )
    rows = _manifest(tmp_path / "out2").set_index("file")
    inside = rows.loc["sub/inside_link_2019.tfrecord.gz"]
    assert inside["reason"] == "duplicate" and "identical" in inside["detail"]  # read, same cell
    for name in ("outside_link.tfrecord.gz", "zero_link.tfrecord.gz", "dangling.tfrecord.gz"):
        assert rows.loc[name, "reason"] == "link", name
    assert followed.ok == report.ok


def test_duplicates_keep_one_per_cell_and_year(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _good_files(src)
    twice = frame_record(spread_records(1, first_seed=40)[0])
    write_framed(src / "twice.tfrecord.gz", [twice, twice])
    write_tfrecord(src / "a_2019.tfrecord.gz", [spread_records(1, 41, cell_id="same")[0]])
    other = record(42, label=2.5, lat=30.0, lon=110.0, cell_id="same")  # same cell, other data
    write_tfrecord(src / "b_2019.tfrecord.gz", [other])
    write_tfrecord(
        src / "c_2020.tfrecord.gz", [record(43, year=2020, cell_id="same")]
    )  # other year
    out = tmp_path / "out"
    report = run_split_and_batch(src, out, CFG)
    rows = _manifest(out)
    twice_rows = rows[rows["file"] == "twice.tfrecord.gz"].set_index("record")
    assert twice_rows["status"].tolist() == ["ok", "quarantined"]
    assert "twice.tfrecord.gz record 0; content identical" in twice_rows.loc[1, "detail"]
    b = rows.set_index("file").loc["b_2019.tfrecord.gz"]
    assert (
        b["reason"] == "duplicate" and "a_2019.tfrecord.gz record 0; content differs" in b["detail"]
    )
    assert rows.set_index("file").loc["c_2020.tfrecord.gz", "status"] == "ok"
    assert report.ok == 12 + 3 and report.per_reason == {"duplicate": 2}
    ok = rows[rows["status"] == "ok"]
    assert not ok.duplicated(["cell_key", "year"]).any()


def test_empty_or_foreign_inputs_are_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no TFRecord"):
        run_split_and_batch(empty, tmp_path / "o1", CFG)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "a.txt").write_text("x")
    (foreign / "b.png").write_bytes(b"x")
    with pytest.raises(
        InputError, match=r"2 entries: 1 \.txt, 1 \.png|2 entries: 1 \.png, 1 \.txt"
    ):
        run_split_and_batch(foreign, tmp_path / "o2", CFG)
    few = tmp_path / "few"
    few.mkdir()
    _good_files(few, n=2)
    with pytest.raises(InputError, match=r"split\(s\) \[.*\] would be empty"):
        run_split_and_batch(few, tmp_path / "o3", CFG)
    assert (tmp_path / "o3" / hs.MANIFEST_FILE).is_file()  # the manifest says what was read
    report = run_split_and_batch(
        few, tmp_path / "o4", dataclasses.replace(CFG, ratios=(0.5, 0.5, 0))
    )
    assert report.per_split == {"train": 1, "val": 1, "test": 0}


def test_a_folder_the_stage_did_not_make_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _good_files(src)
    run = tmp_path / "run"  # a run folder: training's checkpoints
    (run / "train").mkdir(parents=True)
    for name in ("best.pt", "last.pt"):
        (run / "train" / name).write_bytes(b"weights")
    before = _snapshot(tmp_path, src)
    with pytest.raises(ForeignFolderError, match=f"{run}.*not made by split_and_batch.*train"):
        run_split_and_batch(src, run, CFG)
    assert _snapshot(tmp_path, src) == before  # not a byte changed, no lock file either
    # its own folder: a re-run with another config replaces only the files it wrote
    out = tmp_path / "out"
    run_split_and_batch(src, out, CFG)
    (out / "train" / "notes.txt").write_text("mine")
    (out / "mine.csv").write_text("mine")
    run_split_and_batch(src, out, dataclasses.replace(CFG, seed=7))
    assert (out / "train" / "notes.txt").read_text() == "mine"
    assert (out / "mine.csv").read_text() == "mine"


def test_one_run_at_a_time(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _good_files(src)
    out = tmp_path / "out"
    holder = subprocess.Popen(  # another process holds the output folder
        [sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLockedError, match=f"process {holder.pid} .*split_and_batch"):
            run_split_and_batch(src, out, CFG)
        assert not (out / hs.MANIFEST_FILE).exists()
    finally:
        holder.kill()
        holder.wait()
    assert run_split_and_batch(src, out, CFG).ok == 12  # a killed holder leaves no lock


HOLD_LOCK = """
import sys, time
from utils.ownership import guard_output
with guard_output(sys.argv[1], "split_and_batch"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_patch_size_from_all_records(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i, rec in enumerate(spread_records(17, first_seed=0, size=4)):  # small, sort first
        write_tfrecord(src / f"a{i:03d}_2019.tfrecord.gz", [rec])
    for i, rec in enumerate(spread_records(40, first_seed=100)):
        write_tfrecord(src / f"b{i:03d}_2019.tfrecord.gz", [rec])
    out = tmp_path / "out"
    report = run_split_and_batch(src, out, CFG)
    assert report.size == 8 and report.ok == 40
    assert report.size_mix == {"8x8": 40, "4x4": 17}
    assert report.per_reason == {"wrong_size": 17}
    assert "patch sizes read" in report.summary()
    assert not [p for p in (out / "quarantine").iterdir() if p.name.startswith("b")]
    for i, rec in enumerate(spread_records(23, first_seed=200, size=4)):  # now 40 vs 40
        write_tfrecord(src / f"c{i:03d}_2019.tfrecord.gz", [rec])
    with pytest.raises(InputError, match="disagree on the patch size.*give size="):
        run_split_and_batch(src, tmp_path / "out2", CFG)
    fixed = run_split_and_batch(src, tmp_path / "out3", dataclasses.replace(CFG, size=8))
    assert fixed.ok == 40
