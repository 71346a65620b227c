"""The study over several spatial splits: each split seed gets its own shards and study
folder, the table averages the changes over the splits, the run's own split is reused."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from extract_GPS_images.synthetic import generate_world
from utils.batching.split_and_batch import SplitConfig, run_split_and_batch
from utils.dataloader import ShardDataset
from utils.study import run as bench_study
from utils.study.repeated_splits import repeated_split_study, split_config_of
from utils.study.study import StudyConfig
from utils.train import TrainConfig

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repeated")
    generate_world(root / "exports", n=80, size=8, seed=5, corrupt_fraction=0.0, progress=False)
    cfg = SplitConfig(shard_size=16, block_km=60.0, seed=42, progress=False)
    run_split_and_batch(root / "exports", root / "shards", cfg)
    return root


def _test_cells(shards: Path) -> set[str]:
    manifest = pd.read_csv(shards / "manifest.csv")
    return set(manifest.loc[manifest["split"] == "test", "cell_id"].astype(str))


def test_split_config_is_read_from_the_shards(run_dir: Path, tmp_path: Path) -> None:
    cfg = split_config_of(run_dir / "shards")
    assert cfg.seed == 42 and cfg.shard_size == 16 and cfg.block_km == 60.0
    with pytest.raises(FileNotFoundError, match="no training shards"):
        split_config_of(tmp_path)


def test_study_over_two_splits(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = TrainConfig(
        run_dir=str(run_dir),
        model="tiny_cnn",
        epochs=1,
        batch_size=16,
        progress=False,
        tensorboard=False,
        augment=False,
    )
    cfg = StudyConfig(
        run_dir=str(run_dir),
        experiments=["L2", "L3"],
        out_name="rs",
        calibration_alphas=(0.5,),
        train=train,
    )
    outputs = repeated_split_study(cfg, (42, 7))
    other = run_dir / "shards_split7"
    assert (other / "report.json").is_file()
    assert split_config_of(other).seed == 7 and split_config_of(other).shard_size == 16
    assert _test_cells(other) != _test_cells(run_dir / "shards")  # another test set

    results = outputs.results
    assert list(results["seed"]) == ["42/0", "42/0", "42/0", "7/0", "7/0", "7/0"]
    assert list(results["name"][:3]) == ["L2", "L3", "L2 + calibration a=0.5"]
    # each split trained and tested on its own shards, in its own study folder
    for split, shards, folder in ((42, run_dir / "shards", "rs"), (7, other, "rs_split7")):
        runs = results[(results["split_seed"] == split) & (results["name"] == "L3")]
        result = json.loads((Path(runs["dir"].iloc[0]) / "result.json").read_text())
        assert Path(runs["dir"].iloc[0]).parent.name == folder
        assert result["test"]["n"] == len(ShardDataset(shards, "test"))

    table = outputs.table.set_index("method")
    assert (table["seeds"] == 2).all()
    l3 = results[results["name"] == "L3"]["bmae"]
    assert table.loc["L3", "b-MAE"] == pytest.approx(l3.mean())
    bmae = results.set_index(["split_seed", "name"])["bmae"]
    changes = [100 * (bmae[(s, "L3")] / bmae[(s, "L2")] - 1) for s in (42, 7)]
    assert table.loc["L3", "b-MAE vs L2 %"] == pytest.approx(sum(changes) / 2)
    assert outputs.table_md.parent.name == "rs_splits" and outputs.per_bin_png.is_file()

    again = repeated_split_study(cfg, (42, 7))  # everything cached, nothing re-split
    assert again.results["bmae"].tolist() == pytest.approx(results["bmae"].tolist())
    capsys.readouterr()
    bench_study.main(cfg, [42, 7])  # the command line's path: the table over the splits
    printed = capsys.readouterr().out
    assert "rs_splits" in printed and "| L3 |" in printed and "cached" in printed


def test_split_seeds_must_be_distinct(run_dir: Path) -> None:
    with pytest.raises(ValueError, match="distinct split seeds"):
        repeated_split_study(StudyConfig(run_dir=str(run_dir)), (1, 1))
