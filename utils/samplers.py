"""Weighted random samplers (with replacement) for resampling rare labels.

The weights are the per-sample density weights of :func:`loss.weights.sample_weights`
(any non-negative numbers work: only their ratios matter). :func:`weighted_sampler`
serves one process; :class:`DistributedWeightedSampler` serves DistributedDataParallel:
every rank draws the same seeded weighted sample of the whole dataset and keeps a
disjoint share of its positions (``rank::num_replicas``), so the ranks together see one
weighted draw per epoch, as ``torch.utils.data.DistributedSampler`` does for uniform
sampling.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from numpy.typing import ArrayLike
from torch.utils.data import Sampler, WeightedRandomSampler


def _weights_tensor(weights: ArrayLike | torch.Tensor) -> torch.Tensor:
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64)).reshape(-1)
    if w.numel() == 0:
        raise ValueError("a weighted sampler needs at least one weight")
    if not torch.all(torch.isfinite(w)) or torch.any(w < 0) or w.sum() <= 0:
        raise ValueError("sampler weights must be finite, >= 0 and not all zero")
    return w


def weighted_sampler(
    weights: ArrayLike | torch.Tensor,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> WeightedRandomSampler:
    """A ``WeightedRandomSampler`` drawing ``num_samples`` indices with replacement.

    Args:
        weights: one non-negative weight per dataset item.
        num_samples: draws per epoch (default: the dataset size).
        generator: the random generator (seed it for reproducible epochs).
    """
    w = _weights_tensor(weights)
    return WeightedRandomSampler(w, num_samples or w.numel(), replacement=True, generator=generator)


class DistributedWeightedSampler(Sampler[int]):
    """Weighted sampling with replacement, split across DistributedDataParallel ranks.

    Each epoch draws ``num_replicas * ceil(num_samples / num_replicas)`` indices from a
    generator seeded with ``seed + epoch`` (identical on every rank) and yields this
    rank's positions ``rank, rank + num_replicas, ...``. Call :meth:`set_epoch` at the
    start of every epoch, as with ``DistributedSampler``.

    Args:
        weights: one non-negative weight per dataset item.
        num_replicas: number of processes (default: the world size, or 1).
        rank: this process's rank (default: the current rank, or 0).
        seed: base seed, identical on all ranks.
        num_samples: draws per epoch over all ranks (default: the dataset size).
    """

    def __init__(
        self,
        weights: ArrayLike | torch.Tensor,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        num_samples: int | None = None,
    ) -> None:
        initialised = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if initialised else 1
        if rank is None:
            rank = dist.get_rank() if initialised else 0
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got rank={rank}")
        self.weights = _weights_tensor(weights)
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        total = num_samples or self.weights.numel()
        self.num_samples = math.ceil(total / num_replicas)  # per rank
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Use the draw of ``epoch`` (all ranks must call it with the same value)."""
        self.epoch = epoch

    def epoch_draw(self) -> torch.Tensor:
        """The whole draw of the current epoch, shared by all ranks."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.multinomial(self.weights, self.total_size, True, generator=generator)

    def __iter__(self) -> Iterator[int]:
        share = self.epoch_draw()[self.rank : self.total_size : self.num_replicas]
        return iter(share.tolist())

    def __len__(self) -> int:
        return self.num_samples
