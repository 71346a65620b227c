"""Loader batches copied and compared bit for bit (shared by the loader tests)."""

from __future__ import annotations

import torch


def copied(batch: dict) -> dict:
    """``batch`` with every tensor cloned (what a batch held its values when received)."""
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def assert_same_batches(new: list, old: list) -> None:
    """Two lists of (more than one) batches hold the same keys, dtypes, shapes and bytes."""
    assert len(new) == len(old) > 1
    for a, b in zip(new, old, strict=True):
        assert list(a) == list(b)
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
                assert a[key].numpy().tobytes() == b[key].numpy().tobytes(), key
            else:
                assert a[key] == b[key], key
