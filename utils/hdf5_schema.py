"""The HDF5 shard contract (docs/design.md) shared by the writer (``split_and_batch``)
and the readers (dataloader, training, LOTS).

Layout: ``<shards>/<split>/<split>_00000.h5`` ..., each file holding up to
``shard_size`` samples, beside ``<shards>/manifest.csv`` and ``<shards>/stats.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

# registers HDF5's Zstandard filter (and others) with h5py, so that every reader of the
# shards reads ``--compression zstd`` ones; without it h5py cannot open their chunks
import hdf5plugin  # noqa: F401

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Records without a label (places to predict, docs/maps.md): never train/val/test.
PREDICT = "predict"
ALL_SPLITS: tuple[str, ...] = (*SPLITS, PREDICT)

# datasets of one shard file
DATA = "data"  # (n, C, H, W) float32 or float16, one sample per chunk, compressed
LABELS = "labels"  # (n,) float32
LOCATIONS = "locations"  # (n, 2) float64: latitude, longitude
CELL_ID = "cell_id"  # (n,) variable-length UTF-8 string: the original cell id
CELL_KEY = "cell_key"  # (n,) variable-length UTF-8 string: the file-name-safe key
YEAR = "year"  # (n,) int32: label year
IMAGERY_YEAR = "imagery_year"  # (n,) int32: year of the imagery used
MASK = "mask"  # (n, M, H, W) uint8 valid-pixel mask (1 data, 0 nodata), one chunk per sample
CLEAR = "clear"  # (n, Q) float32 clear share of each quarter's scene (NaN: unknown)

# file attributes of one shard file
ATTR_BANDS = "bands"  # channel names of `data`, in order (24 Sentinel-2 + DW)
ATTR_SCHEMA_VERSION = "schema_version"
ATTR_SOURCE = "source"  # where the records came from (folder)
ATTR_SPLIT = "split"
ATTR_CONFIG = "config"  # JSON of the split_and_batch config
ATTR_MASK_BANDS = "mask_bands"  # names of the mask channels (valid_q1 ... valid_DW)

SCHEMA_VERSION = 1
STATS_FILE = "stats.json"
MANIFEST_FILE = "manifest.csv"


def shard_name(split: str, index: int) -> str:
    """``train_00000.h5`` style file name."""
    return f"{split}_{index:05d}.h5"


def split_files(shards_dir: str | Path, split: str) -> list[Path]:
    """The shard files of one split, sorted.

    Raises:
        FileNotFoundError: naming the folder and the notebook that writes it.
    """
    if split not in ALL_SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(ALL_SPLITS)}")
    files = sorted((Path(shards_dir) / split).glob(f"{split}_*.h5"))
    if not files:
        raise FileNotFoundError(
            f"no HDF5 shards for split {split!r} under {Path(shards_dir) / split}; "
            "run split_and_batch.ipynb "
            "(or `python -m utils.batching.split_and_batch SRC OUT`) first"
        )
    return files


def read_stats(shards_dir: str | Path) -> dict:
    """Per-band statistics computed on the train split.

    Keys: ``bands`` (names), ``mean``, ``std``, ``min``, ``max``, ``p01``, ``p99``
    (lists aligned with ``bands``), ``n_samples`` and ``split`` (always ``"train"``).
    """
    path = Path(shards_dir) / STATS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; run split_and_batch.ipynb (it writes stats.json from train)"
        )
    return json.loads(path.read_text())
