"""Table-export batch mode (many places per task), the dry-run plan, the recipe
fingerprint of a folder, and transient failures (503, polling, starts, no network),
all offline: graphs built by the real client library, tasks checked via ``task.config``
without ``start()``, the network edge faked."""

from __future__ import annotations

import json
import math
from pathlib import Path

import ee
import pytest
from gee_fakes import FakeComputePixels, FakeTasks, calls, http_error, offline_ee

from extract_GPS_images import gee_auth
from extract_GPS_images.__main__ import main as cli
from extract_GPS_images.gee_download import (
    DownloadConfig,
    Location,
    RetryPolicy,
    download_locations,
)
from extract_GPS_images.gee_errors import HIGH_VOLUME_ENDPOINT, GeeNetworkError
from extract_GPS_images.gee_export import ExportConfig, plan_jobs, run_exports
from extract_GPS_images.gee_fingerprint import RECIPE_FILE, RecipeMismatch
from extract_GPS_images.gee_manifest import Manifest
from extract_GPS_images.gee_recipe import RecipeConfig, local_projection_wkt
from extract_GPS_images.gee_table import PLACE_PROPERTIES, table_selectors

METADATA = ("cell_key", "cell_id", "label", "latitude", "longitude", "year", "imagery_year")


@pytest.fixture(autouse=True)
def _ee():
    with offline_ee():
        yield


