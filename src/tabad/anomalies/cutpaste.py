"""CutPaste (Li et al., CVPR 2021), methods.md §6b. No official code exists; this follows the paper.

* :func:`cutpaste` ("CutPaste-normal"): a rectangle of area ratio
  ``U(0.02, 0.15)`` of the image and aspect ratio (width / height) from
  ``(0.3, 1) ∪ (1, 3.3)`` is cut at a uniformly random location, colour-
  jittered (brightness, contrast, saturation and hue 0.1) and pasted at an
  independent uniformly random location. Mask = the pasted rectangle.
  ``CutPasteOptions.tab()`` is TAB's (Runinho-style) variant: area
  ``U(0.02, 0.09)`` and a log-uniform aspect ratio in ``[0.2, 5]``.
* :func:`cutpaste_scar` ("CutPaste-scar"): a thin rectangle of width
  ``U[2, 16]`` px and length ``U[10, 25]`` px, colour-jittered, rotated by
  ``U(-45°, 45°)`` and pasted at a random location. Mask = the rotated
  patch's alpha (TAB leaves its scar mask all-zero, a bug not reproduced).

The patch comes from ``image`` itself (the paper); with ``from_others=True``
it comes from a random image of ``others`` instead (falling back to
``image`` when ``others`` is empty). Pixels outside the mask are never
changed. The colour jitter mirrors torchvision's ``ColorJitter``: the four
operations in random order, factors ``U(1 - s, 1 + s)`` (hue: a shift of
``U(-s, s)`` turns), each result clipped to ``[0, 1]``; it is implemented
with numpy and OpenCV's float HSV conversion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from tabad.anomalies.checks import as_pair, check_image, check_others, check_rng, resolve_options

ASPECT_SAMPLING = ("two-interval", "log-uniform")
_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _check_jitter(jitter) -> tuple[float, float, float, float]:
    try:
        b, c, s, h = (float(v) for v in jitter)
    except (TypeError, ValueError):
        raise ValueError(f"color_jitter must be (brightness, contrast, saturation, hue), got {jitter!r}") from None
    if min(b, c, s, h) < 0 or h > 0.5:
        raise ValueError(f"color_jitter values must be >= 0 (hue <= 0.5), got {jitter!r}")
    return b, c, s, h


@dataclass(frozen=True)
class CutPasteOptions:
    """Options of :func:`cutpaste` (methods.md §6b); defaults are the paper's.

    Attributes:
        area_ratio: patch area as a fraction of the image, ``U(lo, hi)``;
            paper (0.02, 0.15), TAB (0.02, 0.09).
        aspect_ratio: ``(lo, hi)`` bounds of width / height; paper (0.3, 3.3),
            TAB (0.2, 5).
        aspect_sampling: ``"two-interval"`` (the paper's ``(lo, 1) ∪ (1, hi)``:
            a fair coin picks the interval, then uniform within it) or
            ``"log-uniform"`` (TAB / Runinho).
        color_jitter: (brightness, contrast, saturation, hue), 0.1 each.
        from_others: cut the patch from a random image of ``others`` instead
            of ``image``.
    """

    area_ratio: tuple[float, float] = (0.02, 0.15)
    aspect_ratio: tuple[float, float] = (0.3, 3.3)
    aspect_sampling: str = "two-interval"
    color_jitter: tuple[float, float, float, float] = (0.1, 0.1, 0.1, 0.1)
    from_others: bool = False

    def __post_init__(self):
        lo, hi = as_pair(self.area_ratio, "area_ratio", 0.0, 1.0)
        if lo <= 0:
            raise ValueError(f"area_ratio must be > 0, got {self.area_ratio}")
        a_lo, a_hi = as_pair(self.aspect_ratio, "aspect_ratio")
        if a_lo <= 0 or (self.aspect_sampling == "two-interval" and not a_lo <= 1.0 <= a_hi):
            raise ValueError(f"aspect_ratio must be positive and (for two-interval) contain 1, got {self.aspect_ratio}")
        if self.aspect_sampling not in ASPECT_SAMPLING:
            raise ValueError(f"aspect_sampling must be one of {', '.join(ASPECT_SAMPLING)}, got {self.aspect_sampling!r}")
        _check_jitter(self.color_jitter)

    @classmethod
    def tab(cls, **overrides) -> "CutPasteOptions":
        """TAB's variant: area (0.02, 0.09), log-uniform aspect in [0.2, 5]."""
        base = dict(area_ratio=(0.02, 0.09), aspect_ratio=(0.2, 5.0), aspect_sampling="log-uniform")
        base.update(overrides)
        return cls(**base)


