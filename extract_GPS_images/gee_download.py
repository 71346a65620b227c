"""Direct download: ``ee.data.computePixels`` over a thread pool, written as local
gzip TFRecords in the export schema (docs/design.md).

Each location-year is one request (NumPy format) on its own fixed pixel grid; a
pool of ``concurrency`` threads keeps that many requests in flight. Quota (429) and
server errors and timeouts are retried with exponential backoff and jitter; other
errors fail the location and are recorded. Files are written atomically, so a run
killed at any moment leaves whole files only; a re-run skips every file that exists
and fetches only the rest. ``gee_manifest.csv`` beside the files records each
location's status, attempts, error and periods that fell back.
"""

from __future__ import annotations

import ctypes
import io
import multiprocessing
import multiprocessing.connection
import os
import random
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ee
import numpy as np
from tqdm.auto import tqdm

from extract_GPS_images.gee_errors import (  # noqa: F401 (is_retryable: public here too)
    RETRYABLE_STATUS,
    GeeNetworkError,
    is_network_error,
    is_retryable,
    network_message,
)
from extract_GPS_images.gee_fingerprint import check_recipe, recipe_settings
from extract_GPS_images.gee_manifest import DONE, FAILED, PENDING, RUNNING, Manifest, ManifestRow
from extract_GPS_images.gee_recipe import (
    RecipeConfig,
    fallback_summary,
    location_image,
    pixel_grid,
)
from extract_GPS_images.labels import Labels
from extract_GPS_images.schema import record_file_name
from extract_GPS_images.tfrecord import (
    TFRECORD_CODECS,
    sample_bands,
    write_example,
)
from utils.atomic import remove_stale_temporaries
from utils.heap import reuse_freed_memory
from utils.libc import libc_function
from utils.slices import as_slice

MANIFEST_NAME = "gee_manifest.csv"
#: ``prctl`` option: the signal a process gets when its parent dies (``linux/prctl.h``).
PR_SET_PDEATHSIG = 1
_PRCTL = libc_function("prctl", (ctypes.c_int, ctypes.c_ulong))
ComputePixels = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class Location:
    """One location-year to extract."""

    cell_key: str
    cell_id: str
    year: int
    imagery_year: int
    lat: float
    lon: float
    label: float

    @property
    def file_name(self) -> str:
        return record_file_name(self.cell_key, self.year)


