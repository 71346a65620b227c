"""Where a run's files live. Every notebook takes one ``run_dir`` parameter and derives
its folders from it, so the four notebooks find each other's outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def project_root() -> Path:
    """The repository root (the folder holding the four notebooks)."""
    return Path(__file__).resolve().parents[1]


def resolve(path: str | Path) -> Path:
    """An absolute path; relative paths are taken from the project root, so a notebook
    finds ``runs/demo`` whether Jupyter started it in its own folder or at the root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path


@dataclass(frozen=True)
class RunPaths:
    """The folders of one run: ``exports`` (TFRecords + labels.csv), ``shards`` (HDF5
    splits), ``train`` (checkpoints, logs, predictions), ``explain`` (LOTS figures)."""

    root: Path

    @classmethod
    def of(cls, run_dir: str | Path) -> RunPaths:
        """Paths of the run at ``run_dir`` (relative to the project root if relative)."""
        return cls(resolve(run_dir))

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def explain(self) -> Path:
        return self.root / "explain"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"
