"""Synthetic world: Earth Engine export schema, label shape, determinism, damage,
the user's own labels, resume, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import skew

from extract_GPS_images import schema
from extract_GPS_images.synthetic import (
    CORRUPTION_KINDS,
    NODATA_LABEL,
    WEALTH_BIN_SHARES,
    WEALTH_RANGE,
    generate_world,
    land_cover,
)
from extract_GPS_images.tfrecord import iter_serialized, read_bands
from tests.test_labels import original_study_csv

SIZE = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("world")
    return generate_world(out, n=400, size=SIZE, seed=3, corrupt_fraction=0.05, progress=False)


def parse_like_earth_engine(path: Path, size: int) -> dict:
    """Read a record exactly as Earth Engine's documentation reads TFRecord exports."""
    import tensorflow as tf

    spec = {b: tf.io.FixedLenFeature([size, size], tf.float32) for b in schema.all_band_names()}
    dataset = tf.data.TFRecordDataset(str(path), compression_type="GZIP")
    records = [tf.io.parse_single_example(raw, spec) for raw in dataset]
    assert len(records) == 1
    return {k: v.numpy() for k, v in records[0].items()}


def test_records_parse_as_earth_engine_exports(world) -> None:
    damaged = set(world.corruptions["file"])
    good = [f for f in world.files if f.name not in damaged]
    for path in good[:25]:
        bands = parse_like_earth_engine(path, SIZE)
        assert len(bands) == 24 + 1 + len(schema.META_BANDS)
        s2 = np.stack([bands[b] for b in schema.s2_channel_names()])
        assert s2.shape == (24, SIZE, SIZE)
        assert np.isfinite(s2).all() and s2.min() >= 0 and s2.max() <= schema.REFLECTANCE_RANGE[1]
        dw = bands[schema.DW_BAND]
        assert set(np.unique(dw)) <= set(range(9))
        row = world.labels.set_index("file").loc[path.name]
        assert np.allclose(bands["label"], row["label"], atol=1e-5)
        assert np.allclose(bands["latitude"], row["latitude"], atol=1e-4)
        assert np.all(bands["year"] == 2019) and np.all(bands["imagery_year"] == 2019)
        _, cell_id = read_bands(path)
        assert cell_id == row["cell_id"]


def test_labels_csv_has_documented_columns(world) -> None:
    header = (world.out_dir / "labels.csv").read_text().splitlines()[0]
    assert header == "year,cell id,centroid latitude,centroid longitude,label"
    frame = pd.read_csv(world.out_dir / "labels.csv")
    assert len(frame) == 400 and frame["cell id"].is_unique


def test_label_shape_is_like_the_real_wealth_index(world) -> None:
    labels = world.labels["label"].to_numpy()
    assert WEALTH_RANGE[0] - 1e-6 <= labels.min() and labels.max() <= WEALTH_RANGE[1] + 1e-6
    assert skew(labels) < -0.3  # skewed to the left: the poorest places are the rare ones
    counts, _ = np.histogram(labels, np.linspace(*WEALTH_RANGE, 7))
    shares = counts / counts.sum()
    assert shares[0] < 0.02 and shares[0] < shares[1] < shares[2] < shares[3]
    assert np.abs(shares - np.array(WEALTH_BIN_SHARES)).max() < 0.03


def test_labels_are_spatially_autocorrelated(world) -> None:
    frame = world.labels
    xy = frame[["latitude", "longitude"]].to_numpy()
    dist = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
    np.fill_diagonal(dist, np.inf)
    nearest = dist.argmin(axis=1)
    r = np.corrcoef(frame["label"], frame["label"].to_numpy()[nearest])[0, 1]
    assert r > 0.4, f"nearest-neighbour label correlation {r:.2f}"


def test_scene_tells_the_label(world) -> None:
    """Built-up share rises with wealth and forest/bare share falls: learnable, not exact."""
    damaged = set(world.corruptions["file"])
    rows = world.labels[~world.labels["file"].isin(damaged)]
    built, natural = [], []
    for name in rows["file"]:
        dw = read_bands(world.out_dir / name)[0][schema.DW_BAND]
        built.append(np.mean(dw == 6))
        natural.append(np.mean(np.isin(dw, [1, 5, 7])))
    r_built = np.corrcoef(rows["label"], built)[0, 1]
    r_natural = np.corrcoef(rows["label"], natural)[0, 1]
    assert 0.4 < r_built < 0.98 and r_natural < -0.3


def test_tail_differs_only_by_clearings_that_follow_their_own_wealth() -> None:
    """Below ``tail_wealth`` the land cover is frozen but for clearings; their share grows
    with poverty, and with ``clearing_wealth`` they follow it instead of the scene's."""
    lo, hi = WEALTH_RANGE

    def cover(wealth: float, tail: float = 0.5, clearing: float | None = None):
        rngs = (np.random.default_rng(1), np.random.default_rng(2))
        return land_cover(wealth, *rngs, 48, tail_wealth=tail, clearing_wealth=clearing)

    poorest, poor, tail_edge = lo + 0.05 * (hi - lo), lo + 0.3 * (hi - lo), lo + 0.5 * (hi - lo)
    (a, cleared_a), (b, cleared_b) = cover(poorest), cover(poor)
    keep = ~cleared_a & ~cleared_b
    assert np.array_equal(a[keep], b[keep])  # frozen outside the clearings
    assert cleared_a.mean() > cleared_b.mean() > cover(tail_edge)[1].mean() == 0.0
    assert cover(poorest, clearing=tail_edge)[1].mean() == 0.0  # clearings follow their own
    assert cover(tail_edge, clearing=poorest)[1].mean() == pytest.approx(cleared_a.mean(), abs=0.02)
    assert not np.array_equal(cover(poorest, tail=0.33)[0], a)


