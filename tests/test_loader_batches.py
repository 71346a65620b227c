"""Batches written in place (``ShardDataset.__getitems__`` + ``collate_batch``) equal
the per-item path's (``default_collate`` of ``dataset[i]``) bit for bit, in the main
process and in loader workers, for every layout and shard codec; a reused batch buffer
is never overwritten while any tensor, view or array of it is alive; raw items prepared
on the device (``prepare_on="device"``) equal the items and train the same weights."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from batch_compare import assert_same_batches, copied
from shards_factory import write_tiny_shards
from torch.utils.data import DataLoader, default_collate

from bench.bench_loader import PerItem  # the batching before: one item at a time
from utils import hdf5_schema as hs
from utils.batch_transforms import BatchCropFlip
from utils.batching.shard_writer import ChunkCodec, write_chunk
from utils.checkpoint import load_checkpoint
from utils.dataloader import (
    BatchMemory,
    ShardDataset,
    build_datasets,
    collate_batch,
    make_loader,
)
from utils.fast_chunks import chunk_plan, read_sample
from utils.models import build_model
from utils.study.study import MemoryCachedDataset, study_datasets
from utils.train import TrainConfig, fit

SIZE, CROP = 10, 7


def _add_masks(root: Path) -> None:
    for path in sorted((root / "train").glob("*.h5")):
        with h5py.File(path, "a") as f:
            n = f[hs.DATA].shape[0]
            mask = np.random.default_rng(n).integers(0, 2, (n, 5, SIZE, SIZE), dtype=np.uint8)
            f.create_dataset(hs.MASK, data=mask, chunks=(1, 5, SIZE, SIZE), compression="gzip")


def _recode(root: Path, dtype: str, compression: str) -> None:
    """Store the train ``data`` of ``root`` again with another shard codec."""
    for path in sorted((root / "train").glob("*.h5")):
        with h5py.File(path, "a") as f:
            samples = f[hs.DATA][:]
            codec = ChunkCodec(samples.shape[1:], dtype=dtype, compression=compression)
            del f[hs.DATA]
            data = f.create_dataset(hs.DATA, shape=samples.shape, **codec.dataset_options())
            for i, sample in enumerate(samples):
                write_chunk(data, i, codec.encode(sample), codec)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = write_tiny_shards(
        tmp_path_factory.mktemp("shards"), sizes={"train": 11}, size=SIZE, shard_size=4
    )
    _add_masks(path)
    return path


def _pair(dataset: ShardDataset, workers: int, batch: int = 4) -> tuple[list, list]:
    """Batches of the new loader and of the per-item loader, same seed and workers."""
    kwargs = {"batch_size": batch, "shuffle": True, "num_workers": workers}
    if workers:
        kwargs["multiprocessing_context"] = "fork"
    new = make_loader(dataset, seed=3, **kwargs)
    old = DataLoader(
        PerItem(dataset),
        generator=torch.Generator().manual_seed(3),
        collate_fn=default_collate,
        **kwargs,
    )
    torch.manual_seed(5)  # the items' draws: torch's RNG here, per worker with workers
    batches = [copied(b) for b in new]
    torch.manual_seed(5)
    return batches, [copied(b) for b in old]


@pytest.mark.parametrize(
    ("options", "workers"),
    [
        ({"crop": CROP, "train": True, "augment": True, "with_mask": True}, 0),
        ({"crop": CROP, "train": True, "augment": True, "channels": "rgb"}, 0),
        ({"crop": None, "train": True, "dw_mode": "channel", "layout": "time"}, 0),
        ({"crop": CROP, "train": False, "dw_mode": "none", "with_mask": True}, 0),
        ({"crop": CROP, "train": True, "augment": True, "with_mask": True}, 2),
        ({"crop": CROP, "train": True, "augment": True, "layout": "time"}, 2),
    ],
)
def test_batches_equal_the_per_item_batches(root: Path, options: dict, workers: int) -> None:
    new, old = _pair(ShardDataset(root, "train", **options), workers)
    assert_same_batches(new, old)
    assert new[-1]["image"].shape[0] == 11 % 4  # the short last batch too


@pytest.mark.parametrize(("dtype", "compression"), [("float32", "none"), ("float16", "gzip")])
def test_batches_equal_for_other_shard_codecs(tmp_path: Path, dtype: str, compression: str) -> None:
    root = write_tiny_shards(tmp_path, sizes={"train": 9}, size=SIZE, shard_size=4)
    _recode(root, dtype, compression)
    with h5py.File(root / "train" / hs.shard_name("train", 0), "r") as f:
        assert f[hs.DATA].dtype == dtype
        assert chunk_plan(f[hs.DATA]) == ((False, False) if compression == "none" else (True, True))
        view = read_sample(f[hs.DATA], 1, writable=False)
        assert view.tobytes() == f[hs.DATA][1].tobytes()
        assert read_sample(f[hs.DATA], 1).flags.writeable
    ds = ShardDataset(root, "train", crop=CROP, train=True, augment=True)
    assert_same_batches(*_pair(ds, 0))


def test_time_layout_is_the_stacked_item_on_the_grid(root: Path) -> None:
    stacked = ShardDataset(root, "train", crop=CROP, train=True, augment=True)
    timed = ShardDataset(root, "train", crop=CROP, train=True, augment=True, layout="time")
    for index in range(len(stacked)):
        torch.manual_seed(index)
        expected = stacked[index]["image"][torch.as_tensor(timed._time_index)]
        torch.manual_seed(index)
        assert torch.equal(timed.__getitems__([index])[0]["image"], expected)


def test_a_loader_batch_is_written_in_place(root: Path) -> None:
    ds = ShardDataset(root, "train", crop=CROP, with_mask=True)
    items = ds.__getitems__([3, 0, 5])
    batch = collate_batch(items)
    for key in ("image", "mask"):
        assert batch[key].data_ptr() == items[0][key].data_ptr()  # no copy
        assert torch.equal(batch[key], torch.stack([item[key] for item in items]))
    assert batch["index"].tolist() == [3, 0, 5]
    apart = [ds[3], ds[0]]  # separate tensors: stacked as default_collate does
    stacked = collate_batch(apart)
    assert stacked["image"].data_ptr() != apart[0]["image"].data_ptr()
    assert torch.equal(stacked["image"], default_collate(apart)["image"])
    swapped = collate_batch(items[::-1])  # rows of one tensor, out of order: a copy
    assert torch.equal(swapped["image"], torch.stack([it["image"] for it in items[::-1]]))


def test_batch_memory_is_reused_only_when_released() -> None:
    memory = BatchMemory()
    first = memory.empty((3, 2, 4))
    address = first.data_ptr()
    assert memory.empty((3, 2, 4)).data_ptr() != address  # first is still held
    view = first[1]
    array = first.numpy()
    del first
    for holder in ("view", "array"):
        assert memory.empty((3, 2, 4)).data_ptr() != address, holder
        if holder == "view":
            del view
        else:
            del array
    assert memory.empty((2, 2, 4)).data_ptr() == address  # released: reused (a prefix)


def test_a_held_batch_is_never_overwritten(root: Path) -> None:
    ds = ShardDataset(root, "train", crop=CROP, train=True, augment=True, with_mask=True)
    loader = make_loader(ds, batch_size=2, shuffle=True, seed=1)
    kept, copies, addresses = [], [], set()
    for step, batch in enumerate(loader):
        addresses.add(batch["image"].data_ptr())
        if step == 0:  # the whole batch
            kept.append(batch)
        elif step == 1:  # only a view of its image
            kept.append({"image": batch["image"][1:], "mask": batch["mask"][:1]})
        elif step == 2:  # only NumPy arrays of it
            kept.append({k: torch.from_numpy(batch[k].numpy()) for k in ("image", "mask")})
        if step < 3:
            copies.append({k: kept[-1][k].clone() for k in ("image", "mask")})
    for held, copy in zip(kept, copies, strict=True):
        for key in ("image", "mask"):
            assert torch.equal(held[key], copy[key]), key
    assert len(addresses) < len(loader)  # released batches were reused


def test_worker_batches_stay_valid_while_held(root: Path) -> None:
    ds = ShardDataset(root, "train", crop=CROP, train=True, augment=True)
    loader = make_loader(ds, batch_size=2, shuffle=True, num_workers=2, seed=2)
    held = list(loader)
    again = [copied(b) for b in make_loader(ds, batch_size=2, shuffle=True, num_workers=2, seed=2)]
    assert_same_batches(held, again)
    assert len({b["image"].data_ptr() for b in held}) == len(held)  # one buffer each


def test_a_memory_cached_dataset_batches_its_cache(root: Path) -> None:
    cached = MemoryCachedDataset(ShardDataset(root, "train", crop=None))
    assert not hasattr(cached, "__getitems__")  # the wrapped dataset's would skip the cache
    cached.fill()
    cached._items[0]["image"].fill_(7.0)
    batch = next(iter(make_loader(cached, batch_size=3)))
    assert torch.all(batch["image"][0] == 7.0) and not torch.all(batch["image"][1] == 7.0)


@pytest.mark.parametrize(
    ("options", "codec"),
    [
        ({"dw_mode": "onehot"}, None),
        ({"dw_mode": "channel", "channels": "rgb"}, None),
        ({"dw_mode": "none", "layout": "time"}, None),
        ({"dw_mode": "onehot", "layout": "time"}, ("float16", "none")),
        ({"dw_mode": "onehot"}, ("float32", "none")),
    ],
)
def test_raw_items_prepared_on_the_device_equal_the_items(
    tmp_path: Path, options: dict, codec: tuple | None
) -> None:
    root = write_tiny_shards(tmp_path, sizes={"train": 6}, size=SIZE, shard_size=4)
    with h5py.File(root / "train" / hs.shard_name("train", 0), "a") as f:
        data = f[hs.DATA][:]
        data[0, -1, 0, :3] = np.nan  # nodata DW codes: no class
        data[:, -1, 4, 4:6] = [2.5, 3.5]  # inside every crop: rounded half to even (np.rint)
        f[hs.DATA][:] = data
    if codec:
        _recode(root, *codec)
    kwargs = {"crop": CROP, "train": True, "augment": True, **options}
    cooked, raw = (
        ShardDataset(root, "train", **kwargs),
        ShardDataset(root, "train", raw=True, **kwargs),
    )
    prepare = raw.batch_preparer()
    for index in range(len(raw)):
        torch.manual_seed(index)
        item = raw.__getitems__([index])[0]["image"]
        assert item.shape == raw.raw_shape and item.numpy().dtype == raw.source_dtype
        torch.manual_seed(index)
        expected = cooked[index]["image"]
        assert prepare(item[None])[0].numpy().tobytes() == expected.numpy().tobytes()
    whole = {"crop": None, "train": True, **{k: v for k, v in options.items()}}
    raw_batch = torch.stack(
        [ShardDataset(root, "train", raw=True, **whole)[i]["image"] for i in range(6)]
    )
    batch = torch.stack([ShardDataset(root, "train", **whole)[i]["image"] for i in range(6)])
    on_device = BatchCropFlip(CROP, seed=4, prepare=prepare)(raw_batch)
    assert on_device.numpy().tobytes() == BatchCropFlip(CROP, seed=4)(batch).numpy().tobytes()


@pytest.mark.filterwarnings("ignore:.*optimizer steps")
@pytest.mark.parametrize("augment_on", ["cpu", "device"])
def test_prepare_on_device_trains_the_same_weights(tmp_path: Path, augment_on: str) -> None:
    shards = write_tiny_shards(tmp_path / "shards", size=12, seed=0)
    values = {
        "shards_dir": str(shards),
        "model": "tiny_cnn",
        "crop": 10,
        "epochs": 2,
        "batch_size": 8,
        "augment": True,
        "augment_on": augment_on,
        "progress": False,
        "tensorboard": False,
    }
    seen: list[tuple[torch.dtype, tuple[int, ...]]] = []
    runs = {}
    for prepare_on in ("cpu", "device"):
        cfg = TrainConfig(run_dir=str(tmp_path / prepare_on), prepare_on=prepare_on, **values)
        assert build_datasets(cfg)["train"].raw == (prepare_on == "device")
        torch.manual_seed(0)  # the same initial weights
        model = build_model("tiny_cnn", 33)
        model.register_forward_pre_hook(lambda m, args: seen.append((args[0].dtype, args[0].shape)))
        runs[prepare_on] = load_checkpoint(fit(cfg, model=model).last_checkpoint)["model"]
    assert {dtype for dtype, _ in seen} == {torch.float32}
    assert {shape[1:] for _, shape in seen} == {(33, 10, 10)}
    assert runs["cpu"].keys() == runs["device"].keys()
    assert all(torch.equal(runs["cpu"][k], runs["device"][k]) for k in runs["cpu"])
    with pytest.raises(ValueError, match="unknown prepare_on 'gpu'; valid: cpu, device"):
        TrainConfig(**values, prepare_on="gpu")


def test_the_ridge_study_reads_prepared_items(tmp_path: Path) -> None:
    shards = write_tiny_shards(tmp_path, sizes={"train": 4, "val": 2, "test": 2}, size=SIZE)
    values = {"shards_dir": str(shards), "prepare_on": "device", "progress": False}
    for model, raw in (("mosaiks", False), ("tiny_cnn", True)):
        datasets, cfg = study_datasets(TrainConfig(model=model, **values), cache_data=False)
        assert datasets["train"].raw is raw and cfg.prepare_on == ("device" if raw else "cpu")
