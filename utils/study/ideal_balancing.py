"""What balancing can buy at best in a synthetic world: b-MAE and MAE of the ideal L2
predictor against the ideal predictors of reweighted losses, from a million labels.

The world's scenes depend on a place's wealth only through two numbers: the noisy wealth
the scene shows (``label + scene_noise * N(0, 1)``, frozen below ``tail_wealth``) and the
noisy wealth the clearings show (``label + tail_noise * N(0, 1)``, clearing extent
growing below ``tail_wealth``). A model that read both perfectly and trained on
unlimited data would predict their conditional mean: the ideal L2 model. Weighting the
loss by ``(1 / bin share) ** a`` makes the ideal model the weighted conditional mean.
Both are taken here on a fine grid of the two numbers, so the table shows the trade-off
the world allows before any CNN, sample size or optimiser enters.

    python -m utils.study.ideal_balancing                      # the default world
    python -m utils.study.ideal_balancing --tail-wealth 0.33 --tail-noise -1  # until 2026-11-25

It also shows how those changes read on one test split of ``--test-size`` places (the
poorest bin holds about 3 of 980, so even the ideal models' measured cut swings by
several points from one test set to the next) and, with ``--train-size``, what a perfect
reading of the scene buys from that many training labels.
"""

from __future__ import annotations

import numpy as np

from extract_GPS_images.synthetic import WEALTH_RANGE, WorldConfig, wealth_quantile


def _unit(wealth: np.ndarray) -> np.ndarray:
    lo, hi = WEALTH_RANGE
    return np.clip((wealth - lo) / (hi - lo), 0.0, 1.0)


