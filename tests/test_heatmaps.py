"""Heatmaps, importance, Captum baselines and deletion/insertion faithfulness on a tiny CNN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_lots import TinyCNN

from extract_GPS_images.schema import image_band_names, s2_channel_names
from visualization.baselines import (
    METHODS,
    attribute,
    deletion_insertion,
    faithfulness_table,
    random_heatmaps,
)
from visualization.heatmaps import (
    attribution_heatmap,
    channel_importance,
    dw_map,
    group_importance,
    perturbation_heatmap,
    plot_heatmap_grid,
    plot_importance,
    plot_traces,
    smooth,
    true_colour,
)
from visualization.lots import lots, push_target

torch.set_num_threads(1)
NAMES = s2_channel_names()  # 24 channels, quarter-major
N, H, W = 4, 16, 16


@pytest.fixture(scope="module")
def setup():
    model = TinyCNN(channels=24, seed=2).eval()
    x = torch.randn(N, 24, H, W, generator=torch.Generator().manual_seed(0))
    lower, upper = torch.full((24,), -3.0), torch.full((24,), 3.0)
    res = lots(model, x, push_target(model, x, 0.2), lower=lower, upper=upper, iterations=20)
    return model, x, res


def test_heatmap_shape_sign_finite(setup) -> None:
    _, x, res = setup
    for kw in ({}, {"sigma": 1.5}, {"sigma": 1.0, "clip_percentile": 95}):
        heat = perturbation_heatmap(x, res.x_adv, scale=np.full(24, 6.0), **kw)
        assert heat.shape == (N, H, W)
        assert np.all(np.isfinite(heat)) and np.all(heat >= 0)
        assert heat.max() > 0
    raw = perturbation_heatmap(x, res.x_adv)
    assert np.allclose(raw, (res.x_adv - x).abs().sum(1).numpy(), atol=1e-6)
    clipped = smooth(raw, clip_percentile=90)
    assert np.all(clipped <= np.percentile(raw.reshape(N, -1), 90, axis=1)[:, None, None] + 1e-12)


def test_smoothing_preserves_mass_and_rejects_bad_input() -> None:
    heat = np.zeros((1, 9, 9))
    heat[0, 4, 4] = 1.0
    blurred = smooth(heat, sigma=1.0)
    assert np.isclose(blurred.sum(), 1.0) and blurred[0, 4, 4] < 1.0
    with pytest.raises(ValueError, match="clip_percentile"):
        smooth(heat, clip_percentile=0)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        smooth(heat[0])


def test_importance_groups_bands_and_quarters(setup) -> None:
    _, x, res = setup
    imp = channel_importance(x, res.x_adv)
    assert imp.shape == (N, 24) and np.allclose(imp.sum(1), 1.0)
    per_band, per_quarter = group_importance(imp, NAMES)
    assert list(per_band) == ["B2", "B3", "B4", "B8", "B11", "B12"]
    assert list(per_quarter) == ["q1", "q2", "q3", "q4"]
    assert np.allclose(sum(per_band.values()), 1.0) and np.allclose(sum(per_quarter.values()), 1.0)
    # hand-made: only B8_q3 changes
    x0 = np.zeros((1, 25, 2, 2))
    x1 = x0.copy()
    x1[0, NAMES.index("B8_q3")] = 1.0
    imp1 = channel_importance(x0, x1)
    b, q = group_importance(imp1, image_band_names())
    assert b["B8"][0] == 1.0 and q["q3"][0] == 1.0 and b["B2"][0] == 0.0
    assert np.all(channel_importance(x0, x0) == 0)


def test_true_colour_and_dw() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((25, 8, 8))
    img[24] = rng.integers(0, 9, (8, 8))
    rgb = true_colour(img, image_band_names(), "q2")
    assert rgb.shape == (8, 8, 3) and rgb.min() >= 0 and rgb.max() <= 1
    # affine invariance: normalised data give the same picture
    assert np.allclose(true_colour(img * 3 - 1, image_band_names(), "q2"), rgb)
    assert np.array_equal(dw_map(img, image_band_names()), img[24].astype(int))
    assert dw_map(img[:24], NAMES) is None
    with pytest.raises(ValueError, match="B4_q1"):
        true_colour(img[:3], ["a", "b", "c"])


def test_captum_baselines_and_faithfulness(setup) -> None:
    model, x, res = setup
    heatmaps = {"LOTS": perturbation_heatmap(x, res.x_adv)}
    for method in METHODS:
        a = attribute(model, x, method, ig_steps=4, occlusion_window=4)
        assert a.shape == x.shape and torch.isfinite(a).all()
        heatmaps[method] = attribution_heatmap(a)
    heatmaps["random"] = random_heatmaps((N, H, W), seed=0)
    results = {k: deletion_insertion(model, x, v, steps=8) for k, v in heatmaps.items()}
    for r in results.values():
        assert r.deletion.shape == (N, 9) and np.all(r.deletion[:, 0] == 0)
        assert np.allclose(r.insertion[:, -1], 0, atol=1e-6)  # everything put back
        # all pixels removed = the baseline image, whatever the ranking
        assert np.allclose(r.deletion[:, -1], results["random"].deletion[:, -1], atol=1e-6)
    table = faithfulness_table(results)
    assert [row["method"] for row in table] == list(heatmaps)
    assert all(np.isfinite(row["deletion_auc"]) for row in table)
    with pytest.raises(ValueError, match="unknown attribution method"):
        attribute(model, x, "gradcam")


def test_deletion_rewards_the_true_pixels() -> None:
    """A model that reads only the top-left quadrant: a map pointing there beats its inverse."""

    class Corner(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :, :4, :4].sum((1, 2, 3))[:, None]

    x = torch.ones(2, 3, 8, 8)
    good = np.zeros((2, 8, 8))
    good[:, :4, :4] = 1.0
    fg = deletion_insertion(Corner(), x, good, steps=4)
    fb = deletion_insertion(Corner(), x, 1.0 - good, steps=4)
    assert fg.deletion_auc.mean() > fb.deletion_auc.mean()
    assert fg.insertion_auc.mean() < fb.insertion_auc.mean()


def test_figures_are_written(setup, tmp_path) -> None:
    _, x, res = setup
    names = NAMES
    rgb = [true_colour(img, names, "q1") for img in x.numpy()]
    dw = [np.random.default_rng(i).integers(0, 9, (H, W)) for i in range(N)]
    heat = perturbation_heatmap(x, res.x_adv, sigma=1.0)
    p1 = plot_heatmap_grid(
        rgb,
        {"LOTS richer": heat},
        tmp_path / "grid.png",
        dw=dw,
        row_titles=[f"s{i}" for i in range(N)],
    )
    imp = channel_importance(x, res.x_adv)
    b, q = group_importance(imp, names)
    p2 = plot_importance(
        {"richer": {k: v.mean() for k, v in b.items()}},
        {"richer": {k: v.mean() for k, v in q.items()}},
        tmp_path / "imp.png",
    )
    p3 = plot_traces(
        {"richer": res.distances.numpy()},
        {"richer": res.predictions.numpy()},
        tmp_path / "traces.png",
    )
    for p in (p1, p2, p3):
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    assert not list(tmp_path.glob(".tmp-*"))
