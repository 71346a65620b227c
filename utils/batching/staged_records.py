"""What the conversion holds per record once pass 1 has staged it: compact NumPy columns
of the valid records (:class:`StagedRecords`, ~70 bytes a record), read back from the
staging parts one part at a time.

Every other field of a record's manifest row (file, record, ids, reasons, shares) stays
in its part's ``rows`` dataset and goes from there straight into ``manifest.csv`` at
the end; held as a table of Python objects, the rows cost ~1 KB a record, i.e. ~1 GB
at a million records, growing with the run.

Cell ids and the duplicate keys (``cell_key|year``) are held as 128-bit BLAKE2b digests
of their text: equal texts, equal digests; two different texts share a digest with
odds ~n^2 / 2^129 (about 1e-27 at a million records).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

#: Staging dataset of a part's manifest rows (one JSON object each, in manifest order).
ROWS = "rows"
#: Staged rows' key holding a record's band length (for the patch size of the run).
BAND_LENGTH = "band_length"
DIGEST_BYTES = 16


def digest(text: str) -> bytes:
    """128-bit BLAKE2b digest of ``text`` (lone surrogates of a JSON text allowed)."""
    data = text.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


def duplicate_key(row: dict) -> str:
    """What makes two valid records one sample: their cell key and year, as text."""
    return f"{row['cell_key']}|{row['year']}"


def cell_text(row: dict) -> str:
    """A record's cell id as the split compares it (NumPy text drops trailing NULs)."""
    return str(row["cell_id"]).rstrip("\0")


def read_rows(handle: h5py.File, index: Sequence[int] | np.ndarray | None = None) -> list[dict]:
    """The manifest rows staged in an open part: all, or those at the increasing
    positions ``index`` (read as one slice: HDF5 picks strings one by one slowly)."""
    texts = handle[ROWS].asstr()
    if index is None:
        return [json.loads(t) for t in texts[:]]
    index = np.asarray(index, np.int64)
    if not len(index):
        return []
    first = int(index[0])
    span = texts[first : int(index[-1]) + 1]
    return [json.loads(span[i - first]) for i in index.tolist()]


def _as_keys(digests: np.ndarray) -> np.ndarray:
    """(n, 16) uint8 digests as one sortable structured value each (two uint64)."""
    return np.ascontiguousarray(digests).view([("a", "<u8"), ("b", "<u8")]).ravel()


