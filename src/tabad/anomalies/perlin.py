"""DRAEM-style anomalies: a Perlin-noise region filled with a foreign texture (methods.md §6c).

1. Perlin noise with lattice resolution ``(2^a, 2^b)``, ``a, b`` uniform in
   ``{0..5}``, quintic fade ``6t^5 - 15t^4 + 10t^3`` and random gradient
   angles (as DRAEM's ``rand_perlin_2d_np``). The image sides need not be
   divisible by ``2^5``: the noise is generated on the next multiple of the
   resolution and cropped.
2. The noise is rotated by ``U(-90°, 90°)`` about the image centre (the
   corners that rotate in are 0, i.e. below threshold, as with imgaug's
   ``Affine`` in DRAEM) and thresholded: ``M = noise > threshold`` (DRAEM
   0.5, TAB 0.65).
3. A texture ``T``: a random image file from ``texture_dir`` (any folder of
   images, searched recursively, e.g. DTD's ``dtd/images``; resized to the
   image size) or, without a folder, a procedurally generated texture
   (coloured multi-octave noise, stripes, checkerboard or marble) -- nothing
   is ever downloaded. ``T`` is augmented with ``num_augment_ops`` distinct
   operations in random order, drawn from DRAEM's list of ten: gamma
   contrast, brightness multiply-and-add, sharpness, hue/saturation add,
   solarize, posterize, invert, autocontrast, equalize, rotate (TAB adds an
   eleventh, hue/saturation multiply, and uses five).
4. ``beta ~ U(0, 0.8)``; ``out = (1 - M) * I + M * ((1 - beta) * T + beta * I)``.

As in TAB's variant the result is always anomalous: when the threshold
leaves ``M`` empty the noise is redrawn (up to ``max_tries`` times; after
that the unchanged image and an empty mask are returned). DRAEM's
probability-0.5 clean sample and its random rotation of the input image are
data-set augmentations, not part of this generator. Pixels outside ``M``
are never changed. All randomness comes from ``rng``; the list of files of
``texture_dir`` is cached per folder (keyed by its modification time).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from tabad.anomalies.checks import as_pair, check_image, check_others, check_rng, resolve_options
from tabad.errors import DataError

TEXTURE_KINDS = ("noise", "stripes", "checker", "marble")


# --------------------------------------------------------------------------- Perlin noise


def _fade(t: np.ndarray) -> np.ndarray:
    return ((6.0 * t - 15.0) * t + 10.0) * t * t * t


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D Perlin noise of ``shape`` with ``res`` lattice cells per axis (float32, about [-1, 1]).

    The sides need not be multiples of ``res``: the noise is computed on the
    next multiples and cropped, so every lattice cell has the same size.
    """
    h, w = (int(v) for v in shape)
    r1, r2 = (int(v) for v in res)
    if h < 1 or w < 1 or r1 < 1 or r2 < 1:
        raise ValueError(f"shape and res must be positive, got {shape}, {res}")
    d1, d2 = -(-h // r1), -(-w // r2)  # cell size in px on the padded grid
    angles = 2.0 * np.pi * rng.random((r1 + 1, r2 + 1))
    gx, gy = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)

    # Gradients repeated over their cells: corner (a, b) of every pixel is then a plain slice.
    gx = np.repeat(np.repeat(gx, d1, axis=0), d2, axis=1)
    gy = np.repeat(np.repeat(gy, d1, axis=0), d2, axis=1)
    t1 = ((np.arange(h) % d1) / d1).astype(np.float32)[:, None]
    t2 = ((np.arange(w) % d2) / d2).astype(np.float32)[None, :]

    def corner(a: int, b: int) -> np.ndarray:
        rows, cols = slice(a * d1, a * d1 + h), slice(b * d2, b * d2 + w)
        return gx[rows, cols] * (t1 - a) + gy[rows, cols] * (t2 - b)

    f1, f2 = _fade(t1), _fade(t2)
    n0 = corner(0, 0) * (1 - f1) + corner(1, 0) * f1
    n1 = corner(0, 1) * (1 - f1) + corner(1, 1) * f1
    return (math.sqrt(2.0) * (n0 * (1 - f2) + n1 * f2)).astype(np.float32)


def _rotate(arr: np.ndarray, angle: float, border: int, value=0, interpolation=cv2.INTER_LINEAR) -> np.ndarray:
    h, w = arr.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
    return cv2.warpAffine(arr, m, (w, h), flags=interpolation, borderMode=border, borderValue=value)


# --------------------------------------------------------------------------- textures


