"""Batch export: Earth Engine export tasks writing TFRecords, many places per task or one.

Two layouts (:attr:`ExportConfig.layout`):

* ``"table"`` (default, the study-scale path): ``points_per_task`` places per
  ``Export.table`` task, ``neighborhoodToArray`` sampled at the places
  (:mod:`extract_GPS_images.gee_table`); every record carries its own metadata;
* ``"image"``: one ``Export.image`` task per location-year (``{prefix}{cell_key}_{year}``,
  one ``size`` x ``size`` patch), for a few hundred places.

Task builders are pure (they return unstarted ``ee.batch.Task`` objects whose
``config`` can be inspected); :func:`plan_jobs` lists the tasks without building any
(the dry run prints it). :func:`run_exports` starts them through a
:class:`TaskBackend` (``start()`` and status polls, the only network edge), keeping
at most ``max_in_flight`` tasks queued or running, polling with a live status table
and a progress bar, retrying transient errors of starts and polls with backoff and
failed tasks up to ``max_attempts``, and recording every place with its task and file
in ``gee_manifest.csv`` (and the recipe in ``gee_recipe.json``), so a re-run polls the
tasks still running and starts only what is missing.
"""

from __future__ import annotations

import random
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import ee
import pandas as pd
from tqdm.auto import tqdm

from extract_GPS_images.gee_download import Location, RetryPolicy
from extract_GPS_images.gee_errors import (
    GeeNetworkError,
    is_network_error,
    is_retryable,
    network_message,
)
from extract_GPS_images.gee_fingerprint import check_recipe, recipe_settings
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
from extract_GPS_images.gee_table import check_odd_size, plan_batches, table_task

