"""Shared batch memory that DataLoader workers reuse once the main process lets go of it.

A worker's batch reaches the main process through shared memory: torch sends the
storage's file descriptor and the main process maps the same pages (no copy). Fresh
shared memory costs a page fault and the zeroing of every 4 KiB page the worker writes
(at 225 px about 3 ms a sample, more than the sample's copy), so each worker keeps a
small pool of shared storages and writes a batch into one the main process no longer
uses. The release signal:

* before the workers start, the main process's :class:`ReleaseBoard` creates a small
  shared flag array, one byte per (worker, pool slot): 1 busy, 0 free. Workers get it
  from the loader's ``worker_init_fn`` (:class:`PoolInstaller`: inherited by fork,
  sent as a shared tensor to spawned workers), which installs a :class:`WorkerPool`;
* a worker takes a free slot for a batch (marks it busy) or allocates a fresh storage;
  the collated batch goes out wrapped in a :class:`PooledBatch` that names the slots
  of its storages; storages handed out but not in the batch are freed at once;
* when the main process unpickles a :class:`PooledBatch` (the main thread, or the pin
  thread with ``pin_memory``), its :class:`ReleaseBoard` keeps each pooled storage; the
  loader's iterator (:class:`ReusingIterator`) frees a slot, on every ``next()``, only
  once nothing else refers to its storage: no tensor, view, NumPy array or pinned
  source made from it (the storage's C++ use count) and no Python reference to the
  storage object (its reference count). It hands the user the bare batch, so the batch
  format is unchanged.

Keeping the storage keeps its mapping in the main process, and torch's fd cache
(``torch.multiprocessing.reductions.shared_cache``: weak references keyed by the shm
file's inode) then hands the same storage back when the worker sends it again: no new
``mmap``, page faults or ``munmap`` there either. Pooling needs the
``file_descriptor`` sharing strategy (Linux's default); under ``file_system`` workers
fall back to fresh memory.
"""

from __future__ import annotations

import itertools
import sys
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

#: Pool kinds (batch shapes and dtypes, e.g. images and masks) one worker reuses.
KINDS = 2
_board_ids = itertools.count(1)
_boards: weakref.WeakValueDictionary[int, ReleaseBoard] = weakref.WeakValueDictionary()
_pool: WorkerPool | None = None  # set in a worker process by PoolInstaller