def _random_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(0.0, 255.0, (n, 3)).astype(np.float32)


def _value_noise(shape: tuple[int, int], rng: np.random.Generator, octaves: int = 5, channels: int = 1) -> np.ndarray:
    """Multi-octave smooth noise in [0, 1], ``(H, W, channels)``."""
    h, w = shape
    total = np.zeros((h, w, channels), dtype=np.float32)
    base = int(rng.integers(2, 6))
    weight, norm = 1.0, 0.0
    for o in range(octaves):
        g = base * 2**o
        grid = rng.random((g + 1, g + 1, channels)).astype(np.float32)
        up = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += weight * up.reshape(h, w, channels)
        norm += weight
        weight *= 0.5
    total /= norm
    lo, hi = total.min(), total.max()
    return (total - lo) / max(hi - lo, 1e-6)


def procedural_texture(shape: tuple[int, int], rng: np.random.Generator, kinds: Sequence[str] = TEXTURE_KINDS) -> np.ndarray:
    """A random colourful texture (uint8 ``(H, W, 3)``) of one of ``kinds``; see :data:`TEXTURE_KINDS`."""
    h, w = shape
    kind = kinds[int(rng.integers(len(kinds)))]
    c = _random_colours(rng, 2)
    theta = rng.uniform(0.0, np.pi)
    ys, xs = np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32)
    cos, sin = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    u = np.add.outer(ys * sin, xs * cos)  # coordinate across the stripes
    if kind == "noise":
        t = _value_noise(shape, rng, channels=1)
        tex = c[0] * (1 - t) + c[1] * t + 60.0 * (_value_noise(shape, rng, octaves=3, channels=3) - 0.5)
    elif kind == "stripes":
        period = rng.uniform(4.0, 32.0)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
        if rng.integers(2):
            wave = (wave > 0.5).astype(np.float32)
        tex = c[0] * (1 - wave[..., None]) + c[1] * wave[..., None]
    elif kind == "checker":
        cell = rng.uniform(6.0, 40.0)
        v = np.add.outer(ys * cos, -xs * sin)
        chk = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
        tex = c[0] * (1 - chk[..., None]) + c[1] * chk[..., None]
    elif kind == "marble":
        turb = _value_noise(shape, rng, channels=1)[..., 0]
        period = rng.uniform(10.0, 60.0)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * u / period + rng.uniform(3.0, 10.0) * turb)
        tex = c[0] * (1 - t[..., None]) + c[1] * t[..., None]
    else:
        raise ValueError(f"unknown texture kind {kind!r}; choose from {', '.join(TEXTURE_KINDS)}")
    tex = tex + 6.0 * rng.standard_normal((h, w, 3), dtype=np.float32)  # grain
    return np.clip(np.rint(tex), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=16)
def _list_images(folder: str, mtime_ns: int) -> tuple[str, ...]:
    from tabad.datasets.images import is_image_file

    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f)]
    return tuple(found)


def texture_files(texture_dir: str | Path) -> tuple[str, ...]:
    """Image files under ``texture_dir`` (recursive, sorted); ``DataError`` if none."""
    folder = Path(texture_dir)
    if not folder.is_dir():
        raise DataError(folder, "texture folder does not exist" if not folder.exists() else "is not a folder")
    files = _list_images(str(folder.resolve()), folder.stat().st_mtime_ns)
    if not files:
        raise DataError(folder, "no image files found in the texture folder (searched recursively)")
    return files


def _load_texture(path: str, shape: tuple[int, int]) -> np.ndarray:
    from tabad.datasets.images import load_image

    arr = np.asarray(load_image(path))
    h, w = shape
    return cv2.resize(arr, (w, h), interpolation=cv2.INTER_AREA if arr.shape[0] > h else cv2.INTER_LINEAR)


# --------------------------------------------------------------------------- texture augmentations


def _lut(img: np.ndarray, table: np.ndarray) -> np.ndarray:
    return cv2.LUT(img, np.clip(np.rint(table), 0, 255).astype(np.uint8))


def _aug_gamma(img, rng):
    x = np.arange(256, dtype=np.float64) / 255.0
    gammas = rng.uniform(0.5, 2.0, 3)  # per channel
    return np.stack([_lut(np.ascontiguousarray(img[..., k]), 255.0 * x ** gammas[k]) for k in range(3)], axis=-1)


