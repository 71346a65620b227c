"""split_and_batch on hand-made inputs: each damage quarantined with the right reason,
unsafe archives refused, the original study's exports converted, nothing lost."""

from __future__ import annotations

import gzip
import stat
import tempfile
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from extract_GPS_images import schema
from extract_GPS_images.tfrecord import (
    encode_example,
    frame_record,
    sample_bands,
    write_tfrecord,
)
from utils import hdf5_schema as hs
from utils.batching.split_and_batch import InputError, SplitConfig, run_split_and_batch
from utils.batching.unzip import extract_archives
from utils.batching.validate_records import iter_records

SIZE = 8


def bands(seed: int, *, label=1.5, lat=10.0, lon=105.0, year=2019) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.01, 0.5, (25, SIZE, SIZE)).astype(np.float32)
    image[24] = rng.integers(0, 9, (SIZE, SIZE))
    meta = {"label": label, "latitude": lat, "longitude": lon, "year": year, "imagery_year": year}
    return sample_bands(image, meta)


def record(seed: int, **kw) -> bytes:
    return encode_example(bands(seed, **kw), cell_id=f"cell-{seed}")


def damaged(seed: int, change) -> bytes:
    b = bands(seed)
    change(b)
    return encode_example(b, cell_id=f"cell-{seed}")


def original_record(seed: int, wi: float, lat: float, lon: float) -> bytes:
    """A record as the original study's notebook exported it (B4_1 keys, DW under
    ``label``, scalar wi/latitude/longtitude)."""
    b = bands(seed)
    out = {}
    for q in range(4):
        for band in schema.S2_BANDS:
            out[f"{band}_{q + 1}"] = b[f"{band}_q{q + 1}"]
    out["label"] = b["DW"]
    out.update(wi=np.float32([wi]), latitude=np.float32([lat]), longtitude=np.float32([lon]))
    return encode_example(out)


def _set(name: str, index, value):
    def change(b):
        arr = np.array(b[name], np.float32)
        arr[index] = value
        b[name] = arr

    return change


