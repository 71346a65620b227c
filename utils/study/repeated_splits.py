"""The study over several spatial splits of the same places (repeated hold-out).

At 5,000 places a test split holds about 980 places, of which only 3-6 fall in the
poorest of the six label bins, and that bin weighs one sixth of the balanced MAE. One
split's b-MAE change therefore swings by about 5 points whatever the model (even the
ideal model of the synthetic world: README, "Results"). :func:`repeated_split_study`
re-splits the run's exports with other split seeds (same :class:`SplitConfig`
otherwise), runs the same study on each split and tabulates the changes over all
(split, training seed) pairs, so the mean stands on several test sets.

Command line: ``python -m utils.study.run --split-seeds 42 1 2 3 4 ...``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path

import h5py
import pandas as pd

from utils import hdf5_schema as hs
from utils.batching.split_and_batch import SplitConfig, run_split_and_batch
from utils.paths import RunPaths
from utils.study.study import StudyConfig, StudyOutputs, per_bin_plot, results_table, study


def split_config_of(shards: str | Path) -> SplitConfig:
    """The :class:`SplitConfig` that wrote the shards under ``shards`` (from the
    ``config`` attribute every shard carries).

    Raises:
        FileNotFoundError: when ``shards`` holds no training shard.
    """
    files = sorted((Path(shards) / "train").glob("*.h5"))
    if not files:
        raise FileNotFoundError(f"no training shards under {shards}; run split_and_batch first")
    with h5py.File(files[0], "r") as handle:
        stored = json.loads(handle.attrs[hs.ATTR_CONFIG])
    known = {f.name for f in fields(SplitConfig)}
    return SplitConfig(**{k: v for k, v in stored.items() if k in known}, progress=False)


def repeated_split_study(cfg: StudyConfig, split_seeds: Sequence[int]) -> StudyOutputs:
    """Run the study of ``cfg`` on the spatial split of each of ``split_seeds``.

    The run's own shards (``<run_dir>/shards``) serve their split seed; each other seed
    gets ``<run_dir>/shards_split<seed>`` (written once, resumable) and its study folder
    ``<out_name>_split<seed>``, whose cached runs are reused like any study's. The table
    and the per-bin plot over all splits land in ``<run_dir>/train/<out_name>_splits``;
    its ``seeds`` column counts (split, training seed) pairs and the ``sd`` column is the
    spread of the change over them.

    Raises:
        ValueError: for no or repeated split seeds.
    """
    if not split_seeds or len(set(split_seeds)) != len(split_seeds):
        raise ValueError(f"give distinct split seeds, got {list(split_seeds)}")
    paths = RunPaths.of(cfg.run_dir)
    base = split_config_of(paths.shards)
    runs = []
    for seed in split_seeds:
        shards, name = paths.shards, cfg.out_name
        if seed != base.seed:
            shards, name = paths.root / f"shards_split{seed}", f"{cfg.out_name}_split{seed}"
            print(f"split seed {seed}: shards in {shards}", flush=True)
            run_split_and_batch(paths.exports, shards, replace(base, seed=seed))
        train = replace(cfg.train, shards_dir=str(shards))
        outputs = study(replace(cfg, out_name=name, train=train))
        pairs = [f"{seed}/{s}" for s in outputs.results["seed"]]
        runs.append(outputs.results.assign(split_seed=seed, seed=pairs))
    results = pd.concat(runs, ignore_index=True)
    out = paths.train / f"{cfg.out_name}_splits"
    table = results_table(results, out, baseline=cfg.baseline)
    per_bin_plot(results, out / "per_bin_mae.png")
    return StudyOutputs(
        results, table, out / "results.csv", out / "results.md", out / "per_bin_mae.png"
    )
