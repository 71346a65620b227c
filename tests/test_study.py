"""The study module: experiment list, caching by configuration, table, plot, CLI twin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from shards_factory import write_tiny_shards

from metrics import balanced_mae
from utils.dataloader import ShardDataset
from utils.paths import project_root
from utils.study.calibration import BalancedCalibration
from utils.study.study import (
    NON_RESULT_FIELDS,
    Experiment,
    MemoryCachedDataset,
    StudyConfig,
    cached_datasets,
    calibrated_rows,
    default_experiments,
    experiment_key,
    method_family,
    per_bin_plot,
    results_table,
    run_study,
    select_experiments,
    study,
    to_markdown,
)
from utils.train import TrainConfig

torch.set_num_threads(1)


def test_default_experiments_cover_the_study() -> None:
    names = [e.name for e in default_experiments()]
    assert len(names) == len(set(names)) == 15
    for expected in ("L2", "L3", "LDS", "focal-R", "BMC", "BNI", "DenseLoss"):
        assert expected in names
    for a in ("0.25", "0.5", "0.75", "1"):
        assert f"weighted L2 a={a}" in names and f"resampling a={a}" in names
    by_name = {e.name: e for e in default_experiments()}
    assert by_name["resampling a=0.5"].resample and by_name["resampling a=0.5"].alpha == 0.5
    assert by_name["weighted L2 a=1"].weighting == "kde" and not by_name["weighted L2 a=1"].resample
    assert by_name["focal-R"].slug == "focal-r"
    with pytest.raises(ValueError, match="valid"):
        select_experiments(default_experiments(), ["L2", "L7"])


def test_results_table_changes_against_the_baseline_and_markdown(tmp_path: Path) -> None:
    results = pd.DataFrame(
        {
            "name": ["L2", "BMC"],
            "bmae": [0.5, 0.4],
            "mae": [0.2, 0.22],
            "rmse": [0.3, 0.3],
            "r2": [0.5, 0.6],
            "many_mae": [0.1, 0.1],
            "medium_mae": [0.2, 0.2],
            "few_mae": [0.9, np.nan],
            "best_epoch": [3, 4],
        }
    )
    table = results_table(results, tmp_path)
    assert table.loc[1, "b-MAE vs L2 %"] == pytest.approx(-20.0)
    assert table.loc[1, "MAE vs L2 %"] == pytest.approx(10.0)
    assert table.loc[0, "b-MAE vs L2 %"] == 0
    md = (tmp_path / "results.md").read_text().splitlines()
    assert md[0].startswith("| method | b-MAE | MAE |")
    assert md[3].startswith("| BMC | 0.400 | 0.220 |") and "–" in md[3]
    assert pd.read_csv(tmp_path / "results.csv").shape == table.shape
    assert to_markdown(table.iloc[:0]).count("\n") == 2


def test_results_table_over_seeds_pairs_each_seed_with_its_baseline() -> None:
    base = {"rmse": 0.3, "r2": 0.5, "many_mae": 0.1, "medium_mae": 0.2, "few_mae": 0.9}
    results = pd.DataFrame(
        [
            {"name": "L2", "seed": 0, "bmae": 0.5, "mae": 0.2, "best_epoch": 3, **base},
            {"name": "BMC", "seed": 0, "bmae": 0.4, "mae": 0.2, "best_epoch": 4, **base},
            {"name": "L2", "seed": 1, "bmae": 0.4, "mae": 0.25, "best_epoch": 5, **base},
            {"name": "BMC", "seed": 1, "bmae": 0.44, "mae": 0.2, "best_epoch": 2, **base},
        ]
    )
    table = results_table(results).set_index("method")
    assert list(table.index) == ["L2", "BMC"] and (table["seeds"] == 2).all()
    assert table.loc["BMC", "b-MAE"] == pytest.approx(0.42)
    # -20 % against seed 0's L2, +10 % against seed 1's: mean -5 %, sd of the two
    assert table.loc["BMC", "b-MAE vs L2 %"] == pytest.approx(-5.0)
    assert table.loc["BMC", "b-MAE vs L2 % sd"] == pytest.approx(np.std([-20, 10], ddof=1))
    assert table.loc["BMC", "MAE vs L2 %"] == pytest.approx((0 - 20) / 2)
    assert table.loc["L2", "b-MAE vs L2 % sd"] == 0
    assert (
        list(table.columns).index("b-MAE vs L2 % sd")
        == list(table.columns).index("b-MAE vs L2 %") + 1
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainConfig]:
    root = tmp_path_factory.mktemp("study")
    write_tiny_shards(root / "shards", size=10)
    cfg = TrainConfig(
        run_dir=str(root),
        model="tiny_cnn",
        epochs=1,
        batch_size=16,
        progress=False,
        tensorboard=False,
        augment=False,
    )
    return root, cfg


def test_run_study_trains_caches_and_plots(tiny_run: tuple[Path, TrainConfig]) -> None:
    root, cfg = tiny_run
    experiments = select_experiments(
        default_experiments(), ["L2", "resampling a=0.5", "BMC", "LDS"]
    ) + [Experiment("FDS L2", fds=True, fds_kwargs={"bins": 6, "window": 3})]
    out = root / "train" / "study"
    results = run_study(experiments, cfg, out)
    assert list(results["name"]) == [e.name for e in experiments]
    assert not results["cached"].any()
    assert results["bmae"].notna().all() and (results["bmae"] > 0).all()
    for run in results["dir"]:
        result = json.loads((Path(run) / "result.json").read_text())
        assert result["test"]["n"] == 16 and (Path(run) / "best.pt").is_file()
    # same configuration: every run is cached and not trained again
    again = run_study(experiments, cfg, out)
    assert again["cached"].all()
    pd.testing.assert_frame_equal(again.drop(columns="cached"), results.drop(columns="cached"))
    # another budget is another configuration: a new run folder
    longer = run_study(experiments[:1], replace(cfg, epochs=2), out)
    assert not longer["cached"].any() and longer["dir"][0] != results["dir"][0]
    fig = per_bin_plot(results, out / "per_bin.png")
    assert (out / "per_bin.png").stat().st_size > 0
    # one panel per family of the non-baseline methods, each with the L2 line
    families = {method_family(n) for n in results["name"] if n != "L2"}
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert sorted(ax.get_title() for ax in panels) == sorted(families)
    for ax in panels:
        labels = [line.get_label() for line in ax.get_lines()]
        assert labels[0] == "L2" and len(labels) >= 2
        assert all(len(line.get_xdata()) == 6 for line in ax.get_lines())


def _calibrated_bmae(run: Path, train_labels: np.ndarray, alpha: float = 0.5) -> float:
    """b-MAE of a run's test predictions calibrated on its validation predictions."""
    val, test = (pd.read_csv(run / f"predictions_{s}.csv") for s in ("val", "test"))
    fitted = BalancedCalibration.fit(val["prediction"], val["label"], train_labels, alpha=alpha)
    return balanced_mae(fitted(test["prediction"]), test["label"], 6, None, reference=train_labels)


