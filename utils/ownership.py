"""Output folders are the user's: a stage deletes or replaces only what it wrote.

A stage *claims* its output folder before writing. A folder that does not exist, is
empty, or holds the stage's own record (``.owner.json``: the stage's name, the file
names it wrote and the sub-folders it made) is claimed; any other non-empty folder is
refused with :class:`ForeignFolderError`, naming it and a few of its entries, so that
pointing a stage at a run folder, a home directory or another stage's output never
deletes or replaces a file there. When a stage clears earlier outputs it removes only
what its record lists (:meth:`OutputFolder.remove_recorded`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from utils.atomic import TMP_PREFIX, atomic_open
from utils.folder_lock import LOCK_FILE, folder_lock

OWNER_FILE = ".owner.json"
#: Entries a claim ignores: the ownership record, a lock file, temporaries.
IGNORED = (OWNER_FILE, LOCK_FILE)


class ForeignFolderError(FileExistsError):
    """A non-empty output folder that the stage did not make."""


@dataclass
class OutputFolder:
    """A stage's claim on ``path``: what it wrote there (relative names)."""

    path: Path
    stage: str
    files: set[str] = field(default_factory=set)
    dirs: set[str] = field(default_factory=set)  # sub-folders made, owned with their contents

    @classmethod
    def claim(cls, path: str | Path, stage: str, markers: tuple[str, ...] = ()) -> OutputFolder:
        """Claim ``path`` for ``stage`` (created if missing).

        Args:
            path: the output folder.
            stage: the stage's name, kept in the record.
            markers: files only ``stage`` writes: a folder holding one of them but no
                record was made by an earlier version of the stage and is adopted.

        Raises:
            ForeignFolderError: ``path`` is not empty and holds no record of ``stage``.
        """
        path = Path(path)
        record = path / OWNER_FILE
        if record.is_file():
            try:
                data = json.loads(record.read_text())
            except (OSError, ValueError):
                data = {}
            if data.get("stage") == stage:
                return cls(path, stage, set(data.get("files", [])), set(data.get("dirs", [])))
            owner = f"it was made by {data.get('stage')!r}" if data.get("stage") else "bad record"
            raise ForeignFolderError(
                f"refusing to write {stage} outputs into {path}: {owner}; choose another folder"
            )
        if path.exists() and not path.is_dir():
            raise ForeignFolderError(f"refusing to write {stage} outputs: {path} is not a folder")
        found = sorted(
            p.name
            for p in (path.iterdir() if path.is_dir() else [])
            if p.name not in IGNORED and not p.name.startswith(TMP_PREFIX)
        )
        if found and any((path / m).exists() for m in markers):
            found = []  # made by this stage before records were kept
        if found:
            shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
            raise ForeignFolderError(
                f"refusing to write {stage} outputs into {path}: the folder is not empty and "
                f"was not made by {stage} ({len(found)} entries: {shown}); choose a new or "
                "empty folder (nothing in it was changed)"
            )
        path.mkdir(parents=True, exist_ok=True)
        folder = cls(path, stage)
        folder.save()
        return folder

    def save(self) -> None:
        """Write the record (atomically)."""
        data = {"stage": self.stage, "files": sorted(self.files), "dirs": sorted(self.dirs)}
        with atomic_open(self.path / OWNER_FILE) as handle:
            json.dump(data, handle, indent=1)

    def record(self, files: Iterable[str] = (), dirs: Iterable[str] = ()) -> None:
        """Add relative file names and sub-folders to the record and save it (call it
        before writing them, so a crash never leaves an unrecorded output)."""
        before = (len(self.files), len(self.dirs))
        self.files.update(files)
        self.dirs.update(dirs)
        if (len(self.files), len(self.dirs)) != before:
            self.save()

    def remove_recorded(self, keep_dirs: Iterable[str] = ()) -> list[str]:
        """Delete the recorded files and sub-folders (but ``keep_dirs``); return what
        went. Never follows a link out of the folder: a link is removed, not its target."""
        removed = []
        keep = set(keep_dirs)
        for name in sorted(self.files):
            target = self.path / name
            if target.is_symlink() or target.is_file():
                target.unlink()
                removed.append(name)
        for name in sorted(self.dirs - keep):
            target = self.path / name
            if target.is_symlink():
                target.unlink()
            elif target.is_dir():
                shutil.rmtree(target)
            else:
                continue
            removed.append(name + "/")
        self.files.clear()
        self.dirs &= keep
        self.save()
        return removed


@contextlib.contextmanager
def guard_output(
    folder: str | Path, stage: str, *, enabled: bool = True, markers: tuple[str, ...] = ()
) -> Iterator[OutputFolder | None]:
    """Claim ``folder`` for ``stage`` and hold its lock while the block runs (the
    pattern of every stage that writes a folder). ``enabled=False`` (a non-main
    distributed rank) does neither and yields ``None``; ``markers`` as in
    :meth:`OutputFolder.claim`.

    Raises:
        ForeignFolderError: see :meth:`OutputFolder.claim`.
        utils.folder_lock.FolderLockedError: another run holds the folder.
    """
    if not enabled:
        yield None
        return
    owner = OutputFolder.claim(folder, stage, markers)
    with folder_lock(folder, stage):
        yield owner
