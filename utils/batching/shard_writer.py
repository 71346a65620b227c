"""HDF5 shards in the :mod:`utils.hdf5_schema` format, written streaming.

``data`` is chunked one sample per chunk. With ``zstd`` (default), ``gzip`` or no
compression the chunks are encoded here (byte shuffle, :mod:`utils.byte_shuffle`, +
Zstandard or deflate, exactly HDF5's own filters) so that worker threads compress in
parallel, and written with ``write_direct_chunk``. ``zstd`` chunks are Zstandard frames
(with their content size) of the shuffled bytes: HDF5's registered Zstandard filter
(32015), which h5py reads once ``hdf5plugin`` is imported (:mod:`utils.hdf5_schema`
does); at 225 px they decode ~4x faster than deflate at a slightly smaller size. Deflate
levels 0-3 run on ISA-L (``isal``: about 10x faster than zlib level 1 at the same ratio
on these samples, and any HDF5 reader inflates them, no plugin needed), 4-9 on zlib.
``lzf`` chunks are compressed by h5py when written.
Encoded chunks can wait in a plain staging file and be written into their shard later
as they are.

:class:`BandStats` accumulates per-band mean/std/min/max (exact) and percentiles (from
fixed-width histograms, 1e-4 reflectance resolution, of a regular pixel grid of every
sample) from per-sample :class:`SampleSummary` rows, without holding the data.
"""

from __future__ import annotations

import json
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import h5py
import hdf5plugin
import numpy as np
import zstandard
from isal import isal_zlib

from extract_GPS_images import schema
from utils import hdf5_schema as hs
from utils.byte_shuffle import shuffle

COMPRESSIONS: tuple[str, ...] = ("gzip", "zstd", "lzf", "none")
#: Highest deflate level ISA-L offers; above it chunks are deflated by zlib.
ISAL_MAX_LEVEL = 3
#: Levels each compression takes (``lzf`` and ``none`` ignore it).
LEVELS: dict[str, range] = {"gzip": range(0, 10), "zstd": range(1, 23)}
DTYPES: tuple[str, ...] = ("float32", "float16")
TEXT = h5py.string_dtype("utf-8")
#: Pixels per band and sample on the grid that ``stats.json``'s percentiles come from.
STAT_GRID_PIXELS = 256
#: Histogram of night-lights radiance for the percentiles: low, step, high (nW/sr/cm^2).
NL_HISTOGRAM: tuple[float, float, float] = (0.0, 0.01, 200.0)


