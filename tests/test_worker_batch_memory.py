"""Loader workers reuse their shared batch memory (``utils.worker_memory``) only once the
main process holds nothing made from it: held batches, views and NumPy arrays are never
overwritten; batches equal those of fresh shared memory (torch's way, itself checked
against ``default_collate`` in test_loader_batches.py) bit for bit; released memory is in
fact reused (the same shared-memory file comes back); epoch ends, re-iteration,
persistent workers, a worker's error and a loader deleted mid-epoch neither leak nor hang.
"""

from __future__ import annotations

import gc
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from batch_compare import assert_same_batches, copied
from shards_factory import write_tiny_shards
from torch.utils.data import RandomSampler

from utils import hdf5_schema as hs
from utils.dataloader import ShardDataset, make_loader
from utils.worker_memory import KINDS, PooledBatch, ReleaseBoard, ReusingLoader, WorkerPool

SIZE, CROP, BATCH = 10, 7, 2
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps"),
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 45 samples, batch 2: 23 batches an epoch (the last one short), ~12 per worker
    path = write_tiny_shards(
        tmp_path_factory.mktemp("shards"), sizes={"train": 45}, size=SIZE, shard_size=16
    )
    for shard in sorted((path / "train").glob("*.h5")):  # valid-pixel masks: a 2nd kind
        with h5py.File(shard, "a") as f:
            n = f[hs.DATA].shape[0]
            mask = np.random.default_rng(n).integers(0, 2, (n, 5, SIZE, SIZE), dtype=np.uint8)
            f.create_dataset(hs.MASK, data=mask, chunks=(1, 5, SIZE, SIZE))
    return path


def _dataset(root: Path, **options: object) -> ShardDataset:
    return ShardDataset(root, "train", crop=CROP, train=True, augment=True, **options)


def _loader(dataset: ShardDataset, reuse: bool = True, **options: object) -> object:
    options.setdefault("multiprocessing_context", "fork")
    return make_loader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        seed=4,
        num_workers=2,
        reuse_worker_memory=reuse,
        **options,
    )


def _shm_file(tensor: torch.Tensor) -> tuple[str, str]:
    """(device, inode) of the shared-memory file mapped where ``tensor`` lives."""
    address = tensor.data_ptr()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            low, high = (int(x, 16) for x in fields[0].split("-"))
            if low <= address < high:
                return fields[3], fields[4]
    raise AssertionError("no mapping holds the tensor")


def _epoch(loader: object) -> tuple[list, list]:
    """Copies of an epoch's batches (the batches themselves released at once) and the
    shared-memory file and address of each batch's image."""
    copies, files = [], []
    for batch in loader:
        files.append((*_shm_file(batch["image"]), batch["image"].data_ptr()))
        copies.append(copied(batch))
    return copies, files


def test_batches_equal_fresh_memory_and_released_memory_is_reused(root: Path) -> None:
    ds = _dataset(root, with_mask=True)  # two pool kinds: images and masks
    torch.manual_seed(5)
    reused, files = _epoch(_loader(ds))
    torch.manual_seed(5)
    fresh, fresh_files = _epoch(_loader(ds, reuse=False))
    assert_same_batches(reused, fresh)
    assert reused[-1]["image"].shape[0] == 45 % BATCH  # the short last batch too
    assert len(set(fresh_files)) == len(fresh)  # torch's way: a new file a batch
    shm_files = {file[:2] for file in files}
    assert len(shm_files) <= 2 * (2 + 2) < len(reused)  # at most 4 a worker, reused
    assert len(set(files)) == len(shm_files)  # each file at one address here


def test_held_batches_views_and_arrays_are_never_overwritten(root: Path) -> None:
    held, copies, held_files = [], [], set()
    for step, batch in enumerate(_loader(_dataset(root))):
        file = _shm_file(batch["image"])
        assert file not in held_files  # never in the memory of a batch still held
        if step % 4 == 0:  # the whole batch
            kept = batch
        elif step % 4 == 1:  # a view of its image
            kept = {"image": batch["image"][1:]}
        elif step % 4 == 2:  # a NumPy array of it
            kept = {"image": torch.from_numpy(batch["image"].numpy())}
        else:
            continue
        held.append(kept)
        copies.append({"image": kept["image"].clone()})
        held_files.add(file)
    assert len(held) >= 12
    for kept, copy in zip(held, copies, strict=True):
        assert torch.equal(kept["image"], copy["image"])


def test_a_sliding_window_of_held_batches_over_a_long_epoch(root: Path) -> None:
    ds = _dataset(root)
    sampler = RandomSampler(ds, num_samples=400, generator=torch.Generator().manual_seed(0))
    loader = make_loader(ds, batch_size=BATCH, sampler=sampler, num_workers=2)
    rng = np.random.default_rng(0)
    window, files = [], set()
    for batch in loader:  # keep the last 0-6 batches (whole, a view or an array)
        files.add(_shm_file(batch["image"]))
        kept = [batch["image"], batch["image"][:1], batch["image"].numpy()][rng.integers(3)]
        window.append((kept, torch.as_tensor(kept).clone()))
        while len(window) > rng.integers(7):
            kept, copy = window.pop(0)
            assert torch.equal(torch.as_tensor(kept), copy)
    for kept, copy in window:
        assert torch.equal(torch.as_tensor(kept), copy)
    assert len(files) < 100  # 200 batches: most of them in reused memory


