"""Procedurally generated industrial anomaly dataset in MVTec AD layout.

This is the embedded default dataset of tabad: it needs no download, is
generated in well under a minute on two CPU cores, and is deterministic, so
every test, example and benchmark can run on it offline.

Layout written by :func:`make_dataset` (identical to MVTec AD)::

    <out>/<category>/train/good/000.png
    <out>/<category>/test/good/000.png
    <out>/<category>/test/<defect>/000.png
    <out>/<category>/ground_truth/<defect>/000_mask.png   (uint8, 0 or 255)
    <out>/dataset.json                                   (parameters, counts)

Categories (``CATEGORIES`` maps each name to ``"texture"`` or ``"object"``):

Textures (the whole image is the surface; defects may appear anywhere)

* ``fabric`` -- plain-woven cloth: alternating warp/weft threads with per-thread
  thickness jitter and fibre noise. Defects: ``cut`` (thin dark line of broken
  threads), ``hole`` (dark opening with a shaded rim), ``stain`` (soft
  discoloured blob).
* ``wood`` -- planed wood: noise-warped growth rings plus fine fibres along
  the grain. Defects: ``crack`` (branching jagged dark line), ``scratch``
  (thin light line), ``stain``.
* ``metal_plate`` -- brushed sheet metal: streaks along one direction and a
  broad specular band. Defects: ``hole`` (pit), ``scratch`` (bright line
  cutting through the brushing), ``stain`` (oil / contamination).
* ``stone_tile`` -- speckled stone tiles with grout joints. Defects:
  ``crack``, ``hole`` (chipped pit), ``stain``.

Objects (one part on a plain background; defects only on the part)

* ``bolt`` -- a hex bolt lying on its side: hex head, threaded shaft and
  chamfered tip. Defects: ``bend`` (shaft bent), ``missing_part`` (a chip
  broken out of the shaft), ``scratch``.
* ``pill`` -- a cream capsule-shaped tablet with random red speckles and a
  score line. Defects: ``crack``, ``missing_part`` (a chip broken off the
  edge), ``stain`` (contamination).
* ``gear`` -- a spur gear with a hub bore and lightening holes. Defects:
  ``bend`` (part of the rim deformed), ``missing_part`` (a broken tooth),
  ``scratch``.
* ``pcb`` -- a small circuit board with traces, an IC, resistors and
  capacitors. Defects: ``misplaced_part`` (a component shifted / rotated),
  ``missing_part`` (a component absent, its pads bare), ``scratch`` (through
  the solder mask), ``stain`` (flux residue).

Normal images carry nuisance variation that a detector must tolerate:
lighting gain, offset, colour balance and a linear illumination gradient;
sensor noise; a few pixels of shift and a few degrees of rotation (objects)
or a new texture phase (textures); slight variation of the texture
parameters (thread period, ring spacing, ...) and of the part's details
(pill speckles, component placement within tolerance).

Difficulty: ``difficulty`` (default 1.0) makes defects subtler when larger:
contrast and geometric displacement (bend, shift of a misplaced part) are
multiplied by ``1 / difficulty``, defect extent (length, radius) by
``1 / sqrt(difficulty)``. The default is calibrated so that PaDiM on a
*randomly initialised* ResNet-18 reaches a mean image AUROC of about 0.75
(per category roughly 0.65 to 0.87): far from saturation, so better
backbones have room to show.

Masks are pixel-exact. Every defect is rendered as a change layer over the
very same normal image (same random streams for the surface, the lighting
and the sensor noise); the mask is that layer thresholded, and pixels outside
the mask are copied from the normal image, so a pixel is in the mask exactly
when the defect changed it.

Determinism: every image is drawn from a :class:`numpy.random.SeedSequence`
keyed by ``(seed, category, split, index)`` through SHA-256 (never Python's
salted ``hash()``), so the files are byte-identical for equal arguments and
do not depend on which other categories are generated or in which order.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from tabad.errors import DataError

__all__ = [
    "CATEGORIES",
    "DEFECTS",
    "GENERATOR_VERSION",
    "OBJECTS",
    "TEXTURES",
    "image_seed",
    "make_dataset",
    "render_sample",
]

#: Bump whenever the pixels produced for given arguments change; it is part
#: of the parameters recorded in ``dataset.json`` so stale data is detected.
GENERATOR_VERSION = "1"

CATEGORIES: dict[str, str] = {
    "fabric": "texture",
    "wood": "texture",
    "metal_plate": "texture",
    "stone_tile": "texture",
    "bolt": "object",
    "pill": "object",
    "gear": "object",
    "pcb": "object",
}
TEXTURES: list[str] = [c for c, k in CATEGORIES.items() if k == "texture"]
OBJECTS: list[str] = [c for c, k in CATEGORIES.items() if k == "object"]

#: Defect types of each category, in the order they are written.
DEFECTS: dict[str, tuple[str, ...]] = {
    "fabric": ("cut", "hole", "stain"),
    "wood": ("crack", "scratch", "stain"),
    "metal_plate": ("hole", "scratch", "stain"),
    "stone_tile": ("crack", "hole", "stain"),
    "bolt": ("bend", "missing_part", "scratch"),
    "pill": ("crack", "missing_part", "stain"),
    "gear": ("bend", "missing_part", "scratch"),
    "pcb": ("misplaced_part", "missing_part", "scratch", "stain"),
}

# A defect pixel is one whose colour changed by at least this much (on the
# 0..1 scale, before sensor noise). 2/255 guarantees that the change survives
# rounding to uint8 (same noise is added to both versions), and anything
# smaller is invisible anyway.
_CHANGE_EPS = 2.0 / 255.0
# Clean images are kept inside this range so that sensor noise rarely clips,
# which could otherwise hide a defect change at a saturated pixel.
_LO, _HI = 0.04, 0.96

Image = np.ndarray  # float32 (H, W, 3) in 0..1


# ----------------------------------------------------------------------------
# seeds


def image_seed(seed: int, category: str, split: str, index: int) -> np.random.SeedSequence:
    """The seed sequence of one image.

    ``split`` is ``"train"``, ``"test/good"`` or ``"test/<defect>"``. The key
    is hashed with SHA-256 so it is stable across processes and Python
    versions, and independent of the other categories being generated.
    """
    if not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    key = f"tabad-procedural|{GENERATOR_VERSION}|{category}|{split}|{int(index)}".encode()
    digest = hashlib.sha256(key).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    seed = int(seed)
    seed_words = [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, seed >> 64]
    return np.random.SeedSequence(seed_words + words)


# ----------------------------------------------------------------------------
# small vectorised drawing helpers


def _cv2():
    import cv2  # imported lazily: importing tabad must stay cheap

    return cv2


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(X, Y)``, read-only, cached per size."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _noise(rng: np.random.Generator, size: int, ny: int, nx: int | None = None) -> np.ndarray:
    """Smooth Gaussian noise with unit standard deviation.

    ``ny`` x ``nx`` independent values are spread over the image with cubic
    interpolation, so the feature size is ``256 / n`` design pixels whatever
    the output size (the image looks the same at 64 and 512 pixels).
    Anisotropic noise (``nx != ny``) gives streaks and fibres.
    """
    nx = ny if nx is None else nx
    a = rng.standard_normal((ny + 2, nx + 2)).astype(np.float32)
    # Resize a little larger and crop, so the edges are no different from the
    # centre (cv2.resize replicates the border).
    cv2 = _cv2()
    big = cv2.resize(a, (size + 2 * (size // (nx + 2) + 1), size + 2 * (size // (ny + 2) + 1)),
                     interpolation=cv2.INTER_CUBIC)
    oy = (big.shape[0] - size) // 2
    ox = (big.shape[1] - size) // 2
    out = big[oy : oy + size, ox : ox + size]
    return (out - out.mean()) / (out.std() + 1e-6)


def _cov(sd_px: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance in output pixels (<0 inside)."""
    return np.clip(0.5 - sd_px, 0.0, 1.0)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _sd_box(x: np.ndarray, y: np.ndarray, hw: float, hh: float, r: float = 0.0) -> np.ndarray:
    """Signed distance to an axis-aligned box of half sizes (hw, hh), corner radius r."""
    qx = np.abs(x) - (hw - r)
    qy = np.abs(y) - (hh - r)
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    inside = np.minimum(np.maximum(qx, qy), 0.0)
    return outside + inside - r


