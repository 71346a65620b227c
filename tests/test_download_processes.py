"""The direct download in several forked processes (``DownloadConfig(processes=)``) and
the one-buffer record writer (``write_example``): the same files, manifest and report
as one process, errors and dead processes reported, nothing lost."""

from __future__ import annotations

import os

import ee
import numpy as np
import pandas as pd
import pytest
from gee_fakes import FakeComputePixels, offline_ee

from extract_GPS_images import tfrecord
from extract_GPS_images.gee import GeeConfig
from extract_GPS_images.gee_download import (
    MANIFEST_NAME,
    DownloadConfig,
    GeeNetworkError,
    Location,
    RetryPolicy,
    download_locations,
)
from extract_GPS_images.gee_recipe import RecipeConfig, local_projection_wkt
from extract_GPS_images.tfrecord import encode_example, sample_bands, write_example, write_tfrecord
from utils.batching import example_wire

SIZE = 8
RECIPE = RecipeConfig(size=SIZE)
NAMES = RECIPE.record_bands
MANIFEST_COLUMNS = ["cell_key", "year", "status", "attempts", "error", "fallback", "clear"]


@pytest.fixture(autouse=True)
def _ee():
    with offline_ee():
        yield


def _locations(n: int) -> list[Location]:
    return [
        Location(
            cell_key=f"c{i:03d}",
            cell_id=f"cell {i}",
            year=2019,
            imagery_year=2019,
            lat=10 + i / 50,
            lon=105 + i / 50,
            label=0.5 + i / 10,
        )
        for i in range(n)
    ]


def _key(loc: Location) -> str:
    return local_projection_wkt(lat=loc.lat, lon=loc.lon)


def _run(out, locations, fake, processes: int, **extra):
    config = DownloadConfig(
        concurrency=4,
        processes=processes,
        progress=False,
        retry=RetryPolicy(max_attempts=3, base_s=0.0, max_s=0.0),
        **extra,
    )
    return download_locations(
        locations, out_dir=out, recipe=RECIPE, compute_pixels=fake, config=config, seed=0
    )


def _manifest(out) -> pd.DataFrame:
    table = pd.read_csv(out / MANIFEST_NAME, keep_default_na=False)
    return table[MANIFEST_COLUMNS].sort_values(["cell_key", "year"]).reset_index(drop=True)


def test_processes_write_what_one_process_writes(tmp_path):
    locations = _locations(11)
    failures = {_key(locations[1]): ["429"], _key(locations[4]): ["permanent"]}
    reports = {}
    for processes in (1, 3):
        fake = FakeComputePixels(NAMES, SIZE, failures=failures, fallback_code=2)
        reports[processes] = _run(tmp_path / f"p{processes}", locations, fake, processes)
    one, three = reports[1], reports[3]
    assert (three.fetched, three.failed, three.retries) == (one.fetched, one.failed, one.retries)
    assert (one.fetched, one.failed, one.retries) == (10, 1, 1)
    assert three.errors == one.errors
    files = sorted(p.name for p in (tmp_path / "p1").glob("*.tfrecord.gz"))
    assert len(files) == 10
    assert files == sorted(p.name for p in (tmp_path / "p3").glob("*.tfrecord.gz"))
    for name in files:
        assert (tmp_path / "p1" / name).read_bytes() == (tmp_path / "p3" / name).read_bytes()
    pd.testing.assert_frame_equal(_manifest(tmp_path / "p1"), _manifest(tmp_path / "p3"))


def test_a_process_that_loses_the_network_stops_the_run(tmp_path):
    locations = _locations(8)
    fake = FakeComputePixels(NAMES, SIZE, failures={_key(locations[5]): ["offline"] * 3})
    with pytest.raises(GeeNetworkError, match="reach"):
        _run(tmp_path / "out", locations, fake, 2)
    table = _manifest(tmp_path / "out").set_index("cell_key")
    assert set(table["status"]) <= {"done", "pending", "failed"}  # no row left running
    assert table.loc["c005", "status"] == "failed" and "reach" in table.loc["c005", "error"]


