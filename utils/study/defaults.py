"""The study's default knobs, in a module without heavy imports, so that
``python -m utils.study.run --help`` shows them without loading torch."""

from __future__ import annotations

#: The weighting strengths of the original study's weighted-loss and resampling runs.
DEFAULT_ALPHAS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
#: The experiments whose predictions get balanced-calibration rows: L2, and KDE-weighted
#: L2 at a = 1 (calibrated back, the decoupled method).
DEFAULT_CALIBRATE: tuple[str, ...] = ("L2", "weighted L2 a=1")
