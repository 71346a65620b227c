"""Weighted samplers: frequencies follow the weights; distributed shares are disjoint
slices of one seeded draw."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chi2
from torch.utils.data import DataLoader, TensorDataset

from utils.samplers import DistributedWeightedSampler, weighted_sampler

WEIGHTS = np.array([0.5, 1.0, 2.0, 4.0, 0.25, 1.0, 8.0, 0.5, 3.0, 1.0])


def chi_square(indices: list[int], weights: np.ndarray) -> float:
    counts = np.bincount(indices, minlength=len(weights))
    expected = len(indices) * weights / weights.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_weighted_sampler_frequencies_follow_the_weights() -> None:
    sampler = weighted_sampler(
        WEIGHTS, num_samples=20_000, generator=torch.Generator().manual_seed(0)
    )
    indices = list(sampler)
    assert len(indices) == 20_000
    assert chi_square(indices, WEIGHTS) < chi2.ppf(0.999, df=len(WEIGHTS) - 1)
    # and the bound has teeth: uniform draws fail it
    uniform = np.random.default_rng(0).integers(0, len(WEIGHTS), 20_000).tolist()
    assert chi_square(uniform, WEIGHTS) > chi2.ppf(0.999, df=len(WEIGHTS) - 1)


def test_weighted_sampler_defaults_to_dataset_size_and_drives_a_loader() -> None:
    sampler = weighted_sampler(WEIGHTS, generator=torch.Generator().manual_seed(1))
    assert len(sampler) == len(WEIGHTS)
    dataset = TensorDataset(torch.arange(len(WEIGHTS)))
    seen = torch.cat([b[0] for b in DataLoader(dataset, batch_size=4, sampler=sampler)])
    assert seen.numel() == len(WEIGHTS)


def test_distributed_shares_are_disjoint_slices_of_one_draw() -> None:
    replicas = 3
    samplers = [
        DistributedWeightedSampler(WEIGHTS, num_replicas=replicas, rank=r, seed=7, num_samples=3000)
        for r in range(replicas)
    ]
    for sampler in samplers:
        sampler.set_epoch(2)
    shares = [list(s) for s in samplers]
    assert all(len(share) == len(s) == 1000 for share, s in zip(shares, samplers, strict=True))
    draw = samplers[0].epoch_draw().tolist()
    interleaved = [shares[i % replicas][i // replicas] for i in range(3000)]
    assert interleaved == draw  # every position of the one draw, on exactly one rank
    assert chi_square(draw, WEIGHTS) < chi2.ppf(0.999, df=len(WEIGHTS) - 1)


def test_distributed_epochs_reproducible_and_different() -> None:
    sampler = DistributedWeightedSampler(WEIGHTS, num_replicas=2, rank=1, seed=0)
    sampler.set_epoch(0)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert len(first) == 5  # ceil(10 / 2)


def test_single_process_defaults_and_errors() -> None:
    sampler = DistributedWeightedSampler(WEIGHTS)
    assert (sampler.num_replicas, sampler.rank, len(sampler)) == (1, 0, 10)
    with pytest.raises(ValueError, match="rank"):
        DistributedWeightedSampler(WEIGHTS, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="not all zero"):
        weighted_sampler(np.zeros(3))