def test_the_pool_frees_what_a_batch_does_not_hold() -> None:
    flags = np.zeros(2 * KINDS, np.uint8)
    pool = WorkerPool(flags, board_id=0, worker_id=0)
    kind = ((3,), "<f4")
    lost = pool.empty((2, 3), torch.float32, kind)  # a batch whose fetch failed
    image = pool.empty((2, 3), torch.float32, kind)
    assert flags[:2].tolist() == [1, 1] and pool.fresh == 2
    tagged = pool.tag({"image": image, "label": torch.zeros(2)})
    assert isinstance(tagged, PooledBatch) and tagged.entries == [(("image",), 1)]
    assert flags[:2].tolist() == [0, 1]  # the lost one is free again
    del lost
    again = pool.empty((1, 3), torch.float32, kind)  # a short batch: a prefix of slot 0
    assert flags[0] == 1 and pool.fresh == 2
    assert again.untyped_storage().data_ptr() == pool.storages[0].data_ptr()
    pool.empty((2, 3), torch.float32, kind)
    assert pool.fresh == 3 and flags[1] == 1  # none free: fresh, unpooled


def test_the_board_frees_a_slot_once_nothing_holds_its_storage() -> None:
    board = ReleaseBoard(num_workers=1, per_kind=2)
    batch = torch.zeros(3, 4)
    board.flags[0, 1] = 1
    board.received(0, [(1, batch)])
    view, array, storage = batch[1:], batch.numpy(), batch.untyped_storage()
    del batch
    for holder in ("view", "array", "storage"):
        assert board.release() == 1 and board.flags[0, 1] == 1, holder
        if holder == "view":
            del view
        elif holder == "array":
            del array
        else:
            del storage
    assert board.release() == 0 and board.flags[0, 1] == 0


def test_epochs_reiteration_and_persistent_workers(root: Path) -> None:
    ds = _dataset(root)
    torch.manual_seed(1)
    plain = _loader(ds, reuse=False)
    expected = [_epoch(plain)[0] for _ in range(2)]
    torch.manual_seed(1)
    loader = _loader(ds)
    assert isinstance(loader, ReusingLoader)
    got = [_epoch(loader)[0] for _ in range(2)]  # new workers, new pools each epoch
    for a, b in zip(got, expected, strict=True):
        assert_same_batches(a, b)
    persistent = _loader(ds, persistent_workers=True)
    fresh = _loader(ds, persistent_workers=True, reuse=False)
    for epoch in range(3):
        if epoch == 1:  # stop early: the next epoch drops what was prefetched
            for loader_ in (persistent, fresh):
                it = iter(loader_)
                next(it), next(it)
            continue
        reused, files = _epoch(persistent)
        assert_same_batches(reused, _epoch(fresh)[0])
        assert len(set(files)) < len(reused)


class _Failing(ShardDataset):
    """Raises in ``__getitems__`` after its batch memory was taken, for one index."""

    bad = 7

    def _fill(self, index: int, image: object, mask: object) -> dict:
        if index == self.bad:
            raise RuntimeError("damaged sample")
        return super()._fill(index, image, mask)


def test_a_worker_error_and_a_loader_deleted_mid_epoch(root: Path) -> None:
    ds = _Failing(root, "train", crop=CROP, train=True, augment=True)
    loader = _loader(ds)  # (persistent workers: torch then takes 10 s to shut down)
    for _ in range(2):  # the rest of the epoch still comes (the pool: test_the_pool_...)
        received, failed = 0, 0
        it = iter(loader)
        while True:
            try:
                next(it)
                received += 1
            except RuntimeError as err:
                assert "damaged sample" in str(err)
                failed += 1
            except StopIteration:
                break
        assert (received, failed) == (22, 1)
    loader = _loader(_dataset(root))
    it = iter(loader)
    kept = [next(it) for _ in range(5)]
    copies = [copied(b) for b in kept]
    workers = list(it._workers)
    del it, loader
    gc.collect()
    for worker in workers:
        worker.join(timeout=30)
        assert not worker.is_alive()
    assert_same_batches(kept, copies)  # still valid after the workers exited


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_spawned_workers_reuse_too(root: Path, start: str) -> None:
    ds = _dataset(root)
    torch.manual_seed(2)
    spawned, files = _epoch(_loader(ds, multiprocessing_context=start))
    torch.manual_seed(2)
    assert_same_batches(spawned, _epoch(_loader(ds, reuse=False))[0])
    assert len(set(files)) < len(spawned)


def test_file_system_sharing_falls_back_to_fresh_memory(root: Path) -> None:
    before = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")
    try:
        ds = _dataset(root)
        torch.manual_seed(3)
        got, files = _epoch(_loader(ds))
        torch.manual_seed(3)
        assert_same_batches(got, _epoch(_loader(ds, reuse=False))[0])
    finally:
        torch.multiprocessing.set_sharing_strategy(before)
    assert len(set(files)) == len(got)  # no pool: a new file a batch
