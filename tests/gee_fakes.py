"""Offline Earth Engine for the ``test_gee_*`` tests and the download benchmark.

* :func:`offline_ee` initialises the client library with its own test support
  (``ee.apitestcase.ApiTestCase``: canned algorithm list, no credentials) and makes
  every network entry point the tests do not replace raise.
* :class:`FakeComputePixels` stands in for ``ee.data.computePixels``: it returns a
  structured array per request, optionally after a fixed latency, and fails on a
  schedule with quota (429) or server (500) errors.
* :class:`FakeTasks` stands in for Earth Engine export tasks (start/status).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import ee
import numpy as np
import requests
from ee import apitestcase
from googleapiclient.errors import HttpError

NETWORK_CALLS = (
    "computePixels",
    "exportImage",
    "exportTable",
    "getTaskStatus",
    "newTaskId",
    "getOperation",
    "listOperations",
    "computeValue",
)


class _Case(apitestcase.ApiTestCase):
    def runTest(self) -> None:  # unittest needs a test method to instantiate the case
        pass


def _refuse(name: str) -> Callable[..., Any]:
    def call(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError(f"test reached the network: ee.data.{name}")

    return call


def calls(node: Any, name: str) -> Iterator[dict]:
    """Arguments of every invocation of ``name`` anywhere in ``node``."""
    if isinstance(node, dict):
        inv = node.get("functionInvocationValue")
        if inv and inv.get("functionName") == name:
            yield inv["arguments"]
        for value in node.values():
            yield from calls(value, name)
    elif isinstance(node, list):
        for value in node:
            yield from calls(value, name)


@contextlib.contextmanager
def offline_ee() -> Iterator[None]:
    """Initialise ``ee`` offline; every network call not replaced by a test raises."""
    case = _Case()
    saved = {name: getattr(ee.data, name) for name in NETWORK_CALLS}
    case.setUp()
    for name in NETWORK_CALLS:
        setattr(ee.data, name, _refuse(name))
    try:
        yield
    finally:
        for name, func in saved.items():
            setattr(ee.data, name, func)
        case.tearDown()


def http_error(status: int, reason: str) -> HttpError:
    """A googleapiclient ``HttpError`` with ``status`` (as the transport raises them)."""

    class _Resp(dict):
        def __init__(self) -> None:
            super().__init__(status=str(status))
            self.status = status
            self.reason = reason

    return HttpError(_Resp(), f'{{"error": {{"message": "{reason}"}}}}'.encode())


def fake_pixels(names: list[str], size: int, key: str) -> np.ndarray:
    """A deterministic structured ``(size, size)`` array, one float32 field per band."""
    seed = int.from_bytes(hashlib.sha1(key.encode()).digest()[:4], "little")
    rng = np.random.default_rng(seed)
    arr = np.zeros((size, size), dtype=[(n, "<f4") for n in names])
    for name in names:
        arr[name] = rng.random((size, size), dtype=np.float32)
        corner = (slice(0, size // 4), slice(0, size // 4))
        if name.startswith("valid_"):  # masks: 1 data, 0 nodata (a corner without data)
            arr[name] = 1.0
            arr[name][corner] = 0.0
        elif name.startswith("clear_"):  # clear shares: constant per record
            arr[name] = 0.9
        elif name == "DW":  # class codes, and the nodata code where valid_DW is 0
            arr[name] = np.floor(arr[name] * 9)
            arr[name][corner] = 255.0
        elif name[:1] == "B" and "_" in name:  # Sentinel-2: nodata 0 where the mask is 0
            arr[name][corner] = 0.0
    return arr


def npy_reply(arr: np.ndarray) -> bytes:
    """The bytes Earth Engine sends for ``fileFormat="NPY"``: an ``.npy`` file."""
    buffer = io.BytesIO()
    np.save(buffer, arr)
    return buffer.getvalue()


class FakeComputePixels:
    """Replaces ``ee.data.computePixels``: the reply is ``.npy`` bytes when the request
    asks for ``fileFormat="NPY"`` (as the client library returns them), otherwise the
    structured array itself (what ``"NUMPY_NDARRAY"`` gives).

    Args:
        names: bands of every reply.
        size: reply shape ``(size, size)``.
        latency_s: sleep per call (benchmarks).
        failures: request key -> list of errors raised on its first calls, in order
            (``"429"``, ``"500"``, ``"503"``, ``"timeout"``, ``"offline"``, ``"permanent"``).
        fallback_code: value of the ``s2_fallback`` band when present in ``names``.
    """

    def __init__(
        self,
        names: list[str],
        size: int,
        *,
        latency_s: float = 0.0,
        failures: dict[str, list[str]] | None = None,
        fallback_code: float = 0.0,
    ) -> None:
        self.names, self.size, self.latency_s = names, size, latency_s
        self.failures = {k: list(v) for k, v in (failures or {}).items()}
        self.fallback_code = fallback_code
        self.calls: list[dict[str, Any]] = []
        self.keys: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()

    @staticmethod
    def key_of(params: dict[str, Any]) -> str:
        """The request's identity: the grid's projection (centred on the point)."""
        return params["grid"]["crsWkt"]

    def __call__(self, params: dict[str, Any]) -> np.ndarray | bytes:
        key = self.key_of(params)
        with self._lock:
            self.calls.append(params)
            self.keys.append(key)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            scheduled = self.failures.get(key)
            failure = scheduled.pop(0) if scheduled else None
        try:
            if self.latency_s:
                time.sleep(self.latency_s)
            if failure == "429":
                raise ee.EEException("Too Many Requests: quota exceeded, 429")
            if failure == "500":
                raise http_error(500, "Internal error")
            if failure == "503":  # what is left of a 503 after the library's own retries
                raise ee.EEException("The service is currently unavailable.")
            if failure == "offline":
                raise requests.exceptions.ConnectionError(
                    "HTTPSConnectionPool(host='earthengine.googleapis.com', port=443): Max "
                    "retries exceeded (Failed to establish a new connection: [Errno -3] "
                    "Temporary failure in name resolution)"
                )
            if failure == "timeout":
                raise TimeoutError("The read operation timed out")
            if failure == "permanent":
                raise ee.EEException("Image.select: Pattern 'B99' did not match any bands.")
            arr = fake_pixels(self.names, self.size, key)
            if "s2_fallback" in self.names:
                arr["s2_fallback"] = self.fallback_code
            return npy_reply(arr) if params.get("fileFormat") == "NPY" else arr
        finally:
            with self._lock:
                self.in_flight -= 1


class FakeTasks:
    """Export tasks in memory: ``start(task) -> task id``, ``statuses(ids)``.

    Each task runs for ``polls_to_finish`` status polls, then completes, or fails with
    ``error`` while its description is listed in ``fail_first`` (once per listing). The
    first status polls raise the errors of ``poll_errors`` and the first starts those
    of ``start_errors``, in order (the network failing under a running export).
    """

    def __init__(
        self,
        *,
        polls_to_finish: int = 2,
        fail_first: list[str] | None = None,
        poll_errors: list[BaseException] | None = None,
        start_errors: list[BaseException] | None = None,
    ) -> None:
        self.polls_to_finish = polls_to_finish
        self.fail_first = list(fail_first or [])
        self.poll_errors = list(poll_errors or [])
        self.start_errors = list(start_errors or [])
        self.tasks: dict[str, ee.batch.Task] = {}
        self.started: list[str] = []
        self.configs: dict[str, dict[str, Any]] = {}
        self._polls: dict[str, int] = {}
        self._fails: dict[str, bool] = {}
        self.max_active = 0

    def active(self) -> int:
        return sum(1 for t in self._polls if self._state(t) in ("READY", "RUNNING"))

    def _state(self, task_id: str) -> str:
        polls = self._polls[task_id]
        if polls < self.polls_to_finish:
            return "READY" if polls == 0 else "RUNNING"
        return "FAILED" if self._fails[task_id] else "COMPLETED"

    def start(self, task: ee.batch.Task) -> str:
        """Record ``task`` (an unstarted ``ee.batch.Task``) as started; return its id."""
        if self.start_errors:
            raise self.start_errors.pop(0)
        description, config = task.config["description"], task.config
        task_id = f"TASK{len(self.started):04d}"
        self.tasks[task_id] = task
        self.started.append(description)
        self.configs[task_id] = config
        self._polls[task_id] = 0
        if description in self.fail_first:
            self.fail_first.remove(description)
            self._fails[task_id] = True
        else:
            self._fails[task_id] = False
        self.max_active = max(self.max_active, self.active())
        return task_id

    def statuses(self, task_ids: list[str]) -> dict[str, dict[str, str]]:
        if self.poll_errors:
            raise self.poll_errors.pop(0)
        out = {}
        for task_id in task_ids:
            self._polls[task_id] += 1
            state = self._state(task_id)
            out[task_id] = {"id": task_id, "state": state}
            if state == "FAILED":
                out[task_id]["error_message"] = "Earth Engine memory capacity exceeded."
        return out
