"""Atomic file writes: write to a temporary name in the same folder, then rename.

A reader (or a re-run after a crash) sees either the old file or the complete new
one, never half a file. Temporary names start with ``.tmp-`` so that resumable
jobs can ignore and clean them.
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], keep_same: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    Use it for writers that want a file name (TensorFlow, h5py). On an exception the
    temporary file is removed and ``path`` is left untouched. With ``keep_same``, a
    ``path`` that already holds exactly the new bytes is left as it is (its modification
    time too: a later stage that fingerprints its inputs by size and time sees no change).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + target.name + ".", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o644)  # mkstemp makes 0600; results are meant to be shared
    try:
        yield tmp_path
        if keep_same and target.is_file() and filecmp.cmp(tmp_path, target, shallow=False):
            tmp_path.unlink()
            return
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str],
    mode: str = "w",
    encoding: str | None = None,
    keep_same: bool = False,
) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; rename it to ``path`` on success
    (``keep_same``: as :func:`atomic_path`)."""
    if "w" not in mode:
        raise ValueError(f"atomic_open writes new files; mode must contain 'w', got {mode!r}")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path, keep_same) as tmp, open(tmp, mode, encoding=encoding) as handle:
        yield handle


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> int:
    """Delete temporary files left in ``folder`` by an interrupted run; return how many."""
    removed = 0
    for stale in Path(folder).glob(TMP_PREFIX + "*"):
        if stale.is_file():
            stale.unlink()
            removed += 1
    return removed
