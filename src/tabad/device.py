"""Turning a user's ``--device`` value into a ``torch.device``.

Every command that computes (benchmark, few-shot, classify, figures) accepts the same device
names, so they are resolved in one place rather than by whichever of those modules came first.
torch is imported on call: importing this module stays free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> "torch.device":
    """``"auto"`` -> CUDA when available, else the CPU; anything else (``"cpu"``, ``"cuda:1"``) as torch reads it."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
