"""Where the conversion's tasks run: in this process, in a local process pool, or on a
Dask cluster, behind one :class:`concurrent.futures.Executor` interface.

``split_and_batch`` has two kinds of task, both plain module-level functions of files
on disk: staging one part of the inputs (pass 1) and writing one shard (pass 2). The same
functions run everywhere; only the executor changes:

* locally (the default), parts are staged one after the other in this process, each by
  ``workers`` reader threads, and shards are written by a pool of ``workers`` processes
  (h5py holds one global lock, so threads would write one shard at a time);
* on Dask (a scheduler address or a ``distributed.Client``), parts and shards are tasks
  of the cluster, one reader thread each. Every path (inputs, output folder, staging)
  must then be on storage that every worker sees, at the same path.

Results are taken in submission order, so the outputs do not depend on where or in
which order the tasks ran. ``dask.distributed`` is imported only when a scheduler or a
client is given.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


class InlineExecutor(Executor):
    """An executor that runs each task at once, in the calling thread (no pool); a task's
    error is raised by ``submit`` itself, so nothing after it runs."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` now; the returned future holds its result."""
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def _process_context() -> multiprocessing.context.BaseContext:
    """``fork`` on Linux (a worker starts in milliseconds, with the modules already
    imported; the pool is made when this process holds no open HDF5 file), else the
    platform's default (``spawn`` on macOS and Windows)."""
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


@dataclass
class TaskRunner:
    """The executors of one run.

    Attributes:
        workers: local reader threads per part and shard-writer processes.
        client: the ``distributed.Client`` of a cluster, or ``None`` (local run).
    """

    workers: int
    client: Any = None

    @property
    def remote(self) -> bool:
        """Whether the tasks run on a Dask cluster."""
        return self.client is not None

    @property
    def part_threads(self) -> int:
        """Reader threads inside one staging task (1 on a cluster: its workers' threads
        are the parallelism there)."""
        return 1 if self.remote else self.workers

    @contextmanager
    def executor(self, tasks: int, *, processes: bool) -> Iterator[Executor]:
        """The executor for ``tasks`` tasks: the cluster's; locally a pool of
        ``workers`` processes when ``processes`` and there is more than one task and
        worker, else :class:`InlineExecutor`."""
        if self.remote:
            pool = self.client.get_executor(pure=False)
        elif processes and tasks > 1 and self.workers > 1:
            pool = ProcessPoolExecutor(min(self.workers, tasks), mp_context=_process_context())
        else:
            pool = InlineExecutor()
        with pool:
            yield pool


@contextmanager
def task_runner(
    workers: int, scheduler: str | None = None, client: Any = None
) -> Iterator[TaskRunner]:
    """The :class:`TaskRunner` of a run: local, or on the Dask cluster of ``client`` (kept
    open) or of the ``scheduler`` address (a client connected here, closed at the end).

    Raises:
        ImportError: a scheduler or client is given but ``distributed`` is not installed.
    """
    if client is None and scheduler is None:
        yield TaskRunner(workers)
        return
    if client is not None:
        yield TaskRunner(workers, client)
        return
    try:
        from distributed import Client  # noqa: PLC0415 - only for a cluster run
    except ImportError as err:  # pragma: no cover - distributed is pinned
        raise ImportError(
            f"scheduler={scheduler!r} needs dask.distributed: pip install -r requirements.txt"
        ) from err
    with Client(scheduler) as connected:
        yield TaskRunner(workers, connected)
