"""Shared test fixtures. No test touches the network: Earth Engine is faked at its
network boundary, notebooks run headless with tiny parameters."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

# Once TensorFlow has run, a first import of triton (torch loads it lazily, e.g. for
# utils.train) crashes the process; the tests that read TFRecords with TensorFlow may run
# before those (any order of files), so triton is loaded first, where it is installed.
with contextlib.suppress(ImportError):
    import triton  # noqa: F401

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
