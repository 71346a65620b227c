"""Every notebook: outputs stripped, one cell tagged `parameters` holding `run_dir`,
the other code cells short (logic lives in the packages)."""

from __future__ import annotations

import json
import subprocess

import pytest

from utils.paths import project_root
from utils.pipeline import STAGES

NOTEBOOKS = [stage.notebook for stage in STAGES]
MAX_CELL_LINES = 15


def test_pipeline_lists_the_four_notebooks() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "*.ipynb"], capture_output=True, text=True, cwd=project_root()
    ).stdout.split()
    assert sorted(NOTEBOOKS) == sorted(
        [
            "extract_GPS_images/image.ipynb",
            "split_and_batch.ipynb",
            "main.ipynb",
            "visualization.ipynb",
            "map.ipynb",
        ]
    )
    if tracked:  # in a git checkout every notebook of the pipeline is committed
        assert set(NOTEBOOKS) <= set(tracked)


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_is_clean_and_parameterised(notebook: str) -> None:
    nb = json.loads((project_root() / notebook).read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, f"{notebook} has no code"
    for cell in code:
        assert not cell.get("outputs"), f"{notebook}: outputs committed; strip them"
        assert cell.get("execution_count") is None, f"{notebook}: execution counts committed"
        lines = "".join(cell["source"]).splitlines()
        tags = cell.get("metadata", {}).get("tags", [])
        if "parameters" not in tags:  # one knob a line: the parameters cell may be longer
            assert len(lines) <= MAX_CELL_LINES, f"{notebook}: a cell of {len(lines)} lines"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{notebook}: needs exactly one cell tagged 'parameters'"
    assert tagged[0] is code[0], f"{notebook}: the parameters cell must be the first code cell"
    assert "run_dir" in "".join(tagged[0]["source"])
