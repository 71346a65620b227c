"""map.ipynb runs headless after a tiny training run: grid, imagery without labels,
predict split, map files, regions, figures and the error against the synthetic truth."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from extract_GPS_images.synthetic import generate_world
from utils.batching.split_and_batch import SplitConfig, run_split_and_batch
from utils.paths import RunPaths
from utils.train import TrainConfig, fit


@pytest.mark.notebook
def test_map_notebook_maps_a_grid_of_the_world(run_notebook, tmp_path: Path) -> None:
    paths = RunPaths.of(tmp_path / "run")
    generate_world(paths.exports, n=150, size=8, seed=3, corrupt_fraction=0.0, progress=False)
    run_split_and_batch(paths.exports, paths.shards, SplitConfig(split="random", progress=False))
    fit(
        TrainConfig(
            run_dir=str(paths.root),
            model="tiny_cnn",
            crop=None,
            epochs=1,
            batch_size=32,
            device="cpu",
            progress=False,
            tensorboard=False,
        )
    )
    run_notebook("map.ipynb", run_dir=str(paths.root), box_deg=0.3, cell_m=10_000, device="cpu")
    out = paths.root / "map" / "out"
    places = pd.read_csv(paths.root / "map" / "places.csv")
    table = pd.read_csv(out / "predictions.csv")
    assert len(table) == len(places) > 4
    assert sorted(table["cell_id"]) == sorted(places["cell id"])
    for name in (
        "predictions.geojson",
        "predictions_2019.tif",
        "intervals.json",
        "regions.csv",
        "regions.geojson",
        "map_prediction.png",
        "map_regions.png",
        "map_truth.png",
    ):
        assert (out / name).is_file(), name
    error = json.loads((out / "map_error.json").read_text())
    assert error["n"] == len(places) and error["mae"] > 0
