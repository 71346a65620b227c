"""PyTorch dataset and loaders over the HDF5 shards of one split (docs/design.md).

:class:`ShardDataset` reads only shard lengths in ``__init__``; each process (the main
one and every DataLoader worker, forked or spawned) opens the shard files itself on
first use and keeps its own handles, so ``num_workers > 0`` is safe and a split is never
loaded into memory: one sample is read per ``__getitem__`` (one HDF5 chunk). Per-sample
metadata (label, location, cell id, year) is small and is read once per file and process.

Channels: ``channels`` picks the Sentinel-2 channels (``"s2"``: the 24 of the export,
``"rgb"``: B4/B3/B2 of every quarter, ``"s2_nl"`` / ``"rgb_nl"``: the same plus the
night-lights channel ``NL`` when the shards hold it, or explicit names such as
``["B4_q1", "B8_q3", "NL"]``);
``dw_mode`` adds Dynamic World as 9 one-hot channels (``"onehot"``), as one normalised
channel (``"channel"``) or not at all (``"none"``). Sentinel-2 (and the DW channel) are
standardised with the train statistics of ``stats.json``.

Layout: ``"stack"`` returns ``(C, h, w)``, every quarter's bands as channels (the 2-D
models); ``"time"`` returns ``(C, T, h, w)`` for the video models (Swin3D): the
Sentinel-2 bands as channels and the quarters as time, every channel without a quarter
(Dynamic World, night lights) repeated in each quarter (:func:`time_grid`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info

from extract_GPS_images.schema import (
    DW_BAND,
    DW_CLASSES,
    NIGHT_LIGHTS_BAND,
    QUARTERS,
    s2_channel_names,
)
from utils import hdf5_schema as hs
from utils.fast_chunks import chunk_plan, read_sample
from utils.heap import reuse_freed_memory
from utils.paths import resolve
from utils.shard_check import check_against_manifest, read_error
from utils.slices import as_slice
from utils.worker_memory import ReusingLoader, fresh_shared, worker_pool

DwMode = Literal["onehot", "channel", "none"]
DW_MODES: tuple[str, ...] = ("onehot", "channel", "none")
#: Sample layouts: quarters stacked as channels, or as a time axis (see the module doc).
LAYOUTS: tuple[str, ...] = ("stack", "time")
RGB_BANDS: tuple[str, ...] = ("B4", "B3", "B2")
#: Models whose input is ``(N, C, T, H, W)``: the quarters as the time axis.
TEMPORAL_MODELS: tuple[str, ...] = ("swin3d_t", "swin3d_b")
#: Named channel selections (Sentinel-2 channels only; Dynamic World comes from dw_mode).
CHANNEL_PRESETS: dict[str, list[str]] = {
    "s2": s2_channel_names(),
    "rgb": [c for c in s2_channel_names() if c.split("_")[0] in RGB_BANDS],
}
CHANNEL_PRESETS.update({f"{k}_nl": [*v, NIGHT_LIGHTS_BAND] for k, v in CHANNEL_PRESETS.items()})


def input_layout(name: str) -> str:
    """``"time"`` for a model reading ``(N, C, T, H, W)`` (:data:`TEMPORAL_MODELS`), else
    ``"stack"`` (``(N, C, H, W)``, the quarters stacked as channels)."""
    return "time" if name in TEMPORAL_MODELS else "stack"


def resolve_channels(channels: str | Sequence[str]) -> list[str]:
    """Sentinel-2 channel names of a preset name or an explicit list.

    Raises:
        ValueError: for an unknown preset, or ``DW`` in the list (use ``dw_mode``).
    """
    if isinstance(channels, str):
        if channels not in CHANNEL_PRESETS:
            raise ValueError(
                f"unknown channel preset {channels!r}; valid: {sorted(CHANNEL_PRESETS)} "
                "or a list of band names such as ['B4_q1', 'B3_q1']"
            )
        return list(CHANNEL_PRESETS[channels])
    names = list(channels)
    if DW_BAND in names:
        raise ValueError("select Dynamic World with dw_mode ('onehot'/'channel'), not channels")
    if not names:
        raise ValueError("channels is empty")
    return names


def output_band_names(channels: str | Sequence[str], dw_mode: str) -> list[str]:
    """Names of the channels a :class:`ShardDataset` returns, in order."""
    if dw_mode not in DW_MODES:
        raise ValueError(f"unknown dw_mode {dw_mode!r}; valid: {', '.join(DW_MODES)}")
    names = resolve_channels(channels)
    if dw_mode == "onehot":
        names += [f"{DW_BAND}_{c}" for c in DW_CLASSES]
    elif dw_mode == "channel":
        names.append(DW_BAND)
    return names


def time_grid(names: Sequence[str]) -> tuple[np.ndarray, list[str], list[str]]:
    """How stacked channels ``names`` become a ``(C, T)`` grid of bands by quarters.

    A channel ``<band>_<quarter>`` (``B4_q2``) goes to its band's row and quarter's
    column; a channel without a quarter (``DW``, ``DW_built``, night lights) gets a row of
    its own, repeated in every quarter (the video model then sees the static layers
    beside every quarter's spectra through its one patch embedding; a second stem would
    drop the Kinetics-pretrained embedding's structure and add a fusion choice).

    Returns:
        ``(index, channel_names, quarters)``: ``index[c, t]`` is the position in
        ``names`` of channel c at quarter t; ``channel_names`` the C row names (the band
        or the static channel's name); ``quarters`` the T quarter names.

    Raises:
        ValueError: when no channel has a quarter, or a band lacks some quarter.
    """
    bands: dict[str, dict[str, int]] = {}
    static = []
    for i, name in enumerate(names):
        band, _, quarter = name.rpartition("_")
        if band and quarter in QUARTERS:
            bands.setdefault(band, {})[quarter] = i
        else:
            static.append(i)
    if not bands:
        raise ValueError(f"layout 'time' needs channels of several quarters, got {list(names)}")
    quarters = [q for q in QUARTERS if any(q in per for per in bands.values())]
    missing = [f"{b}_{q}" for b, per in bands.items() for q in quarters if q not in per]
    if missing:
        raise ValueError(f"layout 'time' needs every band in every quarter; missing {missing}")
    rows = [[per[q] for q in quarters] for per in bands.values()]
    rows += [[i] * len(quarters) for i in static]
    return np.array(rows, dtype=np.int64), [*bands, *(names[i] for i in static)], quarters


def crop_size(crop: int | float | None, patch: int) -> int:
    """Side of the crop: ``None`` the whole patch, an int in pixels, a float a share of
    the patch (``224 / 225`` crops 224 of 225, 47 of 48).

    Raises:
        ValueError: when the crop is larger than the patch or not positive.
    """
    if crop is None:
        return patch
    side = int(crop) if isinstance(crop, int) else int(round(float(crop) * patch))
    if not 0 < side <= patch:
        raise ValueError(f"crop {crop!r} gives {side} px; must be in 1..{patch} (patch size)")
    return side


class _Held:
    """One reusable batch array of :class:`BatchMemory` and its idle reference count."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.array = np.empty(shape, dtype)
        self.idle_refs = sys.getrefcount(self.array)  # held by this attribute alone

    def idle(self) -> bool:
        """Nothing but this holder references the array: no tensor made from it, no view
        of it (a tensor's view or ``.numpy()`` keeps the NumPy view it was made from)."""
        return sys.getrefcount(self.array) == self.idle_refs


class BatchMemory:
    """Where :meth:`ShardDataset.__getitems__` writes a batch: tensors that are reused
    once nothing holds them any more.

    At 225 px a batch of 32 is ~200 MB; fresh memory costs a page fault every 4 KiB
    (about 0.5-2.7 ms a sample here, more than the copy itself). In the process that
    trains (``num_workers=0``) up to ``keep`` arrays are kept and handed out again as
    soon as no tensor, view or NumPy array made from them is alive (their reference
    count tells), so a batch still held (the previous step's, a list of batches) is
    never overwritten. In a DataLoader worker the batch goes to the main process through
    shared memory: a worker of :func:`make_loader` takes it from its pool of shared
    storages, reused once the main process has let go of them
    (:mod:`utils.worker_memory`); other workers get fresh shared memory, as torch's
    ``default_collate`` does (no copy when it is sent).

    Args:
        keep: arrays of one shape kept for reuse, the most recent ones (2: one held by
            the training step, one being filled).
    """

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._held: dict[tuple[tuple[int, ...], str], list[_Held]] = {}

    def empty(self, shape: tuple[int, ...], dtype: np.dtype | str = "float32") -> torch.Tensor:
        """An uninitialised tensor of ``shape`` and ``dtype`` (write every element)."""
        dtype = np.dtype(dtype)
        if get_worker_info() is not None:  # shared memory: no copy when sent
            torch_dtype = torch.from_numpy(np.empty(0, dtype)).dtype
            pool = worker_pool()
            if pool is None:
                return fresh_shared(tuple(shape), torch_dtype)
            return pool.empty(tuple(shape), torch_dtype, (tuple(shape[1:]), dtype.str))
        rows, held = shape[0], self._held.setdefault((tuple(shape[1:]), dtype.str), [])
        for entry in held:
            if len(entry.array) >= rows and entry.idle():
                return torch.from_numpy(entry.array[:rows])
        if len(held) >= self.keep:  # all held elsewhere (or too short): theirs now
            held.pop(0)
        held.append(_Held(tuple(shape), dtype))
        return torch.from_numpy(held[-1].array[:rows])


class BatchPrepare:
    """Standardisation, Dynamic World one-hot and time grid of a batch of raw items
    (``ShardDataset(raw=True)``: (B, S + 1, h, w) or (B, S, h, w), any float dtype), on
    the batch's device: the float32 operations of the per-sample path (value minus mean,
    over std; codes rounded half to even, NaN as -1, compared per class), so the result
    equals the items of ``raw=False`` bit for bit (float16 to float32 is exact).

    Args:
        mean, std: (N,) float32 of the standardised channels (the Sentinel-2 ones, and
            Dynamic World with ``dw_mode="channel"``).
        one_hot: the last raw channel is Dynamic World, to one-hot encode.
        time_index: the (C, T) grid of :func:`time_grid`, or None for layout ``"stack"``.
    """

    def __init__(
        self,
        mean: torch.Tensor,
        std: torch.Tensor,
        *,
        one_hot: bool,
        time_index: torch.Tensor | None = None,
    ) -> None:
        self.mean, self.std, self.one_hot, self.time_index = mean, std, one_hot, time_index

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        """The prepared float32 batch, on the device of ``raw``."""
        device, n_norm = raw.device, len(self.mean)
        x = raw.float()
        mean = self.mean.to(device)[None, :, None, None]
        std = self.std.to(device)[None, :, None, None]
        parts = [(x[:, :n_norm] - mean) / std]
        if self.one_hot:
            codes = torch.nan_to_num(x[:, n_norm], nan=-1.0).round()[:, None]
            classes = torch.arange(len(DW_CLASSES), device=device, dtype=x.dtype)
            parts.append((codes == classes[None, :, None, None]).to(x.dtype))
        out = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        if self.time_index is not None:
            out = out[:, self.time_index.to(device)]
        return out


class ShardDataset(Dataset):
    """Samples of one split of HDF5 shards, as dicts.

    Args:
        shards_dir: folder holding ``<split>/<split>_*.h5`` and ``stats.json``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        channels: Sentinel-2 channel preset (``"s2"``, ``"rgb"``) or names.
        crop: crop side (see :func:`crop_size`); random for ``train``, centred otherwise.
        train: random crops (and augmentation when ``augment``); else centre crops.
        augment: random horizontal/vertical flips and rot90 (only when ``train``).
        dw_mode: Dynamic World as ``"onehot"`` (9 channels), ``"channel"`` or ``"none"``.
        stats: band statistics dict; None reads ``shards_dir/stats.json``.
        normalize: standardise with ``stats`` (mean/std per band).
        with_mask: also return the shards' valid-pixel ``mask`` (float32, M x h x w:
            ``valid_q1 ... valid_q4``, ``valid_DW``; 1 data, 0 nodata), cropped and
            augmented like ``image``.
        layout: ``"stack"`` (C x h x w) or ``"time"`` (C x T x h x w, :func:`time_grid`).
        raw: ``image`` holds the stored values of the channels the item is made of, in
            the shards' dtype (float16 shards stay float16): the Sentinel-2 channels,
            then the Dynamic World codes unless ``dw_mode="none"`` (:attr:`raw_shape`),
            cropped and flipped, not standardised; :meth:`batch_preparer` finishes a
            batch of them on the training device with the same values, bit for bit.

    Each item: ``image`` (float32, C x h x w or C x T x h x w), ``label`` (float32
    scalar), ``index`` (position in the split), ``cell_id``, ``cell_key``, ``latitude``,
    ``longitude``, ``year`` (and ``mask`` with ``with_mask``). ``band_names`` names the C
    channels; ``flat_band_names`` the channels of ``image.reshape(-1, h, w)`` (the stacked
    names, in grid order, for ``stats.json`` look-ups); ``frames`` the T quarters (empty
    for ``"stack"``).
    """

    def __init__(
        self,
        shards_dir: str | Path,
        split: str,
        *,
        channels: str | Sequence[str] = "s2",
        crop: int | float | None = None,
        train: bool = False,
        augment: bool = False,
        dw_mode: DwMode = "onehot",
        stats: dict[str, Any] | None = None,
        normalize: bool = True,
        with_mask: bool = False,
        layout: str = "stack",
        raw: bool = False,
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
        self.shards_dir = resolve(shards_dir)
        self.with_mask, self.raw = with_mask, raw
        self.split = split
        self.files = hs.split_files(self.shards_dir, split)
        self.train, self.augment, self.dw_mode = train, augment, dw_mode
        self.band_names = output_band_names(channels, dw_mode)
        self.s2_names = resolve_channels(channels)
        lengths, shapes, mask_channels, dtypes = [], set(), set(), []
        for path in self.files:
            try:
                with h5py.File(path, "r") as f:
                    lengths.append(int(f[hs.LABELS].shape[0]))
                    shapes.add(tuple(f[hs.DATA].shape[1:]))
                    dtypes.append(np.dtype(f[hs.DATA].dtype))
                    file_bands = [
                        b.decode() if isinstance(b, bytes) else str(b)
                        for b in f.attrs[hs.ATTR_BANDS]
                    ]
                    has_mask = hs.MASK in f
                    if with_mask and has_mask:
                        mask_channels.add(int(f[hs.MASK].shape[1]))
            except (OSError, KeyError) as err:
                raise read_error(path, err) from err
            if with_mask and not has_mask:
                raise ValueError(
                    f"{path} holds no valid-pixel mask (written before masks were kept); "
                    "re-run split_and_batch, or use with_mask=False"
                )
        check_against_manifest(self.shards_dir, split, self.files, lengths)
        if len(shapes) != 1:
            raise ValueError(f"shards of {split!r} differ in sample shape: {sorted(shapes)}")
        (self.source_channels, height, width) = shapes.pop()
        self.source_dtype = dtypes[0]  # the first shard's (raw items are of it)
        self.file_bands = file_bands
        missing = [b for b in self.s2_names if b not in file_bands]
        if missing or (dw_mode != "none" and DW_BAND not in file_bands):
            raise ValueError(
                f"bands {missing or [DW_BAND]} not in the shards of {self.shards_dir / split} "
                f"(they hold {file_bands})"
            )
        if len(mask_channels) > 1:
            raise ValueError(f"shards of {split!r} differ in mask channels: {mask_channels}")
        self.mask_channels = mask_channels.pop() if mask_channels else 0
        self.patch = min(height, width)
        self.crop = crop_size(crop, self.patch)
        self._s2_index = np.array([file_bands.index(b) for b in self.s2_names])
        self._s2_slice = as_slice(self._s2_index)
        self._dw_index = file_bands.index(DW_BAND) if DW_BAND in file_bands else None
        self._offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.stats = stats if stats is not None else hs.read_stats(self.shards_dir)
        self._mean, self._std = self._norm_arrays(normalize)
        self._labels: np.ndarray | None = None
        self.layout, self.frames, self._time_index = layout, (), None
        self.flat_band_names = list(self.band_names)
        if layout == "time":
            self._time_index, self.band_names, frames = time_grid(self.flat_band_names)
            self.flat_band_names = [self.flat_band_names[i] for i in self._time_index.ravel()]
            self.frames = tuple(frames)
        self._reset_handles()

    def _norm_arrays(self, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
        names = self.s2_names + ([DW_BAND] if self.dw_mode == "channel" else [])
        if not normalize:
            return np.zeros(len(names), np.float32), np.ones(len(names), np.float32)
        bands = list(self.stats["bands"])
        missing = [b for b in names if b not in bands]
        if missing:
            raise ValueError(f"stats.json of {self.shards_dir} lacks bands {missing}")
        mean = np.array([self.stats["mean"][bands.index(b)] for b in names], np.float32)
        std = np.array([self.stats["std"][bands.index(b)] for b in names], np.float32)
        return mean, np.where(std > 0, std, 1.0).astype(np.float32)

    # --- lazy, per-process file handles -------------------------------------------------
    def _reset_handles(self) -> None:
        self._pid = os.getpid()
        self._handles: dict[int, h5py.File] = {}
        self._meta: dict[int, dict[str, Any]] = {}
        self._memory = BatchMemory()

    def __getstate__(self) -> dict[str, Any]:  # spawn: send no open handle to a worker
        state = self.__dict__.copy()
        state["_handles"], state["_meta"], state["_memory"] = {}, {}, BatchMemory()
        return state

    def _file(self, k: int) -> h5py.File:
        if self._pid != os.getpid():  # forked worker: never reuse the parent's handles
            self._reset_handles()
        if k not in self._handles:
            f = h5py.File(self.files[k], "r")
            self._handles[k] = f
            meta = {
                "labels": f[hs.LABELS][:].astype(np.float32),
                "locations": f[hs.LOCATIONS][:],
                "cell_id": f[hs.CELL_ID].asstr()[:],
                "year": f[hs.YEAR][:],
            }
            n = len(meta["labels"])
            meta["cell_key"] = f[hs.CELL_KEY].asstr()[:] if hs.CELL_KEY in f else np.full(n, "")
            for name in (hs.DATA, hs.MASK) if hs.MASK in f else (hs.DATA,):
                meta[name] = (f[name], chunk_plan(f[name]))  # looked up once per file
            self._meta[k] = meta
        return self._handles[k]

    def close(self) -> None:
        """Close this process's open shard files."""
        for f in self._handles.values():
            f.close()
        self._reset_handles()

    # --- the Dataset protocol -----------------------------------------------------------
    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def num_channels(self) -> int:
        """Number of channels of ``image`` (per quarter for layout ``"time"``)."""
        return len(self.band_names)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of ``image``: (C, h, w), or (C, T, h, w) for layout ``"time"``."""
        return (
            self.num_channels,
            *((len(self.frames),) if self.frames else ()),
            self.crop,
            self.crop,
        )

    @property
    def labels(self) -> np.ndarray:
        """All labels of the split, in index order (reads only the ``labels`` datasets)."""
        if self._labels is None:
            parts = []
            for path in self.files:
                with h5py.File(path, "r") as f:
                    parts.append(f[hs.LABELS][:].astype(np.float32))
            self._labels = np.concatenate(parts)
        return self._labels

    def locate(self, index: int) -> tuple[int, int]:
        """(file number, row in that file) of a split index."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples of {self.split}")
        k = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return k, int(index - self._offsets[k])

    def _window(self) -> tuple[int, int]:
        free = self.patch - self.crop
        if free == 0:
            return 0, 0
        if self.train:
            top, left = torch.randint(0, free + 1, (2,)).tolist()
            return top, left
        return free // 2, free // 2

    def _read(self, k: int, row: int, name: str) -> np.ndarray:
        """Sample ``row`` of dataset ``name`` of file ``k``, possibly a read-only view."""
        try:
            self._file(k)
            dataset, plan = self._meta[k][name]
            return read_sample(dataset, row, plan, writable=False)  # ISA-L inflate
        except (OSError, KeyError, ValueError) as err:  # a damaged chunk or file
            raise read_error(self.files[k], err, row) from err

    def _fill(self, index: int, image: np.ndarray, mask: np.ndarray | None) -> dict[str, Any]:
        """Write sample ``index``'s ``image`` (:attr:`sample_shape`, float32; with ``raw``
        :attr:`raw_shape` in the shards' dtype) and ``mask`` into the given arrays;
        return the rest of its item.

        The window and the flips are drawn first (torch's RNG, in the order of the
        per-sample path before: window, then flips) and applied as views of the sample
        read; every output element is then computed by the same float32 operations as
        before (copy, minus the mean, over the std; DW codes compared per class), so
        the values are those of the old item bit for bit, written once.
        """
        k, row = self.locate(int(index))
        raw = self._read(k, row, hs.DATA)
        top, left = self._window()
        draws = augment_draws() if self.train and self.augment else None
        rows, cols = slice(top, top + self.crop), slice(left, left + self.crop)
        view = orient(raw[:, rows, cols], draws)
        n_norm = len(self._mean)  # the stacked channels, before any time grid
        n_image = n_norm + (len(DW_CLASSES) if self.dw_mode == "onehot" else 0)
        stacked = image
        if self._time_index is not None and not self.raw:  # stacked, then (C, T, h, w)
            stacked = np.empty((n_image, self.crop, self.crop), np.float32)
        n_s2 = len(self._s2_index)
        if self._s2_slice is not None:
            stacked[:n_s2] = view[self._s2_slice]
        else:
            for out, source in enumerate(self._s2_index):
                stacked[out] = view[source]
        if self.raw:
            if self.dw_mode != "none":
                stacked[n_s2] = view[self._dw_index]
        else:
            self._standardise(view, stacked, n_norm)
        if self._time_index is not None and not self.raw:
            flat = image.reshape(-1, self.crop, self.crop)
            np.take(stacked, self._time_index.ravel(), axis=0, out=flat, mode="clip")
        if mask is not None:  # cropped and flipped alike
            mask[...] = orient(self._read(k, row, hs.MASK)[:, rows, cols], draws)
        meta = self._meta[k]
        lat, lon = meta["locations"][row]
        return {
            "label": torch.tensor(meta["labels"][row], dtype=torch.float32),
            "index": int(index),
            "cell_id": str(meta["cell_id"][row]),
            "cell_key": str(meta["cell_key"][row]),
            "latitude": float(lat),
            "longitude": float(lon),
            "year": int(meta["year"][row]),
        }

    def _standardise(self, view: np.ndarray, stacked: np.ndarray, n_norm: int) -> None:
        """Standardise the Sentinel-2 channels copied into ``stacked`` and add Dynamic
        World (normalised, or one-hot) from the oriented sample ``view``."""
        if self.dw_mode == "channel":
            stacked[n_norm - 1] = view[self._dw_index]
        stacked[:n_norm] -= self._mean[:, None, None]
        stacked[:n_norm] /= self._std[:, None, None]
        if self.dw_mode == "onehot":
            dw = view[self._dw_index].astype(np.float32)
            codes = np.rint(np.nan_to_num(dw, nan=-1.0))
            for c in range(len(DW_CLASSES)):
                np.equal(codes, c, out=stacked[n_norm + c])  # 1.0 or 0.0

    def _item(self, index: int, image: torch.Tensor, mask: torch.Tensor | None) -> dict:
        """The item of ``index``, its image (and mask) written into the given tensors."""
        rest = self._fill(index, image.numpy(), None if mask is None else mask.numpy())
        return {**({"mask": mask} if mask is not None else {}), "image": image, **rest}

    def _mask_shape(self) -> tuple[int, ...]:
        return (self.mask_channels, self.crop, self.crop)

    def _image_layout(self) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of ``image``."""
        if self.raw:
            return self.raw_shape, self.source_dtype
        return self.sample_shape, np.dtype(np.float32)

    def __getitem__(self, index: int) -> dict[str, Any]:
        shape, dtype = self._image_layout()
        mask = torch.empty(self._mask_shape()) if self.with_mask else None
        return self._item(index, torch.from_numpy(np.empty(shape, dtype)), mask)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """The items of ``indices`` (a DataLoader batch), each ``image`` (and ``mask``)
        written straight into its row of one batch tensor, which :func:`collate_batch`
        then hands on without a copy (:class:`BatchMemory` says where that tensor lives).
        The items are those of ``[self[i] for i in indices]``, value for value."""
        shape, dtype = self._image_layout()
        images = self._memory.empty((len(indices), *shape), dtype)
        masks = self._memory.empty((len(indices), *self._mask_shape())) if self.with_mask else None
        return [
            self._item(index, images[i], None if masks is None else masks[i])
            for i, index in enumerate(indices)
        ]

    @property
    def raw_shape(self) -> tuple[int, ...]:
        """Shape of ``image`` with ``raw=True``: (S + 1, h, w), S Sentinel-2 channels and
        the Dynamic World codes (S with ``dw_mode="none"``)."""
        return (len(self._s2_index) + (self.dw_mode != "none"), self.crop, self.crop)

    def batch_preparer(self) -> BatchPrepare:
        """What turns a batch of ``raw=True`` items into the items of ``raw=False``."""
        return BatchPrepare(
            torch.from_numpy(self._mean),
            torch.from_numpy(self._std),
            one_hot=self.dw_mode == "onehot",
            time_index=None if self._time_index is None else torch.from_numpy(self._time_index),
        )

    def __repr__(self) -> str:
        return (
            f"ShardDataset({self.shards_dir}, {self.split!r}: {len(self)} samples, "
            f"{self.num_channels} channels, crop {self.crop}/{self.patch}, train={self.train}"
            + (f", {len(self.frames)} quarters" if self.frames else "")
            + ")"
        )


def augment_draws() -> tuple[int, int, int]:
    """``(flip_h, flip_v, turns)`` of one sample: flips 0/1, quarter turns 0-3, from one
    ``torch.randint`` call of torch's RNG (seeded per DataLoader worker)."""
    flip_h, flip_v, turns = torch.randint(0, 4, (3,)).tolist()
    return flip_h % 2, flip_v % 2, turns


def orient(
    image: np.ndarray | torch.Tensor, draws: tuple[int, int, int] | None
) -> np.ndarray | torch.Tensor:
    """``image`` (..., H, W) flipped horizontally, then vertically, then turned by
    quarters (the last only when square) as ``draws`` (:func:`augment_draws`) say; None
    leaves it. NumPy arrays come back as views; tensors stay on their device."""
    if draws is None:
        return image
    flip_h, flip_v, turns = draws
    is_tensor = isinstance(image, torch.Tensor)
    if flip_h:
        image = torch.flip(image, (-1,)) if is_tensor else image[..., ::-1]
    if flip_v:
        image = torch.flip(image, (-2,)) if is_tensor else image[..., ::-1, :]
    if image.shape[-1] == image.shape[-2] and turns:
        rot90 = torch.rot90 if is_tensor else np.rot90
        image = rot90(image, turns, (-2, -1))
    return image


def augment(image: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Random horizontal and vertical flips and a random multiple of 90 degrees (the
    last only for square images) of a (C, H, W) array or tensor, drawn from torch's RNG
    (seeded per DataLoader worker). NumPy arrays come back as views (far cheaper than
    torch's flip on small CPU tensors); tensors (e.g. kept on the GPU) stay on their
    device. The same draws give the same result for both."""
    return orient(image, augment_draws())


def _rows_of_one_tensor(values: Sequence[Any]) -> torch.Tensor | None:
    """The contiguous (B, ...) tensor whose rows, in order, are exactly ``values`` (the
    items of :meth:`ShardDataset.__getitems__`), else None."""
    first = values[0]
    if not isinstance(first, torch.Tensor) or first._base is None:
        return None
    base = first._base
    if base.shape != (len(values), *first.shape) or not base.is_contiguous():
        return None
    step, start = first.numel() * first.element_size(), base.data_ptr()
    for i, value in enumerate(values):
        if not (
            isinstance(value, torch.Tensor)
            and value.dtype == base.dtype
            and value.device == base.device
            and value.shape == first.shape
            and value.is_contiguous()
            and value.data_ptr() == start + i * step
        ):
            return None
    return base


def collate_batch(items: list[Any]) -> Any:
    """``torch.utils.data.default_collate``, except that a key whose tensors are the rows
    of one batch tensor, in order (what :meth:`ShardDataset.__getitems__` writes), gets
    that tensor itself instead of a stacked copy: the same values, one copy less. In a
    worker of :func:`make_loader` the batch goes out as a
    :class:`utils.worker_memory.PooledBatch`, which the loader unwraps."""
    if not items or not isinstance(items[0], Mapping):
        batch = default_collate(items)
    else:
        joined = {}
        for key in items[0]:
            base = _rows_of_one_tensor([item[key] for item in items])
            if base is not None:
                joined[key] = base
        rest = default_collate(
            [{k: v for k, v in item.items() if k not in joined} for item in items]
        )
        batch = {key: joined[key] if key in joined else rest[key] for key in items[0]}
    pool = worker_pool()
    return batch if pool is None else pool.tag(batch)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool = False,
    sampler: Sampler | None = None,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    multiprocessing_context: str | None = None,
    persistent_workers: bool = False,
    reuse_worker_memory: bool = True,
) -> DataLoader:
    """A DataLoader with its own seeded generator (shuffling and worker seeds come from
    it, so reseeding ``loader.generator`` per epoch makes epochs reproducible), batching
    with :func:`collate_batch` (a :class:`ShardDataset` batch is written in place).
    From then on this process's heap keeps freed blocks up to 16 MB for reuse
    (:func:`utils.heap.reuse_freed_memory`: a sample's read buffers serve the next one).

    Args:
        sampler: a sampler (e.g. the weighted sampler); excludes ``shuffle``.
        multiprocessing_context: ``"fork"``, ``"spawn"`` or None (platform default).
        persistent_workers: keep workers (and their open shards) between epochs; their
            RNG is then seeded once, not per epoch (off by default: epochs stay
            reproducible from ``loader.generator`` alone).
        reuse_worker_memory: workers write batches into shared memory they reuse once
            the main process holds nothing made from it (:mod:`utils.worker_memory`);
            False gives every worker batch fresh shared memory (torch's way).
    """
    if sampler is not None and shuffle:
        raise ValueError("give either shuffle=True or a sampler, not both")
    reuse_freed_memory()  # each sample's read buffers reused by the next (utils.heap)
    generator = torch.Generator().manual_seed(seed)
    loader_class = ReusingLoader if reuse_worker_memory and num_workers > 0 else DataLoader
    return loader_class(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        generator=generator,
        drop_last=drop_last,
        collate_fn=collate_batch,
        pin_memory=pin_memory,
        multiprocessing_context=multiprocessing_context if num_workers > 0 else None,
        persistent_workers=persistent_workers and num_workers > 0,
    )


def augments_per_sample(cfg: Any, split: str) -> bool:
    """Whether the items of ``split`` get random flips/rot90 one by one under ``cfg``
    (``augment`` on the train split, unless ``augment_on="device"`` does it per batch)."""
    on_device = getattr(cfg, "augment_on", "cpu") == "device"
    return bool(cfg.augment) and split == "train" and not on_device


def build_datasets(cfg: Any, splits: Sequence[str] = ("train", "val")) -> dict[str, ShardDataset]:
    """The datasets of ``splits`` for a config with ``shards_dir``, ``channels``,
    ``dw_mode``, ``crop`` and ``augment`` (a :class:`utils.train.TrainConfig`), in the
    layout its ``model`` takes (:func:`input_layout`). With ``augment_on="device"`` the
    train split returns whole patches (the training loop crops and flips its batches);
    with ``prepare_on="device"`` raw items (:meth:`ShardDataset.batch_preparer`)."""
    layout = input_layout(str(getattr(cfg, "model", "")))
    shards = cfg.resolved_shards_dir() if hasattr(cfg, "resolved_shards_dir") else cfg.shards_dir
    on_device = getattr(cfg, "augment_on", "cpu") == "device"
    raw = getattr(cfg, "prepare_on", "cpu") == "device"
    return {
        split: ShardDataset(
            shards,
            split,
            channels=cfg.channels,
            crop=None if on_device and split == "train" else cfg.crop,
            train=split == "train",
            augment=augments_per_sample(cfg, split),
            dw_mode=cfg.dw_mode,
            layout=layout,
            raw=raw and split == "train",
        )
        for split in splits
    }


def build_loaders(
    cfg: Any,
    splits: Sequence[str] = ("train", "val"),
    *,
    sampler: Sampler | None = None,
) -> dict[str, DataLoader]:
    """Loaders of ``splits`` for a config (see :func:`build_datasets`, plus
    ``batch_size``, ``num_workers``, ``seed``); ``train`` is shuffled unless a
    ``sampler`` is given."""
    datasets = build_datasets(cfg, splits)
    return {
        split: make_loader(
            ds,
            batch_size=cfg.batch_size,
            shuffle=split == "train" and sampler is None,
            sampler=sampler if split == "train" else None,
            num_workers=cfg.num_workers,
            seed=cfg.seed,
        )
        for split, ds in datasets.items()
    }


__all__ = [
    "CHANNEL_PRESETS",
    "DW_MODES",
    "LAYOUTS",
    "ShardDataset",
    "BatchMemory",
    "BatchPrepare",
    "augment",
    "augment_draws",
    "build_datasets",
    "collate_batch",
    "build_loaders",
    "crop_size",
    "make_loader",
    "orient",
    "output_band_names",
    "resolve_channels",
    "time_grid",
]