def _grid_mean(cells: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean label of each sample's grid cell."""
    total = np.bincount(cells, weights)
    return (np.bincount(cells, weights * labels) / np.maximum(total, 1e-12))[cells]


def draw_places(
    cfg: WorldConfig, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``labels``, six-bin index ``bins`` and the two numbers each scene shows, ``(n, 2)``:
    the (tail-frozen) unit wealth of the land cover and the clearing extent."""
    labels = wealth_quantile(rng.random(n))
    edges = np.linspace(*WEALTH_RANGE, 7)
    bins = np.clip(np.digitize(labels, edges[1:-1]), 0, 5)
    tail = cfg.tail_wealth
    scene = np.maximum(_unit(labels + cfg.scene_noise * rng.normal(size=n)), tail)
    clearing_noise = cfg.scene_noise if cfg.tail_noise is None else cfg.tail_noise
    shown = _unit(labels + clearing_noise * rng.normal(size=n))
    clearings = np.maximum(0.0, tail - shown) / tail if tail > 0 else np.zeros(n)
    return labels, bins, np.column_stack([scene, clearings])


def _bin_weights(bins: np.ndarray, a: float) -> np.ndarray:
    share = np.bincount(bins, minlength=6) / len(bins)
    return (1.0 / share[bins]) ** a


def ideal_predictions(
    cfg: WorldConfig,
    alphas: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0),
    *,
    n: int = 1_000_000,
    grid: int = 60,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict[float, np.ndarray]]:
    """``labels``, six-bin index ``bins`` and ``{a: predictions}`` of the ideal L2 model
    (``a`` = 0) and of the ideal model of each weighting strength, for ``n`` places."""
    labels, bins, shown = draw_places(cfg, n, np.random.default_rng(seed))
    cell = np.minimum((shown * grid).astype(int), grid - 1)
    cells = cell[:, 0] * grid + cell[:, 1]
    predictions = {a: _grid_mean(cells, labels, _bin_weights(bins, a)) for a in (0.0, *alphas)}
    return labels, bins, predictions


def finite_training_table(
    cfg: WorldConfig,
    n_train: int,
    alphas: tuple[float, ...] = (0.5, 0.75, 1.0),
    *,
    repeats: int = 3,
    n_test: int = 200_000,
    seed: int = 0,
) -> list[dict[str, float]]:
    """The trade-off with a perfect reading of the scene but only ``n_train`` training
    labels: a gradient-boosted model on the two numbers the scene shows, fitted with
    weights (1 / training-bin share)^a, scored on ``n_test`` new places. Rows ``{"a",
    "bmae", "mae", "bmae_change", "mae_change", "bmae_change_sd"}`` (means over
    ``repeats`` training sets; ``a`` = 0 is L2)."""
    from sklearn.ensemble import HistGradientBoostingRegressor  # noqa: PLC0415

    test_labels, test_bins, test_x = draw_places(cfg, n_test, np.random.default_rng([seed, 2]))
    scores = {a: [] for a in (0.0, *alphas)}
    for r in range(repeats):
        labels, bins, x = draw_places(cfg, n_train, np.random.default_rng([seed, 3, r]))
        for a in scores:
            model = HistGradientBoostingRegressor(
                max_iter=200,
                learning_rate=0.05,
                max_leaf_nodes=15,
                min_samples_leaf=20,
                random_state=r,
            ).fit(x, labels, sample_weight=_bin_weights(bins, a))
            mae, per_bin = _scores(model.predict(test_x), test_labels, test_bins)
            scores[a].append((float(np.mean(per_bin)), mae))
    base = np.array(scores[0.0])
    rows = []
    for a, values in scores.items():
        v = np.array(values)
        change = 100 * (v / base - 1)
        rows.append(
            {
                "a": a,
                "bmae": float(v[:, 0].mean()),
                "mae": float(v[:, 1].mean()),
                "bmae_change": float(change[:, 0].mean()),
                "mae_change": float(change[:, 1].mean()),
                "bmae_change_sd": float(change[:, 0].std()),
            }
        )
    return rows


def _scores(pred: np.ndarray, labels: np.ndarray, bins: np.ndarray) -> tuple[float, list[float]]:
    """MAE and the per-bin MAEs (NaN for a bin without places)."""
    error = np.abs(pred - labels)
    per_bin = [float(error[bins == b].mean()) if (bins == b).any() else np.nan for b in range(6)]
    return float(error.mean()), per_bin


def ideal_table(
    cfg: WorldConfig,
    alphas: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0),
    *,
    n: int = 1_000_000,
    grid: int = 60,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Rows ``{"a", "bmae", "mae", "bmae_change", "mae_change", per-bin MAEs}`` for the
    ideal L2 model (``a`` = 0) and the ideal model of each weighting strength."""
    labels, bins, predictions = ideal_predictions(cfg, alphas, n=n, grid=grid, seed=seed)
    rows: list[dict[str, float]] = []
    for a, pred in predictions.items():
        mae, per_bin = _scores(pred, labels, bins)
        row = {"a": a, "bmae": float(np.mean(per_bin)), "mae": mae}
        row.update({f"bin{b + 1}": v for b, v in enumerate(per_bin)})
        rows.append(row)
    for row in rows:
        row["bmae_change"] = 100 * (row["bmae"] / rows[0]["bmae"] - 1)
        row["mae_change"] = 100 * (row["mae"] / rows[0]["mae"] - 1)
    return rows


def spread_over_test_sets(
    cfg: WorldConfig,
    alphas: tuple[float, ...] = (0.5, 0.75),
    *,
    n_test: int = 980,
    repeats: int = 500,
    goal: tuple[float, float] = (-15.0, 10.0),
    n: int = 1_000_000,
    seed: int = 0,
) -> list[dict[str, float]]:
    """How the change of the ideal models against the ideal L2 reads on one test set of
    ``n_test`` random places (a 5,000-place run's test split holds 980): rows ``{"a",
    "bmae_change", "bmae_change_sd", "mae_change", "mae_change_sd", "goal_share"}`` over
    ``repeats`` test sets; ``goal_share`` is the share of test sets on which the b-MAE
    change is at most ``goal[0]`` % while the MAE change is at most ``goal[1]`` %.
    Bins without test places are left out of that test set's b-MAE, as the metric does."""
    labels, bins, predictions = ideal_predictions(cfg, alphas, n=n, seed=seed)
    rng = np.random.default_rng([seed, 1])
    changes = {a: [] for a in alphas}
    for _ in range(repeats):
        idx = rng.choice(n, n_test, replace=False)
        base_mae, base_bins = _scores(predictions[0.0][idx], labels[idx], bins[idx])
        base_bmae = np.nanmean(base_bins)
        for a in alphas:
            mae, per_bin = _scores(predictions[a][idx], labels[idx], bins[idx])
            changes[a].append(
                (100 * (np.nanmean(per_bin) / base_bmae - 1), 100 * (mae / base_mae - 1))
            )
    rows = []
    for a, values in changes.items():
        v = np.array(values)
        rows.append(
            {
                "a": a,
                "bmae_change": float(v[:, 0].mean()),
                "bmae_change_sd": float(v[:, 0].std()),
                "mae_change": float(v[:, 1].mean()),
                "mae_change_sd": float(v[:, 1].std()),
                "goal_share": float(np.mean((v[:, 0] <= goal[0]) & (v[:, 1] <= goal[1]))),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    """Print the table for the world of the given knobs."""
    world = WorldConfig()
    from utils.cli import make_parser  # noqa: PLC0415

    p = make_parser("utils.study.ideal_balancing", __doc__.splitlines()[0])
    p.add_argument("--scene-noise", type=float, default=world.scene_noise)
    p.add_argument("--tail-wealth", type=float, default=world.tail_wealth)
    p.add_argument(
        "--tail-noise",
        type=float,
        default=world.tail_noise,
        help="negative: the scene's own noise (the clearings show the scene's wealth)",
    )
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument(
        "--train-size",
        type=int,
        default=None,
        help="also: the trade-off with a perfect reading of the scene but this many "
        "training labels (a 5,000-place run: 2940)",
    )
    p.add_argument(
        "--test-size",
        type=int,
        default=980,
        help="places of one test split (a 5,000-place run: 980)",
    )
    args = p.parse_args(argv)
    tail_noise = None if args.tail_noise is None or args.tail_noise < 0 else args.tail_noise
    cfg = WorldConfig(
        scene_noise=args.scene_noise, tail_wealth=args.tail_wealth, tail_noise=tail_noise
    )
    rows = ideal_table(cfg, n=args.n)
    l2 = rows[0]
    print(
        f"scene_noise {cfg.scene_noise}, tail_wealth {cfg.tail_wealth}, tail_noise "
        f"{cfg.tail_noise}; b-MAE / MAE of the ideal L2 model "
        f"{l2['bmae']:.3f} / {l2['mae']:.3f} (ratio {l2['bmae'] / l2['mae']:.2f})"
    )
    print("| weights (1/share)^a | b-MAE | MAE | b-MAE vs L2 % | MAE vs L2 % | per-bin MAE |")
    print("|---|---:|---:|---:|---:|---|")
    for row in rows:
        per_bin = " ".join(f"{row[f'bin{b}']:.2f}" for b in range(1, 7))
        print(
            f"| {'L2' if row['a'] == 0 else row['a']} | {row['bmae']:.3f} | {row['mae']:.3f} | "
            f"{row['bmae_change']:+.1f} | {row['mae_change']:+.1f} | {per_bin} |"
        )
    print(
        f"\nthe same changes read on one test set of {args.test_size} random places "
        "(500 test sets): mean, sd, share of test sets meeting -15 % at <= +10 % MAE"
    )
    print("| a | b-MAE vs L2 % | sd | MAE vs L2 % | sd | share meeting the goal |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in spread_over_test_sets(cfg, (0.5, 0.75, 1.0), n_test=args.test_size, n=args.n):
        print(
            f"| {row['a']} | {row['bmae_change']:+.1f} | {row['bmae_change_sd']:.1f} | "
            f"{row['mae_change']:+.1f} | {row['mae_change_sd']:.1f} | {row['goal_share']:.2f} |"
        )
    if args.train_size:
        print(
            f"\na perfect reading of the scene, {args.train_size} training labels "
            "(gradient boosting on the two scene numbers, 3 training sets, 200,000 test places)"
        )
        print("| weights (1/share)^a | b-MAE | MAE | b-MAE vs L2 % | sd | MAE vs L2 % |")
        print("|---|---:|---:|---:|---:|---:|")
        for row in finite_training_table(cfg, args.train_size):
            print(
                f"| {'L2' if row['a'] == 0 else row['a']} | {row['bmae']:.3f} | "
                f"{row['mae']:.3f} | {row['bmae_change']:+.1f} | {row['bmae_change_sd']:.1f} | "
                f"{row['mae_change']:+.1f} |"
            )
    return rows


if __name__ == "__main__":
    main()
