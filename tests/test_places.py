"""Places without labels: both backends extract them without a label, the synthetic world
keeps their truth apart, split_and_batch puts them in the ``predict`` split."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from gee_fakes import FakeComputePixels, offline_ee

from extract_GPS_images.gee_download import (
    DownloadConfig,
    download_locations,
    locations_from_labels,
)
from extract_GPS_images.gee_recipe import RecipeConfig, metadata_bands
from extract_GPS_images.grid import make_grid, write_places
from extract_GPS_images.labels import read_labels
from extract_GPS_images.synthetic import (
    TRUTH_FILE,
    WorldConfig,
    generate_world,
    invent_places,
    wealth_field,
)
from utils import hdf5_schema as hs
from utils.batching.example_wire import decode_example
from utils.batching.split_and_batch import SplitConfig, run_split_and_batch
from utils.batching.validate_records import RecordRules, iter_records, read_file
from utils.dataloader import ShardDataset

SIZE = 8
WORLD = dict(n=60, size=SIZE, seed=3, progress=False)
BBOX = (20.0, 20.5, 105.0, 105.5)


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("places")
    grid = make_grid(BBOX, cell_m=10_000, years=(2019,))
    write_places(grid, root / "places.csv")
    report = generate_world(
        root / "exports", labels=root / "places.csv", corrupt_fraction=0.0, bbox=BBOX, **WORLD
    )
    return root, grid, report


def test_field_gives_invented_places_their_own_labels() -> None:
    cfg = WorldConfig(n=80, seed=5, years=(2016, 2019))
    invented = invent_places(cfg)
    field = wealth_field(cfg)
    from extract_GPS_images.synthetic import _draw_world

    _, pts, latent, growth = _draw_world(cfg)
    wealth = field.wealth(latent)
    last = invented[invented["year"] == 2019]["label"].to_numpy()
    np.testing.assert_allclose(wealth, last, atol=2e-6)
    # an arbitrary place gets a draw of the same field: deterministic, in the index's range
    frame = pd.DataFrame(
        {
            "latitude": [15.0, 15.0],
            "longitude": [106.0, 106.0],
            "cell_key": ["a", "b"],
            "year": [2019, 2019],
        }
    )
    one, two = field.at(frame), field.at(frame)
    np.testing.assert_array_equal(one, two)
    assert one[0] != one[1] and ((0.281 <= one) & (one <= 3.095)).all()


def test_synthetic_places_carry_no_label_and_truth_stays_apart(places) -> None:
    root, grid, report = places
    truth = pd.read_csv(report.out_dir / TRUTH_FILE)
    assert len(truth) == grid.n_cells == len(report.labels)
    assert truth["true_wealth"].between(0.281, 3.095).all() and truth["true_wealth"].std() > 0.05
    assert read_labels(report.out_dir / "labels.csv").frame["label"].isna().all()
    for file, value in zip(truth["file"], truth["true_wealth"], strict=True):
        (raw,) = list(iter_records(report.out_dir / file))
        features = decode_example(raw)
        assert "label" not in features
        constants = {
            k: float(v[0])
            for k, v in features.items()
            if not isinstance(v, list) and np.ptp(v) == 0
        }
        assert all(not math.isclose(c, value, abs_tol=1e-4) for c in constants.values()), file
        result = read_file(report.out_dir / file, RecordRules(SIZE))
        assert np.isnan(result.records[0].sample.label)


def test_places_convert_into_the_predict_split(places) -> None:
    root, grid, report = places
    out = root / "shards"
    split = run_split_and_batch(report.out_dir, out, SplitConfig(shard_size=16, progress=False))
    assert split.per_split == {"train": 0, "val": 0, "test": 0, "predict": grid.n_cells}
    assert split.balanced
    manifest = pd.read_csv(out / hs.MANIFEST_FILE)
    records = manifest[manifest["status"] == "ok"]  # the world's own files are listed too
    assert len(records) == grid.n_cells
    assert (records["split"] == "predict").all() and records["label"].isna().all()
    ds = ShardDataset(out, "predict", stats=hs.read_stats(out))
    assert len(ds) == grid.n_cells
    assert sorted(ds[i]["cell_id"] for i in range(len(ds))) == sorted(grid.frame["cell_id"])
    assert np.isnan(ds.labels).all()


def test_mixed_run_quarantines_places_and_keeps_stats_from_train(tmp_path) -> None:
    labelled = generate_world(tmp_path / "a", corrupt_fraction=0.0, **WORLD)
    grid = make_grid(BBOX, cell_m=10_000, years=(2019,))
    write_places(grid, tmp_path / "places.csv")
    generate_world(
        tmp_path / "a" / "grid",
        labels=tmp_path / "places.csv",
        corrupt_fraction=0.2,
        bbox=BBOX,
        **WORLD,
    )
    (tmp_path / "a" / "grid" / "labels.csv").unlink()
    out = tmp_path / "shards"
    report = run_split_and_batch(tmp_path / "a", out, SplitConfig(shard_size=16, progress=False))
    damaged = pd.read_csv(tmp_path / "a" / "grid" / "corruptions.csv")
    assert report.per_split["predict"] == grid.n_cells - len(damaged)
    assert report.quarantined == len(damaged) and report.balanced
    assert sum(report.per_split[s] for s in hs.SPLITS) == len(labelled.labels)
    manifest = pd.read_csv(out / hs.MANIFEST_FILE)
    predict = manifest[manifest["split"] == "predict"]
    assert predict["file"].str.startswith("grid/").all() and predict["label"].isna().all()
    assert manifest.loc[manifest["split"].isin(hs.SPLITS), "label"].notna().all()
    assert hs.read_stats(out)["n_samples"] == report.per_split["train"]


def test_earth_engine_places_have_no_label_band(tmp_path) -> None:
    path = tmp_path / "places.csv"
    path.write_text("year,cell id,lat,lon\n2019,a,21.0,105.8\n2019,b,21.1,105.9\n")
    locations = locations_from_labels(read_labels(path))
    recipe = RecipeConfig(size=SIZE)
    with offline_ee():
        bands = metadata_bands(label=math.nan, lat=21.0, lon=105.8, year=2019, imagery_year=2019)
        import ee

        text = json.dumps(ee.serializer.encode(bands, for_cloud_api=True))
        assert '"label"' not in text and '["latitude", "longitude", "year", "imagery_year"]' in text
        fake = FakeComputePixels(recipe.record_bands, SIZE)
        download_locations(
            locations,
            out_dir=tmp_path / "out",
            recipe=recipe,
            compute_pixels=fake,
            config=DownloadConfig(progress=False),
            seed=0,
        )
    files = sorted((tmp_path / "out").glob("*.tfrecord.gz"))
    assert len(files) == 2
    for file in files:
        (raw,) = list(iter_records(file))  # the fake's pixels are noise: check the schema
        features = decode_example(raw)
        assert "label" not in features and {"latitude", "year", "B2_q1"} <= set(features)