def locations_from_labels(labels: Labels) -> list[Location]:
    """One :class:`Location` per row of a validated labels table."""
    frame = labels.frame
    return [
        Location(
            cell_key=str(r.cell_key),
            cell_id=str(r.cell_id),
            year=int(r.year),
            imagery_year=int(r.imagery_year),
            lat=float(r.latitude),
            lon=float(r.longitude),
            label=float(r.label),
        )
        for r in frame.itertuples(index=False)
    ]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: before retry ``n`` (1-based) wait a random time
    in ``[cap/2, cap]`` with ``cap = min(max_s, base_s * 2**(n-1))``."""

    max_attempts: int = 6
    base_s: float = 2.0
    max_s: float = 120.0

    def delay(self, retry: int, rng: random.Random) -> float:
        cap = min(self.max_s, self.base_s * 2 ** (retry - 1))
        return cap / 2 + rng.uniform(0, cap / 2)


@dataclass(frozen=True)
class DownloadConfig:
    """Knobs of the direct download.

    Attributes:
        concurrency: requests in flight (threads).
        writers: threads writing fetched patches as TFRecords.
        write_backlog: most fetched patches waiting to be written (bounds memory);
            while it is full no new request starts.
        retry: backoff policy for retryable errors.
        manifest_every_s: at most this often the manifest is rewritten during a run.
        progress: show a tqdm progress bar.
        gzip_codec: deflate of the written TFRecords (``"isal"`` or ``"zlib"``).
        gzip_level: its level (ISA-L 0-3, zlib 0-9). ISA-L level 1 is the fastest
            (~6 ms a 225 px record; its level 0 is slower and larger); a 225 px
            download then costs ~21 ms of CPU in all, zlib level 6 ~170 ms.
        processes: download processes (Linux and other systems that fork). Above 1,
            the locations, the requests in flight and the writer threads are shared
            out among that many forked processes, each with its own interpreter lock:
            at 225 px one process's threads keep only ~1.3 cores busy (the client's
            Python side of each request holds the lock), two keep both
            (docs/performance.md). The manifest is still written by the calling
            process alone.
    """

    concurrency: int = 16
    writers: int = 2
    write_backlog: int = 32
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    manifest_every_s: float = 2.0
    progress: bool = True
    gzip_codec: str = "isal"
    gzip_level: int = 1
    processes: int = 1

    def __post_init__(self) -> None:
        if min(self.concurrency, self.writers, self.write_backlog, self.processes) < 1:
            raise ValueError(
                f"concurrency, writers, write_backlog and processes must be >= 1, got "
                f"{self.concurrency}, {self.writers}, {self.write_backlog}, {self.processes}"
            )
        if self.processes > 1 and "fork" not in multiprocessing.get_all_start_methods():
            raise ValueError(
                f"processes={self.processes} needs processes that fork (Linux); "
                "use processes=1 here"
            )
        codec = TFRECORD_CODECS.get(self.gzip_codec)
        if codec is None or not 0 <= self.gzip_level <= codec[1]:
            valid = ", ".join(f"{k} 0..{top}" for k, (_, top) in TFRECORD_CODECS.items())
            raise ValueError(
                f"gzip_codec {self.gzip_codec!r} at level {self.gzip_level}; valid: {valid}"
            )


@dataclass
class DownloadReport:
    """What a download run did."""

    out_dir: Path
    manifest: Path
    fetched: int = 0
    skipped: int = 0
    failed: int = 0
    retries: int = 0
    seconds: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        rate = self.fetched / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.fetched} fetched, {self.skipped} already there, {self.failed} failed, "
            f"{self.retries} retries in {self.seconds:.1f} s ({rate:.2f}/s) -> {self.out_dir}; "
            f"manifest {self.manifest}"
        )


def pixels_request(location: Location, recipe: RecipeConfig) -> dict[str, Any]:
    """The ``ee.data.computePixels`` parameters of one location-year: the recipe's
    image (channels, metadata and fallback bands), its fixed grid, and the reply as the
    bytes of a ``.npy`` file (``"NPY"``; :func:`read_npy` views them without a copy,
    where the client's ``"NUMPY_NDARRAY"`` would copy 7 MB twice at 225 px)."""
    image = location_image(
        lat=location.lat,
        lon=location.lon,
        label=location.label,
        year=location.year,
        imagery_year=location.imagery_year,
        config=recipe,
    )
    return {
        "expression": image.select(recipe.record_bands),
        "fileFormat": "NPY",
        "grid": pixel_grid(
            lat=location.lat, lon=location.lon, scale=recipe.scale, size=recipe.size
        ),
    }


def _default_compute_pixels(params: dict[str, Any]) -> Any:
    return ee.data.computePixels(params)  # looked up per call, so tests can patch it


def read_npy(data: bytes | bytearray | memoryview) -> np.ndarray:
    """The array stored in ``.npy`` bytes, as a view of them (no copy): the array
    ``np.load(io.BytesIO(data))`` returns, without its two copies (format versions 1.0
    and 2.0; others are read by ``np.load``).

    Raises:
        ValueError: the bytes are not an ``.npy`` file of a plain (object-free) array.
    """
    head = io.BytesIO(memoryview(data)[: 2**16 + 16])  # magic, version, header
    version = np.lib.format.read_magic(head)
    if version not in ((1, 0), (2, 0)):
        return np.load(io.BytesIO(data), allow_pickle=False)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
    if dtype.hasobject:
        raise ValueError(".npy holds Python objects; refusing to read them")
    count = int(np.prod(shape, dtype=np.int64))
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=head.tell())
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def check_pixels(pixels: Any, names: Sequence[str], size: int) -> np.ndarray:
    """The ``computePixels`` reply (a structured array, or ``.npy`` bytes) as a
    structured ``(size, size)`` array holding every band of ``names``.

    Raises:
        ValueError: a band is missing or the shape is not ``(size, size)``.
    """
    if isinstance(pixels, (bytes, bytearray, memoryview)):
        pixels = read_npy(pixels)
    arr = np.asarray(pixels)
    available = arr.dtype.names or ()
    missing = [n for n in names if n not in available]
    if missing:
        raise ValueError(f"computePixels returned bands {list(available)}, lacking {missing}")
    if arr.shape != (size, size):
        raise ValueError(f"computePixels returned shape {arr.shape}, expected ({size}, {size})")
    return arr


