"""split_and_batch on hostile inputs (issue 17): each test builds its bad input itself."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hostile_factory import flip_byte, spread_records, write_framed

from extract_GPS_images.tfrecord import frame_record, write_tfrecord
from utils import hdf5_schema as hs
from utils.split_and_batch import SplitConfig, run_split_and_batch
from utils.validate_records import RecordError, iter_records

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
    a, b, c, d = (frame_record(r) for r in spread_records(4, first_seed=50))
    # payload CRC: one byte of the second record's payload flipped; the others are kept
    write_framed(src / "payload.tfrecord.gz", [a, flip_byte(b, 40), c])
    # length CRC: the third record's length field damaged; the two before are kept
    write_framed(src / "length.tfrecord.gz", [d, c, flip_byte(a, 0)])
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
