"""Sample weights: each method against its reference definition, written out here.

LDS as DIR's ``_prepare_weights`` / ``get_lds_kernel_window``, ``kde`` as the original
study's ``loss/dense_weight.py``, ``denseweight`` as the authors' package."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import convolve1d

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


def _dir_gaussian_window(ks: int, sigma: float) -> np.ndarray:
    """A unit impulse over ``ks`` taps filtered by a Gaussian truncated at 4 sigma (sum 1),
    the border reflecting (``d c b a | a b c d | d c b a``), divided by its maximum."""
    radius = int(4 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    gauss = np.exp(-(offsets**2) / (2 * sigma**2))
    gauss /= gauss.sum()
    centre, out = ks // 2, np.zeros(ks)
    for i in range(ks):
        for j, g in zip(offsets, gauss, strict=True):
            pos = i + j
            while not 0 <= pos < ks:  # reflect about the outer edges of the taps
                pos = -pos - 1 if pos < 0 else 2 * ks - pos - 1
            out[i] += g * (pos == centre)
    return out / out.max()


def _dir_lds_reference(
    bin_of: np.ndarray, n_bins: int, reweight: str, window: np.ndarray
) -> np.ndarray:
    """DIR's weights: per-bin counts, sqrt (sqrt_inv) or clip to [5, 1000] (inverse),
    convolved with the window (zero outside), 1 / value, scaled to sum N."""
    counts = np.zeros(n_bins)
    for b in bin_of:
        counts[b] += 1
    value = np.sqrt(counts) if reweight == "sqrt_inv" else np.clip(counts, 5, 1000)
    half = len(window) // 2
    smoothed = np.zeros(n_bins)
    for i in range(n_bins):
        for k in range(-half, half + 1):
            if 0 <= i + k < n_bins:
                smoothed[i] += window[k + half] * value[i + k]
    w = 1 / smoothed[bin_of]
    return w * len(w) / w.sum()


def test_dir_gaussian_window_is_nearly_flat_at_dirs_defaults() -> None:
    window = kernel_window("gaussian", sigma=2.0, window=5, normalise="max")
    np.testing.assert_allclose(window, _dir_gaussian_window(5, 2.0), rtol=1e-12)
    assert window.min() > 0.85  # its tails fold back: nearly flat
    exact = kernel_window("gaussian", sigma=2.0, window=5, exact=True, normalise="max")
    np.testing.assert_allclose(exact, np.exp(-np.array([4, 1, 0, 1, 4]) / 8.0))
    np.testing.assert_allclose(kernel_window("gaussian", sigma=1, window=3).sum(), 1.0)


@pytest.mark.parametrize(("alpha", "reweight"), [(0.5, "sqrt_inv"), (1.0, "inverse")])
def test_lds_equals_dir_on_hand_made_ages(alpha: float, reweight: str) -> None:
    # DIR bins integer ages 0..120 (ages >= 120 in the last bin)
    ages = np.array([21, 22, 22, 23, 23, 23, 23, 24, 24, 25, 30, 31, 31, 31, 60, 119.5, 130.0])
    w = sample_weights(ages, "lds", alpha=alpha, bins=121, value_range=(0.0, 121.0))
    bin_of = np.array([min(120, int(a)) for a in ages])
    expected = _dir_lds_reference(bin_of, 121, reweight, _dir_gaussian_window(5, 2.0))
    np.testing.assert_allclose(w, expected, rtol=1e-9)
    # DIR's weights are float32: within float32 precision of those too
    np.testing.assert_allclose(w, expected.astype(np.float32), rtol=1e-6)


@pytest.mark.parametrize(("alpha", "reweight"), [(0.5, "sqrt_inv"), (1.0, "inverse")])
@pytest.mark.parametrize("kernel", KERNELS)
def test_lds_equals_dir_on_equal_width_bins(alpha: float, reweight: str, kernel: str) -> None:
    bins, sigma, ks = 30, 1.5, 7
    w = sample_weights(LABELS, "lds", alpha=alpha, bins=bins, kernel=kernel, sigma=sigma, window=ks)
    edges = np.linspace(LABELS.min(), LABELS.max(), bins + 1)
    bin_of = np.minimum(((LABELS - edges[0]) / (edges[1] - edges[0])).astype(int), bins - 1)
    half = ks // 2
    k = np.arange(-half, half + 1)
    window = {
        "gaussian": _dir_gaussian_window(ks, sigma),
        "laplace": np.exp(-np.abs(k) / sigma),
        "triangular": 1 - np.abs(k) / (half + 1),
    }[kernel]
    np.testing.assert_allclose(w, _dir_lds_reference(bin_of, bins, reweight, window), rtol=1e-9)


def test_lds_takes_only_dirs_two_strengths() -> None:
    with pytest.raises(ValueError, match="smoothed_inverse"):
        sample_weights(LABELS, "lds", alpha=0.7)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("window", [3, 5, 9])
def test_smoothed_inverse_is_the_histogram_convolved_then_rooted(kernel: str, window: int) -> None:
    bins, sigma, alpha = 30, 1.5, 0.7
    smoothed, edges = smoothed_histogram(
        LABELS, bins=bins, kernel=kernel, sigma=sigma, window=window
    )
    counts, ref_edges = np.histogram(LABELS, bins=bins)
    np.testing.assert_allclose(edges, ref_edges)
    exact = kernel_window(kernel, sigma=sigma, window=window, exact=True)
    reference = convolve1d(counts.astype(float), exact, mode="constant")
    np.testing.assert_allclose(smoothed, reference, atol=1e-9)
    w = sample_weights(
        LABELS,
        "smoothed_inverse",
        bins=bins,
        kernel=kernel,
        sigma=sigma,
        window=window,
        alpha=alpha,
    )
    raw = reference[bin_index(LABELS, edges)] ** -alpha
    np.testing.assert_allclose(w, raw / raw.mean(), rtol=1e-9)
    if kernel == "gaussian" and alpha == 0.7:  # the variant is not DIR's
        assert not np.allclose(w, sample_weights(LABELS, "lds", alpha=0.5, bins=bins))


def test_smoothed_inverse_window_wider_than_the_histogram() -> None:
    smoothed, _ = smoothed_histogram(LABELS, bins=3, window=9, sigma=3.0)
    counts, _ = np.histogram(LABELS, bins=3)
    exact = kernel_window("gaussian", sigma=3.0, window=9, exact=True)
    ref = convolve1d(counts.astype(float), exact, mode="constant")
    np.testing.assert_allclose(smoothed, ref)


def test_kernel_windows_by_hand() -> None:
    np.testing.assert_allclose(kernel_window("triangular", sigma=1, window=3), [0.25, 0.5, 0.25])
    lap = np.exp(-np.abs([-1, 0, 1]) / 2.0)
    np.testing.assert_allclose(kernel_window("laplace", sigma=2, window=3), lap / lap.sum())
    gauss = np.exp(-np.array([4, 1, 0, 1, 4]) / 2.0)
    np.testing.assert_allclose(
        kernel_window("gaussian", sigma=1, window=5, exact=True), gauss / gauss.sum()
    )
    with pytest.raises(ValueError, match="odd"):
        kernel_window("gaussian", sigma=1, window=4)
    with pytest.raises(ValueError, match="valid"):
        kernel_window("box", sigma=1, window=3)  # type: ignore[arg-type]


def _original_kde_reference(labels: np.ndarray, alpha: float) -> np.ndarray:
    """The original study's weights: a Gaussian KDE with Scott's bandwidth (the kernel's
    sd = the labels' sample sd x n^-1/5) at each label, min-max normalised over the
    labels, max(1 - alpha p', 1e-4), divided by the mean."""
    n = len(labels)
    h = labels.std(ddof=1) * n ** (-1 / 5)
    p = np.exp(-((labels[:, None] - labels[None, :]) ** 2) / (2 * h**2)).sum(1)
    p = p / (n * h * np.sqrt(2 * np.pi))
    w = np.maximum(1 - alpha * (p - p.min()) / (p.max() - p.min()), 1e-4)
    return w / w.mean()


@pytest.mark.parametrize("alpha", [0.25, 0.75, 1.0, 1.5])
def test_kde_is_the_original_studys_on_hand_made_labels(alpha: float) -> None:
    labels = np.array([0.3, 1.1, 1.9, 2.0, 2.1, 2.2, 2.3, 2.3, 2.4, 2.5, 2.6, 2.8, 3.0])
    np.testing.assert_allclose(
        sample_weights(labels, "kde", alpha=alpha),
        _original_kde_reference(labels, alpha),
        rtol=1e-9,
    )
    np.testing.assert_allclose(
        sample_weights(LABELS, "kde", alpha=alpha),
        _original_kde_reference(LABELS, alpha),
        rtol=1e-8,
    )
    # the densest label gets eps at alpha >= 1; the fitted function is exact at the labels
    fitted = fit_label_weights(labels, "kde", alpha=alpha)
    np.testing.assert_allclose(fitted(labels), _original_kde_reference(labels, alpha), rtol=1e-9)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_denseweight_is_the_authors_package(alpha: float) -> None:
    from denseweight import DenseWeight

    hand_made = np.array([0.3, 1.1, 1.9, 2.0, 2.1, 2.2, 2.3, 2.3, 2.4, 2.5, 2.6, 2.8, 3.0])
    for labels in (hand_made, LABELS):
        package = DenseWeight(alpha=alpha)
        expected = package.fit(labels)
        ours = sample_weights(labels, "denseweight", alpha=alpha)
        assert ours.mean() == pytest.approx(1.0)
        np.testing.assert_allclose(ours, expected, atol=1e-9)  # issue: within 0.02
        # other label values (outside the training range too) as the package looks them up
        others = np.array([-5.0, 0.0, 0.29, 1.5, 2.05, 3.2, 9.0])
        fitted = fit_label_weights(labels, "denseweight", alpha=alpha)
        np.testing.assert_allclose(fitted(others), package(others), atol=1e-9)


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
    for method in ("inverse", "lds", "kde", "smoothed_inverse", "denseweight"):
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