def _aug_brightness(img, rng):
    mul, add = rng.uniform(0.8, 1.2), rng.uniform(-30.0, 30.0)
    ycc = cv2.cvtColor(img, cv2.COLOR_RGB2YCrCb)
    ycc[..., 0] = _lut(np.ascontiguousarray(ycc[..., 0]), np.arange(256) * mul + add)
    return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)


_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13.0


def _aug_sharpness(img, rng):
    factor = rng.uniform(0.0, 2.0)  # PIL ImageEnhance.Sharpness: 0 blurred, 1 original, 2 sharpened
    smooth = cv2.filter2D(img, cv2.CV_32F, _SMOOTH, borderType=cv2.BORDER_REPLICATE)
    out = smooth + factor * (img.astype(np.float32) - smooth)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _hsv_apply(img, fn):
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)  # H in [0, 180)
    h, s = fn(hsv[..., 0], hsv[..., 1])
    hsv[..., 0] = np.mod(np.rint(h), 180.0)
    hsv[..., 1] = np.clip(np.rint(s), 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def _aug_hue_sat_add(img, rng):
    dh, ds = rng.uniform(-50.0, 50.0, 2)  # imgaug units: 255 = a full turn of hue
    return _hsv_apply(img, lambda h, s: (h + dh * 180.0 / 255.0, s + ds))


def _aug_hue_sat_mul(img, rng):
    mh, ms = rng.uniform(0.5, 1.5, 2)
    return _hsv_apply(img, lambda h, s: (h * mh, s * ms))


def _aug_solarize(img, rng):
    if rng.random() >= 0.5:  # imgaug Solarize(p=0.5)
        return img
    threshold = rng.uniform(32.0, 128.0)
    x = np.arange(256)
    return _lut(img, np.where(x >= threshold, 255 - x, x))


def _aug_posterize(img, rng):
    bits = int(rng.integers(1, 8, endpoint=True))
    mask = (0xFF << (8 - bits)) & 0xFF
    return img & np.uint8(mask)


def _aug_invert(img, rng):
    return 255 - img


def _aug_autocontrast(img, rng):
    lo = img.reshape(-1, 3).min(axis=0).astype(np.float32)
    hi = img.reshape(-1, 3).max(axis=0).astype(np.float32)
    scale = np.where(hi > lo, 255.0 / np.maximum(hi - lo, 1.0), 1.0)
    offset = np.where(hi > lo, lo, 0.0)
    return np.clip(np.rint((img - offset) * scale), 0, 255).astype(np.uint8)


def _aug_equalize(img, rng):
    return np.stack([cv2.equalizeHist(np.ascontiguousarray(img[..., k])) for k in range(3)], axis=-1)


def _aug_rotate(img, rng):
    # DRAEM fills with black; reflecting keeps the texture free of artificial corners.
    return _rotate(img, float(rng.uniform(-45.0, 45.0)), cv2.BORDER_REFLECT_101)


#: Texture augmentations: name -> fn(uint8 RGB, rng) -> uint8 RGB. The first ten are DRAEM's.
AUGMENTATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "gamma_contrast": _aug_gamma,
    "brightness": _aug_brightness,
    "sharpness": _aug_sharpness,
    "hue_saturation_add": _aug_hue_sat_add,
    "solarize": _aug_solarize,
    "posterize": _aug_posterize,
    "invert": _aug_invert,
    "autocontrast": _aug_autocontrast,
    "equalize": _aug_equalize,
    "rotate": _aug_rotate,
    "hue_saturation_multiply": _aug_hue_sat_mul,
}
DRAEM_AUGMENTATIONS = tuple(list(AUGMENTATIONS)[:10])
TAB_AUGMENTATIONS = tuple(AUGMENTATIONS)


def augment_texture(texture: np.ndarray, rng: np.random.Generator, ops: Sequence[str] = DRAEM_AUGMENTATIONS, n: int = 3) -> np.ndarray:
    """Apply ``n`` distinct ops of ``ops`` in random order (DRAEM's ``randAugmenter``)."""
    chosen = rng.choice(len(ops), size=min(n, len(ops)), replace=False)
    out = np.ascontiguousarray(texture)
    for k in chosen:
        out = np.ascontiguousarray(AUGMENTATIONS[ops[int(k)]](out, rng))
    return out


# --------------------------------------------------------------------------- generator