def test_study_over_two_seeds(tiny_run: tuple[Path, TrainConfig]) -> None:
    root, cfg = tiny_run
    outputs = study(
        StudyConfig(
            run_dir=str(root),
            experiments=["L2", "L3"],
            out_name="seeds",
            seeds=(0, 1),
            calibration_alphas=(0.5,),
            calibrate=("L2", "L3", "BMC"),  # BMC is not in this study: no rows
            train=replace(cfg, epochs=1),
        )
    )
    calibrated = "L2 + calibration a=0.5"
    assert list(outputs.results["seed"]) == [0, 0, 1, 1, 0, 1, 0, 1]
    assert outputs.results["dir"].nunique() == 4  # each seed is its own cached run
    assert list(outputs.table["method"]) == ["L2", "L3", calibrated, "L3 + calibration a=0.5"]
    assert (outputs.table["seeds"] == 2).all()
    mean_l3 = outputs.results.query("name == 'L3'")["bmae"].mean()
    assert outputs.table.set_index("method").loc["L3", "b-MAE"] == pytest.approx(mean_l3)
    assert outputs.per_bin_png.stat().st_size > 0
    # the calibrated row: the seed's L2 predictions mapped by a fit on its validation split
    l2 = outputs.results.query("name == 'L2' and seed == 0").iloc[0]
    val = pd.read_csv(Path(l2["dir"]) / "predictions_val.csv")
    assert len(val) == len(ShardDataset(root / "shards", "val"))
    train_labels = ShardDataset(root / "shards", "train").labels
    row = outputs.results.query("name == @calibrated and seed == 0").iloc[0]
    assert row["bmae"] == pytest.approx(_calibrated_bmae(Path(l2["dir"]), train_labels))
    assert row["train_seconds"] == 0.0
    l3 = outputs.results.query("name == 'L3' and seed == 1").iloc[0]  # another experiment's
    row = outputs.results.query("name == 'L3 + calibration a=0.5' and seed == 1").iloc[0]
    assert row["bmae"] == pytest.approx(_calibrated_bmae(Path(l3["dir"]), train_labels))
    assert row["dir"] == l3["dir"]
    # runs cached before validation predictions were written: no rows, a message
    (Path(l2["dir"]) / "predictions_val.csv").unlink()
    assert calibrated_rows(outputs.results, (0.5,), train_labels, cfg).shape[0] == 1  # seed 1


def test_cli_twin_runs_the_study(tiny_run: tuple[Path, TrainConfig]) -> None:
    root, _ = tiny_run
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "utils.study.run",
            "--run-dir",
            str(root),
            "--experiments",
            "L2",
            "L3",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--device",
            "cpu",
            "--out-name",
            "cli",
            "--calibration-alphas",
        ],
        cwd=project_root(),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| L3 |" in done.stdout
    table = pd.read_csv(root / "train" / "cli" / "results.csv")
    assert list(table["method"]) == ["L2", "L3"]
    assert (root / "train" / "cli" / "per_bin_mae.png").is_file()


