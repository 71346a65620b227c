"""Batch export runner against fake tasks: cap on tasks in flight, retries, resume."""

from __future__ import annotations

import ee
import pytest
from gee_fakes import FakeTasks, offline_ee

from extract_GPS_images.gee_download import Location
from extract_GPS_images.gee_export import ExportConfig, run_exports
from extract_GPS_images.gee_manifest import Manifest
from extract_GPS_images.gee_recipe import RecipeConfig

RECIPE = RecipeConfig(size=16)
LOCATIONS = [
    Location(
        cell_key=f"cell{i}",
        cell_id=f"POLYGON (({i} 0))",
        year=2019,
        imagery_year=2019,
        lat=10 + i / 10,
        lon=100 + i / 10,
        label=1.0 + i,
    )
    for i in range(7)
]


@pytest.fixture(autouse=True)
def _ee():
    with offline_ee():
        yield


def config(**kw) -> ExportConfig:
    return ExportConfig(**{"max_in_flight": 3, "poll_interval_s": 0, "progress": False, **kw})


def test_cap_on_tasks_in_flight_and_all_complete(tmp_path):
    fake = FakeTasks(polls_to_finish=2)
    polls: list[float] = []
    report = run_exports(
        LOCATIONS,
        manifest_path=tmp_path / "m.csv",
        recipe=RECIPE,
        config=config(poll_interval_s=5),
        tasks=fake,
        sleep=polls.append,
    )
    assert report.completed == 7 and report.failed == 0 and report.started == 7
    assert fake.max_active == 3
    assert set(polls) == {5}
    rows = list(Manifest(tmp_path / "m.csv"))
    assert {r.status for r in rows} == {"done"} and all(r.task_id.startswith("TASK") for r in rows)
    assert rows[0].output == "drive:povmap_exports/cell0_2019"
    assert rows[0].cell_id == "POLYGON ((0 0))"
    first = fake.configs["TASK0000"]
    assert first["fileExportOptions"]["fileFormat"] == "TF_RECORD_IMAGE"


def test_failed_tasks_are_retried_then_recorded(tmp_path):
    fake = FakeTasks(
        polls_to_finish=1,
        fail_first=["cell0_2019", "cell0_2019", "cell1_2019", "cell1_2019", "cell1_2019"],
    )
    report = run_exports(
        LOCATIONS,
        manifest_path=tmp_path / "m.csv",
        recipe=RECIPE,
        config=config(max_attempts=3),
        tasks=fake,
        sleep=lambda s: None,
    )
    assert fake.started.count("cell0_2019") == 3 and fake.started.count("cell1_2019") == 3
    assert (report.completed, report.failed, report.retried) == (6, 1, 4)
    rows = {r.cell_key: r for r in Manifest(tmp_path / "m.csv")}
    assert rows["cell0"].status == "done" and rows["cell0"].attempts == 3
    assert rows["cell1"].status == "failed" and "memory capacity" in rows["cell1"].error


def test_interrupted_run_resumes_without_restarting_tasks(tmp_path):
    fake = FakeTasks(polls_to_finish=3)
    calls = []

    def interrupt(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_exports(
            LOCATIONS,
            manifest_path=tmp_path / "m.csv",
            recipe=RECIPE,
            config=config(),
            tasks=fake,
            sleep=interrupt,
        )
    counts = Manifest(tmp_path / "m.csv").counts()
    assert counts["done"] == 3 and counts["running"] == 3 and counts["pending"] == 1
    report = run_exports(
        LOCATIONS,
        manifest_path=tmp_path / "m.csv",
        recipe=RECIPE,
        config=config(),
        tasks=fake,
        sleep=lambda s: None,
    )
    assert sorted(fake.started) == sorted(f"cell{i}_2019" for i in range(7))  # no duplicate
    assert report.skipped == 3 and report.completed == 4
    assert Manifest(tmp_path / "m.csv").counts()["done"] == 7
    # A third run starts nothing.
    again = run_exports(
        LOCATIONS,
        manifest_path=tmp_path / "m.csv",
        recipe=RECIPE,
        config=config(),
        tasks=fake,
        sleep=lambda s: None,
    )
    assert again.started == 0 and again.skipped == 7


def test_real_task_backend_starts_and_polls_through_ee_data(tmp_path, monkeypatch):
    """The default backend uses ``Task.start`` and ``ee.data.getTaskStatus``, replaced here
    at the network boundary."""
    exported, polled = [], []
    monkeypatch.setattr(ee.data, "newTaskId", lambda count=1: [f"REQ{len(exported)}"])

    def export_image(request_id, params):
        exported.append(params)
        return {"name": f"projects/my-project/operations/OP{len(exported)}"}

    def get_task_status(ids):
        polled.append(list(ids))
        return [{"id": i, "state": "COMPLETED"} for i in ids]

    monkeypatch.setattr(ee.data, "exportImage", export_image)
    monkeypatch.setattr(ee.data, "getTaskStatus", get_task_status)
    report = run_exports(
        LOCATIONS[:2],
        manifest_path=tmp_path / "m.csv",
        recipe=RECIPE,
        config=config(destination="gcs", bucket="b"),
        sleep=lambda s: None,
    )
    assert report.completed == 2 and polled == [["OP1", "OP2"]]
    assert exported[0]["fileExportOptions"]["cloudStorageDestination"]["bucket"] == "b"
    assert {r.task_id for r in Manifest(tmp_path / "m.csv")} == {"OP1", "OP2"}
