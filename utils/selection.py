"""Which epoch a run keeps, and the warnings for runs too small or broken to mean much.

The original study keeps the epoch of lowest validation balanced MAE. At small sizes
that can be an epoch that predicts almost a constant (b-MAE rewards spreading the
predictions over the label range even when they are wrong): at demo size
``resampling a=0.25`` kept epoch 1, validation R^2 -0.55, MAE twice L2's. The option
``mae_within = x`` keeps the lowest validation b-MAE among the epochs whose validation
MAE is within ``x`` (a share: 0.1 = 10 %) of the best validation MAE.

:func:`run_problems` says when a run's numbers mean little: too few optimizer steps
(:data:`MIN_STEPS`), or a negative R^2 (worse than predicting the mean).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

#: Fewer optimizer steps than this and a run is flagged (it has barely left its init).
MIN_STEPS = 300


def _value(row: Mapping[str, float], key: str) -> float:
    value = float(row.get(key, math.nan))
    return value if math.isfinite(value) else math.inf


def select_epoch(
    history: Sequence[Mapping[str, float]],
    mae_within: float | None = None,
    *,
    bmae_key: str = "val_bmae",
    mae_key: str = "val_mae",
) -> tuple[int, set[int]]:
    """The epoch to keep after ``history`` (rows with ``epoch``, b-MAE and MAE).

    Args:
        history: one row per epoch so far, in order.
        mae_within: None: the lowest b-MAE (the original study's rule, ties to the
            earliest). A share ``x``: the lowest b-MAE among the epochs whose MAE is at
            most ``(1 + x)`` times the lowest MAE so far.
        bmae_key, mae_key: the row keys (NaN counts as infinitely bad).

    Returns:
        ``(epoch, candidates)``: the chosen epoch number, and the epochs that may still
        be chosen after more epochs (eligible and not beaten on both b-MAE and MAE by
        another eligible epoch); their checkpoints are worth keeping.
    """
    if not history:
        raise ValueError("no epoch to select from: the history is empty")
    if mae_within is not None and mae_within < 0:
        raise ValueError(f"mae_within must be >= 0 (a share, 0.1 = 10 %), got {mae_within}")
    rows = [(int(r["epoch"]), _value(r, bmae_key), _value(r, mae_key)) for r in history]
    if mae_within is None:
        eligible = rows
    else:
        best_mae = min(mae for _, _, mae in rows)
        eligible = [r for r in rows if r[2] <= (1 + mae_within) * best_mae] or rows
    chosen = min(eligible, key=lambda r: r[1])[0]  # min keeps the first of equal b-MAEs
    if mae_within is None:  # every epoch stays eligible: only the chosen one can win later
        return chosen, {chosen}
    candidates = {
        e for e, b, m in eligible if not any(m2 <= m and b2 < b for _, b2, m2 in eligible)
    }
    return chosen, candidates | {chosen}


def run_problems(*, steps: float, test_r2: float, val_r2: float = math.nan) -> dict[str, str]:
    """What is wrong with a run's size or fit: table mark -> what it means, what to raise.

    Args:
        steps: optimizer steps it trained (epochs x batches per epoch).
        test_r2: R^2 on the test split.
        val_r2: validation R^2 of the kept epoch.

    Returns:
        Marks ``steps<300``, ``test R2<0``, ``val R2<0`` (those that apply, in that order).
    """
    found = {}
    if math.isfinite(steps) and steps < MIN_STEPS:
        found[f"steps<{MIN_STEPS}"] = (
            f"only {int(steps)} optimizer steps (< {MIN_STEPS}); raise the epochs or the "
            "number of places (more shards), or lower batch_size"
        )
    if math.isfinite(test_r2) and test_r2 < 0:
        found["test R2<0"] = (
            f"test R^2 {test_r2:.2f} < 0, worse than predicting the mean; raise the training "
            "budget (epochs, places) before reading its changes against the others"
        )
    if math.isfinite(val_r2) and val_r2 < 0:
        found["val R2<0"] = (
            f"the kept epoch has validation R^2 {val_r2:.2f} < 0; select with "
            "select_mae_within (e.g. 0.1) or train longer"
        )
    return found