#: Earth Engine task descriptions: at most 100 of these characters.
_DESCRIPTION = re.compile(r"[A-Za-z0-9_,:;.-]{1,100}")
ACTIVE_STATES = ("UNSUBMITTED", "READY", "RUNNING", "CANCEL_REQUESTED")
FAILED_STATES = ("FAILED", "CANCELLED", "UNKNOWN")
DESTINATIONS = ("drive", "gcs")
LAYOUTS = ("table", "image")


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
        layout: ``"table"`` (``points_per_task`` places per table export) or
            ``"image"`` (one image export per location-year).
        points_per_task: places per table-export task (Yeh et al. ran up to 1,585).
        tile_scale: ``tileScale`` of the sampling (raise it when a task runs out of
            memory).
        retry: backoff of transient errors when starting a task or polling.
        max_poll_failures: consecutive failed status polls before the run stops.
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
    layout: Literal["table", "image"] = "table"
    points_per_task: int = 250
    tile_scale: float = 1.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_poll_failures: int = 20

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {self.layout!r}")
        if self.points_per_task < 1 or self.tile_scale <= 0:
            raise ValueError(
                f"points_per_task must be >= 1 and tile_scale > 0, got "
                f"{self.points_per_task} and {self.tile_scale}"
            )
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
    return _check_description(f"{prefix.replace('/', '_')}{cell_key}_{int(year)}")


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
    poll_errors: int = 0  # status polls that failed transiently (the loop went on)

    def summary(self) -> str:
        return (
            f"{self.started} tasks started, {self.completed} completed, {self.skipped} "
            f"already done, {self.failed} failed, {self.retried} retried in "
            f"{self.seconds:.0f} s ({self.poll_errors} failed status polls ridden out); "
            f"manifest {self.manifest}"
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


@dataclass(frozen=True)
class ExportJob:
    """One export task to run: its description, places and destination."""

    description: str
    locations: tuple[Location, ...]
    output: str
    build: Callable[[], ee.batch.Task] = field(compare=False, repr=False)


def _check_description(name: str) -> str:
    if not _DESCRIPTION.fullmatch(name):
        raise ValueError(
            f"export task description {name!r} is not allowed: Earth Engine takes 1-100 "
            "letters, digits and _ - . , : ; (shorten or change the prefix)"
        )
    return name


def plan_jobs(
    locations: Sequence[Location], *, recipe: RecipeConfig, config: ExportConfig
) -> list[ExportJob]:
    """The export tasks of ``locations`` (nothing is built or sent)."""
    if config.layout == "image":
        return [
            ExportJob(
                task_description(cell_key=loc.cell_key, year=loc.year, prefix=config.prefix),
                (loc,),
                destination_of(loc, config),
                lambda loc=loc: export_task(location=loc, recipe=recipe, config=config),
            )
            for loc in locations
        ]
    check_odd_size(recipe)
    jobs = []
    for batch in plan_batches(locations, points_per_task=config.points_per_task):
        stem = batch.stem(config.prefix)
        where = (
            f"gs://{config.bucket}/{stem}"
            if config.destination == "gcs"
            else f"drive:{config.folder}/{stem}"
        )
        jobs.append(
            ExportJob(
                _check_description(batch.description(config.prefix)),
                batch.locations,
                f"{where}.tfrecord.gz",
                lambda batch=batch: table_task(
                    batch,
                    recipe=recipe,
                    destination=config.destination,
                    folder=config.folder,
                    bucket=config.bucket,
                    prefix=config.prefix,
                    tile_scale=config.tile_scale,
                ),
            )
        )
    return jobs


def plan_summary(jobs: Sequence[ExportJob], config: ExportConfig) -> str:
    """The task plan in a few lines: tasks, places per task, destination."""
    places = sum(len(j.locations) for j in jobs)
    sizes = [len(j.locations) for j in jobs] or [0]
    where = (
        f"Cloud Storage gs://{config.bucket}/{config.prefix}"
        if config.destination == "gcs"
        else f"Google Drive folder {config.folder!r}"
    )
    head = (
        f"{len(jobs)} export task(s) ({config.layout} layout) for {places} place-years, "
        f"{min(sizes)}-{max(sizes)} per task, TFRecord to {where}"
    )
    if config.layout == "table":
        head += (
            f"; ceil({places} / points_per_task={config.points_per_task}) per imagery "
            f"year = {len(jobs)}"
        )
    shown = [f"  {j.description}: {len(j.locations)} place(s) -> {j.output}" for j in jobs[:5]]
    more = [f"  ... {len(jobs) - 5} more"] if len(jobs) > 5 else []
    return "\n".join([head, *shown, *more])


def status_table(in_flight: dict[str, tuple[ExportJob, dict[str, Any]]]) -> pd.DataFrame:
    """One row per task in flight: description, task id, state, attempts, seconds."""
    now = time.monotonic()
    rows = [
        {
            "task": job.description,
            "id": task_id,
            "state": info["state"],
            "attempt": info["attempt"],
            "seconds": round(now - info["since"]),
        }
        for task_id, (job, info) in in_flight.items()
    ]
    return pd.DataFrame(rows, columns=["task", "id", "state", "attempt", "seconds"])


def _start(
    backend: TaskBackend,
    job: ExportJob,
    config: ExportConfig,
    sleep: Callable[[float], None],
    rng: random.Random,
) -> str:
    """Build and start one task, retrying transient errors with backoff.

    Raises:
        GeeNetworkError: Earth Engine stayed unreachable.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return backend.start(job.build())
        except Exception as error:
            if not is_retryable(error) or attempt >= config.retry.max_attempts:
                if is_network_error(error):
                    raise GeeNetworkError(
                        network_message(f"starting export task {job.description}", error)
                    ) from None
                raise
            sleep(config.retry.delay(attempt, rng))


class _Poller:
    """Status polls that ride out transient errors (the loop goes on) up to
    ``max_poll_failures`` in a row."""

    def __init__(self, backend: TaskBackend, config: ExportConfig) -> None:
        self.backend, self.config, self.failures = backend, config, 0
        self.errors: list[str] = []

    def __call__(self, task_ids: list[str]) -> dict[str, dict[str, Any]]:
        try:
            statuses = self.backend.statuses(task_ids)
        except Exception as error:
            if not is_retryable(error):
                raise
            self.failures += 1
            self.errors.append(f"{type(error).__name__}: {error}")
            if self.failures >= self.config.max_poll_failures:
                step = f"polling the status of {len(task_ids)} export task(s)"
                detail = (
                    network_message(step, error)
                    if is_network_error(error)
                    else (f"{step} failed {self.failures} times in a row; last: {self.errors[-1]}")
                )
                raise GeeNetworkError(detail) from None
            tqdm.write(
                f"status poll failed ({self.errors[-1]}); the tasks keep running on "
                f"Earth Engine, polling again ({self.failures}/"
                f"{self.config.max_poll_failures})"
            )
            return {}
        self.failures = 0
        return statuses


def run_exports(
    locations: Sequence[Location],
    *,
    manifest_path: str,
    recipe: RecipeConfig,
    config: ExportConfig = ExportConfig(),
    tasks: TaskBackend | None = None,
    sleep: Callable[[float], None] = time.sleep,
    seed: int | None = None,
) -> ExportReport:
    """Start and follow the export tasks of every place not yet done.

    Tasks whose places are all ``done`` in the manifest are skipped; tasks ``running``
    with a task id (a run killed while they ran) are polled, not started again. The
    number of tasks is printed before any starts.

    Args:
        locations: the location-years.
        manifest_path: the manifest CSV (created or resumed); ``gee_recipe.json`` lies
            beside it.
        recipe: the image recipe.
        config: layout, destination, cap, polling, retries.
        tasks: replaces the Earth Engine task backend (tests).
        sleep: replaces the wait between polls and retries (tests).
        seed: seed of the backoff jitter.

    Raises:
        RecipeMismatch: the folder holds an export made with other settings.
        GeeNetworkError: Earth Engine stayed unreachable (the manifest is saved).
    """
    backend = tasks or EarthEngineTasks()
    manifest = Manifest(manifest_path, flush_every_s=0.0)
    recipe_id = check_recipe(
        Path(manifest_path).parent,
        recipe_settings(recipe, "export", config),
        has_work=len(manifest) > 0,
    )
    report = ExportReport(manifest=str(manifest.path))
    jobs = plan_jobs(locations, recipe=recipe, config=config)
    print(plan_summary(jobs, config).splitlines()[0])
    queue: deque[ExportJob] = deque()
    in_flight: dict[str, tuple[ExportJob, dict[str, Any]]] = {}
    attempts: dict[str, int] = {}
    for job in jobs:
        rows = [
            manifest.ensure(ManifestRow(loc.cell_key, loc.year, loc.cell_id, loc.imagery_year))
            for loc in job.locations
        ]
        for row in rows:
            row.output, row.task, row.recipe = job.output, job.description, recipe_id
        ids = {row.task_id for row in rows}
        if all(row.status == DONE for row in rows):
            report.skipped += 1
        elif all(row.status == RUNNING for row in rows) and len(ids) == 1 and "" not in ids:
            in_flight[ids.pop()] = (
                job,
                {"state": "RUNNING", "attempt": 0, "since": time.monotonic()},
            )
        else:
            queue.append(job)
    manifest.save()

    start = time.perf_counter()
    rng = random.Random(seed)
    poll = _Poller(backend, config)
    bar = tqdm(
        total=len(queue) + len(in_flight),
        desc="export tasks",
        unit="task",
        disable=not config.progress,
    )
    display = _Display(config.progress)

    def rows_of(job: ExportJob) -> list[ManifestRow]:
        return [manifest.get(loc.cell_key, loc.year) for loc in job.locations]

    try:
        while queue or in_flight:
            while queue and len(in_flight) < config.max_in_flight:
                job = queue.popleft()
                attempts[job.description] = attempts.get(job.description, 0) + 1
                try:
                    task_id = _start(backend, job, config, sleep, rng)
                except GeeNetworkError:
                    raise
                except Exception as error:  # noqa: BLE001 (a task refused: recorded)
                    for row in rows_of(job):
                        row.status, row.error = FAILED, f"{type(error).__name__}: {error}"
                        row.attempts += 1
                    report.failed += 1
                    report.errors[job.description] = rows_of(job)[0].error
                    bar.update(1)
                    continue
                for row in rows_of(job):
                    row.status, row.task_id, row.error = RUNNING, task_id, ""
                    row.attempts += 1
                report.started += 1
                in_flight[task_id] = (
                    job,
                    {
                        "state": "READY",
                        "attempt": attempts[job.description],
                        "since": time.monotonic(),
                    },
                )
            manifest.save()  # a started task is on disk before we wait on it
            if not in_flight:
                continue
            sleep(config.poll_interval_s)
            for task_id, status in poll(list(in_flight)).items():
                if task_id not in in_flight:
                    continue
                job, info = in_flight[task_id]
                info["state"] = state = str(status.get("state", "UNKNOWN"))
                if state == "COMPLETED":
                    for row in rows_of(job):
                        row.status = DONE
                    report.completed += 1
                    del in_flight[task_id]
                    bar.update(1)
                elif state in FAILED_STATES:
                    del in_flight[task_id]
                    error = str(status.get("error_message", state))
                    retry = attempts.get(job.description, 0) < config.max_attempts
                    for row in rows_of(job):
                        row.error, row.status = error, PENDING if retry else FAILED
                    if retry:
                        queue.append(job)
                        report.retried += 1
                    else:
                        report.failed += 1
                        report.errors[task_id] = error
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
        report.poll_errors = len(poll.errors)
        manifest.save()
    return report


def _state_counts(in_flight: dict[str, tuple[ExportJob, dict[str, Any]]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, info in in_flight.values():
        counts[info["state"].lower()] = counts.get(info["state"].lower(), 0) + 1
    return counts