def test_a_dead_process_is_named_and_its_places_stay_pending(tmp_path):
    locations = _locations(8)
    doomed = _key(locations[3])
    parent = os.getpid()

    class DiesInAChild(FakeComputePixels):
        def __call__(self, params):
            if self.key_of(params) == doomed and os.getpid() != parent:
                os._exit(3)  # the child process dies without a word
            return super().__call__(params)

    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match=r"ee-download-\d died \(exit code 3\)"):
        _run(out, locations, DiesInAChild(NAMES, SIZE), 2)
    table = _manifest(out)
    assert table.loc[table.cell_key == "c003", "status"].item() == "pending"
    assert "running" not in set(table["status"])
    # the next run (one process, the same fake) fetches what is missing, nothing twice
    fake = DiesInAChild(NAMES, SIZE)
    report = _run(out, locations, fake, 1)
    assert report.fetched + report.skipped == 8 and report.failed == 0
    assert report.fetched == len(fake.calls) >= 1
    assert set(_manifest(out)["status"]) == {"done"}


class _Session:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_each_process_drops_the_inherited_connections(tmp_path):
    """A forked process must not share the parent's HTTPS connections: the fake fails
    every request made while the inherited session is still open."""
    state = ee.data._get_state()  # noqa: SLF001
    saved, state.requests_session = state.requests_session, _Session()

    class NeedsOwnConnections(FakeComputePixels):
        def __call__(self, params):
            if not ee.data._get_state().requests_session.closed:  # noqa: SLF001
                raise ee.EEException("Image.load: request on the parent's connection")
            return super().__call__(params)

    try:
        report = _run(tmp_path / "out", _locations(6), NeedsOwnConnections(NAMES, SIZE), 2)
        assert (report.fetched, report.failed) == (6, 0)
        assert not state.requests_session.closed  # the parent's own session is untouched
    finally:
        state.requests_session = saved


def test_processes_setting_is_checked_and_reaches_the_stage():
    with pytest.raises(ValueError, match="processes must be >= 1"):
        DownloadConfig(processes=0)
    config = GeeConfig.from_flat(labels="labels.csv", out_dir="x", processes=3, concurrency=12)
    assert (config.download.processes, config.download.concurrency) == (3, 12)


def _bands(size: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.random((3, size, size), dtype=np.float32)
    meta = {"label": 0.25, "latitude": 1.5, "longitude": -2.0, "year": 2019, "imagery_year": 2019}
    return sample_bands(image, meta, ["B2", "B3", "B4"])


@pytest.mark.parametrize(("codec", "level"), [("isal", 1), ("isal", 0), ("zlib", 6)])
def test_write_example_gives_the_bytes_of_write_tfrecord(tmp_path, codec, level):
    buffer = bytearray(b"\xff" * 50_000)  # a used buffer, larger than the small record
    for size, cell_id in ((64, "big/ä"), (5, None), (40, "c")):  # shrink, then grow again
        bands = _bands(size, size)
        record = encode_example(bands, cell_id=cell_id)
        plain = write_tfrecord(tmp_path / "plain.gz", [record], level=level, codec=codec)
        ours = write_example(
            tmp_path / "ours.gz", bands, cell_id, level=level, codec=codec, buffer=buffer
        )
        assert ours.read_bytes() == plain.read_bytes()
        assert list(tfrecord.iter_serialized(ours)) == [record]


def test_write_example_of_a_record_past_one_call_size_streams(tmp_path, monkeypatch):
    monkeypatch.setattr(tfrecord, "ONE_SHOT_BYTES", 1000)
    bands = _bands(32, 1)
    record = encode_example(bands, cell_id="x")
    assert len(record) > 1000
    plain = write_tfrecord(tmp_path / "plain.gz", [record])
    ours = write_example(tmp_path / "ours.gz", bands, "x", buffer=bytearray())
    assert ours.read_bytes() == plain.read_bytes()


def test_encode_example_into_writes_the_record_between_untouched_bytes():
    bands = _bands(6, 2)
    record = example_wire.encode_example(bands, {"cell_id": b"abc"})
    buffer = bytearray(b"\x07" * 10)
    size = example_wire.encode_example_into(buffer, 3, bands, {"cell_id": b"abc"}, tail=5)
    assert size == len(record) and len(buffer) == 3 + size + 5
    assert bytes(buffer[3 : 3 + size]) == record
    assert bytes(buffer[:3]) == b"\x07" * 3  # the bytes before the offset are kept
    with pytest.raises(BufferError):  # a held view is not silently invalidated
        view = memoryview(buffer)
        example_wire.encode_example_into(buffer, 0, _bands(20, 3))
    view.release()
