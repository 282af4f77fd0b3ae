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


#: Border handling of :func:`gaussian_blur`, in numpy's ``np.pad`` names.
BLUR_PADDINGS = ("symmetric", "reflect")


def gaussian_blur(maps: torch.Tensor, sigma: float = 4.0, truncate: float = 4.0,
                  padding: str = "symmetric") -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps, equal to scipy's ``gaussian_filter``.

    The PaDiM, PatchCore and RD4AD references smooth with scipy
    (σ = 4, truncate 4 → 33 taps, ``mode='reflect'``). scipy's 'reflect'
    repeats the edge pixel (d c b a | a b c d), numpy's ``"symmetric"``, the
    default here. ``padding="reflect"`` mirrors without repeating the edge
    (d c b | a b c d), as torch's ``reflect`` pad and anomalib's
    ``GaussianBlur2d`` do; only values within the kernel radius of the
    border change. Both are built with index maps, valid for any pad width.
    """
    if padding not in BLUR_PADDINGS:
        raise ValueError(f"padding={padding!r}; choose one of {BLUR_PADDINGS}")
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma, truncate).to(maps.device, maps.dtype)
    r = (k.numel() - 1) // 2
    x = maps.unsqueeze(1)
    x = _mirror_pad(x, r, dim=-1, repeat_edge=padding == "symmetric")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = _mirror_pad(x, r, dim=-2, repeat_edge=padding == "symmetric")
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x.squeeze(1)


def _mirror_pad(x: torch.Tensor, r: int, dim: int, repeat_edge: bool) -> torch.Tensor:
    # Index map of the mirror, periodic: 2n with the edge repeated, 2n - 2 without.
    n = x.shape[dim]
    i = torch.arange(-r, n + r, device=x.device)
    if repeat_edge:
        i = i % (2 * n)
        i = torch.where(i >= n, 2 * n - 1 - i, i)
    elif n == 1:
        i = torch.zeros_like(i)
    else:
        i = i % (2 * n - 2)
        i = torch.where(i >= n, 2 * n - 2 - i, i)
    return x.index_select(dim % x.dim(), i)


def upsample(maps: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of (B, h, w) maps to ``size``."""
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=align_corners).squeeze(1)
