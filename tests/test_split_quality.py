"""Valid masks, nodata, clear shares and per-record metadata through split_and_batch:
``mostly_nodata`` / ``cloudy`` quarantine, the ``mask`` kept in the shards and served by
the Dataset, multi-place files (Earth Engine table exports) with one cell per place, and
original-schema files named without a year."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from extract_GPS_images import schema
from extract_GPS_images.labels import cell_key
from extract_GPS_images.synthetic import generate_world
from extract_GPS_images.tfrecord import sample_bands, write_tfrecord
from utils import hdf5_schema as hs
from utils.batching import example_wire
from utils.batching.split_and_batch import InputError, SplitConfig, run_split_and_batch
from utils.batching.validate_records import RecordRules, iter_records, read_file
from utils.dataloader import ShardDataset

SIZE = 8
PIXELS = SIZE * SIZE
Q = len(schema.S2_BANDS)


def image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = rng.uniform(0.01, 0.5, (25, SIZE, SIZE)).astype(np.float32)
    out[24] = rng.integers(0, 9, (SIZE, SIZE))
    return out


def bands(
    seed: int,
    *,
    lat: float,
    lon: float,
    year: int = 2019,
    label: float = 1.5,
    valid: np.ndarray | None = None,
    clear=(1.0, 1.0, 1.0, 1.0),
    img=None,
) -> dict:
    """A canonical record's bands with masks (valid: (5, H, W), 1 everywhere by default)."""
    meta = {"label": label, "latitude": lat, "longitude": lon, "year": year, "imagery_year": year}
    out = sample_bands(image(seed) if img is None else img, meta)
    valid = np.ones((5, SIZE, SIZE), np.float32) if valid is None else valid
    for name, mask in zip(schema.valid_band_names(), valid, strict=True):
        out[name] = mask.astype(np.float32)
    for name, value in zip(schema.clear_band_names(), clear, strict=True):
        out[name] = np.full((SIZE, SIZE), value, np.float32)
    return out


def encode(b: dict, **ids: str) -> bytes:
    return example_wire.encode_example(b, {k: v.encode() for k, v in ids.items()})


def manifest(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / hs.MANIFEST_FILE, dtype={"cell_id": str, "cell_key": str})


