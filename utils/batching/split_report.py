"""Tables, checks and figures of a ``split_and_batch`` run (read back from its outputs)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from utils import hdf5_schema as hs
from utils.batching.split_and_batch import SplitReport

SPLIT_COLOURS: dict[str, str] = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}


def read_manifest(shards_dir: str | Path) -> pd.DataFrame:
    """``manifest.csv`` of a run."""
    path = Path(shards_dir) / hs.MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run split_and_batch.ipynb first")
    return pd.read_csv(path, dtype={"file": str, "cell_id": str, "cell_key": str, "split": str})


def counts_table(report: SplitReport) -> pd.DataFrame:
    """One row per split and per quarantine reason, with the total of inputs."""
    rows = [("split", s, n) for s, n in report.per_split.items()]
    rows += [("quarantine", r, n) for r, n in report.per_reason.items()]
    rows.append(("total", "inputs", report.inputs))
    return pd.DataFrame(rows, columns=["kind", "name", "records"])


def check_counts(shards_dir: str | Path) -> pd.DataFrame:
    """Check that the outputs account for every input.

    * manifest rows = ok + quarantined + skipped, and each row has exactly one status;
    * the ok rows of each split = the samples in that split's shards;
    * no cell (location) in two splits.

    Returns:
        A table of the checks (all ``passed``).

    Raises:
        ValueError: naming each failed check.
    """
    manifest = read_manifest(shards_dir)
    ok = manifest[manifest["status"] == "ok"]
    bad = manifest[manifest["status"] == "quarantined"]
    skipped = manifest[manifest["status"] == "skipped"]  # files of other kinds
    rows = [
        (
            "ok + quarantined + skipped == inputs",
            f"{len(ok)} + {len(bad)} + {len(skipped)} == {len(manifest)}",
            len(ok) + len(bad) + len(skipped) == len(manifest),
        )
    ]
    for split in hs.SPLITS:
        files = sorted((Path(shards_dir) / split).glob(f"{split}_*.h5"))
        in_shards = 0
        for path in files:
            with h5py.File(path, "r") as handle:
                in_shards += handle[hs.LABELS].shape[0]
        listed = int((ok["split"] == split).sum())
        rows.append(
            (f"{split}: manifest == shards", f"{listed} == {in_shards}", listed == in_shards)
        )
    splits_per_cell = ok.groupby("cell_id")["split"].nunique()
    shared = int((splits_per_cell > 1).sum())
    rows.append(("no cell in two splits", f"{shared} shared", shared == 0))
    table = pd.DataFrame(rows, columns=["check", "values", "passed"])
    if not table["passed"].all():
        raise ValueError(f"counts do not add up:\n{table[~table['passed']].to_string()}")
    return table


def plot_label_histograms(shards_dir: str | Path, path: str | Path | None = None, bins: int = 30):
    """Label histogram of each split (shares, so splits of any size compare); saved as PNG."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 (plots only)

    ok = read_manifest(shards_dir).query("status == 'ok'")
    edges = np.histogram_bin_edges(ok["label"].astype(float), bins)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for split in hs.SPLITS:
        labels = ok.loc[ok["split"] == split, "label"].astype(float)
        if len(labels):
            ax.hist(
                labels,
                edges,
                histtype="step",
                density=True,
                lw=1.8,
                color=SPLIT_COLOURS[split],
                label=f"{split} (n={len(labels)})",
            )
    ax.set(xlabel="label", ylabel="density", title="Label distribution per split")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)
    return fig


def plot_split_map(shards_dir: str | Path, path: str | Path | None = None):
    """Locations of the valid samples coloured by split; saved as PNG."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 (plots only)

    manifest = read_manifest(shards_dir)
    fig, ax = plt.subplots(figsize=(5, 6))
    for split in hs.SPLITS:
        rows = manifest[(manifest["status"] == "ok") & (manifest["split"] == split)]
        ax.scatter(
            rows["longitude"],
            rows["latitude"],
            s=6,
            color=SPLIT_COLOURS[split],
            label=f"{split} ({len(rows)})",
        )
    ax.set(xlabel="longitude", ylabel="latitude", title="Locations by split", aspect="equal")
    ax.legend(markerscale=3, loc="best")
    fig.tight_layout()
    _save(fig, path)
    return fig


def _save(fig, path: str | Path | None) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
