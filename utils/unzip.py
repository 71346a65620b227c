"""Unpack Drive / bucket downloads (``.zip`` archives, nested folders) safely.

Every archive under the source folder is extracted to ``<dest>/<archive path>/``;
archives found inside extracted folders are extracted in turn. Entries that would
escape their folder (absolute paths, ``..``, drive letters, symbolic links) are
refused, files already extracted with the right size are skipped, and an archive that
cannot be read is reported, not fatal: the caller quarantines what
:func:`extract_archives` reports.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from utils.atomic import atomic_path

ARCHIVE_SUFFIX = ".zip"
#: How deep archives inside archives are followed.
MAX_NESTING = 4


@dataclass(frozen=True)
class ArchiveProblem:
    """One refused entry or unreadable archive."""

    archive: Path
    entry: str  # "" for the whole archive
    reason: str  # "unsafe_archive_entry" or "bad_archive"
    detail: str
    payload: bytes | None = None  # the refused entry's bytes, when readable


@dataclass
class UnzipReport:
    """What :func:`extract_archives` did."""

    archives: list[Path] = field(default_factory=list)
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


def _extract_one(archive: Path, target: Path, report: UnzipReport) -> list[Path]:
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
            if reason is not None:
                try:
                    payload = handle.read(info)
                except (zipfile.BadZipFile, OSError, ValueError):
                    payload = None
                report.problems.append(
                    ArchiveProblem(
                        archive,
                        info.filename,
                        "unsafe_archive_entry",
                        f"{reason}: {info.filename!r}",
                        payload,
                    )
                )
                continue
            if dest.is_file() and dest.stat().st_size == info.file_size:
                report.skipped += 1
            else:
                try:
                    with atomic_path(dest) as tmp, handle.open(info) as src, open(tmp, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
                    report.problems.append(
                        ArchiveProblem(archive, info.filename, "bad_archive", str(err))
                    )
                    continue
                report.extracted += 1
            if dest.name.lower().endswith(ARCHIVE_SUFFIX):
                nested.append(dest)
    return nested


def extract_archives(src: str | Path, dest: str | Path) -> UnzipReport:
    """Extract every ``.zip`` under ``src`` (recursively) into ``dest``.

    ``src/a/b.zip`` goes to ``dest/a/b/``; a ``.zip`` inside it to ``dest/a/b/<name>/``.

    Args:
        src: folder holding the downloads.
        dest: folder receiving the extracted files (may not lie inside ``src``).

    Returns:
        An :class:`UnzipReport` listing refused entries and unreadable archives.
    """
    src, dest = Path(src), Path(dest)
    report = UnzipReport()
    todo = [(p, dest / p.relative_to(src).with_suffix(""), 0) for p in _archives(src)]
    while todo:
        archive, target, depth = todo.pop(0)
        report.archives.append(archive)
        for inner in _extract_one(archive, target, report):
            if depth + 1 <= MAX_NESTING:
                todo.append((inner, inner.with_suffix(""), depth + 1))
    return report


def _archives(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.name.lower().endswith(ARCHIVE_SUFFIX) and p.is_file()
    )