def _rot(x: np.ndarray, y: np.ndarray, ang: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of (x, y) in a frame rotated by ``ang`` radians."""
    c, s = math.cos(ang), math.sin(ang)
    return c * x + s * y, -s * x + c * y


def _mix(img: Image, target: Image | np.ndarray, alpha: np.ndarray) -> Image:
    a = alpha[..., None] if alpha.ndim == 2 else alpha
    return img * (1.0 - a) + target * a


def _polyline_alpha(size: int, lines: Iterable[np.ndarray], thickness: float) -> np.ndarray:
    """Anti-aliased coverage of polylines (pixel coordinates, sub-pixel precise)."""
    cv2 = _cv2()
    canvas = np.zeros((size, size), np.uint8)
    pts = [np.round(np.asarray(p, np.float64) * 16).astype(np.int32).reshape(-1, 1, 2) for p in lines]
    cv2.polylines(canvas, pts, False, 255, thickness=max(1, int(round(thickness))),
                  lineType=cv2.LINE_AA, shift=4)
    alpha = canvas.astype(np.float32) / 255.0
    if thickness < 1.0:  # thinner than a pixel: fainter rather than thinner
        alpha *= thickness
    return alpha


class _Frame:
    """Pose of a part: centre, rotation and scale (design units -> pixels).

    Parts are designed on a 256 x 256 canvas centred at the origin; ``local``
    maps output pixel coordinates into that design frame so that shapes are
    written as signed-distance functions and come out anti-aliased at any
    size, shift and rotation.
    """

    def __init__(self, size: int, cx: float, cy: float, ang: float, scale: float):
        self.size, self.cx, self.cy, self.ang, self.scale = size, cx, cy, ang, scale

    @classmethod
    def jittered(cls, rng: np.random.Generator, size: int, shift: float = 4.0, deg: float = 3.0,
                 scale: float = 0.02) -> "_Frame":
        s = size / 256.0
        return cls(size,
                   size / 2.0 - 0.5 + rng.uniform(-shift, shift) * s,
                   size / 2.0 - 0.5 + rng.uniform(-shift, shift) * s,
                   math.radians(rng.uniform(-deg, deg)),
                   s * rng.uniform(1.0 - scale, 1.0 + scale))

    def local(self, X: np.ndarray | None = None, Y: np.ndarray | None = None):
        if X is None:
            X, Y = _grid(self.size)
        xl, yl = _rot(X - self.cx, Y - self.cy, self.ang)
        return xl / self.scale, yl / self.scale

    def to_px(self, pts: np.ndarray) -> np.ndarray:
        """Design points (N, 2) -> pixel points (N, 2)."""
        pts = np.asarray(pts, np.float64) * self.scale
        c, s = math.cos(self.ang), math.sin(self.ang)
        x = c * pts[:, 0] - s * pts[:, 1] + self.cx
        y = s * pts[:, 0] + c * pts[:, 1] + self.cy
        return np.stack([x, y], 1)

    def cov(self, sd_design: np.ndarray) -> np.ndarray:
        return _cov(sd_design * self.scale)


def _background(rng: np.random.Generator, size: int, colour) -> Image:
    """Matte, slightly mottled surface under the objects."""
    mottle = 0.05 * _noise(rng, size, 5) + 0.02 * _noise(rng, size, 64)
    col = np.asarray(colour, np.float32) * (1.0 + rng.normal(0.0, 0.03, 3)).astype(np.float32)
    return col * (1.0 + mottle)[..., None]


# ----------------------------------------------------------------------------
# generic surface defects (scratch, crack, hole, stain, cut)


def _pick_point(drng: np.random.Generator, size: int, region: np.ndarray | None, margin: float) -> np.ndarray:
    """A random pixel position, inside ``region`` shrunk by ``margin`` pixels."""
    if region is None:
        lo, hi = 0.15 * size, 0.85 * size
        return drng.uniform(lo, hi, 2)
    cv2 = _cv2()
    inside = (region > 0.99).astype(np.uint8)
    r = max(1, int(round(margin)))
    eroded = cv2.erode(inside, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    idx = np.flatnonzero(eroded)
    if idx.size == 0:
        idx = np.flatnonzero(inside)
    if idx.size == 0:  # nothing to place on: use the centre
        return np.array([size / 2.0, size / 2.0])
    i = int(idx[drng.integers(idx.size)])
    return np.array([i % size, i // size], np.float64) + drng.uniform(-0.5, 0.5, 2)


def _walk(drng, p0, ang0, length, step, wobble, revert):
    """Points of a random walk: a jagged line heading roughly along ``ang0``."""
    n = max(2, int(length / step))
    turns = drng.normal(0.0, wobble, n)
    pts = [np.asarray(p0, np.float64)]
    ang = ang0
    for t in turns:  # n is a few dozen at most; the pixels are drawn by OpenCV
        ang += t + revert * (ang0 - ang)
        pts.append(pts[-1] + step * np.array([math.cos(ang), math.sin(ang)]))
    return np.stack(pts)


def _surface_defect(kind: str, img: Image, drng: np.random.Generator, k: float,
                    region: np.ndarray | None = None, style: dict | None = None) -> Image:
    """Paint one surface defect over ``img`` and return the defective image.

    ``k`` = 1 / difficulty scales contrast linearly and extent with ``sqrt(k)``.
    ``region`` (coverage of a part) keeps the defect on the part.
    ``style`` gives the category's colours: ``scratch`` ("bright"/"dark"),
    ``stain`` (RGB multiplier of a translucent stain) or ``stain_colour``
    (RGB of an opaque residue), ``hole`` (RGB of what shows through).
    """
    style = style or {}
    size = img.shape[0]
    s = size / 256.0
    z = math.sqrt(k)
    X, Y = _grid(size)
    if kind in ("scratch", "cut"):
        # Thin, gently curved polyline. Scratches catch the light (bright) on
        # metal and expose lighter fibres on wood; cuts in cloth are dark.
        length = drng.uniform(35.0, 65.0) * z * s
        p0 = _pick_point(drng, size, region, 0.25 * length)
        ang = drng.uniform(0.0, 2 * math.pi)
        pts = _walk(drng, p0, ang, length, max(length / 5.0, 1.0), 0.12, 0.0)
        pts -= pts.mean(0) - p0
        # a cut opens the weave (2 px), a scratch is a hairline (1 px)
        width = 2.0 if kind == "cut" else 1.0
        alpha = _polyline_alpha(size, [pts], width * max(1.0, s))
        bright = style.get("scratch", "bright") == "bright" and kind == "scratch"
        strength = drng.uniform(0.45, 0.62) * k
        target = np.float32(0.97) if bright else img * np.float32(0.3)
        a = np.clip(alpha * strength, 0.0, 1.0)
    elif kind == "crack":
        # Main jagged line and one or two branches; dark because the gap is
        # in shadow.
        length = drng.uniform(40.0, 70.0) * z * s
        p0 = _pick_point(drng, size, region, 0.3 * length)
        ang = drng.uniform(0.0, 2 * math.pi)
        step = 2.5 * s
        main = _walk(drng, p0, ang, length, step, 0.45, 0.25)
        main -= main.mean(0) - p0
        lines = [main]
        for _ in range(int(drng.integers(1, 3))):
            j = int(drng.integers(len(main) // 4, max(len(main) // 4 + 1, 3 * len(main) // 4)))
            bang = ang + drng.choice([-1.0, 1.0]) * drng.uniform(0.5, 1.1)
            lines.append(_walk(drng, main[j], bang, length * drng.uniform(0.25, 0.45), step, 0.45, 0.25))
        alpha = _polyline_alpha(size, lines, max(1.0, s))
        strength = drng.uniform(0.5, 0.7) * k
        target = img * np.float32(0.2)
        a = np.clip(alpha * strength, 0.0, 1.0)
    elif kind == "hole":
        # Elliptic opening showing what lies beneath, with a rim that is lit
        # on one side and shadowed on the other.
        ra = drng.uniform(3.5, 6.5) * z * s
        rb = ra * drng.uniform(0.6, 1.0)
        p0 = _pick_point(drng, size, region, 2.0 * ra)
        u, v = _rot(X - p0[0], Y - p0[1], drng.uniform(0.0, math.pi))
        rho = np.sqrt((u / ra) ** 2 + (v / rb) ** 2)
        inner = np.clip((1.0 - rho) * rb + 0.5, 0.0, 1.0)
        light = drng.uniform(0.0, 2 * math.pi)
        phi = np.arctan2(v, u)
        rim = np.exp(-(((rho - 1.2) / 0.18) ** 2)) * (rho < 1.8)
        shade = (0.18 * k) * rim * np.cos(phi - light) * (1.0 - inner)
        under = np.asarray(style.get("hole", (0.06, 0.06, 0.06)), np.float32)
        depth = min(1.0, drng.uniform(0.55, 0.8) * k)
        a = inner * depth
        target = under
        img = np.clip(img + shade[..., None], 0.0, 1.0)  # rim shading, then the opening
    elif kind == "stain":
        # Soft-edged irregular blob of discoloration, low contrast.
        r = drng.uniform(10.0, 18.0) * z * s
        p0 = _pick_point(drng, size, region, 0.8 * r)
        n_cells = max(4, int(256.0 / max(r / s, 1.0) * 1.5))
        wob = _noise(drng, size, n_cells)
        rho = np.hypot(X - p0[0], Y - p0[1]) / r + 0.25 * wob
        alpha = _smoothstep(1.0, 0.35, rho)
        if "stain_colour" in style:  # opaque-ish residue of its own colour
            target = np.asarray(style["stain_colour"], np.float32)
        else:  # translucent: tints what is underneath
            target = img * np.asarray(style.get("stain", (0.8, 0.68, 0.5)), np.float32)
        strength = drng.uniform(0.45, 0.6) * k
        a = np.clip(alpha * strength, 0.0, 1.0)
    else:  # pragma: no cover - guarded by DEFECTS
        raise ValueError(f"unknown surface defect {kind!r}")
    if region is not None:
        a = a * region
    return _mix(img, target, a)


# ----------------------------------------------------------------------------
# textures: each returns the clean albedo of one normal image


def _tex_fabric(rng: np.random.Generator, size: int) -> Image:
    """Plain weave: warp and weft threads alternate over/under per cell."""
    s = size / 256.0
    X, Y = _grid(size)
    period = 8.0 * rng.uniform(0.97, 1.03)
    u, v = _rot(X / s, Y / s, math.radians(rng.uniform(-1.5, 1.5)))
    u = u / period + rng.uniform(0.0, 2.0)
    v = v / period + rng.uniform(0.0, 2.0)
    i, j = np.floor(u), np.floor(v)
    fu, fv = u - i, v - j
    ii, jj = i.astype(np.int64), j.astype(np.int64)
    over = ((ii + jj) & 1) == 0
    # thread-to-thread thickness / brightness irregularity
    tw = rng.normal(0.0, 0.05, 101).astype(np.float32)
    tf = rng.normal(0.0, 0.05, 101).astype(np.float32)
    su, sv = np.sin(np.pi * fu), np.sin(np.pi * fv)
    warp = su ** 0.6 * (0.7 + 0.3 * sv) + tw[ii % 101]
    weft = sv ** 0.6 * (0.7 + 0.3 * su) + tf[jj % 101]
    inten = np.where(over, warp, weft)
    fibre = 0.05 * _noise(rng, size, 128)
    col = np.asarray((0.34, 0.42, 0.58), np.float32) * (1.0 + rng.normal(0.0, 0.03, 3)).astype(np.float32)
    return col * (0.45 + 0.6 * inten + fibre)[..., None]


def _tex_wood(rng: np.random.Generator, size: int) -> Image:
    """Growth rings warped by low-frequency noise, fibres along the grain."""
    s = size / 256.0
    X, Y = _grid(size)
    u, v = _rot(X / s, Y / s, math.radians(rng.uniform(-2.0, 2.0)))
    period = 15.0 * rng.uniform(0.9, 1.1)
    warp = 10.0 * _noise(rng, size, 4, 3) + 2.0 * _noise(rng, size, 16, 6)
    ring = 0.5 + 0.5 * np.cos(2 * np.pi * ((v + warp) / period + rng.uniform(0.0, 1.0)))
    late = ring ** 4  # latewood: narrow dark bands
    fibre = _noise(rng, size, 160, 10)
    inten = 0.8 - 0.22 * late + 0.035 * fibre + 0.03 * _noise(rng, size, 6)
    col = np.asarray((0.74, 0.52, 0.32), np.float32) * (1.0 + rng.normal(0.0, 0.03, 3)).astype(np.float32)
    return col * inten[..., None]


def _tex_metal(rng: np.random.Generator, size: int) -> Image:
    """Brushed metal: long streaks along x and a broad specular band."""
    s = size / 256.0
    X, Y = _grid(size)
    u, v = _rot(X / s, Y / s, math.radians(rng.uniform(-2.0, 2.0)))
    streak = _noise(rng, size, 200, 5)
    fine = _noise(rng, size, 256)
    a = rng.uniform(0.0, 2 * math.pi)
    band = np.cos(2 * np.pi * (u * math.cos(a) + v * math.sin(a)) / 400.0 + rng.uniform(0, 2 * math.pi))
    inten = 0.56 + 0.045 * streak + 0.012 * fine + 0.05 * band
    col = np.asarray((0.93, 0.95, 1.0), np.float32) * (1.0 + rng.normal(0.0, 0.02, 3)).astype(np.float32)
    return col * inten[..., None]


def _tex_stone(rng: np.random.Generator, size: int) -> Image:
    """Speckled stone tiles (64 design px) separated by grout joints."""
    s = size / 256.0
    X, Y = _grid(size)
    u, v = _rot(X / s, Y / s, math.radians(rng.uniform(-1.0, 1.0)))
    tile = 64.0 * rng.uniform(0.98, 1.02)
    u = u + rng.uniform(0.0, tile)
    v = v + rng.uniform(0.0, tile)
    fu, fv = u / tile, v / tile
    i, j = np.floor(fu), np.floor(fv)
    du = (fu - i) * tile
    dv = (fv - j) * tile
    d = np.minimum(np.minimum(du, tile - du), np.minimum(dv, tile - dv))  # distance to a joint
    grout = _cov((d - 1.5) * s)
    tone = rng.normal(0.0, 0.04, 97).astype(np.float32)
    tile_tone = tone[((i.astype(np.int64) * 7 + j.astype(np.int64) * 13) % 97)]
    speck = _noise(rng, size, 110)
    dark = _smoothstep(1.4, 2.0, speck)
    light = _smoothstep(-1.5, -2.1, speck)
    inten = 0.74 + tile_tone + 0.04 * _noise(rng, size, 20) - 0.3 * dark + 0.1 * light
    stone = np.asarray((0.8, 0.75, 0.67), np.float32) * inten[..., None]
    grout_col = np.asarray((0.42, 0.41, 0.4), np.float32)
    # joints are slightly recessed: a faint shadow band next to them
    stone *= (1.0 - 0.08 * _cov((d - 3.0) * s))[..., None]
    return _mix(stone, grout_col, grout)


# ----------------------------------------------------------------------------
# objects: each returns (normal, defective) albedo; defective is None for a
# normal image


def _obj_bolt(rng, drng, defect, size, k):
    """Hex bolt lying on its side, head left, threaded shaft right."""
    f = _Frame.jittered(rng, size)
    bg = _background(rng, size, (0.88, 0.88, 0.86))
    pitch = 5.0 * rng.uniform(0.98, 1.02)
    tphase = rng.uniform(0.0, 1.0)
    steel = np.asarray((0.5, 0.5, 0.53), np.float32) * (1.0 + rng.normal(0.0, 0.02, 3)).astype(np.float32)
    finish = 0.03 * _noise(rng, size, 90, 30)

    def draw(bend_x0=None, bend_k=0.0, chip=None):
        xl, yl = f.local()
        if bend_x0 is not None:  # shaft bent beyond bend_x0: a parabola
            yl = yl - bend_k * np.maximum(xl - bend_x0, 0.0) ** 2
        head = _sd_box(xl + 70.0, yl, 17.0, 34.0, 3.0)
        in_thread = _smoothstep(-14.0, -10.0, xl)
        t = (xl + 0.35 * yl) / pitch + tphase
        crest = 0.5 + 0.5 * np.cos(2 * np.pi * t)
        half = 15.0 + 1.6 * crest * in_thread
        shaft = np.maximum(np.abs(yl) - half, np.abs(xl - 16.0) - 70.0)
        shaft = np.maximum(shaft, (np.abs(yl) + xl - 74.0) * 0.7071)  # chamfered tip
        sd = np.minimum(head, shaft)
        if chip is not None:
            cx, cy, r = chip
            d_chip = r - np.hypot(xl - cx, yl - cy)
            sd = np.maximum(sd, d_chip)
        cov = f.cov(sd)
        # shading: cylinder across the shaft, three hex faces on the head
        nz = np.sqrt(np.clip(1.0 - (yl / 17.0) ** 2, 0.0, 1.0))
        shade_shaft = 0.45 + 0.55 * nz ** 0.7 + 0.35 * np.exp(-(((yl + 5.0) / 4.0) ** 2))
        shade_shaft *= 1.0 - 0.35 * in_thread * (1.0 - crest)
        face = _smoothstep(13.0, 10.0, np.abs(yl))
        shade_head = 0.7 + 0.45 * face
        is_head = _smoothstep(-52.5, -53.5, xl)
        shade = shade_head * is_head + shade_shaft * (1.0 - is_head) + finish
        if chip is not None:  # fracture surface is rough and darker
            shade = shade * (1.0 - 0.3 * _smoothstep(-4.0, 0.0, d_chip))
        obj = steel * shade[..., None]
        return _mix(bg, obj, cov), cov

    normal, cov = draw()
    if defect is None:
        return normal, None
    if defect == "bend":
        x0 = drng.uniform(-5.0, 35.0)
        defl = drng.uniform(5.0, 8.0) * k * drng.choice([-1.0, 1.0])
        return normal, draw(bend_x0=x0, bend_k=defl / (90.0 - x0) ** 2)[0]
    if defect == "missing_part":
        cx = drng.uniform(-5.0, 65.0)
        side = drng.choice([-1.0, 1.0])
        r = drng.uniform(4.0, 6.0) * math.sqrt(k)
        return normal, draw(chip=(cx, side * (15.0 + 0.5 * r), r))[0]
    return normal, _surface_defect(defect, normal, drng, k, cov, {"scratch": "bright"})


def _obj_pill(rng, drng, defect, size, k):
    """Capsule-shaped tablet with red speckles and a score line."""
    f = _Frame.jittered(rng, size)
    bg = _background(rng, size, (0.2, 0.21, 0.24))
    half_len, rad = 55.0 * rng.uniform(0.99, 1.01), 38.0
    cream = np.asarray((0.93, 0.89, 0.82), np.float32) * (1.0 + rng.normal(0.0, 0.02, 3)).astype(np.float32)
    speck = _noise(rng, size, 100)
    red = np.asarray((0.72, 0.3, 0.26), np.float32)
    grain = 0.02 * _noise(rng, size, 60)

    def draw(chip=None):
        xl, yl = f.local()
        sd = np.hypot(np.maximum(np.abs(xl) - half_len, 0.0), yl) - rad
        depth = np.clip(-sd / rad, 0.0, 1.0)
        nz = np.sqrt(1.0 - (1.0 - depth) ** 2)
        shade = 0.6 + 0.4 * nz + grain
        if chip is not None:
            cx, cy, r = chip
            d_chip = r - np.hypot(xl - cx, yl - cy)
            sd = np.maximum(sd, d_chip)
            shade = shade * (1.0 - 0.25 * _smoothstep(-4.0, 0.0, d_chip))
        cov = f.cov(sd)
        score = f.cov(np.abs(xl) - 0.8) * _smoothstep(-30.0, -26.0, -np.abs(yl))
        shade = shade * (1.0 - 0.2 * score)
        body = cream * shade[..., None]
        dots = _smoothstep(2.1, 2.6, speck) * _smoothstep(-2.0, -6.0, sd)
        body = _mix(body, red * shade[..., None], dots)
        return _mix(bg, body, cov), cov

    normal, cov = draw()
    if defect is None:
        return normal, None
    if defect == "missing_part":
        # chip on the outline: a circle centred just outside the rim
        t = drng.uniform(-1.0, 1.0)
        if drng.random() < 0.6:  # long side
            cx, cy = t * half_len, drng.choice([-1.0, 1.0]) * rad
        else:  # rounded end
            a = t * 1.2 + (0.0 if drng.random() < 0.5 else math.pi)
            cx = math.copysign(half_len, math.cos(a)) + rad * math.cos(a)
            cy = rad * math.sin(a)
        r = drng.uniform(6.0, 9.0) * math.sqrt(k)
        return normal, draw(chip=(cx, cy, r))[0]
    style = {"stain": (0.62, 0.58, 0.5)}
    return normal, _surface_defect(defect, normal, drng, k, cov, style)


def _obj_gear(rng, drng, defect, size, k):
    """Spur gear: 18 trapezoid teeth, hub bore, five lightening holes."""
    f = _Frame.jittered(rng, size)
    bg = _background(rng, size, (0.3, 0.33, 0.36))
    n_teeth = 18
    root, tooth_h = 84.0, 10.0
    metal = np.asarray((0.78, 0.76, 0.72), np.float32) * (1.0 + rng.normal(0.0, 0.02, 3)).astype(np.float32)
    marks = 0.025 * _noise(rng, size, 120)

    def draw(broken=None, bump=None):
        X, Y = _grid(size)
        if bump is not None:  # local deformation: displace the coordinates
            bx, by, dx, dy, sig = bump
            w = np.exp(-((X - bx) ** 2 + (Y - by) ** 2) / (2 * sig * sig))
            X, Y = X - dx * w, Y - dy * w
        xl, yl = f.local(X, Y)
        r = np.hypot(xl, yl)
        phi = np.arctan2(yl, xl)
        g = phi * n_teeth / (2 * np.pi) + 0.5
        idx = np.floor(g)
        fr = g - idx
        ramp = (0.32 - np.abs(fr - 0.5)) / 0.08  # trapezoid: top 0.16, flanks 0.08
        prof = np.clip(ramp, 0.0, 1.0)
        slope = np.where((ramp > 0.0) & (ramp < 1.0),
                         tooth_h / 0.08 * n_teeth / (2 * np.pi) / np.maximum(r, 1.0), 0.0)
        height = tooth_h * prof
        if broken is not None:
            height = np.where(np.mod(idx, n_teeth) == broken[0], height * broken[1], height)
        sd = (r - root - height) / np.sqrt(1.0 + slope ** 2)
        sd = np.maximum(sd, 21.0 - r)  # bore
        ang0 = 0.3
        for h in range(5):
            a = ang0 + 2 * np.pi * h / 5
            sd = np.maximum(sd, 12.0 - np.hypot(xl - 52.0 * math.cos(a), yl - 52.0 * math.sin(a)))
        cov = f.cov(sd)
        # turned face: concentric marks, a recessed web between hub and rim
        web = _smoothstep(31.0, 33.0, r) * _smoothstep(74.0, 72.0, r)
        shade = 0.95 - 0.15 * web + 0.03 * np.cos(2 * np.pi * r / 3.0) + marks
        shade += 0.12 * np.exp(-(((r - 73.0) / 1.2) ** 2)) + 0.12 * np.exp(-(((r - 32.0) / 1.2) ** 2))
        obj = metal * shade[..., None]
        return _mix(bg, obj, cov), cov

    normal, cov = draw()
    if defect is None:
        return normal, None
    if defect == "missing_part":
        # A tooth broken off to a stump (0 .. 30 % of its height remains).
        return normal, draw(broken=(int(drng.integers(n_teeth)), drng.uniform(0.0, 0.3)))[0]
    if defect == "bend":
        # Part of the rim pushed in or out by a few design pixels.
        a = drng.uniform(0.0, 2 * math.pi)
        rr = drng.uniform(78.0, 90.0)
        centre = f.to_px(np.array([[rr * math.cos(a), rr * math.sin(a)]]))[0]
        amp = drng.uniform(4.0, 7.0) * k * drng.choice([-1.0, 1.0]) * f.scale
        dirx, diry = math.cos(a + f.ang), math.sin(a + f.ang)
        sig = drng.uniform(10.0, 14.0) * f.scale
        return normal, draw(bump=(centre[0], centre[1], amp * dirx, amp * diry, sig))[0]
    return normal, _surface_defect(defect, normal, drng, k, cov, {"scratch": "bright"})


# PCB layout in design units: (kind, x, y, half width, half height, angle deg)
_PCB_PARTS = (
    ("ic", -28.0, -8.0, 26.0, 18.0, 0.0),
    ("res", 42.0, -42.0, 9.0, 4.0, 0.0),
    ("res", 42.0, -20.0, 9.0, 4.0, 0.0),
    ("res", -60.0, 46.0, 4.0, 9.0, 0.0),
    ("cap", 52.0, 30.0, 9.0, 9.0, 0.0),
    ("cap", 12.0, 48.0, 7.0, 7.0, 0.0),
    ("res", -20.0, 46.0, 9.0, 4.0, 0.0),
)
_PCB_TRACES = (
    ((-2.0, -20.0), (30.0, -42.0)),
    ((-2.0, -2.0), (16.0, -2.0), (30.0, -20.0)),
    ((-54.0, -20.0), (-72.0, -20.0), (-72.0, 20.0), (-60.0, 36.0)),
    ((-40.0, 14.0), (-40.0, 30.0), (-30.0, 46.0)),
    ((54.0, -42.0), (76.0, -42.0), (76.0, 10.0), (52.0, 20.0)),
    ((54.0, -20.0), (64.0, -10.0), (64.0, 20.0)),
    ((-10.0, 46.0), (4.0, 46.0)),
    ((20.0, 48.0), (44.0, 34.0)),
    ((-60.0, 56.0), (-60.0, 66.0), (30.0, 66.0), (52.0, 40.0)),
)


def _obj_pcb(rng, drng, defect, size, k):
    """Small green circuit board with traces, an IC, resistors and capacitors."""
    f = _Frame.jittered(rng, size)
    bg = _background(rng, size, (0.16, 0.16, 0.17))
    mask_col = np.asarray((0.13, 0.4, 0.22), np.float32) * (1.0 + rng.normal(0.0, 0.03, 3)).astype(np.float32)
    trace_col = mask_col * np.asarray((1.3, 1.3, 1.2), np.float32)
    pad_col = np.asarray((0.78, 0.77, 0.72), np.float32)
    mottle = 0.04 * _noise(rng, size, 20)
    # placement tolerance of the pick-and-place machine
    parts = [(kd, x + rng.normal(0.0, 0.4), y + rng.normal(0.0, 0.4), hw, hh, a + rng.normal(0.0, 0.6))
             for kd, x, y, hw, hh, a in _PCB_PARTS]
    thick = max(1.0, 2.5 * f.scale)
    traces = _polyline_alpha(size, [f.to_px(np.array(t)) for t in _PCB_TRACES], thick)

    def pad_sd(xl, yl, kd, x, y, hw, hh, a):
        u, v = _rot(xl - x, yl - y, math.radians(a))
        if kd == "res":  # two pads at the ends of the long axis
            if hw >= hh:
                return _sd_box(np.abs(u) - hw, v, 3.5, hh + 1.5)
            return _sd_box(u, np.abs(v) - hh, hw + 1.5, 3.5)
        if kd == "cap":
            return _sd_box(u, np.abs(v) - hh * 0.8, 3.0, 2.5)
        # ic: a row of pads along each long side
        pitch = 2 * hw / 7.0
        um = u - np.clip(np.round(u / pitch), -3, 3) * pitch
        return _sd_box(um, np.abs(v) - hh - 3.0, 1.6, 3.5)

    def part_layer(xl, yl, kd, x, y, hw, hh, a, shade):
        """(colour image, coverage) of one component."""
        u, v = _rot(xl - x, yl - y, math.radians(a))
        if kd == "ic":
            cov = f.cov(_sd_box(u, v, hw, hh, 1.0))
            dot = f.cov(np.hypot(u + hw - 5.0, v + hh - 5.0) - 1.8)
            col = np.float32(0.1) * (1.0 + 0.5 * shade)[..., None] * np.ones(3, np.float32)
            col = _mix(col, np.float32(0.3), dot)
            return col, cov
        if kd == "res":
            long_u = hw >= hh
            a_, b_ = (u, v) if long_u else (v, u)
            L, W = (hw, hh) if long_u else (hh, hw)
            cov = f.cov(_sd_box(a_, b_, L, W, 1.0))
            caps = _smoothstep(L - 3.5, L - 2.5, np.abs(a_))
            body = np.asarray((0.12, 0.12, 0.14), np.float32) * np.ones_like(shade)[..., None]
            col = _mix(body, np.asarray((0.7, 0.7, 0.68), np.float32), caps)
            return col * (1.0 + 0.5 * shade)[..., None], cov
        # cap: round electrolytic can seen from above, bright rim, cross vent
        r = np.hypot(u, v)
        cov = f.cov(r - hw)
        rim = np.exp(-(((r - hw + 1.5) / 1.0) ** 2))
        vent = f.cov(np.minimum(np.abs(u), np.abs(v)) - 0.6) * (r < hw * 0.6)
        base = np.asarray((0.55, 0.58, 0.62), np.float32)
        col = base * (0.85 + 0.4 * rim + shade)[..., None] * (1.0 - 0.4 * vent)[..., None]
        return col, cov

    def draw(parts_now):
        xl, yl = f.local()
        board_sd = _sd_box(xl, yl, 96.0, 78.0, 4.0)
        holes = np.minimum.reduce([np.hypot(xl - hx, yl - hy) for hx in (-86.0, 86.0) for hy in (-68.0, 68.0)])
        board_sd = np.maximum(board_sd, 3.5 - holes)
        board = f.cov(board_sd)
        img = mask_col * (1.0 + mottle)[..., None]
        img = _mix(img, trace_col, traces)
        ring = f.cov(np.abs(holes - 5.0) - 1.5)
        img = _mix(img, pad_col, ring)
        # pads belong to the board: always at the nominal positions
        pads = f.cov(np.minimum.reduce([pad_sd(xl, yl, *p) for p in _PCB_PARTS]))
        img = _mix(img, pad_col * (1.0 + mottle)[..., None], pads)
        shade = 0.1 * (-yl / 80.0)  # light from the top
        for p in parts_now:
            if p is None:
                continue
            col, cov = part_layer(xl, yl, *p, shade)
            img = _mix(img, col, cov)
        out = _mix(bg, img, board)
        return out, board

    normal, board = draw(parts)
    if defect is None:
        return normal, None
    if defect == "missing_part":
        changed = list(parts)
        changed[int(drng.integers(len(changed)))] = None
        return normal, draw(changed)[0]
    if defect == "misplaced_part":
        changed = list(parts)
        i = int(drng.integers(len(changed)))
        kd, x, y, hw, hh, a = changed[i]
        dist = drng.uniform(4.0, 7.0) * k
        ang = drng.uniform(0.0, 2 * math.pi)
        rot = drng.uniform(8.0, 15.0) * k * drng.choice([-1.0, 1.0]) if kd != "cap" else 0.0
        changed[i] = (kd, x + dist * math.cos(ang), y + dist * math.sin(ang), hw, hh, a + rot)
        return normal, draw(changed)[0]
    # scratch: bright copper showing through the solder mask;
    # stain: yellow-brown flux residue
    style = {"scratch": "bright", "stain_colour": (0.55, 0.5, 0.22)}
    return normal, _surface_defect(defect, normal, drng, k, board, style)


_TEXTURE_FN: dict[str, Callable] = {
    "fabric": _tex_fabric,
    "wood": _tex_wood,
    "metal_plate": _tex_metal,
    "stone_tile": _tex_stone,
}
_TEXTURE_STYLE: dict[str, dict] = {
    "fabric": {"hole": (0.05, 0.05, 0.06), "stain": (0.75, 0.72, 0.55)},
    "wood": {"scratch": "bright", "stain": (0.7, 0.66, 0.6)},
    "metal_plate": {"scratch": "bright", "hole": (0.08, 0.08, 0.09), "stain": (0.8, 0.72, 0.55)},
    "stone_tile": {"hole": (0.16, 0.15, 0.14), "stain": (0.72, 0.66, 0.55)},
}
_OBJECT_FN: dict[str, Callable] = {
    "bolt": _obj_bolt,
    "pill": _obj_pill,
    "gear": _obj_gear,
    "pcb": _obj_pcb,
}


# ----------------------------------------------------------------------------
# one image


def _lighting(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel gain (H, W, 3) and offset of this image's illumination."""
    X, Y = _grid(size)
    a = rng.uniform(0.0, 2 * math.pi)
    ramp = ((X - size / 2) * math.cos(a) + (Y - size / 2) * math.sin(a)) / size
    grad = rng.uniform(0.0, 0.12)
    gain = rng.uniform(0.9, 1.1) * (1.0 + grad * ramp)
    balance = (1.0 + rng.normal(0.0, 0.015, 3)).astype(np.float32)
    offset = np.float32(rng.uniform(-0.03, 0.03))
    return gain[..., None] * balance, offset


def render_sample(category: str, seed_seq: np.random.SeedSequence, defect: str | None = None,
                  size: int = 256, difficulty: float = 1.0) -> tuple[np.ndarray, np.ndarray | None]:
    """Render one image: ``(rgb uint8 (size, size, 3), mask uint8 or None)``.

    With the same ``seed_seq``, ``defect=None`` gives exactly the normal image
    that the defective version was painted on: the surface, lighting and
    noise streams do not depend on the defect, which draws from its own
    stream. The mask (0/255) is the set of pixels the defect changed; every
    pixel outside it is identical to the normal image.
    """
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
    if defect is not None and defect not in DEFECTS[category]:
        raise ValueError(f"category {category!r} has no defect {defect!r}; "
                         f"known: {', '.join(DEFECTS[category])}")
    if size < 64:
        raise ValueError(f"size must be >= 64, got {size}")
    if not difficulty > 0:
        raise ValueError(f"difficulty must be > 0, got {difficulty}")
    k = 1.0 / float(difficulty)
    # Children built explicitly rather than with seed_seq.spawn(), which
    # mutates seed_seq: rendering must not depend on earlier calls.
    base_ss, defect_ss, light_ss, noise_ss = (
        np.random.SeedSequence(seed_seq.entropy, spawn_key=tuple(seed_seq.spawn_key) + (i,),
                               pool_size=seed_seq.pool_size)
        for i in range(4))
    gain, offset = _lighting(np.random.default_rng(light_ss), size)
    # A very high difficulty can make a defect fade below the change
    # threshold; draw it again (deterministically) rather than writing an
    # anomalous image with an empty mask.
    for attempt in range(8):
        rng = np.random.default_rng(base_ss)
        drng = np.random.default_rng(defect_ss if attempt == 0 else [*defect_ss.generate_state(4), attempt])
        if CATEGORIES[category] == "texture":
            normal = _TEXTURE_FN[category](rng, size)
            bad = None if defect is None else _surface_defect(defect, normal, drng, k, None,
                                                              _TEXTURE_STYLE[category])
        else:
            normal, bad = _OBJECT_FN[category](rng, drng, defect, size, k)
        normal = np.clip(normal * gain + offset, _LO, _HI).astype(np.float32)
        mask = None
        if bad is None:
            break
        bad = np.clip(bad * gain + offset, _LO, _HI).astype(np.float32)
        changed = np.abs(bad - normal).max(axis=2) >= _CHANGE_EPS
        if changed.any():
            # pixels whose change is below the threshold keep their normal
            # value, so the mask is exactly the changed set
            normal = np.where(changed[..., None], bad, normal)
            mask = changed.astype(np.uint8) * 255
            break
    else:
        raise ValueError(f"{category}/{defect}: the defect stays invisible at difficulty={difficulty}; "
                         "use a lower difficulty")
    nrng = np.random.default_rng(noise_ss)
    sigma = nrng.uniform(0.006, 0.012)
    noisy = normal + nrng.standard_normal(normal.shape, dtype=np.float32) * np.float32(sigma)
    rgb = np.clip(np.rint(noisy * 255.0), 0, 255).astype(np.uint8)
    return rgb, mask


# ----------------------------------------------------------------------------
# dataset


def _parameters(seed, categories, n_train, n_test_good, n_test_per_defect, size, difficulty) -> dict:
    return {
        "generator": "tabad.datasets.procedural",
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "categories": list(categories),
        "n_train": int(n_train),
        "n_test_good": int(n_test_good),
        "n_test_per_defect": int(n_test_per_defect),
        "size": int(size),
        "difficulty": float(difficulty),
    }


def _jobs(category: str, n_train: int, n_test_good: int, n_test_per_defect: int):
    """(split, index, defect) of every image of a category, in writing order."""
    for i in range(n_train):
        yield "train", i, None
    for i in range(n_test_good):
        yield "test/good", i, None
    for d in DEFECTS[category]:
        for i in range(n_test_per_defect):
            yield f"test/{d}", i, d


def _write_png(path: Path, array: np.ndarray) -> None:
    cv2 = _cv2()
    if array.ndim == 3:
        array = array[:, :, ::-1]  # RGB -> BGR for OpenCV
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:  # pragma: no cover
        raise DataError(path, "PNG encoding failed")
    path.write_bytes(buf.tobytes())


def _summary(root: Path, params: dict, reused: bool, seconds: float) -> dict:
    cats = {}
    total = 0
    for c in params["categories"]:
        n_anom = params["n_test_per_defect"] * len(DEFECTS[c])
        cats[c] = {
            "kind": CATEGORIES[c],
            "path": str(root / c),
            "defects": list(DEFECTS[c]),
            "n_train": params["n_train"],
            "n_test_good": params["n_test_good"],
            "n_test_anomalous": n_anom,
        }
        total += params["n_train"] + params["n_test_good"] + n_anom
    return {"root": str(root), "reused": reused, "n_images": total, "seconds": round(seconds, 3),
            "parameters": params, "categories": cats}


def _describe(params: dict) -> dict:
    """Contents of dataset.json (deterministic: no time stamps, no host names)."""
    cats = {}
    for c in params["categories"]:
        cats[c] = {
            "kind": CATEGORIES[c],
            "defects": list(DEFECTS[c]),
            "counts": {
                "train/good": params["n_train"],
                "test/good": params["n_test_good"],
                **{f"test/{d}": params["n_test_per_defect"] for d in DEFECTS[c]},
            },
        }
    n = sum(sum(v["counts"].values()) for v in cats.values())
    return {
        "name": "tabad-procedural",
        "layout": "mvtec",
        "generator": params["generator"],
        "generator_version": params["generator_version"],
        "seed": params["seed"],
        "parameters": params,
        "categories": cats,
        "counts": {"categories": len(cats), "images": n},
    }


def make_dataset(
    out_dir: str | os.PathLike,
    seed: int = 0,
    categories: Iterable[str] | None = None,
    n_train: int = 64,
    n_test_good: int = 16,
    n_test_per_defect: int = 8,
    size: int = 256,
    progress: bool = True,
    *,
    difficulty: float = 1.0,
    overwrite: bool = False,
) -> dict:
    """Generate the procedural dataset in MVTec AD layout under ``out_dir``.

    Parameters
    ----------
    out_dir:
        Destination. It is created atomically: everything is written to a
        sibling ``<out_dir>.partial-*`` folder that is renamed into place when
        complete, so an interrupted run never leaves a half dataset.
    seed:
        Non-negative integer; the same seed and arguments give byte-identical
        files, whichever subset of categories is generated.
    categories:
        Names from :data:`CATEGORIES` (default: all). Stored in canonical
        order, so the order given does not matter.
    n_train, n_test_good, n_test_per_defect:
        Images per split (``n_test_per_defect`` for each defect type).
    size:
        Side of the square RGB images, >= 64 (the content is scaled).
    progress:
        Show progress: a bar on a terminal, a line every few seconds in a log (:mod:`tabad.progress`).
    difficulty:
        Defect subtlety: contrast is multiplied by ``1 / difficulty`` and
        defect extent by ``1 / sqrt(difficulty)``. 1.0 is calibrated so that
        PaDiM on a randomly initialised ResNet-18 is far from saturated.
    overwrite:
        If ``out_dir`` already holds a dataset made with other parameters,
        replace it instead of raising :class:`~tabad.errors.DataError`.

    Returns
    -------
    dict
        ``root``, ``reused`` (True when an identical dataset was already
        there and nothing was written), ``n_images``, ``seconds``,
        ``parameters`` and per-category ``kind``, ``path``, ``defects`` and
        counts.
    """
    t0 = time.perf_counter()
    if categories is None:
        cats = list(CATEGORIES)
    else:
        if isinstance(categories, str):
            categories = [categories]
        wanted = list(categories)
        unknown = [c for c in wanted if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; known: {', '.join(CATEGORIES)}")
        if not wanted:
            raise ValueError("categories is empty")
        cats = [c for c in CATEGORIES if c in set(wanted)]
    for name, n, lo in (("n_train", n_train, 1), ("n_test_good", n_test_good, 0),
                        ("n_test_per_defect", n_test_per_defect, 0), ("size", size, 64)):
        if int(n) != n or n < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {n!r}")
    if not difficulty > 0:
        raise ValueError(f"difficulty must be > 0, got {difficulty}")
    params = _parameters(seed, cats, n_train, n_test_good, n_test_per_defect, size, difficulty)
    image_seed(seed, "check", "train", 0)  # validates the seed early

    out = Path(out_dir)
    meta_path = out / "dataset.json"
    if meta_path.exists():
        try:
            existing = json.loads(meta_path.read_text(encoding="utf-8")).get("parameters")
        except (OSError, ValueError) as e:
            raise DataError(meta_path, f"cannot read existing dataset description: {e}") from e
        if existing == params:
            missing = [c for c in cats if not (out / c).is_dir()]
            if not missing:
                return _summary(out, params, True, time.perf_counter() - t0)
            if not overwrite:
                raise DataError(out, f"dataset is incomplete (missing {', '.join(missing)}); "
                                     "pass overwrite=True to generate it again", option="overwrite")
        if not overwrite:
            diff = sorted(k for k in set(params) | set(existing or {})
                          if (existing or {}).get(k) != params.get(k))
            raise DataError(out, "holds a procedural dataset made with different parameters "
                                 f"({', '.join(diff)} differ); pass overwrite=True to replace it "
                                 "or choose another folder", option="overwrite")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        # Never delete or mix into something we did not write.
        raise DataError(out, "exists and is not an empty folder nor a tabad procedural dataset; "
                             "choose another folder")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.partial-", dir=out.parent))
    try:
        jobs = []
        for c in cats:
            for split, i, d in _jobs(c, n_train, n_test_good, n_test_per_defect):
                jobs.append((c, split, i, d))
        for c in cats:
            (tmp / c / "train" / "good").mkdir(parents=True)
            (tmp / c / "test" / "good").mkdir(parents=True)
            for d in DEFECTS[c]:
                (tmp / c / "test" / d).mkdir(parents=True)
                (tmp / c / "ground_truth" / d).mkdir(parents=True)
        from tabad.progress import progress as progress_bar

        with progress_bar(total=len(jobs), desc="procedural dataset", unit="img", disable=not progress) as bar:
            for c, split, i, d in jobs:
                _write_one(tmp, c, split, i, d, seed, size, difficulty)
                bar.update(1)
        # dataset.json last: its presence marks a complete dataset
        (tmp / "dataset.json").write_text(json.dumps(_describe(params), indent=2) + "\n", encoding="utf-8")
        if out.exists():
            if meta_path.exists():  # overwrite=True of a dataset we made
                old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
                os.replace(out, old / "d")
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:  # empty folder
                out.rmdir()
                os.replace(tmp, out)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _summary(out, params, False, time.perf_counter() - t0)


def _write_one(root: Path, category: str, split: str, index: int, defect: str | None,
               seed: int, size: int, difficulty: float) -> None:
    """Render one image (seeded by its split name) and write it and its mask."""
    rgb, mask = render_sample(category, image_seed(seed, category, split, index), defect, size, difficulty)
    folder = "train/good" if split == "train" else split
    _write_png(root / category / folder / f"{index:03d}.png", rgb)
    if mask is not None:
        _write_png(root / category / "ground_truth" / defect / f"{index:03d}_mask.png", mask)
