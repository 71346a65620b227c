"""Sample weights: each method against its formula; LDS against scipy's convolve1d."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import convolve1d
from scipy.stats import gaussian_kde

from loss.weights import (
    KERNELS,
    WEIGHT_METHODS,
    bin_index,
    fit_label_weights,
    kernel_window,
    sample_weights,
    smoothed_histogram,
)

RNG = np.random.default_rng(0)
# left-skewed labels like the wealth index: the low end is rare
LABELS = 3.1 - RNG.gamma(2.0, 0.35, size=2000)


def test_inverse_frequency_by_hand() -> None:
    labels = np.array([0.0, 0.1, 0.2, 0.3, 1.9, 2.0])  # bins [0,1): 4 labels, [1,2]: 2
    w = sample_weights(labels, "inverse", bins=2, alpha=1.0)
    raw = np.array([1 / 4] * 4 + [1 / 2] * 2)
    np.testing.assert_allclose(w, raw / raw.mean())
    w_sqrt = sample_weights(labels, "inverse", bins=2, alpha=0.5)
    raw = raw**0.5
    np.testing.assert_allclose(w_sqrt, raw / raw.mean())


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("window", [3, 5, 9])
def test_lds_is_the_histogram_convolved_with_the_kernel(kernel: str, window: int) -> None:
    bins, sigma, alpha = 30, 1.5, 0.7
    smoothed, edges = smoothed_histogram(
        LABELS, bins=bins, kernel=kernel, sigma=sigma, window=window
    )
    counts, ref_edges = np.histogram(LABELS, bins=bins)
    np.testing.assert_allclose(edges, ref_edges)
    reference = convolve1d(
        counts.astype(float), kernel_window(kernel, sigma=sigma, window=window), mode="constant"
    )
    np.testing.assert_allclose(smoothed, reference, atol=1e-9)
    w = sample_weights(
        LABELS, "lds", bins=bins, kernel=kernel, sigma=sigma, window=window, alpha=alpha
    )
    raw = reference[bin_index(LABELS, edges)] ** -alpha
    np.testing.assert_allclose(w, raw / raw.mean(), rtol=1e-9)


def test_lds_window_wider_than_the_histogram() -> None:
    smoothed, _ = smoothed_histogram(LABELS, bins=3, window=9, sigma=3.0)
    counts, _ = np.histogram(LABELS, bins=3)
    ref = convolve1d(
        counts.astype(float), kernel_window("gaussian", sigma=3.0, window=9), mode="constant"
    )
    np.testing.assert_allclose(smoothed, ref)


def test_kernel_windows_by_hand() -> None:
    np.testing.assert_allclose(kernel_window("triangular", sigma=1, window=3), [0.25, 0.5, 0.25])
    lap = np.exp(-np.abs([-1, 0, 1]) / 2.0)
    np.testing.assert_allclose(kernel_window("laplace", sigma=2, window=3), lap / lap.sum())
    gauss = np.exp(-np.array([4, 1, 0, 1, 4]) / 2.0)
    np.testing.assert_allclose(kernel_window("gaussian", sigma=1, window=5), gauss / gauss.sum())
    with pytest.raises(ValueError, match="odd"):
        kernel_window("gaussian", sigma=1, window=4)
    with pytest.raises(ValueError, match="valid"):
        kernel_window("box", sigma=1, window=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["kde", "denseweight"])
def test_kde_methods_follow_their_formula(method: str) -> None:
    alpha, eps = 0.9, 1e-3
    w = sample_weights(LABELS, method, alpha=alpha, eps=eps, bandwidth=0.3)
    grid = np.linspace(LABELS.min(), LABELS.max(), 1024)
    density = gaussian_kde(LABELS, bw_method=0.3)(grid)
    if method == "kde":
        norm = density / density.max()
    else:
        norm = (density - density.min()) / (density.max() - density.min())
    exact = np.maximum(1 - alpha * np.interp(LABELS, grid, norm), eps)
    np.testing.assert_allclose(w, exact / exact.mean(), rtol=1e-6)


@pytest.mark.parametrize("method", WEIGHT_METHODS)
def test_every_method_has_mean_one_and_favours_rare_labels(method: str) -> None:
    w = sample_weights(LABELS, method, alpha=0.5, bins=20)
    assert w.shape == LABELS.shape
    assert w.mean() == pytest.approx(1.0)
    assert np.all(w > 0)
    rare, common = LABELS < np.quantile(LABELS, 0.02), np.abs(LABELS - np.median(LABELS)) < 0.05
    if method == "none":
        np.testing.assert_allclose(w, 1.0)
    else:
        assert w[rare].mean() > 1.5 * w[common].mean(), method


def test_alpha_zero_is_uniform_and_fitted_function_matches() -> None:
    for method in ("inverse", "lds", "kde"):
        np.testing.assert_allclose(sample_weights(LABELS, method, alpha=0.0), 1.0)
    fitted = fit_label_weights(LABELS, "lds", alpha=1.0, bins=20)
    assert fitted(LABELS).mean() == pytest.approx(1.0)
    # labels beyond the training range count in the edge bins
    assert fitted([-10.0])[0] == fitted([LABELS.min()])[0]


def test_errors_name_what_was_given() -> None:
    with pytest.raises(ValueError, match="valid: none, kde"):
        sample_weights(LABELS, "magic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        sample_weights([], "kde")
    with pytest.raises(ValueError, match="finite"):
        sample_weights([1.0, np.nan], "inverse")
    np.testing.assert_allclose(sample_weights([2.0, 2.0, 2.0], "kde"), 1.0)
