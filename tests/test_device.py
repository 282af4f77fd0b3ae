"""tabad.device: one resolution of --device for every command."""

from __future__ import annotations

import torch

from tabad.device import resolve_device


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # resolving does not touch the GPU
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")

