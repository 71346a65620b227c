"""Every entry under an input folder, classified without opening anything that is not a
regular file (links and special files).

:func:`scan_inputs` walks the folder without following links and gives each entry
(everything but folders) one :class:`Entry`:

* ``record`` / ``archive``: a regular file named like a TFRecord / ``.zip``;
* ``other``: any other regular file (``labels.csv``, ``.png`` ...): skipped, counted by
  its kind (the suffix);
* ``link``: a symbolic link, refused by default; with ``follow_links`` a link whose
  target is a regular file inside the input folder is read (as ``record``/``archive``),
  any other link (outside, dangling, to a folder or a special file) is refused;
* ``special``: a FIFO, socket or device, listed and never opened.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

RECORD_SUFFIXES: tuple[str, ...] = (".tfrecord", ".tfrecord.gz", ".tfrecords", ".tfrecords.gz")
ARCHIVE_SUFFIX = ".zip"
KINDS: tuple[str, ...] = ("record", "archive", "other", "link", "special")
_SPECIAL = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


@dataclass(frozen=True)
class Entry:
    """One entry under the input folder.

    Attributes:
        name: path relative to the input folder (POSIX), as the manifest lists it.
        path: what to read (a followed link's resolved target), or the entry itself.
        kind: one of :data:`KINDS`.
        detail: why a ``link``/``special``/``other`` entry is not read.
    """

    name: str
    path: Path
    kind: str
    detail: str = ""

    @property
    def file_kind(self) -> str:
        """The suffix an ``other`` entry is counted under (``.txt``, ``(none)``)."""
        name = Path(self.name).name.lower()
        return Path(name).suffix or "(none)"


def file_kind(name: str) -> str:
    """``record``, ``archive`` or ``other`` from a file name."""
    lower = name.lower()
    if lower.endswith(RECORD_SUFFIXES):
        return "record"
    return "archive" if lower.endswith(ARCHIVE_SUFFIX) else "other"


def _link_entry(src: Path, path: Path, name: str, follow_links: bool) -> Entry:
    target = os.readlink(path)
    if not follow_links:
        return Entry(name, path, "link", f"symbolic link to {target!r}; links are not followed")
    resolved = Path(os.path.realpath(path))
    if not resolved.exists():
        return Entry(name, path, "link", f"dangling symbolic link to {target!r}")
    if not resolved.is_relative_to(src.resolve()):
        return Entry(name, path, "link", f"symbolic link to {target!r}, outside the input folder")
    mode = os.stat(resolved).st_mode
    if not stat.S_ISREG(mode):
        what = "a folder" if stat.S_ISDIR(mode) else _SPECIAL.get(stat.S_IFMT(mode), "no file")
        return Entry(name, path, "link", f"symbolic link to {target!r}, {what}")
    kind = file_kind(name)
    if kind == "other":
        return Entry(name, resolved, "other", f"kind {Entry(name, path, kind).file_kind}")
    return Entry(name, resolved, kind, f"followed symbolic link to {target!r}")


def scan_inputs(src: str | Path, follow_links: bool = False) -> list[Entry]:
    """Every entry under ``src`` (recursive, folders themselves excluded), sorted by name.

    Args:
        src: the input folder.
        follow_links: read links whose target is a regular file inside ``src``.
    """
    src = Path(src)
    entries: list[Entry] = []
    for folder, dirs, files in os.walk(src, followlinks=False):
        here = Path(folder)
        for name in [*dirs, *files]:
            path = here / name
            rel = path.relative_to(src).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode):
                continue
            if stat.S_ISLNK(mode):
                entries.append(_link_entry(src, path, rel, follow_links))
            elif stat.S_ISREG(mode):
                kind = file_kind(name)
                entry = Entry(rel, path, kind)
                detail = (
                    f"kind {entry.file_kind}: not a TFRecord or .zip" if kind == "other" else ""
                )
                entries.append(Entry(rel, path, kind, detail))
            else:
                what = _SPECIAL.get(stat.S_IFMT(mode), "a special file")
                entries.append(Entry(rel, path, "special", f"{what}; never opened"))
    return sorted(entries, key=lambda e: e.name)


def skipped_kinds(entries: list[Entry]) -> dict[str, int]:
    """How many ``other`` entries of each kind (suffix), most common first."""
    return dict(Counter(e.file_kind for e in entries if e.kind == "other").most_common())
