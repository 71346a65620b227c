"""Shared test fixtures. No test touches the network: Earth Engine is faked at its
network boundary, notebooks run headless with tiny parameters."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def run_notebook(tmp_path: Path):
    """Execute a notebook (path from the project root) headless with ``parameters``;
    returns the executed notebook's path. ``run_dir`` defaults to ``tmp_path/run``."""
    from utils.pipeline import execute_notebook

    def run(notebook: str, **parameters) -> Path:
        parameters.setdefault("run_dir", str(tmp_path / "run"))
        out = tmp_path / "executed" / Path(notebook).name
        return execute_notebook(notebook, out, parameters, timeout=600)

    return run
