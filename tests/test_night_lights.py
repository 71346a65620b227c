"""Night lights: the synthetic world's VIIRS-like ``NL`` band follows built-up area and
wealth (saturating in rich cores, nearly dark in the poorest places), travels through
split_and_batch into the shards and stats, and the Dataset takes it or leaves it."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from scipy.stats import spearmanr

from extract_GPS_images import schema
from extract_GPS_images.synthetic import NL_SATURATION, generate_world
from utils import hdf5_schema as hs
from utils.batching import example_wire
from utils.batching.split_and_batch import SplitConfig, run_split_and_batch
from utils.batching.validate_records import iter_records
from utils.dataloader import ShardDataset

SIZE = 16


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    base = tmp_path_factory.mktemp("nl")
    kw = dict(n=60, size=SIZE, seed=2, corrupt_fraction=0.0, progress=False)
    return (
        generate_world(base / "lit", night_lights=True, **kw),
        generate_world(base / "dark", **kw),
    )


def features(path):
    return example_wire.decode_example(next(iter_records(path)))


def test_lights_follow_wealth_and_built_up_area_and_saturate(worlds):
    lit, dark = worlds
    means, peaks, labels = [], [], []
    for path, label in zip(lit.files, lit.labels["label"], strict=True):
        f = features(path)
        nl = f[schema.NIGHT_LIGHTS_BAND]
        assert nl.size == SIZE * SIZE and nl.min() >= 0 and np.all(f["valid_NL"] == 1)
        means.append(float(nl.mean()))
        peaks.append(float(nl.max()))
        labels.append(label)
    means, peaks, labels = map(np.array, (means, peaks, labels))
    assert spearmanr(means, labels).statistic > 0.5
    rich, poor = labels >= np.quantile(labels, 0.9), labels <= np.quantile(labels, 0.1)
    assert peaks[rich].max() > 0.8 * NL_SATURATION and peaks.max() < NL_SATURATION + 3
    assert means[poor].mean() < 0.1 * means[rich].mean()
    # the lights have their own draws: every other band is as in the world without them
    first_lit, first_dark = features(lit.files[0]), features(dark.files[0])
    assert schema.NIGHT_LIGHTS_BAND not in first_dark
    for name in (*schema.image_band_names(), "valid_q1", "clear_q2"):
        np.testing.assert_array_equal(first_lit[name], first_dark[name])


def test_lights_go_through_the_shards_and_the_dataset_takes_or_leaves_them(worlds, tmp_path):
    lit, dark = worlds
    out = tmp_path / "shards"
    report = run_split_and_batch(lit.out_dir, out, SplitConfig(split="random", progress=False))
    assert report.ok == 60
    with h5py.File(sorted((out / "train").glob("*.h5"))[0]) as f:
        assert list(f.attrs[hs.ATTR_BANDS]) == [*schema.image_band_names(), "NL"]
        assert f[hs.DATA].shape[1] == 26
    stats = hs.read_stats(out)
    assert stats["bands"][-1] == "NL" and 0 < stats["mean"][-1] < NL_SATURATION
    assert 0 <= stats["p01"][-1] <= stats["p99"][-1] <= NL_SATURATION + 3
    with_nl = ShardDataset(out, "train", channels="s2_nl", dw_mode="none")
    without = ShardDataset(out, "train", channels="s2", dw_mode="none")
    assert with_nl.band_names[-1] == "NL" and with_nl.num_channels == 25
    assert without.num_channels == 24 and "NL" not in without.band_names
    np.testing.assert_allclose(
        with_nl[0]["image"][:24].numpy(), without[0]["image"].numpy(), atol=1e-6
    )
    raw = h5py.File(with_nl.files[0])[hs.DATA][0][25]
    expected = (raw - stats["mean"][-1]) / stats["std"][-1]
    np.testing.assert_allclose(with_nl[0]["image"][24].numpy(), expected, rtol=1e-5, atol=1e-5)
    dark_out = tmp_path / "dark"
    run_split_and_batch(dark.out_dir, dark_out, SplitConfig(split="random", progress=False))
    with pytest.raises(ValueError, match=r"bands \['NL'\] not in the shards"):
        ShardDataset(dark_out, "train", channels="s2_nl")
