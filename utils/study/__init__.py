"""The balanced-regression study: every method trained alike and tabulated
(:mod:`utils.study.study`; from the command line :mod:`utils.study.run`), balanced
calibration, the MOSAIKS baseline, repeated spatial splits, the ideal-predictor analysis."""
