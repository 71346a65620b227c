"""Batch export: one ``ee.batch.Export.image`` task per location-year, TFRecord.

Task builders are pure (they return unstarted ``ee.batch.Task`` objects whose
``config`` can be inspected); :func:`run_exports` starts them through a
:class:`TaskBackend` (``start()`` and status polls, the only network edge), keeping
at most ``max_in_flight`` tasks queued or running, polling with a live status table
and a progress bar, retrying failed tasks, and recording everything in
``gee_manifest.csv`` so a re-run polls the tasks still running and starts only what
is missing.

Each task writes ``{prefix}{cell_key}_{year}`` TFRecord files (gzip, one
``size`` x ``size`` patch) to a Google Drive folder or a Cloud Storage bucket.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import ee
import pandas as pd
from tqdm.auto import tqdm

from extract_GPS_images.gee_download import Location
from extract_GPS_images.gee_manifest import (
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    Manifest,
    ManifestRow,
)
from extract_GPS_images.gee_recipe import (
    RecipeConfig,
    crs_transform,
    local_projection_wkt,
    location_image,
)

#: Earth Engine task descriptions: at most 100 of these characters.
_DESCRIPTION = re.compile(r"[A-Za-z0-9_,:;.-]{1,100}")
ACTIVE_STATES = ("UNSUBMITTED", "READY", "RUNNING", "CANCEL_REQUESTED")
FAILED_STATES = ("FAILED", "CANCELLED", "UNKNOWN")
DESTINATIONS = ("drive", "gcs")


@dataclass(frozen=True)
class ExportConfig:
    """Knobs of the batch export.

    Attributes:
        destination: ``"drive"`` (Google Drive folder) or ``"gcs"`` (Cloud Storage).
        folder: Drive folder name (``drive``).
        bucket: bucket name (``gcs``).
        prefix: prepended to task descriptions and file names (a ``gcs`` path may
            hold ``/``; it is dropped from the description).
        max_in_flight: most tasks queued or running at once.
        poll_interval_s: seconds between status polls.
        max_attempts: starts per location and run before it is recorded as failed.
        max_pixels: ``maxPixels`` of each export.
        progress: progress bar and live status table.
    """

    destination: Literal["drive", "gcs"] = "drive"
    folder: str = "povmap_exports"
    bucket: str | None = None
    prefix: str = ""
    max_in_flight: int = 100
    poll_interval_s: float = 30.0
    max_attempts: int = 3
    max_pixels: float = 1e9
    progress: bool = True

    def __post_init__(self) -> None:
        if self.destination not in DESTINATIONS:
            raise ValueError(
                f"destination must be one of {list(DESTINATIONS)}, got {self.destination!r}"
            )
        if self.destination == "gcs" and not self.bucket:
            raise ValueError("destination 'gcs' needs a bucket (--bucket NAME)")
        if self.max_in_flight < 1 or self.max_attempts < 1:
            raise ValueError(
                f"max_in_flight and max_attempts must be >= 1, got "
                f"{self.max_in_flight} and {self.max_attempts}"
            )


def task_description(*, cell_key: str, year: int, prefix: str = "") -> str:
    """Task description (and file name stem) ``{prefix}{cell_key}_{year}``.

    Raises:
        ValueError: if it breaks Earth Engine's rule (1-100 letters, digits, ``_-.,:;``).
    """
    name = f"{prefix.replace('/', '_')}{cell_key}_{int(year)}"
    if not _DESCRIPTION.fullmatch(name):
        raise ValueError(
            f"export task description {name!r} is not allowed: Earth Engine takes 1-100 "
            "letters, digits and _ - . , : ; (shorten or change the prefix)"
        )
    return name


def destination_of(location: Location, config: ExportConfig) -> str:
    """Where a location's files land, as recorded in the manifest."""
    stem = f"{config.prefix}{location.cell_key}_{location.year}"
    if config.destination == "gcs":
        return f"gs://{config.bucket}/{stem}"
    return f"drive:{config.folder}/{stem}"


def export_task(*, location: Location, recipe: RecipeConfig, config: ExportConfig) -> ee.batch.Task:
    """The unstarted export task of one location-year (TFRecord, one compressed patch
    of ``size`` x ``size`` pixels on the recipe's fixed grid)."""
    image = location_image(
        lat=location.lat,
        lon=location.lon,
        label=location.label,
        year=location.year,
        imagery_year=location.imagery_year,
        config=recipe,
    )
    params: dict[str, Any] = dict(
        image=image,
        description=task_description(
            cell_key=location.cell_key, year=location.year, prefix=config.prefix
        ),
        fileNamePrefix=f"{config.prefix}{location.cell_key}_{location.year}",
        fileFormat="TFRecord",
        formatOptions={"patchDimensions": [recipe.size, recipe.size], "compressed": True},
        crs=local_projection_wkt(lat=location.lat, lon=location.lon),
        crsTransform=crs_transform(scale=recipe.scale, size=recipe.size),
        dimensions=f"{recipe.size}x{recipe.size}",
        maxPixels=config.max_pixels,
    )
    if config.destination == "gcs":
        return ee.batch.Export.image.toCloudStorage(bucket=config.bucket, **params)
    return ee.batch.Export.image.toDrive(folder=config.folder, **params)


