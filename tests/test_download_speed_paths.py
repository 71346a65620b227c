"""The download's fast paths write what the plain ones do: ``.npy`` replies viewed
without a copy (``read_npy``), channels transposed into a reused array, records framed
in a reused buffer. Same files, byte for byte, as the formula the writer used before."""

from __future__ import annotations

import io
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from gee_fakes import FakeComputePixels, fake_pixels, npy_reply, offline_ee
from isal import isal_zlib

from extract_GPS_images.gee_download import (
    DownloadConfig,
    Location,
    download_locations,
    read_npy,
    to_channels,
    write_location,
)
from extract_GPS_images.gee_recipe import RecipeConfig, pixel_grid
from extract_GPS_images.tfrecord import (
    encode_example,
    frame_parts,
    iter_serialized,
    sample_bands,
    write_tfrecord,
)

SIZE = 8
RECIPE = RecipeConfig(size=SIZE)
NAMES = RECIPE.record_bands


def _npy(arr: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, arr, version=version)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "arr",
    [
        fake_pixels(["B2_q1", "DW", "valid_DW"], 5, "k"),
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.arange(7, dtype=">i2"),
        np.float32(2.5) * np.ones(()),
        np.zeros((0, 3), np.float32),
    ],
    ids=["structured", "fortran", "big-endian", "0-d", "empty"],
)
@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_read_npy_is_np_load_without_a_copy(arr: np.ndarray, version: tuple[int, int]) -> None:
    data = _npy(arr, version)
    got, want = read_npy(data), np.load(io.BytesIO(data))
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()
    if got.size:
        assert np.shares_memory(got, np.frombuffer(data, np.uint8))


def test_read_npy_falls_back_to_np_load_and_refuses_objects() -> None:
    unicode_names = np.zeros(3, dtype=[("β", "<f4")])  # not Latin-1: .npy format 3.0
    with pytest.warns(UserWarning, match="format 3.0"):
        data = _npy(unicode_names)
    assert np.lib.format.read_magic(io.BytesIO(data)) == (3, 0)
    assert read_npy(data).dtype == unicode_names.dtype
    with pytest.raises(ValueError, match="Python objects"):
        read_npy(_npy(np.array([1, "x"], dtype=object)))
    with pytest.raises(ValueError):
        read_npy(b"not an npy file at all")


def test_to_channels_fills_the_given_array_and_checks_it() -> None:
    reply = fake_pixels(["a", "b", "c"], 6, "k")
    out = np.full((2, 6, 6), np.nan, np.float32)
    got = to_channels(read_npy(npy_reply(reply)), ["c", "a"], 6, out=out)
    assert got is out
    np.testing.assert_array_equal(got, to_channels(reply, ["c", "a"], 6))
    with pytest.raises(ValueError, match="out must be"):
        to_channels(reply, ["c", "a"], 6, out=np.empty((2, 6, 6), np.float64))
    with pytest.raises(ValueError, match="lacking"):
        to_channels(npy_reply(reply), ["z"], 6)


@pytest.mark.parametrize(
    "names", [["c", "a", "b"], ["a", "b"], ["b"], ["b", "a"], ["c", "b"]], ids=str
)
def test_to_channels_copies_runs_in_reply_order_and_gathers_the_rest(names: list[str]) -> None:
    size = 70  # 4,900 pixels: more than one block of the blocked transpose
    reply = fake_pixels(["c", "a", "b"], size, "order")
    got = to_channels(read_npy(npy_reply(reply)), names, size)
    for i, name in enumerate(names):
        assert got[i].tobytes() == reply[name].tobytes()


@pytest.mark.parametrize(("codec", "level"), [("isal", 1), ("isal", 0), ("zlib", 6)])
def test_a_reused_frame_buffer_writes_the_old_bytes(tmp_path: Path, codec: str, level: int) -> None:
    rng = np.random.default_rng(0)
    buffer = bytearray()
    module = {"isal": isal_zlib, "zlib": zlib}[codec]
    for i, size in enumerate([12, 4, 12]):  # grows, then is longer than needed
        image = rng.uniform(0, 1, (3, size, size)).astype(np.float32)
        meta = {"label": 1.0, "latitude": 2.0, "longitude": 3.0, "year": 2019, "imagery_year": 2019}
        record = encode_example(sample_bands(image, meta, ["x", "y", "z"]), cell_id=f"c{i}")
        path = write_tfrecord(tmp_path / f"{i}.gz", [record], level, codec, buffer=buffer)
        old = module.compress(b"".join(frame_parts(record)), level, wbits=31)  # before
        assert path.read_bytes() == old
        assert list(iter_serialized(path)) == [record]
    assert len(buffer) >= len(b"".join(frame_parts(record)))


@pytest.mark.skipif(not hasattr(os, "POSIX_FADV_DONTNEED"), reason="Linux page-cache advice")
def test_drop_cache_advises_once_the_whole_file_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import extract_GPS_images.tfrecord as tfrecord  # noqa: PLC0415

    advised: list[tuple[int, int]] = []

    def advise(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append((os.fstat(fd).st_size, advice))

    monkeypatch.setattr(tfrecord.os, "posix_fadvise", advise, raising=False)
    records = [encode_example({"x": np.arange(50, dtype=np.float32)}, cell_id="c")]
    dropped = write_tfrecord(tmp_path / "d.gz", records, drop_cache=True).read_bytes()
    kept = write_tfrecord(tmp_path / "k.gz", records).read_bytes()
    assert dropped == kept
    assert advised == [(len(dropped), os.POSIX_FADV_DONTNEED)]


def _location(i: int) -> Location:
    return Location(f"k{i}", f"cell {i}", 2019, 2019, 10 + i / 100, 100 + i / 100, 0.5 * i)


def test_downloads_from_npy_bytes_match_the_plain_writer(tmp_path: Path) -> None:
    """Four writer threads reusing their scratch arrays over 12 records give each file the
    bytes ``write_location`` gives from the structured reply, as before."""
    locations = [_location(i) for i in range(12)]
    fake = FakeComputePixels(NAMES, SIZE)
    with offline_ee():
        report = download_locations(
            locations,
            out_dir=tmp_path / "out",
            recipe=RECIPE,
            compute_pixels=fake,
            config=DownloadConfig(concurrency=4, writers=4, progress=False),
        )
    assert report.fetched == 12 and report.failed == 0
    assert all(params["fileFormat"] == "NPY" for params in fake.calls)
    for loc in locations:
        grid = pixel_grid(lat=loc.lat, lon=loc.lon, scale=RECIPE.scale, size=SIZE)
        reply = fake_pixels(NAMES, SIZE, fake.key_of({"grid": grid}))
        reply["s2_fallback"] = 0.0  # FakeComputePixels' default fallback code
        plain = write_location(
            tmp_path / "plain" / loc.file_name, loc, to_channels(reply, NAMES, SIZE), NAMES
        )
        assert (tmp_path / "out" / loc.file_name).read_bytes() == plain.read_bytes()
