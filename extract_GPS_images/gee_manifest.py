"""The ``manifest.csv`` of an Earth Engine extraction: one row per (cell key, year).

Rows keep the original cell id, the status (``pending``, ``running``, ``done``,
``failed``), the number of attempts, the last error, the output (file path, or the
export's destination prefix), the export task id and which periods fell back to
another scene. The file is rewritten atomically (never half written), at most every
``flush_every_s`` seconds while a job runs and once at its end, so a killed run
leaves a consistent manifest that a re-run resumes from.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from utils.atomic import atomic_open

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
STATUSES = (PENDING, RUNNING, DONE, FAILED)


@dataclass
class ManifestRow:
    """One location-year of an extraction."""

    cell_key: str
    year: int
    cell_id: str
    imagery_year: int
    status: str = PENDING
    attempts: int = 0
    error: str = ""
    output: str = ""
    task_id: str = ""
    fallback: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return (self.cell_key, int(self.year))


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ManifestRow))
_INT_COLUMNS = {"year", "imagery_year", "attempts"}


class Manifest:
    """Rows keyed by (cell key, year), loaded from and saved to one CSV."""

    def __init__(
        self,
        path: str | Path,
        *,
        flush_every_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.flush_every_s = flush_every_s
        self._clock = clock
        self._last_flush = clock()
        self.rows: dict[tuple[str, int], ManifestRow] = {}
        if self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as handle:
                for record in csv.DictReader(handle):
                    values = {
                        k: (int(v) if k in _INT_COLUMNS else v)
                        for k, v in record.items()
                        if k in COLUMNS
                    }
                    row = ManifestRow(**values)
                    self.rows[row.key] = row

    def __iter__(self) -> Iterator[ManifestRow]:
        return iter(self.rows.values())

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, cell_key: str, year: int) -> ManifestRow | None:
        return self.rows.get((cell_key, int(year)))

    def ensure(self, row: ManifestRow) -> ManifestRow:
        """The existing row of ``row.key``, or ``row`` added as new."""
        return self.rows.setdefault(row.key, row)

    def counts(self) -> dict[str, int]:
        """Rows per status."""
        out = dict.fromkeys(STATUSES, 0)
        for row in self.rows.values():
            out[row.status] = out.get(row.status, 0) + 1
        return out

    def save(self) -> Path:
        """Write the whole manifest atomically."""
        with atomic_open(self.path, "w", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(COLUMNS), lineterminator="\n")
            writer.writeheader()
            for row in sorted(self.rows.values(), key=lambda r: r.key):
                writer.writerow(asdict(row))
        self._last_flush = self._clock()
        return self.path

    def maybe_save(self) -> None:
        """Save if the last save is older than ``flush_every_s``."""
        if self._clock() - self._last_flush >= self.flush_every_s:
            self.save()
