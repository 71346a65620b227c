"""visualization.ipynb and its CLI twin ``python -m visualization.explain`` on a tiny run:
tiny shards (tests/shards_factory.py) and a tiny CNN trained for a few steps, saved as the
baseline checkpoint of main.ipynb."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from shards_factory import write_tiny_shards

from utils.checkpoint import save_checkpoint
from utils.dataloader import ShardDataset
from utils.models import build_model
from utils.paths import RunPaths
from visualization import explain as ex
from visualization.explain import main as lots_main

FIGURES = ("lots_heatmaps", "band_quarter_importance", "lots_traces", "lots_vs_baselines")
TINY = dict(examples_per_bin=1, iterations=8, step=0.002, faithfulness_steps=4)


def make_run(run_dir: Path, *, size: int = 12) -> Path:
    """Tiny shards plus ``train/<baseline>/best.pt`` of a tiny CNN fitted for a few steps."""
    paths = RunPaths.of(run_dir)
    write_tiny_shards(paths.shards, sizes={"train": 48, "val": 8, "test": 24}, size=size)
    config = {"channels": "s2", "dw_mode": "onehot", "crop": None, "model": "tiny_cnn"}
    ds = ShardDataset(paths.shards, "train", dw_mode="onehot")
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    y = torch.as_tensor(ds.labels)
    torch.manual_seed(0)
    model = build_model("tiny_cnn", ds.num_channels)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    return save_checkpoint(
        paths.train / ex.BASELINE_EXPERIMENT / "best.pt", model=model, epoch=1, config=config
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lots_run") / "run"
    make_run(root)
    return root


def check_outputs(explain: Path) -> pd.DataFrame:
    for name in FIGURES:
        with Image.open(explain / f"{name}.png") as im:
            assert im.format == "PNG" and min(im.size) > 100
    faith = pd.read_csv(explain / "faithfulness.csv", index_col="method")
    assert list(faith.index) == [
        "LOTS poorer",
        "LOTS richer",
        "saliency",
        "integrated_gradients",
        "occlusion",
        "random",
    ]
    assert np.isfinite(faith.to_numpy()).all()
    return faith


@pytest.mark.notebook
def test_visualization_notebook(run: Path, run_notebook) -> None:
    executed = run_notebook("visualization.ipynb", run_dir=str(run), **TINY)
    check_outputs(RunPaths.of(run).explain)
    pushes = pd.read_csv(RunPaths.of(run).explain / "pushes.csv")
    assert (pushes["pred_richer"] > pushes["prediction"]).all()
    nb = json.loads(executed.read_text())
    text = json.dumps([c.get("outputs", []) for c in nb["cells"]])
    assert "image/png" in text  # the figures are shown in the notebook
    assert "pred_poorer" in text and "deletion_auc" in text


def test_cli_twin_same_session_as_notebook(run: Path, tmp_path: Path) -> None:
    out = lots_main(
        [
            "--run-dir",
            str(run),
            "--examples-per-bin",
            "1",
            "--iterations",
            "8",
            "--step",
            "0.002",
            "--faithfulness-steps",
            "4",
            "--seed",
            "1",
        ]
    )
    explain = RunPaths.of(run).explain
    check_outputs(explain)
    pushes = out["pushes"]
    # one example per non-empty bin, pushed down and up
    assert len(pushes) == pushes["bin"].nunique() >= 3
    assert (pushes["pred_poorer"] < pushes["prediction"]).all()
    assert (pushes["pred_richer"] > pushes["prediction"]).all()
    saved = json.loads((explain / "config.json").read_text())
    assert saved["checkpoint_used"].endswith("l2_baseline/best.pt") and saved["seed"] == 1


def test_session_ranges_and_examples(run: Path) -> None:
    session = ex.load_session(ex.ExplainConfig(run_dir=str(run), **TINY))
    names = session.band_names
    assert len(names) == 24 + 9 and names[-1] == "DW_snow_and_ice"
    # S2 channels: reflectance [0, 2] standardised; one-hot DW: [0, 1] and frozen
    stats = json.loads((RunPaths.of(run).shards / "stats.json").read_text())
    i = stats["bands"].index("B4_q1")
    lo = (0.0 - stats["mean"][i]) / stats["std"][i]
    assert session.lower[names.index("B4_q1")].item() == pytest.approx(lo, rel=1e-5)
    assert session.upper[-1].item() == 1.0 and not session.mutable[-1]
    assert session.mutable[:24].all()
    a, b = ex.pick_examples(session), ex.pick_examples(session)
    assert np.array_equal(a.index, b.index) and torch.equal(a.x, b.x)  # same seed
    assert set(a.bin) == {k for k, c in a.bin_counts.items() if c}
    pushes = ex.push_examples(session, a)
    dw = session.mutable.logical_not()
    assert torch.equal(pushes["richer"].x_adv[:, dw], a.x[:, dw])  # DW never perturbed


def test_missing_checkpoint_names_the_notebook(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="main.ipynb"):
        ex.load_session(ex.ExplainConfig(run_dir=str(tmp_path / "empty")))


@pytest.mark.notebook
def test_notebook_options_reach_the_config(run: Path, run_notebook) -> None:
    """A field outside the parameters cell, given through ``options``, is used."""
    executed = run_notebook("visualization.ipynb", run_dir=str(run), options={"n_bins": 4}, **TINY)
    nb = json.loads(executed.read_text())
    printed = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    counts = re.search(r"test samples per bin: (\{.*\})", printed)
    assert counts is not None, printed
    assert list(ast.literal_eval(counts.group(1))) == [0, 1, 2, 3]  # 4 bins, not the 6 default
