"""Direct download end to end against a fake ``ee.data.computePixels``: records in
the TFRecord schema, retries with backoff, resume after a kill, nothing half written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from gee_fakes import FakeComputePixels, fake_pixels, offline_ee

from extract_GPS_images.gee_download import (
    MANIFEST_NAME,
    DownloadConfig,
    RetryPolicy,
    download_locations,
    is_retryable,
    locations_from_labels,
)
from extract_GPS_images.gee_manifest import Manifest
from extract_GPS_images.gee_recipe import FALLBACK_BAND, RecipeConfig, local_projection_wkt
from extract_GPS_images.labels import read_labels
from extract_GPS_images.schema import all_band_names, record_file_name
from extract_GPS_images.tfrecord import iter_serialized, parse_spec

SIZE = 8
RECIPE = RecipeConfig(size=SIZE)
NAMES = RECIPE.record_bands
TESTS = Path(__file__).resolve().parent


def write_labels_csv(path: Path, n: int) -> Path:
    pd.DataFrame(
        {
            "year": [2014 if i % 3 == 0 else 2019 for i in range(n)],
            "cell id": [
                f"POLYGON (({200000 + i} 2472214.68, {200100 + i} 2472214.68))" for i in range(n)
            ],
            "centroid latitude": [10.0 + i / 100 for i in range(n)],
            "centroid longitude": [105.0 + i / 100 for i in range(n)],
            "label": [0.5 + i / 10 for i in range(n)],
        }
    ).to_csv(path, index=False)
    return path


@pytest.fixture
def locations(tmp_path):
    with pytest.warns(UserWarning, match="imagery of 2016"):
        labels = read_labels(write_labels_csv(tmp_path / "labels.csv", 6))
    return locations_from_labels(labels)


@pytest.fixture(autouse=True)
def _ee():
    with offline_ee():
        yield


def key(loc) -> str:
    return local_projection_wkt(lat=loc.lat, lon=loc.lon)


def parse(path: Path) -> dict[str, np.ndarray]:
    import tensorflow as tf

    (raw,) = list(iter_serialized(path))
    extra = [*RECIPE.valid_names, *RECIPE.clear_names, FALLBACK_BAND]
    spec = parse_spec([*all_band_names(), *extra], SIZE, SIZE)
    spec["cell_id"] = tf.io.FixedLenFeature([], tf.string)
    return {k: v.numpy() for k, v in tf.io.parse_single_example(raw, spec).items()}


def test_download_writes_schema_records_and_retries_with_backoff(tmp_path, locations):
    out = tmp_path / "exports"
    failures = {
        key(locations[0]): ["429", "429"],
        key(locations[1]): ["500"],
        key(locations[2]): ["timeout"],
        key(locations[3]): ["permanent"],
    }
    fake = FakeComputePixels(NAMES, SIZE, failures=failures, fallback_code=1 + 2 * 64)
    delays: list[float] = []
    policy = RetryPolicy(max_attempts=4, base_s=1.0, max_s=1.5)
    report = download_locations(
        locations,
        out_dir=out,
        recipe=RECIPE,
        compute_pixels=fake,
        sleep=delays.append,
        config=DownloadConfig(concurrency=3, retry=policy, progress=False),
        seed=0,
    )
    assert (report.fetched, report.failed, report.skipped, report.retries) == (5, 1, 0, 4)
    assert len(fake.calls) == 6 + 4
    # Retry n waits in [cap/2, cap], cap = min(max_s, base_s * 2**(n-1)): 1 s, then 1.5 s.
    assert len(delays) == 4 and all(0.5 <= d <= 1.5 for d in delays)
    assert sorted(delays)[-1] >= 0.75  # the second retry of location 0 has cap 1.5

    for loc in locations:
        path = out / record_file_name(loc.cell_key, loc.year)
        if loc is locations[3]:
            assert not path.exists()
            continue
        record = parse(path)
        expected = fake_pixels(NAMES, SIZE, key(loc))
        np.testing.assert_array_equal(record["B2_q1"], expected["B2_q1"])
        np.testing.assert_array_equal(record["DW"], expected["DW"])
        assert np.all(record[FALLBACK_BAND] == 1 + 2 * 64)  # as in the export's records
        np.testing.assert_array_equal(record["valid_q3"], expected["valid_q3"])  # masks travel
        assert record["valid_DW"].min() == 0 and record["valid_DW"].max() == 1
        assert record["DW"][0, 0] == 255 and record["valid_DW"][0, 0] == 0  # DW nodata code
        assert np.allclose(record["clear_q2"], 0.9, atol=1e-6)
        assert np.all(record["label"] == np.float32(loc.label))
        assert np.all(record["latitude"] == np.float32(loc.lat))
        assert record["year"][0, 0] == loc.year and record["imagery_year"][0, 0] == (
            2016 if loc.year == 2014 else 2019
        )
        assert record["cell_id"].decode() == loc.cell_id

    rows = {r.cell_key: r for r in Manifest(out / MANIFEST_NAME)}
    assert rows[locations[0].cell_key].attempts == 3
    assert rows[locations[0].cell_key].fallback == "q1:year;q4:none"
    assert rows[locations[0].cell_key].clear == "0.90;0.90;0.90;0.90"
    bad = rows[locations[3].cell_key]
    assert bad.status == "failed" and "did not match any bands" in bad.error
    assert bad.cell_id == locations[3].cell_id and bad.attempts == 1

    # A re-run fetches only what is missing (the failed location).
    again = FakeComputePixels(NAMES, SIZE)
    report = download_locations(
        locations,
        out_dir=out,
        recipe=RECIPE,
        compute_pixels=again,
        config=DownloadConfig(progress=False),
    )
    assert (report.fetched, report.skipped) == (1, 5)
    assert again.keys == [key(locations[3])]
    assert Manifest(out / MANIFEST_NAME).counts()["done"] == 6


def test_gives_up_after_max_attempts_and_respects_concurrency(tmp_path, locations):
    failures = {key(locations[0]): ["429"] * 10}
    fake = FakeComputePixels(NAMES, SIZE, latency_s=0.05, failures=failures)
    report = download_locations(
        locations * 1,
        out_dir=tmp_path,
        recipe=RECIPE,
        compute_pixels=fake,
        sleep=lambda s: None,
        config=DownloadConfig(concurrency=2, retry=RetryPolicy(max_attempts=3), progress=False),
    )
    assert report.failed == 1 and "Too Many Requests" in next(iter(report.errors.values()))
    assert fake.keys.count(key(locations[0])) == 3
    assert fake.max_in_flight == 2


def test_error_classification():
    import ee
    from gee_fakes import http_error

    assert is_retryable(ee.EEException("Too many concurrent aggregations."))
    assert is_retryable(http_error(503, "Service Unavailable"))
    assert is_retryable(TimeoutError())
    assert not is_retryable(http_error(400, "Bad Request"))
    assert not is_retryable(ee.EEException("Image.select: Pattern 'B99' did not match any bands."))
    assert not is_retryable(ValueError("shape"))


def test_downloaded_records_convert_with_their_masks(tmp_path, locations):
    """The records the download writes go through split_and_batch: masks and the DW
    nodata code kept in the shards."""
    import h5py

    from utils import hdf5_schema as hs
    from utils.batching.split_and_batch import SplitConfig, run_split_and_batch

    fake = FakeComputePixels(NAMES, SIZE)
    download_locations(
        locations,
        out_dir=tmp_path / "exports",
        recipe=RECIPE,
        compute_pixels=fake,
        config=DownloadConfig(progress=False),
    )
    report = run_split_and_batch(
        tmp_path / "exports", tmp_path / "shards", SplitConfig(split="random", progress=False)
    )
    assert report.ok == len(locations) and report.quarantined == 0
    manifest = pd.read_csv(tmp_path / "shards" / hs.MANIFEST_FILE)
    manifest = manifest[manifest["status"] == "ok"]  # the export's own files are listed too
    assert len(manifest) == len(locations)
    assert np.allclose(manifest["valid_share"], 1 - 1 / 16, atol=1e-4)
    assert np.allclose(manifest["clear_share"], 0.9, atol=1e-4)
    with h5py.File(tmp_path / "shards" / manifest["shard"].iloc[0]) as f:
        mask = f[hs.MASK][int(manifest["index_in_shard"].iloc[0])]
        assert mask[:, :2, :2].max() == 0 and mask[:, 2:, :].min() == 1
        assert f[hs.DATA][int(manifest["index_in_shard"].iloc[0])][24, 0, 0] == 255


KILLED_RUN = """
import sys
sys.path.insert(0, {tests!r})
from gee_fakes import FakeComputePixels, offline_ee
from extract_GPS_images import gee_download as dl
from extract_GPS_images.gee_recipe import FALLBACK_BAND, RecipeConfig
from extract_GPS_images.labels import read_labels