def places(n: int, *, years=(2019,)) -> list[Location]:
    return [
        Location(
            cell_key=f"k{i:05d}",
            cell_id=f"POLYGON (({i} 0, {i} 1))",
            year=years[i % len(years)],
            imagery_year=max(years[i % len(years)], 2016),
            lat=8 + (i % 100) / 10,
            lon=102 + (i // 100) / 10,
            label=0.3 + i / 1000,
        )
        for i in range(n)
    ]


def test_2000_places_make_ceil_n_over_points_per_task_table_tasks():
    recipe = RecipeConfig()  # 225 x 225
    config = ExportConfig(points_per_task=300, folder="povmap", tile_scale=4)
    locations = places(2000)
    jobs = plan_jobs(locations, recipe=recipe, config=config)
    assert len(jobs) == math.ceil(2000 / 300) == 7
    assert [len(j.locations) for j in jobs] == [300] * 6 + [200]
    assert [loc for j in jobs for loc in j.locations] == locations  # each place once
    task = jobs[0].build()
    assert task.state == ee.batch.Task.State.UNSUBMITTED  # built, never started
    cfg = task.config
    assert cfg["description"] == jobs[0].description and len(cfg["description"]) <= 100
    assert cfg["fileExportOptions"]["fileFormat"] == "TF_RECORD_TABLE"
    assert cfg["fileExportOptions"]["driveDestination"]["folder"] == "povmap"
    assert set(METADATA) <= set(cfg["selectors"]) and "clear_q1" in cfg["selectors"]
    assert {"B2_q1", "DW", "valid_q1", "valid_DW", "s2_fallback"} <= set(cfg["selectors"])
    g = ee.serializer.encode(cfg["expression"], is_compound=False, for_cloud_api=True)
    text = json.dumps(g)
    (kernel,) = {json.dumps(a) for a in calls(g, "Kernel.square")}
    assert '"radius": {"constantValue": 112}' in kernel and '"pixels"' in kernel
    assert list(calls(g, "Image.neighborhoodToArray"))
    sample = next(calls(g, "Image.sampleRegions"))
    assert sample["tileScale"]["constantValue"] == 4
    assert sample["properties"]["constantValue"] == list(PLACE_PROPERTIES)
    # the 300 places of the task, each with its own metadata and grid projection
    features = [f for f in calls(g, "Feature") if "constantValue" in f.get("metadata", {})]
    assert len(features) == 300
    first = features[0]["metadata"]["constantValue"]
    loc = locations[0]
    assert (
        first["cell_key"],
        first["cell_id"],
        first["label"],
        first["year"],
        first["imagery_year"],
    ) == (loc.cell_key, loc.cell_id, loc.label, 2019, 2019)
    assert first["crs_wkt"] == local_projection_wkt(lat=loc.lat, lon=loc.lon)
    assert "GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED" in text
    # Cloud Storage, and the option of one task per place
    gcs = plan_jobs(
        locations[:10],
        recipe=recipe,
        config=ExportConfig(destination="gcs", bucket="b", prefix="run/"),
    )
    options = gcs[0].build().config["fileExportOptions"]
    assert options["cloudStorageDestination"]["filenamePrefix"].startswith("run/places_2019_")
    per_place = plan_jobs(locations[:10], recipe=recipe, config=ExportConfig(layout="image"))
    assert len(per_place) == 10
    with pytest.raises(ValueError, match="odd patch size"):
        plan_jobs(locations, recipe=RecipeConfig(size=224), config=config)


def test_table_layout_runs_and_the_manifest_maps_places_to_task_and_file(tmp_path, capsys):
    locations = places(23, years=(2014, 2019))  # two imagery years: 2016 and 2019
    fake = FakeTasks(polls_to_finish=1)
    config = ExportConfig(points_per_task=5, poll_interval_s=0, progress=False)
    report = run_exports(
        locations,
        manifest_path=tmp_path / "m.csv",
        recipe=RecipeConfig(size=9),
        config=config,
        tasks=fake,
        sleep=lambda s: None,
    )
    assert "6 export task(s) (table layout) for 23 place-years" in capsys.readouterr().out
    assert report.started == report.completed == 6 == math.ceil(12 / 5) + math.ceil(11 / 5)
    rows = {(r.cell_key, r.year): r for r in Manifest(tmp_path / "m.csv")}
    assert len(rows) == 23 and {r.status for r in rows.values()} == {"done"}
    by_task: dict[str, set] = {}
    for row in rows.values():
        assert row.output == f"drive:povmap_exports/{row.task}.tfrecord.gz" and row.task_id
        by_task.setdefault(row.task, set()).add(row.imagery_year)
    assert len(by_task) == 6 and all(len(years) == 1 for years in by_task.values())
    for task_id, cfg in fake.configs.items():
        assert cfg["fileExportOptions"]["fileFormat"] == "TF_RECORD_TABLE"
        assert {r.task_id for r in rows.values() if r.task == cfg["description"]} == {task_id}
    again = run_exports(
        locations,
        manifest_path=tmp_path / "m.csv",
        recipe=RecipeConfig(size=9),
        config=config,
        tasks=fake,
        sleep=lambda s: None,
    )
    assert again.started == 0 and again.skipped == 6


def test_dry_run_prints_the_plan_without_network(tmp_path, monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise AssertionError("the dry run reached Earth Engine")

    monkeypatch.setattr(ee, "Initialize", no_network)
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "year,cell id,centroid latitude,centroid longitude,label\n"
        + "".join(f"2019,C{i},{10 + i / 10},{105 + i / 10},{1 + i / 10}\n" for i in range(7))
    )
    cli(
        [
            "gee",
            "--labels",
            str(labels),
            "--out",
            str(tmp_path / "out"),
            "--mode",
            "export",
            "--dry-run",
            "--points-per-task",
            "3",
            "--folder",
            "myexports",
        ]
    )
    out = capsys.readouterr().out
    assert "dry run, nothing sent: 3 export task(s) (table layout) for 7 place-years" in out
    assert "1-3 per task" in out and "Google Drive folder 'myexports'" in out
    assert "places_2019_00002_" in out and "1 place(s) -> drive:myexports/" in out
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_a_changed_recipe_into_an_old_folder_is_refused(tmp_path):
    locations = places(3)
    out = tmp_path / "exports"

    def download(size: int) -> None:
        recipe = RecipeConfig(size=size)
        download_locations(
            locations,
            out_dir=out,
            recipe=recipe,
            compute_pixels=FakeComputePixels(recipe.record_bands, size),
            config=DownloadConfig(progress=False),
        )

    download(8)
    assert (out / RECIPE_FILE).is_file()
    recorded = {r.recipe for r in Manifest(out / "gee_manifest.csv")}
    assert len(recorded) == 1 and len(recorded.pop()) == 16
    with pytest.raises(RecipeMismatch, match=r"recipe\.size: 8 -> 32"):
        download(32)
    download(8)  # the same settings resume
    # exports: other places per task into the same folder are refused too
    fake = FakeTasks(polls_to_finish=1)
    kw = dict(
        manifest_path=tmp_path / "x" / "m.csv",
        recipe=RecipeConfig(size=9),
        tasks=fake,
        sleep=lambda s: None,
    )
    (tmp_path / "x").mkdir()
    run_exports(locations, config=ExportConfig(points_per_task=2, progress=False), **kw)
    with pytest.raises(RecipeMismatch, match=r"export\.points_per_task: 2 -> 3"):
        run_exports(locations, config=ExportConfig(points_per_task=3, progress=False), **kw)
    # a folder with work but no recorded recipe (an older run) is not resumed blindly
    (out / RECIPE_FILE).unlink()
    with pytest.raises(RecipeMismatch, match="without a recorded recipe"):
        download(8)


def test_503_after_the_librarys_retries_is_retried_and_no_network_is_one_sentence(tmp_path):
    locations = places(3)
    recipe = RecipeConfig(size=8)
    key = local_projection_wkt(lat=locations[0].lat, lon=locations[0].lon)
    fake = FakeComputePixels(recipe.record_bands, 8, failures={key: ["503", "503"]})
    report = download_locations(
        locations,
        out_dir=tmp_path / "a",
        recipe=recipe,
        compute_pixels=fake,
        sleep=lambda s: None,
        config=DownloadConfig(progress=False),
    )
    assert (report.fetched, report.failed, report.retries) == (3, 0, 2)
    offline = FakeComputePixels(recipe.record_bands, 8, failures={key: ["offline"] * 3})
    with pytest.raises(GeeNetworkError) as info:
        download_locations(
            locations[:1],
            out_dir=tmp_path / "b",
            recipe=recipe,
            compute_pixels=offline,
            sleep=lambda s: None,
            config=DownloadConfig(progress=False, retry=RetryPolicy(max_attempts=3)),
        )
    message = str(info.value)
    assert "could not reach Earth Engine while fetching" in message
    assert "check the internet connection" in message and "ConnectionError" in message
    assert Manifest(tmp_path / "b" / "gee_manifest.csv").counts()["failed"] == 1


def test_polling_and_start_errors_do_not_stop_the_export_loop(tmp_path):
    fake = FakeTasks(
        polls_to_finish=2,
        poll_errors=[
            http_error(503, "The service is currently unavailable."),
            ee.EEException("The service is currently unavailable."),
            http_error(500, "Internal error"),
        ],
        start_errors=[ee.EEException("The service is currently unavailable.")],
    )
    waits: list[float] = []
    config = ExportConfig(
        points_per_task=2, poll_interval_s=7, progress=False, retry=RetryPolicy(base_s=1, max_s=1)
    )
    report = run_exports(
        places(5),
        manifest_path=tmp_path / "m.csv",
        recipe=RecipeConfig(size=9),
        config=config,
        tasks=fake,
        sleep=waits.append,
        seed=0,
    )
    assert report.completed == 3 and report.failed == 0 and report.poll_errors == 3
    assert fake.poll_errors == [] and fake.start_errors == []
    assert any(0.5 <= w <= 1 for w in waits) and waits.count(7) >= 5  # backoff, then polls
    assert Manifest(tmp_path / "m.csv").counts()["done"] == 5
    # a poll failing for good stops with a sentence, the manifest saved as running
    stuck = FakeTasks(poll_errors=[http_error(503, "unavailable")] * 5)
    with pytest.raises(GeeNetworkError, match="failed 3 times in a row"):
        run_exports(
            places(2),
            manifest_path=tmp_path / "n" / "n.csv",
            recipe=RecipeConfig(size=9),
            config=ExportConfig(max_poll_failures=3, progress=False, poll_interval_s=0),
            tasks=stuck,
            sleep=lambda s: None,
        )
    assert Manifest(tmp_path / "n" / "n.csv").counts()["running"] == 2


def test_initialise_names_the_step_the_key_file_and_takes_the_high_volume_url(
    tmp_path, monkeypatch
):
    import requests

    seen = []
    monkeypatch.setattr(ee, "Initialize", lambda *a, **kw: seen.append(kw))
    assert "high-volume" in gee_auth.initialize(project="p", high_volume=True)
    assert seen[-1] == {"project": "p", "url": HIGH_VOLUME_ENDPOINT}

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Max retries exceeded")

    monkeypatch.setattr(ee, "Initialize", offline)
    with pytest.raises(GeeNetworkError, match="while initialising Earth Engine for project 'p'"):
        gee_auth.initialize(project="p")
    key = tmp_path / "broken-key.json"
    key.write_text(
        json.dumps(
            {"type": "service_account", "client_email": "sa@p.iam", "private_key": "not a key"}
        )
    )
    with pytest.raises(gee_auth.GeeAuthError, match=r"broken-key\.json cannot be used"):
        gee_auth.initialize(project="p", service_account_key=key)


def test_table_selectors_follow_the_recipe():
    names = table_selectors(RecipeConfig(night_lights="annual"))
    assert names[:25] == RecipeConfig().channel_names[:25] and "NL" in names
    assert "valid_NL" in names and names[-1] == "s2_fallback"
    assert Path(RECIPE_FILE).suffix == ".json"