def test_masks_nodata_and_clear_shares_quarantine_and_reach_the_dataset(tmp_path: Path):
    src = tmp_path / "exports"
    src.mkdir()
    for i in range(8):  # clean places
        write_tfrecord(
            src / f"good{i}_2019.tfrecord.gz",
            [encode(bands(i, lat=10 + i, lon=105.0), cell_id=f"c{i}")],
        )
    # q2 without a scene (nodata 0, mask 0) and DW nodata in a corner: still ok
    img, valid = image(20), np.ones((5, SIZE, SIZE), np.float32)
    img[Q : 2 * Q] = 0.0
    valid[1] = 0.0
    img[24, :2, :2] = schema.DW_NODATA
    valid[4, :2, :2] = 0.0
    write_tfrecord(
        src / "partial_2019.tfrecord.gz",
        [encode(bands(20, lat=30, lon=100, img=img, valid=valid), cell_id="partial")],
    )
    # three quarters and DW without data: mostly nodata
    empty = np.zeros((5, SIZE, SIZE), np.float32)
    empty[0] = 1.0
    write_tfrecord(
        src / "empty_2019.tfrecord.gz",
        [encode(bands(21, lat=31, lon=100, valid=empty), cell_id="empty")],
    )
    # clear scenes in two quarters only: cloudy under min_clear 0.6
    write_tfrecord(
        src / "cloudy_2019.tfrecord.gz",
        [encode(bands(22, lat=32, lon=100, clear=(0.9, 0.1, 0.0, 0.8)), cell_id="cloudy")],
    )
    # an older export without mask bands: nodata derived from all-zero quarters, DW 255
    old = sample_bands(
        image(23),
        {"label": 1.0, "latitude": 33.0, "longitude": 100.0, "year": 2019, "imagery_year": 2019},
    )
    for name in schema.s2_channel_names()[2 * Q : 4 * Q]:
        old[name] = np.zeros((SIZE, SIZE), np.float32)
    old["DW"] = np.full((SIZE, SIZE), schema.DW_NODATA, np.float32)
    write_tfrecord(src / "old_2019.tfrecord.gz", [encode(old, cell_id="old")])

    out = tmp_path / "shards"
    report = run_split_and_batch(
        src, out, SplitConfig(split="random", min_valid=0.5, min_clear=0.6, progress=False)
    )
    assert report.balanced and report.per_reason == {"mostly_nodata": 2, "cloudy": 1}
    rows = manifest(out).set_index("file")
    assert rows.loc["empty_2019.tfrecord.gz", "reason"] == "mostly_nodata"
    assert "under min_valid 0.5" in rows.loc["empty_2019.tfrecord.gz", "detail"]
    # 2 of 4 quarters and DW without data: 0.4 valid
    assert rows.loc["old_2019.tfrecord.gz", "reason"] == "mostly_nodata"
    cloudy = rows.loc["cloudy_2019.tfrecord.gz"]
    assert cloudy["reason"] == "cloudy" and "0.450" in cloudy["detail"]
    partial = rows.loc["partial_2019.tfrecord.gz"]
    assert partial["status"] == "ok"
    assert partial["valid_share"] == pytest.approx((3 + (PIXELS - 4) / PIXELS) / 5, abs=1e-4)
    with h5py.File(out / partial["shard"]) as f:
        k = int(partial["index_in_shard"])
        assert list(f.attrs[hs.ATTR_MASK_BANDS]) == schema.valid_band_names()
        np.testing.assert_array_equal(f[hs.MASK][k], valid.astype(np.uint8))
        np.testing.assert_allclose(f[hs.CLEAR][k], [1, 1, 1, 1], atol=1e-6)
        assert f[hs.DATA][k][24, 0, 0] == schema.DW_NODATA
    dataset = ShardDataset(out, partial["split"], with_mask=True, dw_mode="onehot")
    index = [i for i in range(len(dataset)) if dataset[i]["cell_id"] == "partial"][0]
    item = dataset[index]
    assert item["mask"].shape == (5, SIZE, SIZE) and item["mask"].dtype.is_floating_point
    np.testing.assert_array_equal(item["mask"].numpy(), valid)
    assert item["image"][-9:, 0, 0].sum() == 0  # DW nodata: no class in the one-hot
    assert "mask" not in ShardDataset(out, partial["split"])[index]


def test_synthetic_world_missing_and_cloudy_quarters_follow_the_convention(tmp_path: Path):
    world = generate_world(
        tmp_path / "world",
        n=24,
        size=SIZE,
        seed=5,
        corrupt_fraction=0.0,
        progress=False,
        missing_probability=0.4,
        cloud_probability=0.5,
    )
    shares = []
    for path in world.files:
        floats = example_wire.decode_example(next(iter_records(path)))
        valid = [float(floats[n][0]) for n in schema.valid_band_names()]
        clear = [float(floats[n][0]) for n in schema.clear_band_names()]
        for q, name in enumerate(schema.QUARTERS):
            s2 = np.stack([floats[f"{b}_{name}"] for b in schema.S2_BANDS])
            assert (valid[q] == 0) == (not s2.any())  # no scene: nodata 0 and mask 0
            assert 0.0 <= clear[q] <= 1.0 and (valid[q] == 1 or clear[q] == 0)
        assert valid[4] == 1.0
        shares.append(np.mean(valid))
    assert 0 < sum(s < 0.7 for s in shares) < len(shares)
    report = run_split_and_batch(
        world.out_dir,
        tmp_path / "shards",
        SplitConfig(split="random", min_valid=0.7, progress=False),
    )
    assert report.per_reason.get("mostly_nodata", 0) == sum(s < 0.7 for s in shares)
    cloudy = [
        f
        for f in world.files
        if min(
            float(example_wire.decode_example(next(iter_records(f)))[n][0])
            for n in schema.clear_band_names()
        )
        < 1.0
    ]
    assert cloudy  # some quarters are cloudy and say so


def table_record(seed: int, *, key: str, cid: str, lat: float, lon: float, year: int) -> bytes:
    """A record as an Earth Engine table export writes it: arrays of H*W for the pixel
    bands and masks, one value per scalar feature (metadata, clear shares, fallback)."""
    img = image(seed)
    floats = {name: img[i] for i, name in enumerate(schema.image_band_names())}
    for name in schema.valid_band_names():
        floats[name] = np.ones(PIXELS, np.float32)
    for name in (*schema.clear_band_names(), schema.FALLBACK_BAND):
        floats[name] = np.float32([0.8])
    floats.update(
        label=np.float32([0.5 + seed / 10]),
        latitude=np.float32([lat]),
        longitude=np.float32([lon]),
        year=np.float32([year]),
        imagery_year=np.float32([max(year, 2016)]),
    )
    return encode(floats, cell_key=key, cell_id=cid)


