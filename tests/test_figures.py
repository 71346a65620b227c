"""The figures a user looks at first: examples show a quarter with data, the residual map
has the places' outline, the LOTS grid has a colour scale and the poorer/richer difference,
the study's per-bin plot groups the methods by family."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from extract_GPS_images.plots import shown_quarter  # noqa: E402
from utils.plots import places_outline, residual_map  # noqa: E402
from utils.study.study import method_family, per_bin_plot  # noqa: E402
from visualization.heatmaps import plot_heatmap_grid  # noqa: E402


def _bands(missing: tuple[str, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        f"{b}_{q}": (np.zeros((4, 4)) if q in missing else rng.random((4, 4)))
        for b in ("B2", "B3", "B4", "B8")
        for q in ("q1", "q2", "q3", "q4")
    }


def test_examples_show_a_quarter_with_data() -> None:
    assert shown_quarter(_bands(()), "q2") == ("q2", "")
    assert shown_quarter(_bands(("q2",)), "q2") == ("q1", "q2 missing")
    assert shown_quarter(_bands(("q1", "q2")), "q2") == ("q3", "q2 missing")
    assert shown_quarter(_bands(("q1", "q2", "q3", "q4")), "q2") == ("q2", "no quarter with data")


def test_residual_map_outlines_the_places(tmp_path) -> None:
    lon = np.array([100.0, 101.0, 101.0, 100.0, 100.5])
    lat = np.array([10.0, 10.0, 11.0, 11.0, 10.5])  # a square and its centre
    hull = places_outline(lon, lat)
    assert hull.shape == (5, 2) and np.array_equal(hull[0], hull[-1])
    assert not any(np.array_equal(p, [100.5, 10.5]) for p in hull)
    assert places_outline(lon[:2], lat[:2]) is None
    table = pd.DataFrame(
        {"longitude": lon, "latitude": lat, "label": lat / 10, "prediction": lat / 10 + 0.1}
    )
    fig = residual_map(table, tmp_path / "residuals.png")
    assert (tmp_path / "residuals.png").stat().st_size > 0
    assert "convex hull" in fig.axes[0].get_legend().get_texts()[0].get_text()
    plt.close(fig)


def test_heatmap_grid_has_a_colour_scale_and_the_difference(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(1)
    rgb = [rng.random((8, 8, 3)) for _ in range(2)]
    # column titles as the explanation stage writes them: name, then the converged share
    poorer, richer = "LOTS poorer\nconverged 90%", "LOTS richer\nconverged 100%"
    maps = {poorer: rng.random((2, 8, 8)), richer: rng.random((2, 8, 8))}
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to inspect it
    plot_heatmap_grid(rgb, maps, tmp_path / "grid.png", difference=(poorer, richer))
    fig = figures[-1]
    titles = [ax.get_title() for ax in fig.axes]
    assert "richer − poorer" in titles
    labels = [ax.get_xlabel() for ax in fig.axes]  # the two horizontal colour bars
    assert "map value (each map scaled to its maximum)" in labels
    assert "difference of the scaled maps" in labels
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_per_bin_plot_one_panel_per_family_against_l2() -> None:
    names = [
        "L2",
        "L3",
        "weighted L2 a=0.5",
        "weighted L2 a=1",
        "BMC",
        "BNI",
        "L2 + calibration a=0.5",
    ]
    results = pd.DataFrame(
        {
            "name": names,
            "per_bin_mae": [list(np.linspace(0.9, 0.2, 6) + 0.01 * i) for i in range(len(names))],
            "bin_edges": [list(np.linspace(0.28, 3.09, 7))] * len(names),
            "bin_counts": [[3, 29, 109, 281, 406, 172]] * len(names),
        }
    )
    fig = per_bin_plot(results)
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert set(panels) == {"other", "weighted L2", "Balanced MSE", "calibration"}
    assert [line.get_label() for line in panels["weighted L2"].get_lines()] == [
        "L2",
        "weighted L2 a=0.5",
        "weighted L2 a=1",
    ]
    assert method_family("resampling a=0.75") == "resampling"
    plt.close(fig)