@dataclass(frozen=True)
class PerlinOptions:
    """Options of :func:`perlin` (methods.md §6c); defaults are DRAEM's, ``PerlinOptions.tab()`` TAB's.

    Attributes:
        threshold: ``M = noise > threshold``; DRAEM 0.5, TAB 0.65.
        scale_exp: ``(lo, hi)``: lattice resolution ``2^a`` per axis with
            ``a`` uniform in ``{lo..hi}``; (0, 5).
        rotation: noise rotation ``U(lo, hi)`` degrees; (-90, 90).
        beta: opacity of the image inside ``M``: ``U(lo, hi)``; (0, 0.8).
        texture_dir: folder of texture images (e.g. DTD ``dtd/images``);
            ``None`` generates textures procedurally.
        texture_kinds: procedural texture kinds to draw from.
        augment_ops: names of texture augmentations (:data:`AUGMENTATIONS`);
            DRAEM's ten by default, TAB eleven.
        num_augment_ops: how many distinct ops are applied; DRAEM 3, TAB 5.
        max_tries: noise redraws when ``M`` comes out empty.
    """

    threshold: float = 0.5
    scale_exp: tuple[int, int] = (0, 5)
    rotation: tuple[float, float] = (-90.0, 90.0)
    beta: tuple[float, float] = (0.0, 0.8)
    texture_dir: str | Path | None = None
    texture_kinds: tuple[str, ...] = TEXTURE_KINDS
    augment_ops: tuple[str, ...] = DRAEM_AUGMENTATIONS
    num_augment_ops: int = 3
    max_tries: int = 50

    def __post_init__(self):
        lo, hi = as_pair(self.scale_exp, "scale_exp", 0, 10)
        if lo != int(lo) or hi != int(hi):
            raise ValueError(f"scale_exp must be integers, got {self.scale_exp}")
        as_pair(self.rotation, "rotation")
        as_pair(self.beta, "beta", 0.0, 1.0)
        if not self.texture_kinds or any(k not in TEXTURE_KINDS for k in self.texture_kinds):
            raise ValueError(f"texture_kinds must be a non-empty subset of {TEXTURE_KINDS}, got {self.texture_kinds!r}")
        unknown = [op for op in self.augment_ops if op not in AUGMENTATIONS]
        if unknown:
            raise ValueError(f"unknown augment_ops {unknown}; valid: {', '.join(AUGMENTATIONS)}")
        if int(self.num_augment_ops) < 0 or int(self.max_tries) < 1:
            raise ValueError("num_augment_ops must be >= 0 and max_tries >= 1")

    @classmethod
    def tab(cls, **overrides) -> "PerlinOptions":
        """TAB's (commented-out) variant: threshold 0.65, 5 of 11 augmentations."""
        base = dict(threshold=0.65, augment_ops=TAB_AUGMENTATIONS, num_augment_ops=5)
        base.update(overrides)
        return cls(**base)


def perlin_mask(shape: tuple[int, int], rng: np.random.Generator, opts: PerlinOptions | None = None) -> np.ndarray:
    """One draw of DRAEM's thresholded, rotated Perlin mask (bool ``(H, W)``; may be empty)."""
    opts = opts or PerlinOptions()
    lo, hi = int(opts.scale_exp[0]), int(opts.scale_exp[1])
    a, b = (int(v) for v in rng.integers(lo, hi, size=2, endpoint=True))
    noise = perlin_noise(shape, (2**a, 2**b), rng)
    noise = _rotate(noise, float(rng.uniform(*opts.rotation)), cv2.BORDER_CONSTANT, 0.0)
    return noise > opts.threshold


def perlin(
    image: np.ndarray, others: Sequence[np.ndarray], rng: np.random.Generator, **options
) -> tuple[np.ndarray, np.ndarray]:
    """DRAEM-style anomaly: a Perlin-shaped region blended with an augmented texture (``others`` unused)."""
    image = check_image(image)
    check_others(others, image.shape)
    rng = check_rng(rng)
    opts = resolve_options(PerlinOptions, options)
    H, W = image.shape[:2]
    files = texture_files(opts.texture_dir) if opts.texture_dir is not None else None

    for _ in range(int(opts.max_tries)):
        mask = perlin_mask((H, W), rng, opts)
        if mask.any():
            break
    else:
        return image.copy(), np.zeros((H, W), dtype=bool)

    if files is not None:
        texture = _load_texture(files[int(rng.integers(len(files)))], (H, W))
    else:
        texture = procedural_texture((H, W), rng, opts.texture_kinds)
    texture = augment_texture(texture, rng, opts.augment_ops, int(opts.num_augment_ops))

    beta = float(rng.uniform(*opts.beta))
    inside = image[mask].astype(np.float32)
    blended = (1.0 - beta) * texture[mask].astype(np.float32) + beta * inside
    out = image.copy()
    out[mask] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out, mask
