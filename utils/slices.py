"""Positions as a slice, where they allow one (a slice indexes a view, no gather copy)."""

from __future__ import annotations

import numpy as np


def as_slice(index: np.ndarray) -> slice | None:
    """``index`` as a slice when it is a run of consecutive positions, else None."""
    if len(index) and np.array_equal(index, np.arange(index[0], index[0] + len(index))):
        return slice(int(index[0]), int(index[0]) + len(index))
    return None
