"""The files of one study row, shared by the trained rows (:mod:`utils.study.study`) and
the MOSAIKS ridge rows (:mod:`utils.study.mosaiks`): ``result.json`` and the test /
validation predictions beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utils.atomic import atomic_open

RESULT_FILE = "result.json"
TEST_PREDICTIONS, VAL_PREDICTIONS = "predictions_test.csv", "predictions_val.csv"


def write_row_predictions(path: Path, target: np.ndarray, pred: np.ndarray) -> None:
    """``label, prediction`` per sample, written atomically to ``path``."""
    with atomic_open(path) as handle:
        handle.write(pd.DataFrame({"label": target, "prediction": pred}).to_csv(index=False))


def json_ready(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with NumPy values as plain lists and floats (for ``json.dump``)."""
    return json.loads(
        json.dumps(report, default=lambda v: v.tolist() if hasattr(v, "tolist") else float(v))
    )
