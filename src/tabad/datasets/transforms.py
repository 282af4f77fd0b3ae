"""Test-time geometry and normalisation (methods.md §0).

Images are resized to (S, S) — never aspect-preserving ``Resize(int)`` — and
centre-cropped to (C, C); masks get the same geometry with nearest-neighbour
resampling so their edges are not eroded. Normalisation uses the ImageNet
mean and std, the statistics every backbone here was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


@dataclass(frozen=True)
class Geometry:
    """Resize to ``resize`` (int S -> (S, S), or (H, W)), then centre-crop to ``crop``.

    ``crop=None`` keeps the resized image (RD4AD's 256 px without crop).
    """

    resize: int | tuple[int, int] = 256
    crop: int | tuple[int, int] | None = 224

    @property
    def output_size(self) -> tuple[int, int]:
        """(H, W) of the tensors this geometry produces."""
        return _pair(self.crop) if self.crop is not None else _pair(self.resize)

    def __post_init__(self):
        rh, rw = _pair(self.resize)
        if self.crop is not None:
            ch, cw = _pair(self.crop)
            if ch > rh or cw > rw:
                raise ValueError(f"crop {self.crop} is larger than resize {self.resize}")


def _center_crop_box(h: int, w: int, ch: int, cw: int) -> tuple[int, int]:
    # torchvision's CenterCrop rounds the offset the same way.
    return int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))


def resize_crop_image(img: Image.Image, geometry: Geometry) -> np.ndarray:
    """RGB PIL image -> uint8 array (H, W, 3). Bilinear resampling with antialiasing (PIL)."""
    rh, rw = _pair(geometry.resize)
    arr = np.asarray(img.convert("RGB").resize((rw, rh), Image.BILINEAR))
    return _crop(arr, geometry)


def resize_crop_mask(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Boolean (H, W) mask -> boolean mask at the output size (nearest neighbour)."""
    rh, rw = _pair(geometry.resize)
    img = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    arr = np.asarray(img.resize((rw, rh), Image.NEAREST)) > 127
    return _crop(arr, geometry)


def _crop(arr: np.ndarray, geometry: Geometry) -> np.ndarray:
    if geometry.crop is None:
        return arr
    ch, cw = _pair(geometry.crop)
    top, left = _center_crop_box(arr.shape[0], arr.shape[1], ch, cw)
    return arr[top : top + ch, left : left + cw]


def normalize(images_uint8, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """uint8 tensor (B, 3, H, W) -> float32 tensor normalised per channel."""
    import torch

    x = images_uint8.float() / 255.0  # never in place: a float input must stay untouched
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s
