"""Unpack Drive / bucket downloads (``.zip`` archives, nested folders) safely.

Every archive under the source folder is extracted to ``<dest>/<archive path>/``;
archives found inside extracted folders are extracted in turn. Entries that would
escape their folder (absolute paths, ``..``, drive letters, symbolic links) are
refused, files already extracted with the right size are skipped, and an archive that
cannot be read is reported, not fatal: the caller quarantines what
:func:`extract_archives` reports.

Bombs: an entry whose declared size is over ``max_entry_bytes``, or that declares a
compression ratio over :data:`MAX_RATIO` past :data:`RATIO_FLOOR` bytes, is refused
(``oversized``) without being inflated; while an entry is copied its actual size is
counted against the same cap (and its declared size), in steps of 1 MiB. The bytes of
an unsafe entry are never read. Temporary files a killed run left in ``dest`` are
removed at the next start.
"""

from __future__ import annotations

import stat
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from utils.atomic import TMP_PREFIX, atomic_path
from utils.batching.input_tree import scan_inputs

ARCHIVE_SUFFIX = ".zip"
#: How deep archives inside archives are followed.
MAX_NESTING = 4
#: Default cap on one extracted entry (split_and_batch passes its per-file inflate cap).
MAX_ENTRY_BYTES = 32 << 30
#: Entries (``.tfrecord.gz`` are compressed already) declaring more than this
#: inflate:deflate ratio past ``RATIO_FLOOR`` bytes are refused as bombs.
MAX_RATIO = 200
RATIO_FLOOR = 64 << 20
COPY_STEP = 1 << 20


class _Oversized(Exception):
    """An entry inflating past its cap while it is copied."""


@dataclass(frozen=True)
class ArchiveProblem:
    """One refused entry or unreadable archive."""

    archive: Path
    entry: str  # "" for the whole archive
    reason: str  # "unsafe_archive_entry", "bad_archive" or "oversized"
    detail: str


@dataclass
class UnzipReport:
    """What :func:`extract_archives` did."""

    archives: list[Path] = field(default_factory=list)
    targets: list[Path] = field(default_factory=list)  # where each archive went
    extracted: int = 0
    skipped: int = 0
    problems: list[ArchiveProblem] = field(default_factory=list)


def unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    """Why an entry may not be extracted (``None`` if it is safe)."""
    name = info.filename.replace("\\", "/")
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "'..' in path"
    return None


def oversized_reason(info: zipfile.ZipInfo, max_entry_bytes: int) -> str | None:
    """Why an entry's declared sizes make it a bomb (``None`` if they do not)."""
    if info.file_size > max_entry_bytes:
        return f"declares {info.file_size} bytes, more than the cap of {max_entry_bytes}"
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > RATIO_FLOOR and ratio > MAX_RATIO:
        return f"declares {info.file_size} bytes from {info.compress_size} ({ratio:.0f}:1)"
    return None


def _copy_capped(source, target, cap: int) -> None:
    """Copy in steps, stopping with :class:`_Oversized` past ``cap`` bytes."""
    total = 0
    while chunk := source.read(COPY_STEP):
        total += len(chunk)
        if total > cap:
            raise _Oversized(f"inflates to more than {cap} bytes while extracted")
        target.write(chunk)


def _extract_one(
    archive: Path, target: Path, report: UnzipReport, max_entry_bytes: int
) -> list[Path]:
    """Extract one archive into ``target``; return the archives found inside it."""
    nested = []
    try:
        handle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        report.problems.append(ArchiveProblem(archive, "", "bad_archive", str(err)))
        return nested
    with handle:
        root = target.resolve()
        for info in handle.infolist():
            if info.is_dir():
                continue
            reason = unsafe_reason(info)
            dest = (target / info.filename.replace("\\", "/")).resolve()
            if reason is None and not dest.is_relative_to(root):
                reason = "resolves outside the target folder"
            if reason is not None:  # its bytes are never read
                report.problems.append(
                    ArchiveProblem(
                        archive,
                        info.filename,
                        "unsafe_archive_entry",
                        f"{reason}: {info.filename!r}",
                    )
                )
                continue
            if (big := oversized_reason(info, max_entry_bytes)) is not None:
                report.problems.append(ArchiveProblem(archive, info.filename, "oversized", big))
                continue
            if dest.is_file() and dest.stat().st_size == info.file_size:
                report.skipped += 1
            else:
                cap = min(max_entry_bytes, info.file_size)
                try:
                    with atomic_path(dest) as tmp, handle.open(info) as src, open(tmp, "wb") as out:
                        _copy_capped(src, out, cap)
                except _Oversized as err:
                    report.problems.append(
                        ArchiveProblem(archive, info.filename, "oversized", str(err))
                    )
                    continue
                except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
                    report.problems.append(
                        ArchiveProblem(archive, info.filename, "bad_archive", str(err))
                    )
                    continue
                report.extracted += 1
            if dest.name.lower().endswith(ARCHIVE_SUFFIX):
                nested.append(dest)
    return nested


def extract_archives(
    src: str | Path,
    dest: str | Path,
    max_entry_bytes: int = MAX_ENTRY_BYTES,
    archives: Iterable[tuple[Path, str]] | None = None,
) -> UnzipReport:
    """Extract every ``.zip`` under ``src`` (recursively) into ``dest``.

    ``src/a/b.zip`` goes to ``dest/a/b/``; a ``.zip`` inside it to ``dest/a/b/<name>/``.

    Args:
        src: folder holding the downloads.
        dest: folder receiving the extracted files (may not lie inside ``src``).
        max_entry_bytes: cap on one entry's declared and actual size.
        archives: ``(path to read, name under src)`` of the archives; default: every
            regular ``.zip`` file under ``src`` (links are not followed).

    Returns:
        An :class:`UnzipReport` listing refused entries and unreadable archives.
    """
    src, dest = Path(src), Path(dest)
    report = UnzipReport()
    remove_partial_extractions(dest)
    if archives is None:
        archives = [(e.path, e.name) for e in scan_inputs(src) if e.kind == "archive"]
    todo = [(path, dest / Path(name).with_suffix(""), 0) for path, name in archives]
    while todo:
        archive, target, depth = todo.pop(0)
        report.archives.append(archive)
        report.targets.append(target)
        for inner in _extract_one(archive, target, report, max_entry_bytes):
            if depth + 1 <= MAX_NESTING:
                todo.append((inner, inner.with_suffix(""), depth + 1))
    return report


def remove_partial_extractions(dest: str | Path) -> int:
    """Delete the ``.tmp-*`` files an unzip killed midway left anywhere under ``dest``
    (only regular files, never through a link); return how many."""
    removed = 0
    dest = Path(dest)
    if not dest.is_dir():
        return 0
    for stale in dest.rglob(TMP_PREFIX + "*"):
        if stale.is_file() and not stale.is_symlink():
            stale.unlink()
            removed += 1
    return removed