def test_a_multi_place_table_export_file_gives_every_place_its_own_cell(tmp_path: Path):
    src = tmp_path / "exports"
    src.mkdir()
    places = [(f"POLYGON (({c} 0, {c} 1))", 9.0 + c, 104.0 + c / 2) for c in range(5)]
    records, expected = [], {}
    for i, (year, (cid, lat, lon)) in enumerate(
        (y, p) for y in (2014, 2019, 2021) for p in places[: 4 if y == 2021 else 5]
    ):
        key = cell_key(cid)
        records.append(table_record(i, key=key, cid=cid, lat=lat, lon=lon, year=year))
        expected[i] = (key, cid, year)
    assert len(records) == 14
    write_tfrecord(src / "povmap_b2019_00000.tfrecord.gz", records)
    # canonical records without ids in one file: keyed by their coordinates, not the name
    write_tfrecord(
        src / "noids_2019.tfrecord.gz",
        [encode(bands(40 + j, lat=20.0 + j, lon=100.0)) for j in range(3)],
    )
    out = tmp_path / "shards"
    report = run_split_and_batch(src, out, SplitConfig(split="random", progress=False))
    assert report.ok == 17 and report.quarantined == 0
    rows = manifest(out)
    table = rows[rows["file"] == "povmap_b2019_00000.tfrecord.gz"].set_index("record")
    for i, (key, cid, year) in expected.items():
        assert (table.loc[i, "cell_key"], table.loc[i, "cell_id"], table.loc[i, "year"]) == (
            key,
            cid,
            year,
        )
    assert table["cell_key"].nunique() == 5
    assert (table.groupby("cell_key")["split"].nunique() == 1).all()  # a cell stays together
    assert table.loc[0, "imagery_year"] == 2016 and table.loc[0, "label"] == pytest.approx(0.5)
    noids = rows[rows["file"] == "noids_2019.tfrecord.gz"]
    assert noids["cell_key"].nunique() == 3 and "noids" not in set(noids["cell_key"])
    # a single-record file without ids still takes its key from its name
    (src / "povmap_b2019_00000.tfrecord.gz").unlink()
    single = src / "onlyone_2019.tfrecord.gz"
    write_tfrecord(single, [encode(bands(50, lat=1.0, lon=2.0))])
    sample = read_file(single, RecordRules(SIZE)).records[0].sample
    assert sample.cell_key == "onlyone"


def original_record(seed: int, wi: float, lat: float, lon: float) -> bytes:
    img = image(seed)
    out = {f"{b}_{q + 1}": img[q * Q + i] for q in range(4) for i, b in enumerate(schema.S2_BANDS)}
    out["label"] = img[24]
    out.update(wi=np.float32([wi]), latitude=np.float32([lat]), longtitude=np.float32([lon]))
    return encode(out)


def test_original_schema_file_without_year_in_its_name(tmp_path: Path):
    src = tmp_path / "exports"
    src.mkdir()
    write_tfrecord(src / "vietnam_2019_00001.tfrecord.gz", [original_record(1, 1.2, 10.5, 105.1)])
    write_tfrecord(src / "vietnam_2019_00002.tfrecord.gz", [original_record(2, 2.2, 11.5, 106.1)])
    with pytest.raises(InputError, match="no valid record"):
        run_split_and_batch(src, tmp_path / "a", SplitConfig(split="random", progress=False))
    refused = manifest(tmp_path / "a")
    assert refused["reason"].value_counts().to_dict() == {"missing_band": 2}
    assert "no year= was given" in refused["detail"].iloc[0]
    report = run_split_and_batch(
        src,
        tmp_path / "b",
        SplitConfig(split="random", year=2014, ratios=(0.5, 0.5, 0), progress=False),
    )
    rows = manifest(tmp_path / "b")
    assert report.ok == 2 and set(rows["year"]) == {2014} and set(rows["imagery_year"]) == {2016}
    assert rows["cell_key"].nunique() == 2
