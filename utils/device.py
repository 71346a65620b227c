"""Which device a run uses: ``"auto"`` picks the GPU of this process when one is visible.

One small module that training, inference, the study and the map all import, so that
none of them has to import another for it.
"""

from __future__ import annotations

import torch


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: ``cuda:<local_rank>`` when a GPU is visible, else CPU."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but no GPU is visible; use 'auto'/'cpu'")
    return dev
