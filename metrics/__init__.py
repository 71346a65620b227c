"""Regression metrics: the balanced MAE of the original study and the usual ones
(docs/design.md). :func:`regression_report` returns them all as one dict."""

from metrics.balanced_mae import (
    FEW_SHOT,
    MANY_SHOT,
    ORIGINAL_BINS,
    ORIGINAL_RANGE,
    BalancedMAE,
    BalancedMAEResult,
    balanced_mae,
    bin_edges,
    bin_index,
    mae,
    pearson_r,
    per_bin_mae,
    r2,
    regression_report,
    rmse,
    scalar_metrics,
    shot_mae,
)

__all__ = [
    "FEW_SHOT",
    "MANY_SHOT",
    "ORIGINAL_BINS",
    "ORIGINAL_RANGE",
    "BalancedMAE",
    "BalancedMAEResult",
    "balanced_mae",
    "bin_edges",
    "bin_index",
    "mae",
    "pearson_r",
    "per_bin_mae",
    "r2",
    "regression_report",
    "rmse",
    "scalar_metrics",
    "shot_mae",
]