def to_channels(
    pixels: Any, names: Sequence[str], size: int, out: np.ndarray | None = None
) -> np.ndarray:
    """(C, H, W) float32 from a structured ``(H, W)`` array with one field per band.

    Args:
        pixels: the ``computePixels`` reply.
        names: the bands to take, in order.
        size: the expected side.
        out: a C-contiguous float32 ``(C, H, W)`` array to fill (a writer thread keeps
            one across records) instead of a new one.

    Raises:
        ValueError: a band is missing or the shape is not ``(size, size)``.
    """
    arr = check_pixels(pixels, names, size)
    shape = (len(names), size, size)
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}")
    image, out = out, out.reshape(len(names), size * size)
    fields = arr.dtype.fields
    if (
        arr.flags.c_contiguous
        and arr.dtype.itemsize == 4 * len(fields)
        and all(dtype == np.dtype("<f4") for dtype, *_ in fields.values())
    ):  # packed float32 bands (npy replies): a cache-blocked transpose, ~5x faster
        index = np.array([fields[name][1] // 4 for name in names])
        run = as_slice(index)  # the bands in the reply's order: no gather
        cols: np.ndarray | slice = index if run is None else run
        flat = arr.reshape(-1).view(np.float32).reshape(size * size, len(fields))
        for start in range(0, size * size, 4096):
            out[:, start : start + 4096] = flat[start : start + 4096, cols].T
    else:
        for i, name in enumerate(names):  # one strided copy per band
            out[i] = arr[name].reshape(-1)
    return image


def write_location(
    path: Path,
    location: Location,
    image: np.ndarray,
    names: list[str],
    *,
    codec: str = "isal",
    level: int = 1,
    buffer: bytearray | None = None,
) -> Path:
    """Write one record atomically: the channels ``names`` of ``image`` (C, H, W), the
    constant metadata bands and ``cell_id`` (gzip by ``codec`` at ``level``; ``buffer``:
    the framing scratch space of :func:`~extract_GPS_images.tfrecord.write_example`).
    The file is dropped from the page cache once on disk: the conversion reads it much
    later, and a long download writing into fresh pages costs several times the CPU."""
    meta = {
        "label": location.label,
        "latitude": location.lat,
        "longitude": location.lon,
        "year": location.year,
        "imagery_year": location.imagery_year,
    }
    return write_example(
        path,
        sample_bands(image, meta, names),
        location.cell_id,
        level=level,
        codec=codec,
        buffer=buffer,
        drop_cache=True,
    )


@dataclass
class _Outcome:
    location: Location
    ok: bool
    attempts: int
    error: str = ""
    fallback: str = ""
    pixels: np.ndarray | None = None  # the checked reply, not yet written
    network: bool = False  # failed because Earth Engine could not be reached
    clear: str = ""  # clear share of each period's scene, "0.97;0.40;..."


def _fetch_one(
    location: Location,
    *,
    recipe: RecipeConfig,
    compute: ComputePixels,
    retry: RetryPolicy,
    rng: random.Random,
    sleep: Callable[[float], None],
    stop: threading.Event,
) -> _Outcome:
    """Request one patch, retrying transient errors; the pixels are not written here."""
    names = recipe.record_bands
    attempt = 0
    while True:
        attempt += 1
        try:
            pixels = check_pixels(compute(pixels_request(location, recipe)), names, recipe.size)
            code = _first_value(pixels, names[-1])
            clear = ";".join(f"{_first_value(pixels, n):.2f}" for n in recipe.clear_names)
            return _Outcome(
                location,
                True,
                attempt,
                pixels=pixels,
                clear=clear,
                fallback=fallback_summary(code, recipe.period_names),
            )
        except Exception as error:  # noqa: BLE001 (classified, recorded, never lost)
            message = f"{type(error).__name__}: {error}"
            if not is_retryable(error) or attempt >= retry.max_attempts or stop.is_set():
                if is_network_error(error):
                    step = f"fetching {location.file_name} with computePixels"
                    return _Outcome(
                        location, False, attempt, network=True, error=network_message(step, error)
                    )
                return _Outcome(location, False, attempt, error=message)
            sleep(retry.delay(attempt, rng))


def _first_value(pixels: np.ndarray, name: str) -> float:
    """Band ``name``'s first pixel, as float32 (the value its record holds)."""
    return float(np.float32(pixels[name].flat[0]))


class _WriterScratch(threading.local):
    """Per writer thread, reused across records: the (C, H, W) channels and the framing
    buffer. Fresh 7-8 MB arrays a 225 px record, freed by other threads, cost page
    faults and ``munmap`` calls: as much system CPU as the rest of a download took."""

    def __init__(self) -> None:
        self.channels = np.empty(0, np.float32)
        self.frame = bytearray()

    def channels_for(self, bands: int, size: int) -> np.ndarray:
        if self.channels.shape != (bands, size, size):
            self.channels = np.empty((bands, size, size), np.float32)
        return self.channels


def _write_one(
    outcome: _Outcome,
    *,
    out_dir: Path,
    names: list[str],
    config: DownloadConfig,
    scratch: _WriterScratch,
) -> _Outcome:
    """Transpose and write a fetched patch (atomically); a write error fails the location."""
    try:
        size = outcome.pixels.shape[0]
        write_location(
            out_dir / outcome.location.file_name,
            outcome.location,
            to_channels(outcome.pixels, names, size, out=scratch.channels_for(len(names), size)),
            names,
            codec=config.gzip_codec,
            level=config.gzip_level,
            buffer=scratch.frame,
        )
    except Exception as error:  # noqa: BLE001 (recorded in the manifest)
        outcome.ok, outcome.error = False, f"write failed: {type(error).__name__}: {error}"
    outcome.pixels = None
    return outcome


def download_locations(
    locations: Sequence[Location],
    *,
    out_dir: str | Path,
    recipe: RecipeConfig,
    config: DownloadConfig = DownloadConfig(),
    compute_pixels: ComputePixels | None = None,
    sleep: Callable[[float], None] | None = None,
    seed: int | None = None,
) -> DownloadReport:
    """Fetch every location-year whose file is missing; write files and the manifest.

    ``config.concurrency`` requests stay in flight; fetched patches are written by
    ``config.writers`` other threads, so writing never holds a request slot.

    Args:
        locations: the location-years to extract.
        out_dir: folder of the ``{cell_key}_{year}.tfrecord.gz`` files and the manifest.
        recipe: the image recipe.
        config: concurrency, retries, progress.
        compute_pixels: replaces ``ee.data.computePixels`` (tests, benchmarks).
        sleep: replaces the backoff wait (tests); default waits, and stops waiting
            when the run is interrupted.
        seed: seed of the backoff jitter.

    Returns:
        A :class:`DownloadReport`; failed locations are listed there and in the manifest.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    reuse_freed_memory()  # each patch's MB-sized buffers reused by the next (utils.heap)
    manifest = Manifest(out / MANIFEST_NAME, flush_every_s=config.manifest_every_s)
    recipe_id = check_recipe(out, recipe_settings(recipe, "download"), has_work=len(manifest) > 0)
    report = DownloadReport(out_dir=out, manifest=manifest.path)
    compute = compute_pixels or _default_compute_pixels
    wait_fn = sleep
    rng = random.Random(seed)

    queue: deque[Location] = deque()
    for loc in locations:
        row = manifest.ensure(ManifestRow(loc.cell_key, loc.year, loc.cell_id, loc.imagery_year))
        row.output, row.recipe = loc.file_name, recipe_id
        if (out / loc.file_name).is_file():
            row.status = DONE
            report.skipped += 1
        else:
            queue.append(loc)
    manifest.save()

    start = time.perf_counter()
    bar = tqdm(total=len(queue), desc="computePixels", unit="patch", disable=not config.progress)

    def running(loc: Location) -> None:
        manifest.get(loc.cell_key, loc.year).status = RUNNING

    def finished(outcome: _Outcome) -> None:
        _record(manifest, report, outcome)
        bar.update(1)
        bar.set_postfix(failed=report.failed, retries=report.retries, refresh=False)
        manifest.maybe_save()

    loop = _Loop(out, recipe, config, compute, rng, wait_fn, running, finished)
    processes = min(config.processes, config.concurrency, len(queue))
    try:
        if processes > 1:
            _run_in_processes(queue, processes, loop)
        else:
            _run_queue(queue, loop)
    finally:
        for row in manifest:
            if row.status == RUNNING:  # interrupted before it finished: fetched next run
                row.status = PENDING
        bar.close()
        report.seconds = time.perf_counter() - start
        manifest.save()
    return report


@dataclass
class _Loop:
    """What a download loop needs besides its queue: where and how to fetch and write,
    ``running(location)`` called as a request starts, ``finished(outcome)`` with each
    outcome (written or failed)."""

    out: Path
    recipe: RecipeConfig
    config: DownloadConfig
    compute: ComputePixels
    rng: random.Random
    wait_fn: Callable[[float], None] | None
    running: Callable[[Location], None]
    finished: Callable[[_Outcome], None]


def _run_queue(queue: deque[Location], loop: _Loop) -> None:
    """Fetch and write every location of ``queue`` in this process:
    ``loop.config.concurrency`` fetch threads, ``loop.config.writers`` writer threads.

    Raises:
        GeeNetworkError: Earth Engine could not be reached (after ``finished`` saw it).
    """
    config, recipe, out, finished = loop.config, loop.recipe, loop.out, loop.finished
    stop = threading.Event()
    fetchers = ThreadPoolExecutor(config.concurrency, thread_name_prefix="ee-pixels")
    writers = ThreadPoolExecutor(config.writers, thread_name_prefix="tfrecord-writer")
    fetching: set[Future] = set()
    writing: set[Future] = set()
    names = recipe.record_bands  # masks, clear shares and fallback travel too
    scratch = _WriterScratch()
    try:
        while queue or fetching or writing:
            # Keep `concurrency` requests in flight unless writing falls behind.
            while (
                queue
                and len(fetching) < config.concurrency
                and (len(writing) < config.write_backlog)
            ):
                loc = queue.popleft()
                loop.running(loc)
                fetching.add(
                    fetchers.submit(
                        _fetch_one,
                        loc,
                        recipe=recipe,
                        compute=loop.compute,
                        retry=config.retry,
                        rng=random.Random(loop.rng.random()),
                        sleep=loop.wait_fn or stop.wait,
                        stop=stop,
                    )
                )
            done, _ = wait(fetching | writing, return_when=FIRST_COMPLETED)
            for future in done:
                outcome: _Outcome = future.result()
                if future in fetching:
                    fetching.discard(future)
                    if outcome.ok:
                        writing.add(
                            writers.submit(
                                _write_one,
                                outcome,
                                out_dir=out,
                                names=names,
                                config=config,
                                scratch=scratch,
                            )
                        )
                        continue
                else:
                    writing.discard(future)
                finished(outcome)
                if outcome.network:  # no network: every other request would fail alike
                    raise GeeNetworkError(outcome.error)
    except BaseException:
        stop.set()
        raise
    finally:
        fetchers.shutdown(wait=True, cancel_futures=True)
        writers.shutdown(wait=True)  # finish the writes of fetched patches
        for future in writing:
            if future.done() and future.exception() is None:
                finished(future.result())


def _share(total: int, parts: int, index: int) -> int:
    """Part ``index`` of ``total`` split as evenly as possible into ``parts`` (>= 1)."""
    return max(1, total // parts + (index < total % parts))


def _run_in_processes(queue: deque[Location], processes: int, loop: _Loop) -> None:
    """:func:`_run_queue` in ``processes`` forked processes, each with its share of the
    locations (round robin), of the requests in flight and of the writer threads; their
    outcomes come back through pipes and are recorded here, so the manifest has one
    writer. A process that dies is an error naming it; its unfinished locations stay
    pending for the next run.

    Raises:
        GeeNetworkError: Earth Engine could not be reached.
        RuntimeError: a download process failed or died.
    """
    config, context = loop.config, multiprocessing.get_context("fork")
    locations = list(queue)
    pipes: dict[Any, Any] = {}  # read end -> process
    try:
        for index in range(processes):
            share = replace(
                config,
                concurrency=_share(config.concurrency, processes, index),
                writers=_share(config.writers, processes, index),
                write_backlog=_share(config.write_backlog, processes, index),
                processes=1,
            )
            reader, sender = context.Pipe(duplex=False)
            part = deque(locations[index::processes])
            process = context.Process(
                target=_download_part,
                args=(part, sender, replace(loop, config=share), loop.rng.random(), os.getpid()),
                name=f"ee-download-{index}",
                daemon=True,
            )
            process.start()
            sender.close()
            pipes[reader] = process
            for loc in part:
                loop.running(loc)
        while pipes:
            for reader in multiprocessing.connection.wait(list(pipes)):
                try:
                    message = reader.recv()
                except EOFError:  # the process has finished (or died)
                    process = pipes.pop(reader)
                    process.join()
                    if process.exitcode != 0:
                        raise RuntimeError(
                            f"download process {process.name} died (exit code "
                            f"{process.exitcode}); its unfinished locations stay pending: "
                            "run again to fetch them"
                        ) from None
                    continue
                if isinstance(message, str):  # the process's own error, as text
                    raise RuntimeError(f"download process failed: {message}")
                loop.finished(message)
                if message.network:
                    raise GeeNetworkError(message.error)
    finally:
        for process in pipes.values():
            process.terminate()  # its files are written atomically: whole or absent
            process.join()


def _download_part(
    queue: deque[Location], sender: Any, loop: _Loop, seed: float, parent: int
) -> None:
    """A download process's body: fetch and write ``queue``, sending each outcome."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops this process
    _die_with(parent)
    _drop_inherited_connections()
    try:
        own = replace(loop, rng=random.Random(seed), running=lambda loc: None)
        _run_queue(queue, replace(own, finished=sender.send))  # outcomes go to the parent
    except GeeNetworkError:
        pass  # the parent has the outcome that says so
    except BaseException:  # noqa: BLE001 (sent to the parent, which raises it)
        sender.send(traceback.format_exc(limit=-3))
        raise
    finally:
        sender.close()


def _die_with(parent: int) -> None:
    """Have this process killed when ``parent`` dies (Linux ``PR_SET_PDEATHSIG``), so
    that no download goes on writing after its run was killed; gone already: exit."""
    if _PRCTL is not None:  # elsewhere the pipe to the parent breaks instead
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _drop_inherited_connections() -> None:
    """In a forked process: close the HTTPS connections inherited from the parent (the
    Earth Engine client's ``requests`` session pools them); the session opens its
    own on the next request, so two processes never share one TLS stream."""
    session = getattr(ee.data._get_state(), "requests_session", None)  # noqa: SLF001
    if session is not None:
        session.close()


def _record(manifest: Manifest, report: DownloadReport, outcome: _Outcome) -> None:
    loc = outcome.location
    row = manifest.get(loc.cell_key, loc.year)
    row.attempts += outcome.attempts
    report.retries += outcome.attempts - 1
    if outcome.ok:
        row.status, row.error, row.fallback = DONE, "", outcome.fallback
        row.clear = outcome.clear
        report.fetched += 1
    else:
        row.status, row.error = FAILED, outcome.error
        report.failed += 1
        report.errors[loc.file_name] = outcome.error