def fresh_shared(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor in new shared memory (what ``default_collate`` uses in a
    worker, so that sending it copies nothing)."""
    storage = torch.UntypedStorage._new_shared(_nbytes(shape, dtype))
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return max(1, int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size())


def _tensors(obj: Any, path: tuple = ()) -> Iterator[tuple[tuple, torch.Tensor]]:
    """(path, tensor) of every tensor in nested mappings, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _tensors(value, (*path, key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, (*path, i))


def _at(obj: Any, path: tuple) -> Any:
    for key in path:
        obj = obj[key]
    return obj


class WorkerPool:
    """One worker's shared storages and its row of the board's flags.

    Args:
        flags: this worker's flags (a NumPy view of the shared board), one per slot.
        board_id: the main process's board, named in every :class:`PooledBatch`.
        worker_id: this worker's id.
    """

    def __init__(self, flags: np.ndarray, board_id: int, worker_id: int) -> None:
        self.flags, self.board_id, self.worker_id = flags, board_id, worker_id
        self.storages: list[torch.UntypedStorage | None] = [None] * len(flags)
        self.per_kind = len(flags) // KINDS
        self._kinds: dict[tuple, range] = {}
        self._handed: dict[int, int] = {}  # data_ptr -> slot, since the last batch
        self.fresh = 0  # storages allocated (pooled or not): the test's count

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, kind: tuple) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` in a free pooled storage of ``kind``,
        else in fresh shared memory (a new pool slot while the kind has one)."""
        need = _nbytes(shape, dtype)
        slots = self._kinds.get(kind)
        if slots is None and len(self._kinds) < KINDS:
            start = len(self._kinds) * self.per_kind
            slots = self._kinds[kind] = range(start, start + self.per_kind)
        slot = None if slots is None else self._slot(slots, need)
        self.fresh += slot is None or self.storages[slot] is None
        if slot is None:
            return fresh_shared(shape, dtype)
        if self.storages[slot] is None:
            self.storages[slot] = torch.UntypedStorage._new_shared(need)
        storage = self.storages[slot]
        self.flags[slot] = 1
        self._handed[storage.data_ptr()] = slot
        return torch.empty(0, dtype=dtype).set_(storage, 0, shape)

    def _slot(self, slots: range, need: int) -> int | None:
        """The smallest free storage that fits, else an empty slot, else a free one
        too small (dropped), else None."""
        free = [s for s in slots if self.flags[s] == 0]
        sizes = {s: st.nbytes() for s in free if (st := self.storages[s]) is not None}
        fits = [s for s, size in sizes.items() if size >= need]
        if fits:
            return min(fits, key=sizes.__getitem__)
        empty = [s for s in slots if self.storages[s] is None]
        if empty:
            return empty[0]
        if free:
            self.storages[free[0]] = None  # too small (a short last batch's): replaced
            return free[0]
        return None

    def tag(self, batch: Any) -> Any:
        """``batch`` as a :class:`PooledBatch` naming the slots of its pooled storages;
        pooled storages handed out since the last batch but not in it are freed (the
        items that held them die with the fetch)."""
        entries, seen = [], set()
        for path, tensor in _tensors(batch):
            ptr = tensor.untyped_storage().data_ptr()
            slot = self._handed.get(ptr)
            if slot is not None and ptr not in seen:
                seen.add(ptr)
                entries.append((path, slot))
        for ptr, slot in self._handed.items():
            if ptr not in seen:
                self.flags[slot] = 0
        self._handed = {}
        if not entries:
            return batch
        return PooledBatch(batch, self.board_id, self.worker_id, entries)


def worker_pool() -> WorkerPool | None:
    """This worker process's pool, or None (no pool: the main process, a plain
    DataLoader's worker, or the ``file_system`` sharing strategy)."""
    return _pool


class PooledBatch:
    """A worker's batch and the pool slots of its storages, on its way to the main
    process; :class:`ReusingIterator` hands on ``batch`` alone.

    Unpickling it in the main process hands each pooled storage to the loader's
    :class:`ReleaseBoard`.
    """

    def __init__(self, batch: Any, board_id: int, worker_id: int, entries: list) -> None:
        self.batch, self.board_id, self.worker_id, self.entries = (
            batch,
            board_id,
            worker_id,
            entries,
        )

    def __reduce__(self) -> tuple:
        return (_arrived, (self.batch, self.board_id, self.worker_id, self.entries))

    def pin_memory(self) -> PooledBatch:
        """The batch in pinned memory (the loader's pin thread); the shared tensors die
        with this object, so their slots are freed at the next check."""
        from torch.utils.data._utils.pin_memory import pin_memory  # noqa: PLC0415

        return PooledBatch(pin_memory(self.batch), self.board_id, self.worker_id, [])


def _arrived(batch: Any, board_id: int, worker_id: int, entries: list) -> PooledBatch:
    board = _boards.get(board_id)
    if board is not None:
        board.received(worker_id, [(slot, _at(batch, path)) for path, slot in entries])
    return PooledBatch(batch, board_id, worker_id, [])


def _idle_refs() -> int:
    """``sys.getrefcount`` of a dict's value held by nothing else (2 on CPython 3.11)."""
    probe = {0: torch.UntypedStorage(1)}
    return sys.getrefcount(probe[0])


_IDLE_REFS = _idle_refs()


class ReleaseBoard:
    """The main process's side: the shared flags of every worker's pool slots and the
    pooled storages received, kept mapped in this process.

    A pooled storage received is kept (one reference), so its mapping stays and torch's
    fd cache hands the same storage back when the worker sends it again: no new
    ``mmap``, no page faults, no ``munmap`` in this process. Its slot is freed once
    nothing else refers to it: no tensor, view or NumPy array made from it (the
    storage's C++ use count is 1) and no Python reference to the storage object
    itself (its reference count).

    Args:
        num_workers: the loader's workers.
        per_kind: pool slots a worker keeps for each batch kind.
    """

    def __init__(self, num_workers: int, per_kind: int) -> None:
        self.id = next(_board_ids)
        self.flags = torch.zeros((num_workers, per_kind * KINDS), dtype=torch.uint8)
        self.flags.share_memory_()
        self._flags = self.flags.numpy()
        self._kept: dict[tuple[int, int], torch.UntypedStorage] = {}
        self._pending: set[tuple[int, int]] = set()  # received, not yet released
        self._lock = threading.Lock()  # the pin thread unpickles, the main thread checks
        _boards[self.id] = self

    def received(self, worker_id: int, slots: list[tuple[int, torch.Tensor]]) -> None:
        """Keep the storages of a batch just received from ``worker_id``."""
        with self._lock:
            for slot, tensor in slots:
                self._kept[worker_id, slot] = tensor.untyped_storage()
                self._pending.add((worker_id, slot))

    def _idle(self, key: tuple[int, int]) -> bool:
        return (
            sys.getrefcount(self._kept[key]) == _IDLE_REFS
            and torch._C._storage_Use_Count(self._kept[key]._cdata) == 1
        )

    def release(self) -> int:
        """Free the slots whose storage nothing in this process uses any more; returns
        how many are still in use."""
        with self._lock:
            for key in [key for key in self._pending if self._idle(key)]:
                self._flags[key] = 0
                self._pending.discard(key)
            return len(self._pending)


class PoolInstaller:
    """A loader's ``worker_init_fn``: installs a :class:`WorkerPool` in each worker, on
    the board :class:`ReusingLoader` sets before its workers start."""

    def __init__(self, then: Callable[[int], None] | None = None) -> None:
        self.then = then  # the caller's own worker_init_fn, run after
        self.board_id: int | None = None
        self.flags: torch.Tensor | None = None

    def __call__(self, worker_id: int) -> None:
        global _pool
        _pool = None
        strategy = torch.multiprocessing.get_sharing_strategy()
        if self.flags is not None and strategy == "file_descriptor":
            _pool = WorkerPool(self.flags[worker_id].numpy(), self.board_id, worker_id)
        if self.then is not None:
            self.then(worker_id)


class ReusingIterator(_MultiProcessingDataLoaderIter):
    """torch's multi-process iterator that frees released pool slots on every step and
    strips :class:`PooledBatch` (the user gets the batch as collated)."""

    def __init__(self, loader: DataLoader, board: ReleaseBoard) -> None:
        self.board = board
        super().__init__(loader)

    def _next_data(self) -> Any:
        self.board.release()
        data = super()._next_data()
        return data.batch if isinstance(data, PooledBatch) else data

    def _process_data(self, data: Any, worker_idx: int) -> Any:
        self.board.release()  # before the next index goes out (pinned batches are free)
        return super()._process_data(data, worker_idx)


class ReusingLoader(DataLoader):
    """A DataLoader whose workers reuse their shared batch memory (see the module doc);
    made by :func:`utils.dataloader.make_loader`. Without workers, a plain DataLoader."""

    def __init__(self, *args: Any, worker_init_fn: Callable | None = None, **kwargs: Any) -> None:
        super().__init__(*args, worker_init_fn=PoolInstaller(worker_init_fn), **kwargs)

    def _get_iterator(self) -> Any:
        if self.num_workers == 0:
            return super()._get_iterator()
        self.check_worker_number_rationality()
        board = ReleaseBoard(self.num_workers, per_kind=self.prefetch_factor + 2)
        self.worker_init_fn.board_id, self.worker_init_fn.flags = board.id, board.flags
        return ReusingIterator(self, board)


__all__ = [
    "PoolInstaller",
    "PooledBatch",
    "ReleaseBoard",
    "ReusingIterator",
    "ReusingLoader",
    "WorkerPool",
    "fresh_shared",
    "worker_pool",
]