@dataclass(frozen=True)
class ScarOptions:
    """Options of :func:`cutpaste_scar` (methods.md §6b); defaults are the paper's (pixels, at 256 px).

    Attributes:
        width: ``U[lo, hi]`` integer px (2, 16).
        length: ``U[lo, hi]`` integer px (10, 25).
        rotation: ``U(lo, hi)`` degrees (-45, 45).
        color_jitter: (brightness, contrast, saturation, hue), 0.1 each.
        from_others: cut the scar from a random image of ``others``.
    """

    width: tuple[int, int] = (2, 16)
    length: tuple[int, int] = (10, 25)
    rotation: tuple[float, float] = (-45.0, 45.0)
    color_jitter: tuple[float, float, float, float] = (0.1, 0.1, 0.1, 0.1)
    from_others: bool = False

    def __post_init__(self):
        for name in ("width", "length"):
            lo, _ = as_pair(getattr(self, name), name)
            if lo < 1:
                raise ValueError(f"{name} must be >= 1 px, got {getattr(self, name)}")
        as_pair(self.rotation, "rotation")
        _check_jitter(self.color_jitter)


# --------------------------------------------------------------------------- colour jitter


def _blend(a: np.ndarray, b, ratio: float) -> np.ndarray:
    return np.clip(ratio * a + (1.0 - ratio) * b, 0.0, 1.0)


def color_jitter(patch: np.ndarray, rng: np.random.Generator, jitter=(0.1, 0.1, 0.1, 0.1)) -> np.ndarray:
    """torchvision-style ColorJitter of a uint8 RGB patch with numpy/OpenCV (see the module docstring)."""
    b, c, s, h = _check_jitter(jitter)
    x = patch.astype(np.float32) / 255.0
    for op in rng.permutation(4):
        if op == 0 and b > 0:
            x = np.clip(x * rng.uniform(max(0.0, 1 - b), 1 + b), 0.0, 1.0)
        elif op == 1 and c > 0:
            f = rng.uniform(max(0.0, 1 - c), 1 + c)
            x = _blend(x, float((x @ _GRAY).mean()), f)
        elif op == 2 and s > 0:
            f = rng.uniform(max(0.0, 1 - s), 1 + s)
            x = _blend(x, (x @ _GRAY)[..., None], f)
        elif op == 3 and h > 0:
            shift = rng.uniform(-h, h)
            hsv = cv2.cvtColor(np.ascontiguousarray(x, dtype=np.float32), cv2.COLOR_RGB2HSV)
            hsv[..., 0] = np.mod(hsv[..., 0] + shift * 360.0, 360.0)
            x = np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0.0, 1.0)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- CutPaste-normal


def _source(image: np.ndarray, others: list[np.ndarray], from_others: bool, rng: np.random.Generator) -> np.ndarray:
    if from_others and others:
        return others[int(rng.integers(len(others)))]
    return image


def _sample_aspect(opts: CutPasteOptions, rng: np.random.Generator) -> float:
    lo, hi = opts.aspect_ratio
    if opts.aspect_sampling == "log-uniform":
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return float(rng.uniform(lo, 1.0) if rng.integers(2) == 0 else rng.uniform(1.0, hi))