EXPECTED = {  # file -> reason (None: converts)
    "empty.tfrecord.gz": "empty_file",
    "truncated.tfrecord.gz": "truncated",
    "not_a_record.tfrecord.gz": "unreadable",
    "missing_band.tfrecord.gz": "missing_band",
    "wrong_length.tfrecord.gz": "wrong_size",
    "nan.tfrecord.gz": "nan_or_inf",
    "bad_coordinates.tfrecord.gz": "bad_coordinates",
    "bad_label.tfrecord.gz": "bad_label",
    "reflectance.tfrecord.gz": "out_of_range",
    "dw_code.tfrecord.gz": "out_of_range",
    "not_constant.tfrecord.gz": "out_of_range",
    "unknown.tfrecord.gz": "unknown_schema",
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("exports")
    for i in range(12):  # good records, spread out
        write_tfrecord(
            src / f"good{i:02d}_2019.tfrecord.gz",
            [record(i, label=0.5 + 0.2 * i, lat=8 + i, lon=102 + 0.5 * i)],
        )
    (src / "empty.tfrecord.gz").write_bytes(b"")
    full = src / "full.tfrecord.gz"
    write_tfrecord(full, [record(50)])
    (src / "truncated.tfrecord.gz").write_bytes(full.read_bytes()[:-40])
    full.unlink()
    (src / "not_a_record.tfrecord.gz").write_bytes(gzip.compress(b"this is not a record " * 9))

    def drop(b):
        del b["B8_q2"]

    def shorten(b):
        b["B2_q1"] = b["B2_q1"][:-1]

    write_tfrecord(src / "missing_band.tfrecord.gz", [damaged(51, drop)])
    write_tfrecord(src / "wrong_length.tfrecord.gz", [damaged(52, shorten)])
    write_tfrecord(src / "nan.tfrecord.gz", [damaged(53, _set("B3_q2", (0, 0), np.nan))])
    write_tfrecord(src / "bad_coordinates.tfrecord.gz", [record(54, lat=95.0)])
    write_tfrecord(src / "bad_label.tfrecord.gz", [record(55, label=-9999.0)])
    write_tfrecord(src / "reflectance.tfrecord.gz", [damaged(56, _set("B4_q1", (1, 1), 3.0))])
    write_tfrecord(src / "dw_code.tfrecord.gz", [damaged(57, _set("DW", (2, 2), 12.0))])
    write_tfrecord(src / "not_constant.tfrecord.gz", [damaged(58, _set("year", (0, 0), 2018))])
    foreign = {"foo": np.zeros(SIZE * SIZE), "bar": np.ones(SIZE * SIZE)}
    write_tfrecord(src / "unknown.tfrecord.gz", [encode_example(foreign)])
    # the original study's export: year in the name, scalar features
    write_tfrecord(
        src / "2014_105.5_10.25_1.7_x.tfrecord.gz", [original_record(60, 1.7, 10.25, 105.5)]
    )
    # three records in one file, the middle one damaged
    write_tfrecord(
        src / "multi.tfrecord.gz",
        [
            record(70, lat=20.0, lon=106.0),
            damaged(71, _set("B2_q3", (0, 1), np.inf)),
            record(72, lat=21.0, lon=106.5),
        ],
    )
    # a download: nested folders, a zip-slip entry, an absolute path, a link; a broken zip
    nested = src / "drive" / "batch1"
    nested.mkdir(parents=True)
    with zipfile.ZipFile(nested / "export.zip", "w") as archive:
        for i in range(3):
            archive.writestr(f"folder/sub/z{i}_2019.tfrecord.gz", _gz_record(80 + i, lat=12 + i))
        archive.writestr("../../escape.tfrecord.gz", _gz_record(90))
        archive.writestr("/abs.tfrecord.gz", _gz_record(91))
        link = zipfile.ZipInfo("folder/link.tfrecord.gz")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    (src / "broken.zip").write_bytes(b"PK\x03\x04 not really a zip archive")
    return src


def _gz_record(seed: int, **kw) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = write_tfrecord(Path(folder) / "r.tfrecord.gz", [record(seed, lon=104.0, **kw)])
        return path.read_bytes()


@pytest.fixture(scope="module")
def converted(exports: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "shards"
    cfg = SplitConfig(split="random", shard_size=4, progress=False)
    return out, run_split_and_batch(exports, out, cfg)


def test_every_damage_quarantined_with_its_reason(converted) -> None:
    out, report = converted
    manifest = pd.read_csv(out / hs.MANIFEST_FILE, dtype={"cell_id": str})
    by_file = manifest.set_index("file")
    for name, reason in EXPECTED.items():
        row = by_file.loc[name]
        assert row["status"] == "quarantined", name
        assert row["reason"] == reason, (name, row["detail"])
        assert (out / "quarantine" / row["quarantine_file"]).is_file()
    assert "B8_q2" in by_file.loc["missing_band.tfrecord.gz", "detail"]
    assert "foo" in by_file.loc["unknown.tfrecord.gz", "detail"]  # names the keys it has
    assert "B2_q1" in by_file.loc["unknown.tfrecord.gz", "detail"]  # and those it lacks
    reasons = pd.read_csv(out / "quarantine" / "reasons.csv")
    assert len(reasons) == report.quarantined
    assert report.ok + report.quarantined == report.inputs == len(manifest)
    assert report.balanced


def test_multi_record_file_keeps_the_good_records(converted) -> None:
    out, _ = converted
    manifest = pd.read_csv(out / hs.MANIFEST_FILE)
    rows = manifest[manifest["file"] == "multi.tfrecord.gz"].set_index("record")
    assert rows["status"].tolist() == ["ok", "quarantined", "ok"]
    assert rows.loc[1, "reason"] == "nan_or_inf"
    kept = out / "quarantine" / rows.loc[1, "quarantine_file"]
    assert kept.name.endswith("__r00001.tfrecord.gz")
    assert len(list(iter_records(kept))) == 1  # the bad record alone, readable again


def test_archives_unpacked_safely(converted, exports: Path) -> None:
    out, _ = converted
    manifest = pd.read_csv(out / hs.MANIFEST_FILE)
    unsafe = manifest[manifest["reason"] == "unsafe_archive_entry"]
    assert len(unsafe) == 3
    assert {d.split(":")[0] for d in unsafe["detail"]} == {
        "'..' in path",
        "absolute path",
        "symbolic link",
    }
    assert (manifest["reason"] == "bad_archive").sum() == 1
    extracted = manifest[manifest["file"].str.startswith("extracted/")]
    assert len(extracted) == 3 and (extracted["status"] == "ok").all()
    assert not list(exports.parent.rglob("escape.tfrecord.gz"))
    assert not Path("/abs.tfrecord.gz").exists()
    assert not list(out.rglob("link.tfrecord.gz"))


def test_original_study_export_converts(converted) -> None:
    out, _ = converted
    manifest = pd.read_csv(out / hs.MANIFEST_FILE, dtype={"cell_id": str})
    row = manifest.set_index("file").loc["2014_105.5_10.25_1.7_x.tfrecord.gz"]
    assert row["status"] == "ok"
    assert (row["year"], row["imagery_year"]) == (2014, 2016)  # before Sentinel-2: mapped
    assert row["label"] == pytest.approx(1.7)
    assert (row["latitude"], row["longitude"]) == pytest.approx((10.25, 105.5))
    with h5py.File(out / row["shard"]) as f:
        image = f[hs.DATA][int(row["index_in_shard"])]
    expected = bands(60)
    assert np.array_equal(image[24], expected["DW"])  # DW from the original 'label' key
    assert np.array_equal(image[0], expected["B2_q1"])  # B2_1 -> B2_q1


def test_unzip_skips_what_is_already_there(exports: Path, tmp_path: Path) -> None:
    first = extract_archives(exports, tmp_path)
    again = extract_archives(exports, tmp_path)
    assert first.extracted == 3 and again.extracted == 0 and again.skipped == 3
    assert len(again.problems) == len(first.problems) == 4


def test_cli_twin(exports: Path, tmp_path: Path, capsys) -> None:
    from utils.batching.split_and_batch import main

    report = main(
        [
            str(exports),
            str(tmp_path / "cli"),
            "--split",
            "spatial",
            "--block-km",
            "100",
            "--shard-size",
            "3",
            "--no-progress",
        ]
    )
    assert report.balanced and report.ok == 18
    assert "counts add up" in capsys.readouterr().out
    assert len(list((tmp_path / "cli" / "train").glob("train_*.h5"))) == report.shards["train"]


def test_a_folder_of_damaged_files_only_is_all_quarantined(tmp_path: Path) -> None:
    """No valid record is an error, after the manifest says why each input failed."""
    src = tmp_path / "exports"
    src.mkdir()
    (src / "a.tfrecord.gz").write_bytes(b"")
    (src / "b.tfrecord.gz").write_bytes(gzip.compress(b"garbage" * 5))
    with pytest.raises(InputError, match="no valid record among the 2 inputs"):
        run_split_and_batch(src, tmp_path / "out", SplitConfig(progress=False))
    manifest = pd.read_csv(tmp_path / "out" / hs.MANIFEST_FILE)
    assert dict(zip(manifest["file"], manifest["reason"], strict=True)) == {
        "a.tfrecord.gz": "empty_file",
        "b.tfrecord.gz": "unreadable",
    }
    assert not [p for s in hs.SPLITS for p in (tmp_path / "out").glob(f"{s}/*.h5")]


@pytest.mark.parametrize("block", [1, 7, 1000, 1 << 24])
def test_records_read_alike_at_any_block_size(tmp_path: Path, monkeypatch, block: int) -> None:
    """Records cut by read blocks, several gzip members and plain TFRecords all come
    back byte for byte (a small block size forces every path)."""
    records = [record(seed) for seed in range(3)]
    plain = tmp_path / "plain.tfrecord"
    plain.write_bytes(b"".join(frame_record(r) for r in records))
    gz = write_tfrecord(tmp_path / "one.tfrecord.gz", records)
    members = tmp_path / "two.tfrecord.gz"  # two gzip members back to back
    members.write_bytes(gz.read_bytes() + gzip.compress(plain.read_bytes()))
    monkeypatch.setattr("utils.batching.validate_records.READ_BLOCK", block)
    # bounded inflate steps
    monkeypatch.setattr("utils.batching.validate_records.INFLATE_STEP", block)
    assert [bytes(r) for r in iter_records(gz)] == records
    assert [bytes(r) for r in iter_records(members)] == records * 2
    assert [bytes(r) for r in iter_records(plain)] == records
