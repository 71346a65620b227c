"""Damaged or missing HDF5 shards are named, never trained on silently.

:func:`check_against_manifest` compares the shard files of a split with the counts in
``manifest.csv`` (which ``split_and_batch`` writes beside them): a missing shard, one
the manifest does not know or one with another number of samples is refused, naming the
files. :func:`read_error` turns an HDF5 read error into one that names the file, the
sample and the command that rebuilds the shards.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from utils import hdf5_schema as hs

REBUILD = (
    "rebuild the shards with split_and_batch.ipynb or "
    "`python -m utils.batching.split_and_batch SRC OUT` (a re-run rewrites only what changed)"
)


class ShardError(RuntimeError):
    """Shards that do not match their manifest, or that cannot be read."""


def manifest_counts(shards_dir: Path, split: str) -> dict[str, int] | None:
    """Samples per shard file name of ``split`` in ``manifest.csv`` (``None`` without one)."""
    path = shards_dir / hs.MANIFEST_FILE
    if not path.is_file():
        return None
    table = pd.read_csv(path, usecols=["status", "split", "shard"], dtype=str)
    rows = table[(table["status"] == "ok") & (table["split"] == split)]
    return {Path(name).name: int(n) for name, n in rows["shard"].value_counts().items()}


def check_against_manifest(
    shards_dir: Path, split: str, files: list[Path], lengths: list[int]
) -> None:
    """Refuse shards of ``split`` that differ from ``manifest.csv``.

    Raises:
        ShardError: naming the missing, unknown or miscounted shard files.
    """
    expected = manifest_counts(shards_dir, split)
    if expected is None:
        return
    found = {p.name: n for p, n in zip(files, lengths, strict=True)}
    problems = []
    if missing := sorted(set(expected) - set(found)):
        problems.append(f"missing {missing}")
    if unknown := sorted(set(found) - set(expected)):
        problems.append(f"not in the manifest {unknown}")
    problems += [
        f"{name} holds {found[name]} samples, the manifest lists {n}"
        for name, n in sorted(expected.items())
        if name in found and found[name] != n
    ]
    if problems:
        total = sum(expected.values())
        raise ShardError(
            f"the {split!r} shards under {shards_dir / split} do not match "
            f"{shards_dir / hs.MANIFEST_FILE} ({total} samples listed): "
            f"{'; '.join(problems)}; {REBUILD}"
        )


def read_error(path: Path, err: Exception, sample: int | None = None) -> ShardError:
    """A :class:`ShardError` for a failed read of ``path`` (``sample``: row in the file)."""
    where = f"sample {sample} of {path}" if sample is not None else str(path)
    return ShardError(
        f"cannot read {where} ({type(err).__name__}: {err}); it is damaged: {REBUILD}"
    )
