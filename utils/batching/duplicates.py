"""One sample per (cell key, year): later copies are quarantined as ``duplicate``.

The same record twice in one file, or the same cell and year in two files, would
otherwise count double (and could land in two splits). The first in the manifest's
order (file name, then record number: stable across runs) is kept; each other one is
marked with what it duplicates and whether its content (image, label, place) differs.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

#: Columns compared, beside the image, to say whether a duplicate's content differs.
CONTENT_COLUMNS: tuple[str, ...] = ("label", "latitude", "longitude", "imagery_year")


def mark_duplicates(manifest: pd.DataFrame, image_bytes: Callable[[int], bytes]) -> int:
    """Mark, in place, every ``ok`` row whose (``cell_key``, ``year``) an earlier ``ok``
    row holds as ``quarantined`` / ``duplicate``; return how many.

    Args:
        manifest: rows with ``status``, ``cell_key``, ``year``, ``file``, ``record`` and
            :data:`CONTENT_COLUMNS`, in their stable order.
        image_bytes: row label -> the stored bytes of its image (equal images, equal bytes).
    """
    ok = manifest[manifest["status"] == "ok"]
    keys = ok["cell_key"].astype(str) + "|" + ok["year"].astype(str)
    first = {}
    marked = 0
    for index, key in keys.items():
        if key not in first:
            first[key] = index
            continue
        kept = manifest.loc[first[key]]
        row = manifest.loc[index]
        same = all(str(row[c]) == str(kept[c]) for c in CONTENT_COLUMNS) and image_bytes(
            index
        ) == image_bytes(first[key])
        manifest.loc[index, ["status", "reason", "detail"]] = [
            "quarantined",
            "duplicate",
            f"cell {row['cell_key']} year {row['year']} already kept from {kept['file']} "
            f"record {kept['record']}; content {'identical' if same else 'differs'}",
        ]
        marked += 1
    return marked
