"""The gzip TFRecord writer: ISA-L (default) and zlib give files TensorFlow, gzip and the
repository's readers read back record for record, deterministically."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from extract_GPS_images.tfrecord import (
    encode_example,
    frame_record,
    iter_serialized,
    read_bands,
    sample_bands,
    write_tfrecord,
)


def _records(n: int, size: int = 16) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        image = rng.uniform(0, 0.4, (25, size, size)).astype(np.float32)
        meta = {
            "label": i * 0.5,
            "latitude": 10.0,
            "longitude": 100.0,
            "year": 2019,
            "imagery_year": 2019,
        }
        out.append(encode_example(sample_bands(image, meta), cell_id=f"cell {i}"))
    return out


@pytest.mark.parametrize(("codec", "level"), [("isal", 0), ("isal", 1), ("isal", 3), ("zlib", 6)])
def test_tensorflow_and_gzip_read_what_each_codec_writes(
    tmp_path: Path, codec: str, level: int
) -> None:
    records = _records(3)
    path = write_tfrecord(tmp_path / "r.tfrecord.gz", records, level=level, codec=codec)
    assert list(iter_serialized(path)) == records  # tf.data.TFRecordDataset(..., "GZIP")
    assert gzip.decompress(path.read_bytes()) == b"".join(frame_record(r) for r in records)
    bands, cell_id = read_bands(path, 2)
    assert cell_id == "cell 2"
    assert float(bands["label"][0, 0]) == pytest.approx(1.0, abs=1e-6)
    again = write_tfrecord(tmp_path / "again.tfrecord.gz", records, level=level, codec=codec)
    assert again.read_bytes() == path.read_bytes()  # same records, same bytes


def test_default_is_isal_level_1_and_smaller_than_raw(tmp_path: Path) -> None:
    records = _records(2)
    default = write_tfrecord(tmp_path / "d.tfrecord.gz", records).read_bytes()
    isal1 = write_tfrecord(tmp_path / "i.tfrecord.gz", records, level=1, codec="isal").read_bytes()
    zlib6 = write_tfrecord(tmp_path / "z.tfrecord.gz", records, level=6, codec="zlib").read_bytes()
    assert default == isal1
    assert default != zlib6
    assert len(default) < sum(len(r) for r in records)


@pytest.mark.parametrize(
    ("codec", "level", "message"),
    [
        ("lz4", 1, "unknown codec"),
        ("isal", 4, "out of range"),
        ("zlib", 10, "out of range"),
    ],
)
def test_bad_codec_or_level_raises(tmp_path: Path, codec: str, level: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_tfrecord(tmp_path / "x.tfrecord.gz", _records(1), level=level, codec=codec)
    assert not (tmp_path / "x.tfrecord.gz").exists()


def test_download_config_rejects_a_codec_the_writer_lacks() -> None:
    from extract_GPS_images.gee_download import DownloadConfig  # noqa: PLC0415

    assert DownloadConfig().gzip_codec == "isal"
    with pytest.raises(ValueError, match="valid: isal 0..3, zlib 0..9"):
        DownloadConfig(gzip_codec="isal", gzip_level=6)


@pytest.mark.parametrize("layout", ["packed", "mixed", "strided"])
def test_to_channels_takes_each_band_whatever_the_reply_layout(layout: str) -> None:
    from extract_GPS_images.gee_download import to_channels  # noqa: PLC0415

    rng = np.random.default_rng(2)
    names = ["a", "b", "c"]
    size = 70  # 4,900 pixels: more than one block of the blocked transpose
    kinds = {"a": "<f4", "b": "<f8" if layout == "mixed" else "<f4", "c": "<f4"}
    reply = np.zeros((size, size), dtype=[(n, kinds[n]) for n in ["c", "a", "b"]])
    for n in names:
        reply[n] = rng.normal(size=(size, size))
    if layout == "strided":
        strided = np.zeros((size, 2 * size), reply.dtype)[:, ::2]
        strided[...] = reply
        reply = strided
        assert not reply.flags.c_contiguous
    got = to_channels(reply, ["b", "c"], size)
    assert got.dtype == np.float32 and got.shape == (2, size, size)
    for i, n in enumerate(["b", "c"]):
        assert got[i].tobytes() == reply[n].astype(np.float32).tobytes()


@pytest.mark.parametrize("codec", ["isal", "zlib"])
def test_large_files_stream_and_read_back(
    tmp_path: Path, codec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from extract_GPS_images import tfrecord  # noqa: PLC0415

    records = _records(5)
    one_shot = write_tfrecord(tmp_path / "one.tfrecord.gz", records, codec=codec).read_bytes()
    monkeypatch.setattr(tfrecord, "ONE_SHOT_BYTES", len(records[0]) + 1)  # stream after 2
    path = write_tfrecord(tmp_path / "stream.tfrecord.gz", records, codec=codec)
    if codec == "isal":  # ISA-L's stream cuts blocks elsewhere: the streaming branch ran
        assert path.read_bytes() != one_shot
    else:  # zlib gives the same stream either way
        assert path.read_bytes() == one_shot
    assert list(iter_serialized(path)) == records
    assert gzip.decompress(path.read_bytes()) == gzip.decompress(one_shot)
