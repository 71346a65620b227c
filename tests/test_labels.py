"""labels.csv reader: documented columns, variants, the original study's files, and one
clear message per kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from extract_GPS_images.labels import LabelsError, cell_key, read_labels, write_labels

WKT = (
    "POLYGON ((219563.15 2472214.68, 226313.15 2472214.68, 226313.15 2478964.68, "
    "219563.15 2478964.68, 219563.15 2472214.68))"
)


def write(tmp_path: Path, text: str, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def original_study_csv(tmp_path: Path) -> Path:
    """A small file exactly in the original study's format (typo, `wi`, WKT ids, 2014)."""
    rows = ["year,cell_id,centroid_longtitude,centroid_latitude,wi"]
    for i, (year, wi) in enumerate([(2014, 1.91), (2019, 2.35), (2014, 0.47), (2019, 2.9)]):
        cell = WKT.replace("219563.15", f"{219563.15 + 6750 * (i // 2):.2f}")
        rows.append(f'{year},"{cell}",{105.8 + 0.06 * (i // 2)},{21.02 + 0.01 * i},{wi}')
    return write(tmp_path, "\n".join(rows) + "\n")


def test_documented_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "year,cell id,centroid latitude,centroid longitude,label\n"
        "2019,A1,21.0,105.8,2.5\n2019,A2,10.5,106.6,1.25\n",
    )
    labels = read_labels(path)
    assert labels.columns_used == {
        "year": "year",
        "cell_id": "cell id",
        "latitude": "centroid latitude",
        "longitude": "centroid longitude",
        "label": "label",
    }
    assert labels.frame["cell_key"].tolist() == ["A1", "A2"]
    assert labels.frame["label"].tolist() == [2.5, 1.25]
    assert labels.frame["imagery_year"].tolist() == [2019, 2019]
    assert "2 rows, 2 cells" in labels.summary()


def test_variants_are_accepted_and_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "Cell_ID,Lat,Lon,Year,WI\nx,1,2,2020,0.5\n")
    labels = read_labels(path)
    assert labels.columns_used["latitude"] == "Lat"
    assert labels.columns_used["longitude"] == "Lon"
    assert labels.columns_used["label"] == "WI"
    assert "latitude <- 'Lat'" in labels.summary()


def test_original_study_format_loads_as_is(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"before 2016.*using imagery of 2016"):
        labels = read_labels(original_study_csv(tmp_path))
    frame = labels.frame
    assert len(frame) == 4
    assert labels.columns_used["longitude"] == "centroid_longtitude"
    assert labels.columns_used["label"] == "wi"
    assert frame["cell_id"].iloc[0].startswith("POLYGON ((")
    assert len(frame["cell_id"].iloc[0]) > 100
    keys = frame["cell_key"]
    assert keys.str.fullmatch(r"c[0-9a-f]{16}").all()
    # one cell, two years -> one key; the original id is kept
    assert keys.iloc[0] == keys.iloc[1] and keys.iloc[0] != keys.iloc[2]
    assert labels.year_mapping == {2014: 2016}
    assert frame["imagery_year"].tolist() == [2016, 2019, 2016, 2019]
    assert frame["year"].tolist() == [2014, 2019, 2014, 2019]


def test_cell_key_is_stable_and_safe() -> None:
    assert cell_key("VN000001") == "VN000001"
    assert cell_key(WKT) == cell_key(WKT)
    assert cell_key(WKT) == cell_key(WKT + " ")  # surrounding blanks are not part of the id
    assert cell_key(WKT) != cell_key(WKT.replace("219563.15", "219563.16"))
    assert cell_key("a/b").startswith("c") and "/" not in cell_key("a/b")
    assert len(cell_key("x" * 300)) <= 40


HEADER = "year,cell id,centroid latitude,centroid longitude,label\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("2019,A,abc,105,1\n", r"line 2, column 'centroid latitude': not a number: 'abc'"),
        ("2019,A,21,105,x\n", r"line 2, column 'label': not a number: 'x'"),  # empty: a place
        ("2019,A,95,105,1\n", r"line 2, column 'centroid latitude': 95.0 is outside \[-90, 90\]"),
        ("2019,A,21,190,1\n", r"line 2, column 'centroid longitude': 190.0 is outside"),
        (
            "2019,A,21,105,1\n2019,A,21,105,2\n",
            r"line 3: duplicate \(cell id, year\).*first at line 2",
        ),
        ("2999,A,21,105,1\n", r"line 2, column 'year': year 2999 is after"),
        ("2019.5,A,21,105,1\n", r"line 2, column 'year': year 2019.5 is not whole"),
        ("2019,,21,105,1\n", r"line 2, column 'cell id': empty cell id"),
    ],
)
def test_bad_rows_are_refused_with_line_and_column(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(LabelsError, match=message):
        read_labels(write(tmp_path, HEADER + body))


def test_missing_column_names_what_is_accepted(tmp_path: Path) -> None:
    with pytest.raises(LabelsError, match=r"lacks column\(s\) 'year' \(accepted: 'year', 'surv"):
        read_labels(write(tmp_path, "cell id,lat,lon,label\nA,1,2,3\n"))  # no label: places


def test_missing_file() -> None:
    with pytest.raises(LabelsError, match="labels file not found"):
        read_labels("/nonexistent/labels.csv")


def test_skip_mode_drops_bad_rows_with_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "2019,A,21,105,1\n2019,B,abc,105,1\n2019,C,1,1,2\n")
    with pytest.warns(UserWarning, match="skipping line 3"):
        labels = read_labels(path, on_error="skip")
    assert labels.frame["cell_id"].tolist() == ["A", "C"]
    assert labels.frame["line"].tolist() == [2, 4]
    assert len(labels.problems) == 1


def test_all_bad_rows_listed_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "2019,A,x,105,1\n2019,B,21,y,1\n")
    with pytest.raises(LabelsError) as err:
        read_labels(path)
    assert "line 2" in str(err.value) and "line 3" in str(err.value)
    assert "2 bad row(s)" in str(err.value)


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    with pytest.warns(UserWarning):
        labels = read_labels(original_study_csv(tmp_path))
    out = write_labels(labels.frame, tmp_path / "out" / "labels.csv")
    assert out.read_text().splitlines()[0] == (
        "year,cell id,centroid latitude,centroid longitude,label"
    )
    with pytest.warns(UserWarning):
        again = read_labels(out)
    assert again.frame["cell_id"].tolist() == labels.frame["cell_id"].tolist()
    assert again.frame["label"].tolist() == labels.frame["label"].tolist()