def cutpaste(
    image: np.ndarray, others: Sequence[np.ndarray], rng: np.random.Generator, **options
) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste-normal: a jittered rectangle pasted elsewhere; mask = the pasted rectangle."""
    image = check_image(image)
    others = check_others(others, image.shape)
    rng = check_rng(rng)
    opts = resolve_options(CutPasteOptions, options)
    H, W = image.shape[:2]

    src = _source(image, others, opts.from_others, rng)
    area = rng.uniform(*opts.area_ratio) * H * W
    aspect = _sample_aspect(opts, rng)
    pw = int(np.clip(round(math.sqrt(area * aspect)), 1, W))
    ph = int(np.clip(round(math.sqrt(area / aspect)), 1, H))
    sy, sx = int(rng.integers(0, H - ph + 1)), int(rng.integers(0, W - pw + 1))
    patch = color_jitter(src[sy : sy + ph, sx : sx + pw], rng, opts.color_jitter)
    dy, dx = int(rng.integers(0, H - ph + 1)), int(rng.integers(0, W - pw + 1))

    out = image.copy()
    out[dy : dy + ph, dx : dx + pw] = patch
    mask = np.zeros((H, W), dtype=bool)
    mask[dy : dy + ph, dx : dx + pw] = True
    return out, mask


# --------------------------------------------------------------------------- CutPaste-scar


def _rotate_expand(patch: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate ``patch`` by ``angle`` degrees on an enlarged canvas; return (rotated patch, bool alpha)."""
    h, w = patch.shape[:2]
    rad = math.radians(angle)
    cos, sin = abs(math.cos(rad)), abs(math.sin(rad))
    nw = max(1, int(math.ceil(h * sin + w * cos - 1e-9)))
    nh = max(1, int(math.ceil(h * cos + w * sin - 1e-9)))
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    m = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    m[0, 2] += (nw - 1) / 2.0 - cx
    m[1, 2] += (nh - 1) / 2.0 - cy
    rotated = cv2.warpAffine(patch, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    ones = np.ones((h, w), dtype=np.float32)
    alpha = cv2.warpAffine(ones, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    alpha = alpha > 0.5
    if not alpha.any():  # cannot happen for >= 1 px patches, but keep the mask honest
        alpha[nh // 2, nw // 2] = True
    return rotated, alpha


def cutpaste_scar(
    image: np.ndarray, others: Sequence[np.ndarray], rng: np.random.Generator, **options
) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste-scar: a thin jittered, rotated rectangle; mask = its alpha where pasted."""
    image = check_image(image)
    others = check_others(others, image.shape)
    rng = check_rng(rng)
    opts = resolve_options(ScarOptions, options)
    H, W = image.shape[:2]

    src = _source(image, others, opts.from_others, rng)
    pw = int(rng.integers(int(opts.width[0]), int(opts.width[1]), endpoint=True))
    ph = int(rng.integers(int(opts.length[0]), int(opts.length[1]), endpoint=True))
    pw, ph = min(pw, W), min(ph, H)
    sy, sx = int(rng.integers(0, H - ph + 1)), int(rng.integers(0, W - pw + 1))
    patch = color_jitter(src[sy : sy + ph, sx : sx + pw], rng, opts.color_jitter)
    angle = float(rng.uniform(*opts.rotation))
    rotated, alpha = _rotate_expand(patch, angle)
    rh, rw = min(alpha.shape[0], H), min(alpha.shape[1], W)
    rotated, alpha = rotated[:rh, :rw], alpha[:rh, :rw]
    dy, dx = int(rng.integers(0, H - rh + 1)), int(rng.integers(0, W - rw + 1))

    out = image.copy()
    box = out[dy : dy + rh, dx : dx + rw]
    box[alpha] = rotated[alpha]
    mask = np.zeros((H, W), dtype=bool)
    mask[dy : dy + rh, dx : dx + rw] = alpha
    return out, mask