recipe = RecipeConfig(size={size})
names = recipe.record_bands
with offline_ee():
    dl.download_locations(
        dl.locations_from_labels(read_labels({labels!r})), out_dir={out!r}, recipe=recipe,
        compute_pixels=FakeComputePixels(names, {size}, latency_s=0.25),
        config=dl.DownloadConfig(
            concurrency=2, processes={processes}, progress=False, manifest_every_s=0.0
        ),
    )
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("processes", [1, 2])
def test_killed_run_resumes_with_only_the_rest(tmp_path, processes):
    labels = write_labels_csv(tmp_path / "labels.csv", 16)
    out = tmp_path / "exports"
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(KILLED_RUN).format(
            tests=str(TESTS), size=SIZE, labels=str(labels), out=str(out), processes=processes
        )
    )
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=env, cwd=TESTS.parent, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 90
    while len(list(out.glob("*.tfrecord.gz"))) < 4:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the child wrote no files"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # download processes die with their parent: nothing is written after
    before = {p.name for p in out.glob("*.tfrecord.gz")}
    time.sleep(0.6)  # more than two fake requests
    assert {p.name for p in out.glob("*.tfrecord.gz")} == before
    assert 4 <= len(before) < 16
    for path in out.glob("*.tfrecord.gz"):  # whole files only, each parses
        assert parse(path)["B2_q1"].shape == (SIZE, SIZE)

    with pytest.warns(UserWarning):
        locations = locations_from_labels(read_labels(labels))
    fake = FakeComputePixels(NAMES, SIZE)
    report = download_locations(
        locations,
        out_dir=out,
        recipe=RECIPE,
        compute_pixels=fake,
        config=DownloadConfig(progress=False),
    )
    assert report.skipped == len(before) and report.fetched == 16 - len(before)
    fetched = {
        record_file_name(loc.cell_key, loc.year) for loc in locations if key(loc) in set(fake.keys)
    }
    assert fetched.isdisjoint(before) and len(fake.keys) == 16 - len(before)
    assert not list(out.glob(".tmp-*"))
    assert Manifest(out / MANIFEST_NAME).counts()["done"] == 16