class TaskBackend(Protocol):
    """Starts tasks and reports their states (the network edge of the export)."""

    def start(self, task: ee.batch.Task) -> str:
        """Start ``task``; return its id."""

    def statuses(self, task_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Task id -> status dict with ``state`` (and ``error_message`` if failed)."""


class EarthEngineTasks:
    """:class:`TaskBackend` of the real Earth Engine (``Task.start``, ``getTaskStatus``)."""

    def start(self, task: ee.batch.Task) -> str:
        task.start()
        return str(task.id)

    def statuses(self, task_ids: list[str]) -> dict[str, dict[str, Any]]:
        return {s["id"]: s for s in ee.data.getTaskStatus(task_ids)} if task_ids else {}


@dataclass
class ExportReport:
    """What an export run did."""

    manifest: str
    started: int = 0
    completed: int = 0
    skipped: int = 0
    failed: int = 0
    retried: int = 0
    seconds: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{self.started} tasks started, {self.completed} completed, {self.skipped} "
            f"already done, {self.failed} failed, {self.retried} retried in "
            f"{self.seconds:.0f} s; manifest {self.manifest}"
        )


class _Display:
    """Live status table: one updating output in a notebook, a line per poll elsewhere."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.handle = enabled, None
        self.notebook = False
        if enabled:
            try:
                from IPython import get_ipython  # noqa: PLC0415 (only for the live table)

                shell = get_ipython()
                self.notebook = shell is not None and "IPKernelApp" in shell.config
            except ImportError:
                self.notebook = False

    def show(self, table: pd.DataFrame, counts: dict[str, int]) -> None:
        if not self.enabled:
            return
        line = ", ".join(f"{k} {v}" for k, v in counts.items())
        if self.notebook:
            from IPython.display import display  # noqa: PLC0415

            if self.handle is None:
                self.handle = display(table, display_id=True)
            else:
                self.handle.update(table)
        else:
            tqdm.write(f"tasks: {line}")


def status_table(in_flight: dict[str, tuple[Location, dict[str, Any]]]) -> pd.DataFrame:
    """One row per task in flight: description, task id, state, attempts, seconds."""
    now = time.monotonic()
    rows = [
        {
            "task": f"{loc.cell_key}_{loc.year}",
            "id": task_id,
            "state": info["state"],
            "attempt": info["attempt"],
            "seconds": round(now - info["since"]),
        }
        for task_id, (loc, info) in in_flight.items()
    ]
    return pd.DataFrame(rows, columns=["task", "id", "state", "attempt", "seconds"])


def run_exports(
    locations: Sequence[Location],
    *,
    manifest_path: str,
    recipe: RecipeConfig,
    config: ExportConfig = ExportConfig(),
    tasks: TaskBackend | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ExportReport:
    """Start and follow one export task per location-year not yet done.

    Rows of the manifest already ``done`` are skipped; rows ``running`` with a task id
    (a run killed while they ran) are polled, not started again.

    Args:
        locations: the location-years.
        manifest_path: the manifest CSV (created or resumed).
        recipe: the image recipe.
        config: destination, cap, polling, retries.
        tasks: replaces the Earth Engine task backend (tests).
        sleep: replaces the wait between polls (tests).
    """
    backend = tasks or EarthEngineTasks()
    manifest = Manifest(manifest_path, flush_every_s=0.0)
    report = ExportReport(manifest=str(manifest.path))
    queue: deque[Location] = deque()
    in_flight: dict[str, tuple[Location, dict[str, Any]]] = {}
    attempts: dict[tuple[str, int], int] = {}
    for loc in locations:
        row = manifest.ensure(ManifestRow(loc.cell_key, loc.year, loc.cell_id, loc.imagery_year))
        row.output = destination_of(loc, config)
        if row.status == DONE:
            report.skipped += 1
        elif row.status == RUNNING and row.task_id:
            in_flight[row.task_id] = (
                loc,
                {"state": "RUNNING", "attempt": 0, "since": time.monotonic()},
            )
        else:
            queue.append(loc)
    manifest.save()

    start = time.perf_counter()
    bar = tqdm(
        total=len(queue) + len(in_flight),
        desc="export tasks",
        unit="task",
        disable=not config.progress,
    )
    display = _Display(config.progress)
    try:
        while queue or in_flight:
            while queue and len(in_flight) < config.max_in_flight:
                loc = queue.popleft()
                row = manifest.get(loc.cell_key, loc.year)
                task_id = backend.start(export_task(location=loc, recipe=recipe, config=config))
                attempts[row.key] = attempts.get(row.key, 0) + 1
                row.status, row.task_id, row.error = RUNNING, task_id, ""
                row.attempts += 1
                report.started += 1
                in_flight[task_id] = (
                    loc,
                    {"state": "READY", "attempt": attempts[row.key], "since": time.monotonic()},
                )
            manifest.save()  # a started task is on disk before we wait on it
            sleep(config.poll_interval_s)
            for task_id, status in backend.statuses(list(in_flight)).items():
                loc, info = in_flight[task_id]
                info["state"] = state = str(status.get("state", "UNKNOWN"))
                row = manifest.get(loc.cell_key, loc.year)
                if state == "COMPLETED":
                    row.status = DONE
                    report.completed += 1
                    del in_flight[task_id]
                    bar.update(1)
                elif state in FAILED_STATES:
                    del in_flight[task_id]
                    row.error = str(status.get("error_message", state))
                    if attempts.get(row.key, 0) < config.max_attempts:
                        row.status = PENDING
                        queue.append(loc)
                        report.retried += 1
                    else:
                        row.status = FAILED
                        report.failed += 1
                        report.errors[row.task_id] = row.error
                        bar.update(1)
            counts = {
                "queued": len(queue),
                **_state_counts(in_flight),
                "done": report.completed + report.skipped,
                "failed": report.failed,
            }
            bar.set_postfix(counts, refresh=False)
            display.show(status_table(in_flight), counts)
    finally:
        bar.close()
        report.seconds = time.perf_counter() - start
        manifest.save()
    return report


def _state_counts(in_flight: dict[str, tuple[Location, dict[str, Any]]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, info in in_flight.values():
        counts[info["state"].lower()] = counts.get(info["state"].lower(), 0) + 1
    return counts
