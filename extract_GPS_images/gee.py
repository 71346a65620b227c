"""Earth Engine backend: Sentinel-2 quarterly least-cloudy composites + Dynamic World.

``extract_gee(GeeConfig)`` is what ``image.ipynb`` calls with ``backend = "gee"``; the
CLI twin is ``python -m extract_GPS_images gee --labels FILE --out DIR --mode
download|export [...]``. It reads and validates the labels, initialises Earth Engine,
then either downloads every patch with ``computePixels`` into ``DIR`` as gzip
TFRecords (``--mode download``) or starts batch export tasks writing TFRecords to
Google Drive or Cloud Storage (``--mode export``: ``points_per_task`` places per table
export by default, or one image export per place). Either way ``DIR`` holds
``labels.csv``, ``gee_manifest.csv`` and ``gee_recipe.json``, and a re-run with the same
settings resumes (other settings are refused). ``DIR`` is claimed before anything is
written there (a non-empty folder the stage did not make is refused, one an earlier
version made is recognised by its manifest or recipe) and locked for the whole run, so
a second run into it is refused naming the process that holds it (utils/ownership.py).
``--dry-run`` prints the plan (tasks, places per task, destination) without touching
the network or the folder.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from extract_GPS_images import gee_auth
from extract_GPS_images.gee_download import (
    MANIFEST_NAME,
    ComputePixels,
    DownloadConfig,
    DownloadReport,
    RetryPolicy,
    download_locations,
    locations_from_labels,
)
from extract_GPS_images.gee_errors import GeeNetworkError
from extract_GPS_images.gee_export import (
    LAYOUTS,
    ExportConfig,
    ExportReport,
    TaskBackend,
    plan_jobs,
    plan_summary,
    run_exports,
)
from extract_GPS_images.gee_fingerprint import RECIPE_FILE, RecipeMismatch
from extract_GPS_images.gee_recipe import (
    CLOUD_METHODS,
    CS_BANDS,
    DW_REDUCERS,
    NIGHT_LIGHTS,
    PERIODS,
    QA60_GAP_ACTIONS,
    S2_L1C,
    S2_SR,
    RecipeConfig,
)
from extract_GPS_images.labels import FIRST_IMAGERY_YEAR, LabelsError, read_labels, write_labels
from utils.folder_lock import FolderLockedError, folder_lock
from utils.ownership import IGNORED, ForeignFolderError, OutputFolder

MODES = ("download", "export")
STAGE = "Earth Engine extraction"
LABELS_FILE = "labels.csv"
#: Files only this stage writes: a folder holding one but no ownership record was made
#: by an earlier version of the stage and is adopted.
MARKERS = (MANIFEST_NAME, RECIPE_FILE)


@dataclass(frozen=True)
class GeeConfig:
    """Everything an Earth Engine extraction needs.

    Attributes:
        labels: path of the labels.csv.
        out_dir: local folder: the records (download), ``labels.csv`` and the manifest.
        mode: ``"download"`` (computePixels, local files) or ``"export"`` (batch tasks).
        project: Cloud project (default: ``EE_PROJECT`` / ``GOOGLE_CLOUD_PROJECT``).
        service_account_key: path of a service-account key file (optional).
        imagery_year: imagery year of label years before Sentinel-2's first full year.
        on_error: bad labels rows: ``"raise"`` refuses the file, ``"skip"`` drops them.
        limit: only the first ``limit`` location-years (trial runs).
        timeout_s: deadline of each Earth Engine request.
        high_volume: use Earth Engine's high-volume endpoint (recommended for many
            parallel computePixels requests).
        dry_run: print the plan (tasks or requests, destination) and stop: no network.
        recipe, download, export: the stage configs.
    """

    labels: str
    out_dir: str
    mode: Literal["download", "export"] = "download"
    project: str | None = None
    service_account_key: str | None = None
    imagery_year: int = FIRST_IMAGERY_YEAR
    on_error: Literal["raise", "skip"] = "raise"
    limit: int | None = None
    timeout_s: float = 300.0
    high_volume: bool = False
    dry_run: bool = False
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError(
                "the Earth Engine backend needs a labels.csv (--labels FILE; "
                "notebook: labels_csv = 'path/to/labels.csv')"
            )
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")

    @classmethod
    def from_flat(cls, **params: Any) -> GeeConfig:
        """Build from flat keyword parameters (notebook and CLI): the names of
        :class:`GeeConfig`, :class:`RecipeConfig`, :class:`DownloadConfig` and
        :class:`ExportConfig` fields, plus ``max_attempts``, ``backoff_base_s``,
        ``backoff_max_s`` (retries of both modes) and ``progress`` (both modes).

        Raises:
            ValueError: an unknown name (the message lists the accepted ones).
        """
        groups = {
            "top": {f.name for f in fields(cls)} - {"recipe", "download", "export"},
            "recipe": {f.name for f in fields(RecipeConfig)},
            "download": {
                "concurrency",
                "writers",
                "write_backlog",
                "manifest_every_s",
                "processes",
            },
            "export": {f.name for f in fields(ExportConfig)}
            - {"max_attempts", "progress", "retry"},
            "shared": {"max_attempts", "backoff_base_s", "backoff_max_s", "progress"},
        }
        known = set().union(*groups.values())
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(
                f"unknown Earth Engine parameter(s) {unknown}; accepted: {sorted(known)}"
            )
        pick = {
            g: {k: v for k, v in params.items() if k in names and v is not None}
            for g, names in groups.items()
        }
        shared = pick["shared"]
        if "bands" in pick["recipe"]:
            pick["recipe"]["bands"] = tuple(pick["recipe"]["bands"])
        retry = RetryPolicy(
            **{
                name: shared[key]
                for key, name in (
                    ("max_attempts", "max_attempts"),
                    ("backoff_base_s", "base_s"),
                    ("backoff_max_s", "max_s"),
                )
                if key in shared
            }
        )
        common = {k: shared[k] for k in ("progress",) if k in shared}
        export_extra = {k: shared[k] for k in ("max_attempts",) if k in shared}
        return cls(
            **pick["top"],
            recipe=RecipeConfig(**pick["recipe"]),
            download=DownloadConfig(**pick["download"], retry=retry, **common),
            export=ExportConfig(**pick["export"], retry=retry, **common, **export_extra),
        )


@dataclass
class PlanReport:
    """What a run would do (``dry_run``)."""

    text: str

    def summary(self) -> str:
        return f"dry run, nothing sent: {self.text}"


@dataclass
class GeeReport:
    """What :func:`extract_gee` did."""

    mode: str
    labels_summary: str
    auth: str
    result: DownloadReport | ExportReport | PlanReport

    def summary(self) -> str:
        return "\n".join([self.labels_summary, self.auth, f"{self.mode}: {self.result.summary()}"])


def extract_gee(
    config: GeeConfig,
    *,
    initialize: bool = True,
    compute_pixels: ComputePixels | None = None,
    tasks: TaskBackend | None = None,
) -> GeeReport:
    """Read the labels, initialise Earth Engine, download or export every location-year
    (with ``dry_run``: only read the labels and return the plan).

    Args:
        config: the extraction.
        initialize: call ``ee.Initialize`` (tests that set Earth Engine up offline pass
            False).
        compute_pixels: replaces ``ee.data.computePixels`` (tests, benchmarks).
        tasks: replaces the export task backend (tests).

    Raises:
        LabelsError: the labels file is bad (message names rows and columns).
        GeeAuthError: Earth Engine cannot be initialised (message says how to fix it).
        GeeNetworkError: Earth Engine cannot be reached (message names the step).
        RecipeMismatch: ``out_dir`` holds an extraction made with other settings.
        utils.ownership.ForeignFolderError: ``out_dir`` is not empty and was not made
            by this stage (nothing in it is changed).
        utils.folder_lock.FolderLockedError: another run is writing ``out_dir``.
    """
    labels = read_labels(config.labels, on_error=config.on_error, imagery_year=config.imagery_year)
    locations = locations_from_labels(labels)[: config.limit]
    if config.dry_run:  # nothing written, nothing sent
        return GeeReport(
            config.mode,
            labels.summary(),
            "Earth Engine not contacted",
            PlanReport(plan_text(locations, config)),
        )
    out = Path(config.out_dir)
    owner = OutputFolder.claim(out, STAGE, _markers(out, config.labels))  # before any write
    with folder_lock(out, STAGE):  # the whole run: a second one is refused, naming this
        copy_labels = Path(config.labels).resolve() != (out / LABELS_FILE).resolve()
        owner.record([*MARKERS, *([LABELS_FILE] if copy_labels else [])])
        if copy_labels:
            write_labels(labels.frame, out / LABELS_FILE)
        auth, result = _run(config, locations, out, compute_pixels, tasks, initialize)
    return GeeReport(config.mode, labels.summary(), auth, result)


def _markers(out: Path, labels: str) -> tuple[str, ...]:
    """The stage's markers; plus ``labels.csv`` when the folder holds nothing but the
    labels file being extracted (the user chose it as the extraction folder)."""
    entries = {p.name for p in out.iterdir()} - set(IGNORED) if out.is_dir() else set()
    if entries == {LABELS_FILE} and Path(labels).resolve() == (out / LABELS_FILE).resolve():
        return (*MARKERS, LABELS_FILE)
    return MARKERS


def _run(
    config: GeeConfig,
    locations: list,
    out: Path,
    compute_pixels: ComputePixels | None,
    tasks: TaskBackend | None,
    initialize: bool,
) -> tuple[str, DownloadReport | ExportReport]:
    """Initialise Earth Engine, then download or export (the claimed, locked part)."""
    auth = "Earth Engine initialised by the caller"
    if initialize:
        auth = gee_auth.initialize(
            project=config.project,
            service_account_key=config.service_account_key,
            deadline_s=config.timeout_s,
            high_volume=config.high_volume,
        )
    if config.mode == "download":
        result: DownloadReport | ExportReport = download_locations(
            locations,
            out_dir=out,
            recipe=config.recipe,
            config=config.download,
            compute_pixels=compute_pixels,
        )
    else:
        result = run_exports(
            locations,
            manifest_path=str(out / MANIFEST_NAME),
            recipe=config.recipe,
            config=config.export,
            tasks=tasks,
        )
    return auth, result


def plan_text(locations: list, config: GeeConfig) -> str:
    """The plan of a run, built offline: export tasks, or download requests."""
    if config.mode == "export":
        return plan_summary(
            plan_jobs(locations, recipe=config.recipe, config=config.export), config.export
        )
    return (
        f"{len(locations)} computePixels request(s) ({config.recipe.size} x "
        f"{config.recipe.size} px, {len(config.recipe.record_bands)} bands), "
        f"{config.download.concurrency} in flight, into {config.out_dir}"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``gee`` sub-command's arguments (a None default means the config's, shown)."""
    from utils.cli import add_run_dir, shell_path  # noqa: PLC0415

    p = parser
    p.add_argument("--labels", required=True, type=shell_path, help="labels.csv to extract")
    add_run_dir(p, None, "write <run-dir>/exports (or give --out)")
    p.add_argument(
        "--out",
        type=shell_path,
        dest="out_dir",
        help="local folder: records (download), labels.csv, gee_manifest.csv",
    )
    p.add_argument("--mode", choices=MODES, default="download")
    p.add_argument("--project", help="Cloud project (default: $EE_PROJECT)")
    p.add_argument("--service-account-key", type=shell_path, help="service-account JSON key file")
    p.add_argument(
        "--imagery-year",
        type=int,
        default=FIRST_IMAGERY_YEAR,
        help="imagery year for label years before Sentinel-2's first full year",
    )
    p.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="bad labels rows: refuse the file, or skip them with a warning",
    )
    p.add_argument("--limit", type=int, help="only the first N location-years")
    p.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        dest="timeout_s",
        help="deadline of each Earth Engine request, seconds",
    )
    p.add_argument(
        "--high-volume",
        action="store_true",
        default=None,
        help="use the high-volume endpoint (many parallel computePixels requests)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        default=None,
        help="print the plan (tasks, places per task, destination); no network",
    )
    r = p.add_argument_group("image recipe")
    r.add_argument("--collection", default=S2_L1C, help=f"e.g. {S2_L1C} or {S2_SR}")
    r.add_argument("--bands", nargs="+", help="Sentinel-2 bands")
    r.add_argument("--scale", type=float, help="metres per pixel")
    r.add_argument("--size", type=int, help="patch side in pixels")
    r.add_argument("--periods", choices=tuple(PERIODS), help="composite periods")
    r.add_argument(
        "--cloud-method",
        choices=CLOUD_METHODS,
        help="cloud ranking of scenes (QA60 is masked Feb 2022 - Feb 2024)",
    )
    r.add_argument("--cs-band", choices=CS_BANDS, help="Cloud Score+ band")
    r.add_argument("--cs-threshold", type=float, help="Cloud Score+ clear threshold")
    r.add_argument(
        "--qa60-gap",
        choices=QA60_GAP_ACTIONS,
        help="qa60 with imagery in its masked gap: refuse (default) or warn",
    )
    r.add_argument(
        "--night-lights",
        choices=NIGHT_LIGHTS,
        help="VIIRS night lights channel NL: none (default), annual, monthly",
    )
    r.add_argument(
        "--mask-clouds",
        action="store_true",
        default=None,
        help="mask cloudy pixels of the chosen scenes",
    )
    r.add_argument("--dw-reducer", choices=DW_REDUCERS, help="Dynamic World over the year")
    d = p.add_argument_group("download / retries")
    d.add_argument("--concurrency", type=int, help="computePixels requests in flight")
    d.add_argument(
        "--processes", type=int, help="download processes sharing them (2 for 225 px on Linux)"
    )
    d.add_argument(
        "--max-attempts", type=int, help="attempts per location (default: 6 download, 3 export)"
    )
    e = p.add_argument_group("export")
    e.add_argument(
        "--layout",
        choices=LAYOUTS,
        help="table (points_per_task places per task) or image (one task per place)",
    )
    e.add_argument("--points-per-task", type=int, help="places per table-export task")
    e.add_argument(
        "--tile-scale", type=float, help="tileScale of the sampling (raise on memory errors)"
    )
    e.add_argument("--destination", choices=("drive", "gcs"), help="where exports go")
    e.add_argument("--folder", help="Google Drive folder")
    e.add_argument("--bucket", help="Cloud Storage bucket (destination gcs)")
    e.add_argument("--prefix", help="prefix of task names and file names")
    e.add_argument("--max-in-flight", type=int, help="tasks queued or running at once")
    e.add_argument(
        "--poll-interval", type=float, dest="poll_interval_s", help="seconds between status polls"
    )
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", default=None, help="no progress bar"
    )
    _show_config_defaults(p)


