"""Model selection (b-MAE, or b-MAE among epochs near the best MAE) and the study's
marks and warnings for runs too small or broken to mean much."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from shards_factory import write_tiny_shards

import utils.train as train_module
from utils.checkpoint import load_checkpoint
from utils.selection import MIN_STEPS, run_problems, select_epoch
from utils.study.study import (
    StudyConfig,
    default_experiments,
    results_table,
    run_study,
    select_experiments,
    study,
    study_warnings,
)
from utils.train import TrainConfig, fit

torch.set_num_threads(1)

# epoch 1 (A) is near the best MAE all along; epoch 2 (B) has the lowest b-MAE until
# epoch 3 lowers the best MAE and leaves B more than 5 % above it
SCRIPT = [(0.40, 0.50), (0.30, 0.52), (0.45, 0.49)]  # (val b-MAE, val MAE)


def _history(script: list[tuple[float, float]]) -> list[dict[str, float]]:
    return [{"epoch": i + 1, "val_bmae": b, "val_mae": m} for i, (b, m) in enumerate(script)]


def test_select_epoch_by_hand() -> None:
    history = _history(SCRIPT)
    assert select_epoch(history) == (2, {2})  # b-MAE alone: epoch 2
    assert select_epoch(history[:2], 0.05) == (2, {1, 2})
    chosen, candidates = select_epoch(history, 0.05)
    assert (chosen, candidates) == (1, {1, 3})  # B (0.52 > 1.05 x 0.49) is out
    assert select_epoch(history, 0.0)[0] == 3  # x = 0: the best MAE
    assert select_epoch(history, 1.0)[0] == 2  # everything near enough: b-MAE again
    nan = [{"epoch": 1, "val_bmae": math.nan, "val_mae": 0.3}, *_history(SCRIPT)[1:]]
    assert select_epoch(nan)[0] == 2
    with pytest.raises(ValueError, match="empty"):
        select_epoch([])
    with pytest.raises(ValueError, match="share"):
        select_epoch(history, -0.1)


def test_fit_keeps_an_earlier_candidate_when_the_chosen_epoch_drops_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tiny_shards(tmp_path / "shards", size=10)
    real, calls = train_module.evaluate, []

    def scripted(*args, **kwargs):  # the real evaluation, its b-MAE/MAE from SCRIPT
        report, pred, target = real(*args, **kwargs)
        bmae, mae = SCRIPT[len(calls)]
        calls.append(1)
        return {**report, "bmae": bmae, "mae": mae}, pred, target

    monkeypatch.setattr(train_module, "evaluate", scripted)
    cfg = TrainConfig(
        run_dir=str(tmp_path),
        model="tiny_cnn",
        epochs=3,
        batch_size=16,
        progress=False,
        tensorboard=False,
        augment=False,
        select_mae_within=0.05,
    )
    with pytest.warns(UserWarning, match="only 9 optimizer steps"):  # 3 batches x 3
        result = fit(cfg)
    assert [round(r["val_mae"], 2) for r in result.history] == [0.50, 0.52, 0.49]
    assert result.best["epoch"] == 1
    assert load_checkpoint(result.best_checkpoint)["epoch"] == 1
    assert sorted(p.name for p in result.out_dir.glob("candidate_e*.pt")) == [
        "candidate_e1.pt",
        "candidate_e3.pt",
    ]
    calls.clear()  # the original rule on the same script keeps epoch 2
    plain = fit(TrainConfig(**{**cfg.to_dict(), "select_mae_within": None, "experiment": "b"}))
    assert plain.best["epoch"] == 2 and load_checkpoint(plain.best_checkpoint)["epoch"] == 2
    assert not list(plain.out_dir.glob("candidate_e*.pt"))


def test_results_table_marks_runs_and_says_what_to_raise() -> None:
    results = pd.DataFrame(
        {
            "name": ["L2", "tiny", "broken"],
            "bmae": [0.5, 0.4, 0.6],
            "mae": [0.3, 0.3, 0.5],
            "rmse": [0.4, 0.4, 0.6],
            "r2": [0.5, 0.4, -0.2],
            **{k: [0.1, 0.1, 0.1] for k in ("many_mae", "medium_mae", "few_mae")},
            "best_epoch": [5, 5, 1],
            "val_r2": [0.4, 0.3, -0.55],
            "steps": [1000, 15, 1000],
        }
    )
    table = results_table(results)
    assert list(table["warnings"]) == ["", f"steps<{MIN_STEPS}", "test R2<0, val R2<0"]
    messages = study_warnings(table)
    assert len(messages) == 3
    assert (
        messages[0].startswith("tiny: only 15 optimizer steps")
        and "raise the epochs" in messages[0]
    )
    assert "select_mae_within" in messages[2]
    assert run_problems(steps=math.nan, test_r2=math.nan) == {}


def test_study_with_the_selection_option_on_tiny_shards(tmp_path: Path) -> None:
    write_tiny_shards(tmp_path / "shards", size=10)
    train = TrainConfig(
        model="tiny_cnn",
        epochs=3,
        batch_size=16,
        progress=False,
        tensorboard=False,
        augment=False,
    )
    cfg = StudyConfig(
        run_dir=str(tmp_path),
        experiments=["L2", "LDS"],
        calibration_alphas=(),
        select_mae_within=0.1,
        train=train,
    )
    with pytest.warns(UserWarning, match="optimizer steps"):
        outputs = study(cfg)
    assert "steps<300" in outputs.table["warnings"][0]
    assert outputs.warnings and "warnings" in outputs.table_md.read_text()
    for run_dir, kept in zip(outputs.results["dir"], outputs.results["best_epoch"], strict=True):
        history = pd.read_csv(Path(run_dir) / "history.csv").to_dict("records")
        assert kept == select_epoch(history, 0.1)[0]
        assert load_checkpoint(Path(run_dir) / "best.pt")["config"]["select_mae_within"] == 0.1
    # the cached rows keep their marks
    again = run_study(
        select_experiments(default_experiments(), ["L2"]),
        train.__class__(**{**train.to_dict(), "run_dir": str(tmp_path), "select_mae_within": 0.1}),
        cfg.out_dir(),
    )
    assert bool(again["cached"][0]) and again["steps"][0] == outputs.results["steps"][0]


def test_cli_twin_takes_the_selection_option() -> None:
    from utils.study.run import config_from_args, get_args_parser

    args = get_args_parser().parse_args(["--select-mae-within", "0.1"])
    assert config_from_args(args).select_mae_within == 0.1
    assert config_from_args(get_args_parser().parse_args([])).select_mae_within is None
