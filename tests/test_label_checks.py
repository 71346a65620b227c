"""Labels that cannot be real: nodata codes are missing values,
(0, 0), outlying labels and lone places are warned about with their line numbers, a
bounding box refuses places outside it."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from extract_GPS_images.label_checks import PlausibilityRules, nearest_km, robust_z
from extract_GPS_images.labels import LabelsError, read_labels


def _csv(tmp_path: Path, extra: list[str]) -> Path:
    rng = np.random.default_rng(0)
    rows = ["year,cell id,centroid latitude,centroid longitude,label"]
    for i in range(20):  # plausible places in Vietnam, labels 0.3..3.1
        lat, lon, y = 10 + rng.uniform(0, 10), 104 + rng.uniform(0, 4), rng.uniform(0.3, 3.1)
        rows.append(f"2019,c{i},{lat:.4f},{lon:.4f},{y:.3f}")
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(rows + extra) + "\n")
    return path


BAD = [
    "2019,nodata,15.0,105.0,-9999",  # line 22
    "2019,huge,15.5,105.5,250",  # line 23
    "2019,null,0,0,1.5",  # line 24
    "2019,london,51.5,-0.1,1.5",  # line 25
]


def test_nodata_codes_are_missing_values(tmp_path: Path) -> None:
    path = _csv(tmp_path, BAD)
    with warnings.catch_warnings():  # the warnings are checked below, with on_error="skip"
        warnings.simplefilter("ignore")
        with pytest.raises(LabelsError, match="line 22: label -9999 is a nodata code"):
            read_labels(path)
    with pytest.warns(UserWarning) as caught:
        labels = read_labels(path, on_error="skip")
    assert "nodata" not in set(labels.frame["cell_id"]) and len(labels) == 23
    text = "\n".join(str(w.message) for w in caught)
    assert "labels far outside the rest" in text and "line(s) 23 (250)" in text
    assert "(0, 0), a common placeholder, on line(s) 24" in text
    assert "km from every other place on line(s) 24" in text and "25 (" in text


def test_plausible_labels_pass_without_warnings(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_labels(_csv(tmp_path, []))) == 20


def test_bounding_box_refuses_places_outside(tmp_path: Path) -> None:
    path = _csv(tmp_path, ["2019,london,51.5,-0.1,1.5"])
    vietnam = PlausibilityRules(bbox=(102.0, 8.0, 110.0, 24.0))
    with pytest.raises(LabelsError, match=r"line 22: \(51.5, -0.1\) is outside the bounding box"):
        read_labels(path, plausibility=vietnam)
    with pytest.warns(UserWarning, match="skipping line 22"):
        assert len(read_labels(path, plausibility=vietnam, on_error="skip")) == 20


def test_robust_z_and_nearest_distance() -> None:
    z = robust_z(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
    assert z[2] == 0 and z[4] == pytest.approx(0.6745 * 97 / 1.0)
    km = nearest_km(np.array([0.0, 0.0, 0.0]), np.array([0.0, 1.0, 3.0]))
    assert km == pytest.approx([111.19, 111.19, 222.39], abs=0.05)