def _show_config_defaults(parser: argparse.ArgumentParser) -> None:
    """Write the config default into the help of every option whose own default is None
    (None: "the config's", so that :meth:`GeeConfig.from_flat` stays the one source)."""
    defaults: dict[str, Any] = {}
    for config in (ExportConfig(), DownloadConfig(), RecipeConfig()):
        defaults.update({f.name: getattr(config, f.name) for f in fields(config)})
    for action in parser._actions:
        value = defaults.get(action.dest)
        if action.default is None and value not in (None, False, "") and action.nargs != 0:
            shown = " ".join(value) if isinstance(value, tuple) else value
            action.help = f"{action.help} (default: {shown})"


def main(args: argparse.Namespace) -> GeeReport:
    """Run the ``gee`` sub-command; bad input exits with the reader's or auth message."""
    from utils.cli import writable_folder  # noqa: PLC0415
    from utils.paths import RunPaths  # noqa: PLC0415

    params = {k: v for k, v in vars(args).items() if k not in ("command", "run_dir")}
    run_dir = getattr(args, "run_dir", None)
    if (args.out_dir is None) == (run_dir is None):
        raise SystemExit("error: give --run-dir (writes <run-dir>/exports) or --out FOLDER")
    out = args.out_dir or RunPaths.of(run_dir).exports
    params["out_dir"] = str(out)
    params["labels"] = str(params["labels"])
    if params.get("service_account_key") is not None:
        params["service_account_key"] = str(params["service_account_key"])
    try:
        config = GeeConfig.from_flat(**params)  # checked before any folder is made
        if not config.dry_run:  # a dry run writes nothing, not even the folder
            writable_folder(out, "--out" if args.out_dir else "--run-dir")
        report = extract_gee(config)
    except LabelsError as error:
        raise SystemExit(f"error: {error.for_tool('--on-error skip')}") from None
    except (
        gee_auth.GeeAuthError,
        GeeNetworkError,
        RecipeMismatch,
        ForeignFolderError,
        FolderLockedError,
        ValueError,
    ) as error:
        raise SystemExit(f"error: {error}") from None
    print(report.summary())
    return report
