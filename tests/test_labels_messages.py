"""What a researcher sees for a malformed labels file: every message names the file and says
how to fix it; separators and encodings Excel writes are read as they are; the CLIs spell
the skip option their own way."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from extract_GPS_images import synthetic
from extract_GPS_images.__main__ import main as extract_main
from extract_GPS_images.labels import LabelsError, read_labels
from extract_GPS_images.synthetic import generate_world

HEADER = "year,cell id,centroid latitude,centroid longitude,label\n"
ROWS = "2019,A,21.0,105.8,2.5\n2019,B,10.5,106.6,1.25\n"


def _swapped(n: int) -> bytes:
    return (HEADER + "".join(f"2019,C{i},{105 + i * 0.01},21.0,1.5\n" for i in range(n))).encode()


#: name -> (file bytes, regexes the message must match besides the file name)
MALFORMED: dict[str, tuple[bytes, list[str]]] = {
    "empty": (b"", [r"is empty", r"header line `year,cell id"]),
    "blank lines only": (b"\n\n  \n", [r"is empty"]),
    "header only": (HEADER.encode(), [r"no usable row", r"one row per cell and year"]),
    "excel workbook": (b"PK\x03\x04\x14\x00rest", [r"Excel workbook", r"CSV UTF-8"]),
    "undecodable bytes": (HEADER.encode() + b"2019,\x81\x8d,1,2,3\n", [r"not UTF-8", r"CSV UTF-8"]),
    "semicolon with decimal commas": (
        HEADER.replace(",", ";").encode() + b"2019;A;21,5;105,8;10,5\n",
        [r"not a number: '21,5'", r"decimal comma", r"decimal points"],
    ),
    "swapped coordinates": (_swapped(20), [r"did you swap latitude and longitude\?", r"20 rows"]),
    "missing column": (
        b"year,cell id,lon,label\n2019,A,2,1.5\n",
        [r"lacks column\(s\) 'latitude'", r"accepted: 'centroid latitude'"],
    ),
    "bad number": (
        (HEADER + "2019,A,abc,105,1\n").encode(),
        [r"line 2, column 'centroid latitude'", r"on_error='skip'"],
    ),
    "unterminated quote": (
        (HEADER + '2019,"A,21,105,1\n').encode(),
        [r"not a well-formed ','-separated file", r"needs a header line"],
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_file_message_names_the_file_and_the_fix(tmp_path: Path, case: str) -> None:
    data, patterns = MALFORMED[case]
    path = tmp_path / "my survey.csv"
    path.write_bytes(data)
    with pytest.raises(LabelsError) as err:
        read_labels(path)
    message = str(err.value)
    assert str(path) in message, message
    for pattern in patterns:
        assert re.search(pattern, message), (pattern, message)


def test_swapped_coordinates_are_one_line_not_twenty(tmp_path: Path) -> None:
    path = tmp_path / "swapped.csv"
    path.write_bytes(_swapped(20))
    with pytest.raises(LabelsError) as err:
        read_labels(path)
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and "outside [-90, 90]" in lines[1], lines
    assert "lines 2, 3, 4, 5, 6, 7, 8, 9, ..." in lines[1]
    with pytest.warns(UserWarning, match="did you swap") as caught:
        with pytest.raises(LabelsError, match="no usable row"):
            read_labels(path, on_error="skip")
    assert len([w for w in caught if "swap" in str(w.message)]) == 1


@pytest.mark.parametrize(
    ("sep", "name"), [(";", "';'-separated"), ("\t", "'\\t'-separated"), ("|", "'|'-separated")]
)
def test_other_separators_are_detected(tmp_path: Path, sep: str, name: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_text((HEADER + ROWS).replace(",", sep))
    labels = read_labels(path)
    assert labels.frame["label"].tolist() == [2.5, 1.25]
    assert f"read as {name}" in labels.summary()


def test_windows_cp1252_is_read_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes((HEADER + "2019,Zoë,21.0,105.8,2.5\n").encode("cp1252"))
    with pytest.warns(UserWarning, match=r"excel.csv is not UTF-8.*cp1252.*CSV UTF-8"):
        labels = read_labels(path)
    assert labels.frame["cell_id"].tolist() == ["Zoë"]
    assert "read as cp1252" in labels.summary()


def test_utf16_and_bom_are_read(tmp_path: Path) -> None:
    path = tmp_path / "unicode.txt"
    path.write_bytes((HEADER + ROWS).replace(",", "\t").encode("utf-16"))
    assert read_labels(path).frame["cell_id"].tolist() == ["A", "B"]
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + ROWS).encode())
    assert read_labels(path).columns_used["year"] == "year"


def test_missing_file_says_where_relative_paths_start(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LabelsError, match=rf"not found: nope.csv .*{tmp_path.name}"):
        read_labels("nope.csv")


@pytest.mark.parametrize(
    ("command", "flag"),
    [(["synthetic", "--size", "8"], "--skip-bad-rows"), (["gee"], "--on-error skip")],
)
def test_cli_hint_names_the_flag_of_the_tool_in_use(tmp_path: Path, command, flag) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + "2019,A,abc,105,1\n")
    with pytest.raises(SystemExit) as err:
        extract_main([*command, "--labels", str(path), "--out", str(tmp_path / "out")])
    message = str(err.value)
    assert str(path) in message and f"read with {flag}" in message, message
    assert "on_error=" not in message


def test_unwritable_output_folder_is_a_sentence(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SystemExit, match=r"cannot write to .*a_file/out.*--out"):
        out = str(tmp_path / "a_file" / "out")
        extract_main(["synthetic", "--n", "2", "--size", "8", "--out", out])


def test_your_own_labels_are_not_damaged_by_default(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text(
        HEADER + "".join(f"2019,P{i},{10 + i * 0.1},105.0,{1 + i * 0.02}\n" for i in range(60))
    )
    mine = generate_world(tmp_path / "mine", labels=path, size=8, progress=False)
    assert len(mine.corruptions) == 0
    invented = generate_world(tmp_path / "invented", n=60, size=8, progress=False)
    assert len(invented.corruptions) == round(60 * synthetic.WorldConfig.corrupt_fraction)
    asked = generate_world(
        tmp_path / "asked", labels=path, size=8, corrupt_fraction=0.05, progress=False
    )
    assert len(asked.corruptions) == 3


def test_warnings_point_at_the_users_own_call(tmp_path: Path) -> None:
    path = tmp_path / "old.csv"
    path.write_text(HEADER + "2014,A,21.0,105.8,2.5\n")
    with pytest.warns(UserWarning, match="before 2016") as caught:
        generate_world(tmp_path / "w", labels=path, size=8, progress=False)  # via synthetic
    assert caught[0].filename == __file__  # not a line inside the package