@dataclass(frozen=True)
class ChunkCodec:
    """How one sample's (C, H, W) block is stored."""

    shape: tuple[int, int, int]
    dtype: str = "float32"
    compression: str = "gzip"
    level: int = 1
    shuffle: bool = True

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression {self.compression!r}; valid: {', '.join(COMPRESSIONS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r}; valid: {', '.join(DTYPES)}")
        levels = LEVELS.get(self.compression)
        if levels is not None and self.level not in levels:
            raise ValueError(
                f"{self.compression} level {self.level}; valid: {levels.start}-{levels.stop - 1}"
            )

    @property
    def direct(self) -> bool:
        """Whether chunks are encoded here (``False``: h5py compresses, for lzf)."""
        return self.compression != "lzf"

    def dataset_options(self) -> dict:
        """Keyword arguments of ``create_dataset`` for ``data``."""
        options: dict = {"chunks": (1, *self.shape), "dtype": self.dtype}
        if self.compression == "gzip":
            options.update(compression="gzip", compression_opts=self.level, shuffle=self.shuffle)
        elif self.compression == "zstd":
            options.update(hdf5plugin.Zstd(clevel=self.level), shuffle=self.shuffle)
        elif self.compression == "lzf":
            options.update(compression="lzf", shuffle=self.shuffle)
        return options

    def encode(self, image: np.ndarray) -> bytes:
        """One sample as stored: the compressed chunk (gzip, zstd, none), or for lzf the
        raw array bytes that h5py compresses when :func:`write_chunk` stores them."""
        array = np.ascontiguousarray(image, dtype=self.dtype)
        raw = array.view(np.uint8)
        if self.compression in LEVELS and self.shuffle:  # bytes of each value apart
            raw = shuffle(array)
        if self.compression == "zstd":
            return _zstd_compressor(self.level).compress(raw)
        if self.compression != "gzip":
            return raw.tobytes()
        if self.level <= ISAL_MAX_LEVEL:
            return isal_zlib.compress(raw, self.level)
        return zlib.compress(raw, self.level)


_local = threading.local()


def _zstd_compressor(level: int) -> zstandard.ZstdCompressor:
    """This thread's Zstandard compressor at ``level`` (one is not safe to share between
    threads); its frames record their content size, which HDF5's filter needs."""
    compressors = _local.__dict__.setdefault("zstd", {})
    if level not in compressors:
        compressors[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return compressors[level]


def create_sample_datasets(handle: h5py.File, codec: ChunkCodec, n: int) -> None:
    """Create ``data`` and the per-sample datasets of a shard of ``n`` samples."""
    handle.create_dataset(hs.DATA, shape=(n, *codec.shape), **codec.dataset_options())
    handle.create_dataset(hs.LABELS, shape=(n,), dtype=np.float32)
    handle.create_dataset(hs.LOCATIONS, shape=(n, 2), dtype=np.float64)
    for name in (hs.CELL_ID, hs.CELL_KEY):
        handle.create_dataset(name, shape=(n,), dtype=TEXT)
    for name in (hs.YEAR, hs.IMAGERY_YEAR):
        handle.create_dataset(name, shape=(n,), dtype=np.int32)


def write_chunk(
    dataset: h5py.Dataset, index: int, chunk: bytes | memoryview, codec: ChunkCodec
) -> None:
    """Store one sample encoded by ``codec.encode`` at ``index``."""
    if codec.direct:
        dataset.id.write_direct_chunk((index, 0, 0, 0), chunk)
    else:
        dataset[index] = np.frombuffer(chunk, codec.dtype).reshape(codec.shape)


def write_metadata(handle: h5py.File, meta: Sequence[dict]) -> None:
    """Write the per-sample metadata of every sample (one dict per sample, in order)."""
    if not meta:
        return
    handle[hs.LABELS][:] = [m["label"] for m in meta]
    handle[hs.LOCATIONS][:] = [(m["latitude"], m["longitude"]) for m in meta]
    handle[hs.CELL_ID][:] = [m["cell_id"] for m in meta]
    handle[hs.CELL_KEY][:] = [m["cell_key"] for m in meta]
    handle[hs.YEAR][:] = [m["year"] for m in meta]
    handle[hs.IMAGERY_YEAR][:] = [m["imagery_year"] for m in meta]


def write_shard_attrs(
    handle: h5py.File,
    *,
    split: str,
    source: str,
    config: dict,
    bands: Sequence[str] | None = None,
) -> None:
    """File attributes of a final shard (``utils.hdf5_schema``); ``bands`` default to the
    25 image channels."""
    names = list(bands) if bands is not None else schema.image_band_names()
    handle.attrs[hs.ATTR_BANDS] = np.array(names, dtype=TEXT)
    handle.attrs[hs.ATTR_SCHEMA_VERSION] = hs.SCHEMA_VERSION
    handle.attrs[hs.ATTR_SOURCE] = source
    handle.attrs[hs.ATTR_SPLIT] = split
    handle.attrs[hs.ATTR_CONFIG] = json.dumps(config, sort_keys=True)


def stat_stride(pixels: int, target: int) -> int:
    """Step of the regular pixel grid that keeps about ``target`` of ``pixels`` values."""
    return max(1, pixels // target)


@dataclass
class SampleSummary:
    """What :class:`BandStats` needs of one (C, H, W) sample, computed where the decoded
    sample already is (a reader thread): per-band sum, sum of squares, min and max
    (``moments``, (C, 4) float64) and the values on a regular 1-in-``stride`` pixel grid
    (``grid``, (C, m) float32) for the percentiles."""

    moments: np.ndarray
    grid: np.ndarray

    @classmethod
    def of(
        cls,
        image: np.ndarray,
        stride: int,
        band_min: np.ndarray | None = None,
        band_max: np.ndarray | None = None,
    ) -> SampleSummary:
        """Summarise one sample (per-band minima/maxima are taken when not given)."""
        flat = image.reshape(image.shape[0], -1)
        moments = np.stack(
            [
                flat.sum(axis=1, dtype=np.float64),
                np.einsum("ij,ij->i", flat, flat, dtype=np.float64),
                flat.min(axis=1) if band_min is None else band_min,
                flat.max(axis=1) if band_max is None else band_max,
            ],
            axis=1,
        )
        return cls(moments, np.ascontiguousarray(flat[:, ::stride], dtype=np.float32))


class BandStats:
    """Per-band statistics of a set of (C, H, W) samples, from :class:`SampleSummary`
    rows, without holding the data.

    Mean, std, min and max are exact. Percentiles come from histograms of the summaries'
    pixel grids (about :data:`STAT_GRID_PIXELS` values per band and sample): Sentinel-2
    bands over ``reflectance_range`` at ``resolution`` (1e-4 = one digital number), DW
    over its integer codes; a percentile is the centre of the bin where the cumulative
    share reaches it.
    """

    def __init__(
        self,
        bands: Sequence[str],
        reflectance_range: tuple[float, float] = schema.REFLECTANCE_RANGE,
        resolution: float = 1e-4,
        percentiles: tuple[float, float] = (1.0, 99.0),
    ) -> None:
        self.bands = list(bands)
        n = len(self.bands)
        self.percentiles = percentiles
        self.low = np.array(
            [0.0 if b == schema.DW_BAND else reflectance_range[0] for b in self.bands]
        )
        self.step = np.array([1.0 if b == schema.DW_BAND else resolution for b in self.bands])
        high = np.array(
            [
                len(schema.DW_CLASSES) - 1 if b == schema.DW_BAND else reflectance_range[1]
                for b in self.bands
            ]
        )
        lights = np.array([b == schema.NIGHT_LIGHTS_BAND for b in self.bands])
        self.low[lights], self.step[lights], high[lights] = NL_HISTOGRAM
        self.nbins = np.round((high - self.low) / self.step).astype(int) + 1
        self.offset = np.concatenate([[0], np.cumsum(self.nbins)[:-1]])
        self.hist = np.zeros(int(self.nbins.sum()), np.int64)
        self.total = np.zeros(n)
        self.total_sq = np.zeros(n)
        self.min = np.full(n, np.inf)
        self.max = np.full(n, -np.inf)
        self.count = 0
        self.n_samples = 0

    def add(self, moments: np.ndarray, grid: np.ndarray, pixels: int) -> None:
        """Add samples by their summaries: ``moments`` (n, C, 4), ``grid`` (n, C, m)
        (see :class:`SampleSummary`); ``pixels`` is H * W of one sample."""
        if len(moments) == 0:
            return
        self.total += moments[:, :, 0].sum(axis=0)
        self.total_sq += moments[:, :, 1].sum(axis=0)
        self.min = np.minimum(self.min, moments[:, :, 2].min(axis=0))
        self.max = np.maximum(self.max, moments[:, :, 3].max(axis=0))
        self.count += len(moments) * pixels
        self.n_samples += len(moments)
        values = np.moveaxis(grid, 1, 0).reshape(len(self.bands), -1)
        index = np.rint((values - self.low[:, None]) / self.step[:, None]).astype(np.int64)
        np.clip(index, 0, self.nbins[:, None] - 1, out=index)
        self.hist += np.bincount((index + self.offset[:, None]).ravel(), minlength=self.hist.size)

    def _percentile(self, q: float) -> list[float]:
        values = []
        for i in range(len(self.bands)):
            counts = self.hist[self.offset[i] : self.offset[i] + self.nbins[i]]
            if counts.sum() == 0:
                values.append(float("nan"))
                continue
            where = int(np.searchsorted(np.cumsum(counts), q / 100.0 * counts.sum()))
            values.append(float(self.low[i] + min(where, self.nbins[i] - 1) * self.step[i]))
        return values

    def result(self, split: str = "train") -> dict:
        """The ``stats.json`` content (keys of :func:`utils.hdf5_schema.read_stats`)."""
        count = max(self.count, 1)
        mean = self.total / count
        var = np.maximum(self.total_sq / count - mean**2, 0.0)
        low, high = self.percentiles
        return {
            "bands": self.bands,
            "mean": mean.tolist(),
            "std": np.sqrt(var).tolist(),
            "min": self.min.tolist(),
            "max": self.max.tolist(),
            "p01": self._percentile(low),
            "p99": self._percentile(high),
            "n_samples": self.n_samples,
            "split": split,
        }
