"""LOTS pushes that arrive: the growing step of visualization.explain converges where the
fixed step stops at the cap; the rate is shown beside the heatmaps and warned about."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_lots_notebook import make_run

from visualization import explain as ex

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def session_and_examples(tmp_path_factory) -> tuple[ex.Session, ex.Examples, Path]:
    root = tmp_path_factory.mktemp("lots_conv") / "run"
    make_run(root)
    cfg = ex.ExplainConfig(run_dir=str(root), examples_per_bin=2, methods=(), push=2.0)
    session = ex.load_session(cfg)
    return session, ex.pick_examples(session), root


def test_growing_step_converges_and_the_fixed_one_warns(session_and_examples) -> None:
    session, examples, _ = session_and_examples
    grown = ex.push_examples(session, examples)  # the default grow
    rates = ex.convergence(grown)
    assert set(rates) == set(ex.PUSHES) and min(rates.values()) >= ex.MIN_CONVERGED
    for res in grown.values():
        assert rates and float(res.converged.float().mean()) in rates.values()
    session.cfg.grow = 1.0  # the original's fixed step
    try:
        with pytest.warns(UserWarning, match="raise iterations or grow"):
            fixed = ex.push_examples(session, examples)
    finally:
        session.cfg.grow = ex.GROW
    assert max(ex.convergence(fixed).values()) < ex.MIN_CONVERGED


def test_heatmap_columns_show_the_convergence(session_and_examples, monkeypatch) -> None:
    session, examples, _ = session_and_examples
    pushes = ex.push_examples(session, examples)
    pushes["richer"].converged[0] = False  # one push stopped at the cap
    shown: list[list[str]] = []
    real = ex.hm.plot_heatmap_grid

    def capture(rgb, heatmaps, path, **kwargs):
        shown.append(list(heatmaps))
        return real(rgb, heatmaps, path, **kwargs)

    monkeypatch.setattr(ex.hm, "plot_heatmap_grid", capture)
    maps = ex.lots_heatmaps(session, examples, pushes)
    ex.save_figures(session, examples, pushes, maps)
    rate = ex.convergence(pushes)["richer"]
    assert shown[0] == ["LOTS poorer\nconverged 100%", f"LOTS richer\nconverged {rate:.0%}"]
    assert ex._row_titles(examples, ex.push_table(examples, pushes))[0].endswith("*")
