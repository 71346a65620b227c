"""``python -m extract_GPS_images gee``: bad labels give the reader's message, auth
problems say how to authenticate, and both modes run end to end against fakes."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import ee
import pytest
from gee_fakes import FakeComputePixels, offline_ee

from extract_GPS_images import gee, gee_auth
from extract_GPS_images.__main__ import main as cli
from extract_GPS_images.gee import GeeConfig
from extract_GPS_images.gee_manifest import Manifest
from extract_GPS_images.gee_recipe import RecipeConfig

HEADER = "year,cell id,centroid latitude,centroid longitude,label\n"
GOOD = HEADER + "2019,A1,21.0,105.8,1.2\n2014,B2,21.1,105.9,2.3\n2019,B2,21.1,105.9,2.4\n"


@pytest.fixture(autouse=True)
def _ee(monkeypatch):
    with offline_ee():
        initialised = []
        monkeypatch.setattr(ee, "Initialize", lambda *a, **kw: initialised.append((a, kw)))
        yield initialised


def run(tmp_path: Path, text: str, *extra: str) -> None:
    labels = tmp_path / "labels_in.csv"
    labels.write_text(text)
    cli(
        [
            "gee",
            "--labels",
            str(labels),
            "--out",
            str(tmp_path / "out"),
            "--project",
            "p",
            "--size",
            "8",
            "--no-progress",
            *extra,
        ]
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("year,cell id,centroid latitude,label\n2019,A,1,1\n", r"lacks column\(s\) 'longitude'"),
        (
            HEADER + "2019,A,north,105.8,1.2\n",
            r"line 2, column 'centroid latitude': not a number: 'north'",
        ),
        (
            HEADER + "2019,A,95.0,105.8,1.2\n",
            r"line 2, column 'centroid latitude': 95.0 is outside \[-90, 90\]",
        ),
        (
            HEADER + "2019,A,1,200,1.2\n",
            r"line 2, column 'centroid longitude': 200.0 is outside \[-180, 180\]",
        ),
        (
            HEADER + "2019,A,1,1,1.2\n2019,A,1,1,1.3\n",
            r"line 3: duplicate \(cell id, year\) = \('A', 2019\), first at line 2",
        ),
        (HEADER + "2999,A,1,1,1.2\n", r"line 2, column 'year': year 2999 is after"),
        (HEADER + "2019,A,1,1,x\n", r"line 2, column 'label': not a number: 'x'"),  # empty: a place
    ],
)
def test_bad_labels_exit_with_the_readers_message(tmp_path, text, message):
    with pytest.raises(SystemExit, match=message):
        run(tmp_path, text)
    assert not (tmp_path / "out" / "gee_manifest.csv").exists()


def test_download_mode_end_to_end(tmp_path, monkeypatch, capsys, _ee):
    recipe = RecipeConfig(size=8)
    fake = FakeComputePixels(recipe.record_bands, 8)
    monkeypatch.setattr(ee.data, "computePixels", fake)
    with pytest.warns(UserWarning, match="using imagery of 2016"):
        run(tmp_path, GOOD, "--concurrency", "2")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.tfrecord.gz")) == [
        "A1_2019.tfrecord.gz",
        "B2_2014.tfrecord.gz",
        "B2_2019.tfrecord.gz",
    ]
    rows = {(r.cell_key, r.year): r for r in Manifest(out / "gee_manifest.csv")}
    assert rows[("B2", 2014)].imagery_year == 2016 and rows[("B2", 2014)].status == "done"
    assert (out / "labels.csv").is_file()
    assert _ee[0][1] == {"project": "p"}
    assert "3 fetched" in capsys.readouterr().out


def test_export_mode_end_to_end(tmp_path, monkeypatch, capsys):
    started = []
    monkeypatch.setattr(ee.data, "newTaskId", lambda count=1: ["R"])

    def export_image(request_id, params):
        started.append(params["description"])
        return {"name": f"projects/p/operations/T{len(started)}"}

    monkeypatch.setattr(ee.data, "exportImage", export_image)
    monkeypatch.setattr(
        ee.data, "getTaskStatus", lambda ids: [{"id": i, "state": "COMPLETED"} for i in ids]
    )
    with pytest.warns(UserWarning):
        run(
            tmp_path,
            GOOD,
            "--mode",
            "export",
            "--folder",
            "f",
            "--poll-interval",
            "0",
            "--max-in-flight",
            "2",
            "--layout",
            "image",
        )
    assert sorted(started) == ["A1_2019", "B2_2014", "B2_2019"]
    assert "3 completed" in capsys.readouterr().out


def test_missing_project_and_credentials_say_how_to_authenticate(monkeypatch):
    for var in gee_auth.PROJECT_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(gee_auth.KEY_ENV_VAR, raising=False)
    with pytest.raises(gee_auth.GeeAuthError, match="no Earth Engine project"):
        gee_auth.initialize()

    def refuse(*args, **kwargs):
        raise ee.EEException(
            "Please authorize access to your Earth Engine account by running "
            "\n\nearthengine authenticate\n\n"
        )

    monkeypatch.setattr(ee, "Initialize", refuse)
    monkeypatch.setenv("EE_PROJECT", "from-env")
    with pytest.raises(gee_auth.GeeAuthError) as info:
        gee_auth.initialize()
    assert "'from-env'" in str(info.value) and "earthengine authenticate" in str(info.value)
    assert "--project" in str(info.value)


def test_service_account_key_is_used_and_never_shown(tmp_path, monkeypatch, capsys, caplog, _ee):
    key = tmp_path / "key.json"
    secret = "-----BEGIN PRIVATE KEY-----SECRET-----END PRIVATE KEY-----"
    key.write_text(
        json.dumps({"type": "service_account", "client_email": "sa@p.iam", "private_key": secret})
    )
    made = []
    monkeypatch.setattr(
        ee,
        "ServiceAccountCredentials",
        lambda email, key_file: made.append((email, key_file)) or "CREDS",
    )
    monkeypatch.setattr(ee.data, "setDeadline", lambda ms: made.append(ms))
    caplog.set_level(logging.DEBUG)
    text = gee_auth.initialize(project="p", service_account_key=key, deadline_s=60)
    assert made == [("sa@p.iam", str(key)), 60000]
    assert _ee[-1] == (("CREDS",), {"project": "p"})
    assert "sa@p.iam" in text
    everything = text + capsys.readouterr().out + caplog.text
    assert secret not in everything and "SECRET" not in everything
    not_a_key = tmp_path / "user.json"
    not_a_key.write_text("{}")
    with pytest.raises(gee_auth.GeeAuthError, match="not a service-account key"):
        gee_auth.initialize(project="p", service_account_key=not_a_key)


def test_flat_parameters_and_unknown_names():
    config = GeeConfig.from_flat(
        labels="l.csv",
        out_dir="o",
        mode="export",
        periods="month",
        cloud_method="cloud_score_plus",
        concurrency=4,
        max_attempts=2,
        bucket="b",
        destination="gcs",
        progress=False,
    )
    assert config.recipe.periods == "month" and config.download.concurrency == 4
    assert config.download.retry.max_attempts == 2 and config.export.max_attempts == 2
    assert config.export.bucket == "b" and not config.download.progress
    with pytest.raises(ValueError, match="unknown Earth Engine parameter"):
        GeeConfig.from_flat(labels="l.csv", out_dir="o", colection="typo")
    with pytest.raises(SystemExit, match="mode must be one of"):
        gee.main(argparse.Namespace(labels="l", out_dir="o", mode="upload"))