@dataclass
class StagedRecords:
    """The valid (``ok``) records of a run's staging parts, in manifest order (part, then
    row), one array entry each.

    Attributes:
        part: staging part of each record (int32).
        row: its manifest row's position in the part's rows (int32).
        staged: its staged chunk in the part (int32).
        latitude, longitude: its place (float64, as staged).
        label: its label (float64; NaN: a place to predict).
        cell: digest of its cell id, (n, 16) uint8.
        key: digest of its duplicate key (cell key and year), (n, 16) uint8.
        part_rows: the number of manifest rows (every record read) per part.
        sizes: records per band length read, most common first.
    """

    part: np.ndarray
    row: np.ndarray
    staged: np.ndarray
    latitude: np.ndarray
    longitude: np.ndarray
    label: np.ndarray
    cell: np.ndarray
    key: np.ndarray
    part_rows: np.ndarray
    sizes: dict[int, int]

    def __len__(self) -> int:
        return len(self.part)

    @classmethod
    def read(cls, part_paths: Sequence[Path]) -> StagedRecords:
        """Read the records of ``part_paths``, one part's rows at a time."""
        columns: dict[str, list[np.ndarray]] = {n: [] for n in _COLUMNS}
        counts, lengths = [], Counter()
        for k, path in enumerate(part_paths):
            with h5py.File(path, "r") as handle:
                rows = read_rows(handle)
            counts.append(len(rows))
            lengths.update(int(r[BAND_LENGTH]) for r in rows if r.get(BAND_LENGTH) is not None)
            ok = [(i, r) for i, r in enumerate(rows) if r["status"] == "ok"]
            for name, values in _part_columns(k, ok).items():
                columns[name].append(values)
        arrays = {
            n: np.concatenate(v) if v else np.zeros((0, *shape), dtype)
            for (n, v), (dtype, shape) in zip(columns.items(), _COLUMNS.values(), strict=True)
        }
        return cls(
            **arrays,
            part_rows=np.array(counts, np.int64),
            sizes=dict(lengths.most_common()),
        )

    def first_of_key(self) -> np.ndarray:
        """For each record, the first record (in manifest order) of its duplicate key:
        itself unless it is a later copy of the same cell and year."""
        if not len(self):
            return np.zeros(0, np.int64)
        _, first, inverse = np.unique(_as_keys(self.key), return_index=True, return_inverse=True)
        return first[inverse.ravel()]

    def cell_codes(self, select: np.ndarray) -> np.ndarray:
        """Integer codes of the cell ids of the records ``select`` (a mask): equal ids,
        equal codes (in the order of their digests, not of their text)."""
        _, inverse = np.unique(_as_keys(self.cell[select]), return_inverse=True)
        return inverse.ravel().astype(np.int64)

    def ordered_cell_codes(self, select: np.ndarray, part_paths: Sequence[Path]) -> np.ndarray:
        """Integer codes of the cell ids of the records ``select`` in the sorted order of
        the ids' text (what numbers the random split's locations): the text of each
        distinct id is read back from its first record's row, and held only here."""
        codes = self.cell_codes(select)
        if not len(codes):
            return codes
        _, first = np.unique(codes, return_index=True)
        chosen = np.flatnonzero(select)[first]  # the first record of each code
        texts: list[str] = [""] * len(chosen)
        for k in np.unique(self.part[chosen]):
            mine = np.flatnonzero(self.part[chosen] == k)
            mine = mine[np.argsort(self.row[chosen[mine]])]  # rows read in increasing order
            with h5py.File(part_paths[int(k)], "r") as handle:
                for code, row in zip(mine, read_rows(handle, self.row[chosen[mine]]), strict=True):
                    texts[code] = cell_text(row)
        order = sorted(range(len(texts)), key=texts.__getitem__)
        rank = np.empty(len(texts), np.int64)
        rank[order] = np.arange(len(texts))
        return rank[codes]

    def bounds(self, k: int) -> tuple[int, int]:
        """The records of part ``k``: ``self.part[lo:hi]``."""
        lo, hi = np.searchsorted(self.part, [k, k + 1])
        return int(lo), int(hi)


#: The per-record columns of :class:`StagedRecords`: dtype and trailing shape.
_COLUMNS: dict[str, tuple[type | str, tuple[int, ...]]] = {
    "part": (np.int32, ()),
    "row": (np.int32, ()),
    "staged": (np.int32, ()),
    "latitude": (np.float64, ()),
    "longitude": (np.float64, ()),
    "label": (np.float64, ()),
    "cell": (np.uint8, (DIGEST_BYTES,)),
    "key": (np.uint8, (DIGEST_BYTES,)),
}


def _part_columns(k: int, ok: list[tuple[int, dict]]) -> dict[str, np.ndarray]:
    """The :data:`_COLUMNS` of part ``k``'s valid rows ``(position, row)``."""
    n = len(ok)

    def digests(values: list[bytes]) -> np.ndarray:
        return np.frombuffer(b"".join(values), np.uint8).reshape(n, DIGEST_BYTES)

    return {
        "part": np.full(n, k, np.int32),
        "row": np.array([i for i, _ in ok], np.int32),
        "staged": np.array([r["staged"] for _, r in ok], np.int32),
        "latitude": np.array([r["latitude"] for _, r in ok], np.float64),
        "longitude": np.array([r["longitude"] for _, r in ok], np.float64),
        "label": np.array([r["label"] for _, r in ok], np.float64),
        "cell": digests([digest(cell_text(r)) for _, r in ok]),
        "key": digests([digest(duplicate_key(r)) for _, r in ok]),
    }
