"""One sample per (cell key, year): later copies are quarantined as ``duplicate``.

The same record twice in one file, or the same cell and year in two files, would
otherwise count double (and could land in two splits). The first in the manifest's
order (file name, then record number: stable across runs) is kept
(:meth:`utils.batching.staged_records.StagedRecords.first_of_key`); each other one is
marked with what it duplicates and whether its content (image, label, place) differs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

#: Columns compared, beside the image, to say whether a duplicate's content differs.
CONTENT_COLUMNS: tuple[str, ...] = ("label", "latitude", "longitude", "imagery_year")
REASON = "duplicate"


def duplicate_detail(row: Mapping, kept: Mapping, same_image: Callable[[], bool]) -> str:
    """The manifest detail of ``row``, a later copy of the ``kept`` row (same cell key
    and year): what it duplicates, and whether its content differs.

    Args:
        row: the duplicate's manifest row (``cell_key``, ``year``, :data:`CONTENT_COLUMNS`).
        kept: the kept row (also ``file`` and ``record``).
        same_image: whether both stored images are the same bytes (asked only when the
            other content is the same).
    """
    same = all(str(row[c]) == str(kept[c]) for c in CONTENT_COLUMNS) and same_image()
    return (
        f"cell {row['cell_key']} year {row['year']} already kept from {kept['file']} "
        f"record {kept['record']}; content {'identical' if same else 'differs'}"
    )
