"""Building blocks shared by the methods: smoothing and resizing of maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """The kernel ``scipy.ndimage.gaussian_filter`` uses: radius int(truncate·σ + 0.5)."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def gaussian_blur(maps: torch.Tensor, sigma: float = 4.0, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps, equal to scipy's ``gaussian_filter``.

    The PaDiM, PatchCore and RD4AD references smooth with scipy
    (σ = 4, truncate 4 → 33 taps, ``mode='reflect'``). scipy's 'reflect'
    repeats the edge pixel (d c b a | a b c d), which torch's ``reflect`` pad
    does not, so the padding is built with flips.
    """
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma, truncate).to(maps.device, maps.dtype)
    r = (k.numel() - 1) // 2
    x = maps.unsqueeze(1)
    x = _symmetric_pad(x, r, dim=-1)
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = _symmetric_pad(x, r, dim=-2)
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x.squeeze(1)


def _symmetric_pad(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    # Index map of scipy's 'reflect' mode, valid for any pad width (period 2n).
    n = x.shape[dim]
    i = torch.arange(-r, n + r, device=x.device) % (2 * n)
    i = torch.where(i >= n, 2 * n - 1 - i, i)
    return x.index_select(dim % x.dim(), i)


def upsample(maps: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of (B, h, w) maps to ``size``."""
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=align_corners).squeeze(1)