def test_memory_cache_returns_what_the_shards_hold(tiny_run: tuple[Path, TrainConfig]) -> None:
    root, cfg = tiny_run
    fresh = ShardDataset(root / "shards", "val", crop=None)
    cached = MemoryCachedDataset(ShardDataset(root / "shards", "val", crop=None))
    for i in (0, 5, 0):
        torch.testing.assert_close(cached[i]["image"], fresh[i]["image"])
        assert cached[i]["label"] == fresh[i]["label"] and cached[i]["index"] == i
    assert cached.labels is cached.dataset.labels and len(cached) == 16
    flipped = MemoryCachedDataset(ShardDataset(root / "shards", "train"), augment=True)
    torch.manual_seed(3)
    views = [flipped[0]["image"] for _ in range(8)]
    assert any(not torch.equal(v, views[0]) for v in views)  # flips/rot90 drawn per read
    assert all(torch.equal(v.flatten().sort()[0], views[0].flatten().sort()[0]) for v in views)
    with pytest.raises(ValueError, match="random"):
        MemoryCachedDataset(ShardDataset(root / "shards", "train", train=True, crop=8))
    assert cached_datasets(replace(cfg, crop=8)) is None
    assert cached_datasets(cfg, max_bytes=10) is None


def test_device_cache_filled_by_workers_holds_tensors_there(
    tiny_run: tuple[Path, TrainConfig],
) -> None:
    root, cfg = tiny_run
    fresh = ShardDataset(root / "shards", "val", crop=None)
    datasets = cached_datasets(replace(cfg, num_workers=2), device="cpu")
    assert datasets is not None
    val = datasets["val"]
    assert len(val._items) == len(val) == 16  # read up front by the loader workers
    for i in (0, 7):
        assert val[i]["image"].device == torch.device("cpu")
        torch.testing.assert_close(val[i]["image"], fresh[i]["image"])
    # flips/rot90 of a stored tensor draw the same as those of the NumPy path
    host = MemoryCachedDataset(ShardDataset(root / "shards", "train"), augment=True)
    kept = MemoryCachedDataset(ShardDataset(root / "shards", "train"), augment=True, device="cpu")
    for seed in range(12):
        torch.manual_seed(seed)
        a = host[1]["image"]
        torch.manual_seed(seed)
        torch.testing.assert_close(kept[1]["image"], a)


def test_cached_and_uncached_study_runs_agree(tiny_run: tuple[Path, TrainConfig]) -> None:
    root, cfg = tiny_run
    cfg = replace(cfg, augment=True)
    experiments = select_experiments(default_experiments(), ["weighted L2 a=0.5"])
    plain = run_study(experiments, cfg, root / "train" / "plain", cache_data=False)
    cached = run_study(experiments, cfg, root / "train" / "cached", cache_data=True)
    assert cached["bmae"][0] == pytest.approx(plain["bmae"][0], rel=1e-5)
    assert cached["mae"][0] == pytest.approx(plain["mae"][0], rel=1e-5)
    kept = run_study(experiments, cfg, root / "train" / "device", cache_data="device")
    assert kept["bmae"][0] == pytest.approx(plain["bmae"][0], rel=1e-5)
    with pytest.raises(ValueError, match="cache_data"):
        run_study(experiments, cfg, root / "train" / "x", cache_data="gpu")
    with pytest.raises(ValueError, match="crop=None"):
        run_study(experiments, replace(cfg, crop=8), root / "train" / "x", cache_data=True)


def test_cache_key_leaves_out_later_fields_at_their_old_behaviour(
    tiny_run: tuple[Path, TrainConfig],
) -> None:
    import hashlib  # noqa: PLC0415

    _, cfg = tiny_run
    experiment = select_experiments(default_experiments(), ["L2"])[0]
    config = {k: v for k, v in cfg.to_dict().items() if k not in NON_RESULT_FIELDS}
    assert config.pop("augment_on") == "cpu"
    payload = {"experiment": asdict(experiment), "train": config, "data": "d"}
    before = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode())
    assert experiment_key(experiment, cfg, "d") == before.hexdigest()  # runs cached before
    assert experiment_key(experiment, replace(cfg, augment_on="device"), "d") != before.hexdigest()


def test_study_with_batch_augmentation_on_the_device(tiny_run: tuple[Path, TrainConfig]) -> None:
    root, cfg = tiny_run
    cfg = replace(cfg, augment=True, augment_on="device")
    experiments = select_experiments(default_experiments(), ["L2"])
    for cache in (False, True):
        results = run_study(experiments, cfg, root / "train" / f"device{cache}", cache_data=cache)
        assert results["bmae"].notna().all() and (results["bmae"] > 0).all()