def test_same_seed_same_bytes_with_any_number_of_workers(world, tmp_path: Path) -> None:
    again = generate_world(
        tmp_path, n=400, size=SIZE, seed=3, corrupt_fraction=0.05, progress=False, workers=2
    )
    assert again.written == 400 and len(world.corruptions) > 0
    for name in ["labels.csv", "corruptions.csv", *world.labels["file"]]:
        assert (tmp_path / name).read_bytes() == (world.out_dir / name).read_bytes(), name
    other = generate_world(tmp_path / "other", n=20, size=SIZE, seed=4, progress=False)
    assert (other.files[0]).read_bytes() != world.files[0].read_bytes()


def test_damaged_fraction_and_kinds(world) -> None:
    corruptions = world.corruptions
    assert len(corruptions) == round(0.05 * 400)
    assert set(corruptions["kind"]) == set(CORRUPTION_KINDS)
    import tensorflow as tf

    for file, kind in corruptions[["file", "kind"]].itertuples(index=False):
        path = world.out_dir / file
        if kind == "truncated_gzip":
            with pytest.raises(tf.errors.DataLossError):
                list(iter_serialized(path))
            continue
        bands, _ = read_bands(path)
        s2 = schema.s2_channel_names()
        if kind == "missing_band":
            assert len(set(s2) - set(bands)) == 1
        elif kind == "wrong_length":
            assert any(bands[b].size == SIZE * SIZE - SIZE for b in s2)
        elif kind == "nan":
            assert any(np.isnan(bands[b]).any() for b in s2)
        elif kind == "bad_label":
            assert np.all(bands["label"] == NODATA_LABEL)


def test_no_damage_when_fraction_is_zero(tmp_path: Path) -> None:
    report = generate_world(tmp_path, n=30, size=SIZE, corrupt_fraction=0.0, progress=False)
    assert report.corruptions.empty
    for path in report.files:
        parse_like_earth_engine(path, SIZE)


def test_rerun_skips_finished_files_and_refuses_other_settings(world) -> None:
    again = generate_world(
        world.out_dir, n=400, size=SIZE, seed=3, corrupt_fraction=0.05, progress=False
    )
    assert again.written == 0 and again.skipped == 400
    with pytest.raises(ValueError, match="other settings"):
        generate_world(world.out_dir, n=400, size=SIZE, seed=4, progress=False)


def test_own_labels_in_original_format(tmp_path: Path) -> None:
    labels = original_study_csv(tmp_path)
    with pytest.warns(UserWarning, match="before 2016"):
        report = generate_world(
            tmp_path / "out", labels=labels, size=16, corrupt_fraction=0.0, progress=False
        )
    source = pd.read_csv(labels)
    assert len(report.files) == len(source) == 4
    for path, (_, row) in zip(report.files, source.iterrows(), strict=True):
        bands = parse_like_earth_engine(path, 16)
        assert np.allclose(bands["label"], row["wi"], atol=1e-5)
        assert np.allclose(bands["longitude"], row["centroid_longtitude"], atol=1e-4)
        assert np.all(bands["year"] == row["year"])
        assert np.all(bands["imagery_year"] == max(row["year"], 2016))
        assert read_bands(path)[1] == row["cell_id"]
    # one cell over its years: same landscape (water, terrain), wealth-driven change only
    first, second = (read_bands(p)[0][schema.DW_BAND] for p in report.files[:2])
    assert np.array_equal(first == 0, second == 0)
    assert np.mean(first == second) > 0.5


def run_synthetic_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m extract_GPS_images synthetic ARGS`` in a subprocess."""
    command = [sys.executable, "-m", "extract_GPS_images", "synthetic", *args]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def test_cli_twin(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    done = run_synthetic_cli(
        "--out", str(out), "--n", "12", "--size", "8", "--seed", "1", "--corrupt-fraction", "0.25"
    )
    assert done.returncode == 0, done.stderr
    assert "12 records" in done.stdout and "damaged on purpose: 3" in done.stdout
    assert len(list(out.glob("*.tfrecord.gz"))) == 12
    # the module itself, with the world's knobs, in worker processes
    module = tmp_path / "module"
    knobs = ["--scene-noise", "0.25", "--tail-wealth", "0.5", "--tail-noise", "0.8"]
    command = [sys.executable, "-m", "extract_GPS_images.synthetic", "--out", str(module)]
    command += ["--n", "6", "--size", "8", "--workers", "2", *knobs]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    config = json.loads((module / "world.json").read_text())["config"]
    assert (config["scene_noise"], config["tail_wealth"], config["tail_noise"]) == (0.25, 0.5, 0.8)
    assert len(list(module.glob("*.tfrecord.gz"))) == 6


def test_cli_reports_bad_labels(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("year,cell id,centroid latitude,centroid longitude,label\n2019,A,95,105,1\n")
    done = run_synthetic_cli("--out", str(tmp_path / "o"), "--labels", str(bad))
    assert done.returncode != 0
    assert "line 2, column 'centroid latitude'" in done.stderr


def test_pick_examples_without_local_files(tmp_path: Path, world) -> None:
    from extract_GPS_images.plots import pick_examples

    assert pick_examples(world.labels, tmp_path) == []  # export mode: nothing local
    picks = pick_examples(world.labels, world.out_dir, k=4)
    assert len(picks) == 4 and all(p.is_file() for p in picks)
    assert not set(p.name for p in picks) & set(world.corruptions["file"])
