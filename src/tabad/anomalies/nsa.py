"""NSA: Natural Synthetic Anomalies (Schlüter et al., ECCV 2022), methods.md §6a.

A patch is cut from *another* normal image of the same class, resized at
random and blended into the image with OpenCV's Poisson solver
(``cv2.seamlessClone``). This is the generator TAB pre-trains with; the
defaults of :class:`NSAOptions` are TAB's setting (tab_reference_code.md §2,
methods.md §6a "TAB's use of NSA"):

* gamma half-widths ``(shape 2, scale 0.07, lower 0.05)``, clipped to the
  half-width fractions ``((0.05, 0.2), (0.05, 0.2))`` -> 11..45 px at 224;
* ``mode="mix"``: NORMAL_CLONE or MIXED_CLONE with probability 1/2 each;
* one patch, resize on with factor ``clip(N(1, 0.5), 0.7, 1.3)``, shift on;
* no object masks; label tolerance 1 (mean absolute change over channels).

Per patch (as in the reference ``_patch_ex``):

1. half-width per axis ``clip((lower + Gamma(shape, scale)) * side, wmin, wmax)``;
2. source centre uniform in ``[wmin, side - wmin)``; the box (centre +-
   half-width) is clipped to the image; with object masks it must contain
   more than ``min_object_pct`` object (up to ``max_tries`` tries);
3. resize: factor ``clip(N(1, 0.5), *resize_bounds)``; height and width are
   clipped to ``[wmin, wmax]`` keeping the aspect ratio -- note: the *full*
   side is clipped to the *half-width* bounds, exactly as in the reference
   code, so resized patches are 11..45 px per side at 224;
4. destination (``shift``): uniform centre such that the patch fits; with
   object masks the source patch must hold more than ``min_object_pct``
   object and overlap the destination object by more than
   ``min_overlap_pct`` of its object pixels (up to ``max_tries`` tries);
5. clone mask 255 over the patch with a zeroed 1-px border; the patch is
   skipped when it has fewer than 50 positive pixels or OpenCV raises.

The first patch is always attempted, each further one with probability 1/2,
up to ``num_patches``. The label is the **actual change**: pixels whose mean
absolute difference over the channels exceeds ``tol`` inside the patch boxes
(widened by ``label_margin`` px, so an off-by-one of OpenCV's placement can
never hide a changed pixel), then a 5x5 median blur. With object masks only
pixels where the source or destination patch shows the object count, as in
the reference. ``label_mode="logistic-intensity"`` additionally gives NSA's
soft label (:func:`nsa_with_label`); the returned boolean mask is that label
binarised at ``!= 0``, which is the binary label (the logistic is positive
wherever a pixel changed), as TAB's data loader does.

When no patch could be placed, the whole draw is repeated (``max_draws``
times, each with a freshly drawn source image and clone mode). When nothing
changed after all draws -- a flat image or source, where Poisson blending
reproduces the destination -- the unchanged image and an empty mask are
returned; the caller decides what to do with such a sample.

With TAB's width bounds the patches are 5-20 % of the side, so on images
below about 80 px most clone masks fall under the 50-pixel minimum and NSA
returns empty masks; use 224 px (as TAB) or widen ``width_bounds``.

If ``others`` is empty the source patch is taken from ``image`` itself
(the reference's ``same=True``), which gives weaker, self-similar anomalies.

Besides the Poisson modes, ``mode="swap"`` pastes the patch hard (the
reference's CutPaste-like mode), useful for tests and ablations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from tabad.anomalies.checks import as_pair, check_image, check_others, check_rng, resolve_options

MODES = ("normal", "mixed", "mix", "swap")
LABEL_MODES = ("binary", "logistic-intensity")
_CV2_FLAGS = {"normal": cv2.NORMAL_CLONE, "mixed": cv2.MIXED_CLONE}


@dataclass(frozen=True)
class NSAOptions:
    """Options of :func:`nsa`; the defaults are TAB's setting (methods.md §6a, tab_reference_code.md §2).

    Attributes:
        mode: ``"normal"`` (NORMAL_CLONE, source gradients; the reference's
            choice for objects), ``"mixed"`` (MIXED_CLONE, stronger gradient
            of source or destination; for textures), ``"mix"`` (coin flip
            between the two per draw; NSA paper and TAB) or ``"swap"`` (hard
            paste, no blending).
        num_patches: the first patch is always attempted, each further one
            with probability 1/2 (TAB: 1; NSA paper: 3 objects, 4 textures).
        gamma_params: ``(shape, scale, lower)``: half-width fraction
            ``lower + Gamma(shape, scale)``; ``None`` draws the half-width
            uniformly within ``width_bounds``. TAB: (2, 0.07, 0.05); NSA
            paper "Shift-Intensity": (2, 0.05, 0.03).
        width_bounds: ``((min, max) for H, (min, max) for W)``: half-width
            fractions of the side. TAB: ((0.05, 0.2), (0.05, 0.2)).
        resize: resample the patch by ``clip(N(1, 0.5), *resize_bounds)``.
        resize_bounds: (0.7, 1.3) (TAB, NSA objects); NSA textures (0.5, 2).
        shift: place the patch at a random destination (else at its source
            position).
        object_mask: ``None`` (no object checks; TAB) or ``"auto"``: object =
            ``|mean_RGB - value| > threshold`` for every ``(value,
            threshold)`` in ``background``, then a 7x7 median blur.
        background: ``(value, threshold)`` or a sequence of them; NSA uses
            (200, 60) for bottle/capsule/screw/zipper and (20, 20) for
            hazelnut/pill/toothbrush/metal_nut.
        min_object_pct: object fraction a source patch must exceed (0.25;
            NSA per class 0.25..0.7).
        min_overlap_pct: fraction of the source object that must land on the
            destination object (0.25).
        max_tries: tries for a source box and for a destination (200).
        max_draws: how often the whole draw is repeated when no patch could
            be placed or nothing changed (not in the reference, which gives up
            at once).
        tol: a pixel is "changed" when its mean absolute difference over the
            channels exceeds ``tol`` (1).
        label_mode: ``"binary"`` or ``"logistic-intensity"`` (soft label in
            :func:`nsa_with_label`; the boolean mask is the same).
        logistic_params: ``(k, x0)`` of the logistic label; TAB (1/6, 20).
        min_clone_pixels: patches whose clone mask has fewer positive pixels
            are skipped (50; ``seamlessClone`` fails on tiny masks).
        label_margin: px added around each patch box when looking for
            changed pixels (2).
    """

    mode: str = "mix"
    num_patches: int = 1
    gamma_params: tuple[float, float, float] | None = (2.0, 0.07, 0.05)
    width_bounds: tuple[tuple[float, float], tuple[float, float]] = ((0.05, 0.2), (0.05, 0.2))
    resize: bool = True
    resize_bounds: tuple[float, float] = (0.7, 1.3)
    shift: bool = True
    object_mask: str | None = None
    background: Any = (200.0, 60.0)
    min_object_pct: float = 0.25
    min_overlap_pct: float = 0.25
    max_tries: int = 200
    max_draws: int = 5
    tol: float = 1.0
    label_mode: str = "binary"
    logistic_params: tuple[float, float] = (1.0 / 6.0, 20.0)
    min_clone_pixels: int = 50
    label_margin: int = 2

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"NSA mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.label_mode not in LABEL_MODES:
            raise ValueError(f"NSA label_mode must be one of {', '.join(LABEL_MODES)}, got {self.label_mode!r}")
        if int(self.num_patches) < 1:
            raise ValueError(f"num_patches must be >= 1, got {self.num_patches}")
        if self.gamma_params is not None:
            shape, scale, _ = (float(v) for v in self.gamma_params)
            if shape <= 0 or scale <= 0:
                raise ValueError(f"gamma shape and scale must be > 0, got {self.gamma_params}")
        if len(self.width_bounds) != 2:
            raise ValueError(f"width_bounds must be ((min, max) for H, (min, max) for W), got {self.width_bounds!r}")
        for axis in self.width_bounds:
            as_pair(axis, "width_bounds entry", 0.0, 0.5)
        as_pair(self.resize_bounds, "resize_bounds", 0.0)
        if self.resize_bounds[0] <= 0:
            raise ValueError(f"resize_bounds must be positive, got {self.resize_bounds}")
        if self.object_mask not in (None, "auto"):
            raise ValueError(f"object_mask must be None or 'auto', got {self.object_mask!r}")
        _background_pairs(self.background)
        if int(self.max_tries) < 1 or int(self.max_draws) < 1:
            raise ValueError("max_tries and max_draws must be >= 1")

    @classmethod
    def tab(cls, **overrides) -> "NSAOptions":
        """TAB's setting (the defaults)."""
        return cls(**overrides)

    @classmethod
    def paper(cls, kind: str = "object", **overrides) -> "NSAOptions":
        """The NSA paper's "Shift-Intensity" setting for an ``"object"`` or ``"texture"`` class.

        Per-class tables (width bounds, object backgrounds, MIN_OBJECT_PCT,
        logistic parameters) are not applied; pass them as overrides.
        """
        if kind not in ("object", "texture"):
            raise ValueError(f"kind must be 'object' or 'texture', got {kind!r}")
        base = dict(
            mode="normal" if kind == "object" else "mixed",
            num_patches=3 if kind == "object" else 4,
            gamma_params=(2.0, 0.05, 0.03),
            width_bounds=((0.03, 0.4), (0.03, 0.4)),
            resize_bounds=(0.7, 1.3) if kind == "object" else (0.5, 2.0),
            label_mode="logistic-intensity",
            logistic_params=(1.0 / 3.0, 7.0),
        )
        base.update(overrides)
        return cls(**base)


def _background_pairs(background: Any) -> list[tuple[float, float]]:
    try:
        if len(background) == 2 and all(np.isscalar(v) for v in background):
            return [(float(background[0]), float(background[1]))]
        pairs = [(float(v), float(t)) for v, t in background]
    except (TypeError, ValueError):
        raise ValueError(f"background must be (value, threshold) or a sequence of them, got {background!r}") from None
    if not pairs:
        raise ValueError("background must hold at least one (value, threshold) pair")
    return pairs


def object_mask_auto(image: np.ndarray, background: Any = (200.0, 60.0)) -> np.ndarray:
    """NSA's object mask: ``|mean_RGB - value| > threshold`` for all pairs, 7x7 median blur (bool H x W)."""
    gray = image.mean(axis=-1)
    obj = np.ones(image.shape[:2], dtype=bool)
    for value, threshold in _background_pairs(background):
        obj &= np.abs(gray - value) > threshold
    return cv2.medianBlur(obj.astype(np.uint8), 7).astype(bool)


def _width_bounds_px(opts: NSAOptions, h: int, w: int) -> tuple[int, int, int, int]:
    (lo1, hi1), (lo2, hi2) = opts.width_bounds
    min1 = max(1, int(round(lo1 * h)))
    max1 = max(min1, int(round(hi1 * h)))
    min2 = max(1, int(round(lo2 * w)))
    max2 = max(min2, int(round(hi2 * w)))
    return min1, max1, min2, max2


def _half_width(rng: np.random.Generator, opts: NSAOptions, side: int, lo: int, hi: int) -> int:
    if opts.gamma_params is None:
        return int(rng.integers(lo, hi, endpoint=True))
    shape, scale, lower = opts.gamma_params
    return int(np.clip((lower + rng.gamma(shape, scale)) * side, lo, hi))


def _centre(rng: np.random.Generator, lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi)``; the midpoint when the range is empty."""
    return int(rng.integers(lo, hi)) if hi > lo else (lo + hi) // 2


class _Patch:
    __slots__ = ("box", "region")

    def __init__(self, box: tuple[int, int, int, int], region: np.ndarray | None):
        self.box = box  # y0, y1, x0, x1 in the destination
        self.region = region  # bool mask inside the box where changes count (None: everywhere)


def _one_patch(
    out: np.ndarray,
    src_img: np.ndarray,
    dst_obj: np.ndarray | None,
    src_obj: np.ndarray | None,
    mode: str,
    rng: np.random.Generator,
    opts: NSAOptions,
) -> tuple[np.ndarray, _Patch] | None:
    H, W = out.shape[:2]
    min1, max1, min2, max2 = _width_bounds_px(opts, H, W)
    hw1 = _half_width(rng, opts, H, min1, max1)
    hw2 = _half_width(rng, opts, W, min2, max2)
    use_obj = dst_obj is not None and src_obj is not None

    # 1) source box
    for _ in range(int(opts.max_tries)):
        c1 = _centre(rng, min1, H - min1)
        c2 = _centre(rng, min2, W - min2)
        sy0, sy1 = max(c1 - hw1, 0), min(c1 + hw1, H)
        sx0, sx1 = max(c2 - hw2, 0), min(c2 + hw2, W)
        if sy1 - sy0 < 3 or sx1 - sx0 < 3:
            continue
        if not use_obj or src_obj[sy0:sy1, sx0:sx1].mean() > opts.min_object_pct:
            break
    else:
        return None
    patch = src_img[sy0:sy1, sx0:sx1]
    patch_obj = src_obj[sy0:sy1, sx0:sx1] if use_obj else None
    h, w = patch.shape[:2]

    # 2) resize, keeping the aspect ratio, sides clipped to the width bounds (as in the reference)
    if opts.resize:
        lb, ub = opts.resize_bounds
        scale = float(np.clip(rng.normal(1.0, 0.5), lb, ub))
        new_h = float(np.clip(scale * h, min1, max1))
        new_w = int(np.clip(int(new_h / h * w), min2, max2))
        new_h = int(np.clip(int(new_w / w * h), min1, max1))
        if (new_h, new_w) != (h, w):
            patch = cv2.resize(patch, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
            if use_obj:
                patch_obj = cv2.resize(patch_obj.astype(np.uint8), (new_w, new_h), interpolation=cv2.INTER_NEAREST) > 0
        h, w = new_h, new_w
    if h < 3 or w < 3 or h > H or w > W:
        return None

    # 3) destination box
    def accept(y0: int, x0: int) -> bool:
        if not use_obj:
            return True
        n_src = patch_obj.sum()
        if n_src == 0 or n_src / patch_obj.size <= opts.min_object_pct:
            return False
        overlap = (patch_obj & dst_obj[y0 : y0 + h, x0 : x0 + w]).sum()
        return overlap / n_src > opts.min_overlap_pct

    if opts.shift:
        for _ in range(int(opts.max_tries)):
            d1 = _centre(rng, h // 2 + 1, H - h // 2 - 1)
            d2 = _centre(rng, w // 2 + 1, W - w // 2 - 1)
            y0, x0 = min(max(d1 - h // 2, 0), H - h), min(max(d2 - w // 2, 0), W - w)
            if accept(y0, x0):
                break
        else:
            return None
    else:
        c1, c2 = (sy0 + sy1) // 2, (sx0 + sx1) // 2
        y0, x0 = min(max(c1 - h // 2, 0), H - h), min(max(c2 - w // 2, 0), W - w)
        if not accept(y0, x0):
            return None
    y1, x1 = y0 + h, x0 + w
    region = (patch_obj | dst_obj[y0:y1, x0:x1]) if use_obj else None

    # 4) blend. The clone mask is the whole patch: the reference widens the
    # object region with the area that is background in both images, which
    # together is the full patch.
    clone = np.full((h, w), 255, dtype=np.uint8)
    clone[0, :] = clone[-1, :] = 0
    clone[:, 0] = clone[:, -1] = 0
    if int(np.count_nonzero(clone)) < opts.min_clone_pixels:
        return None
    patch = np.ascontiguousarray(patch)
    if mode == "swap":
        new = out.copy()
        box = new[y0:y1, x0:x1]
        keep = clone > 0 if region is None else (clone > 0) & region
        box[keep] = patch[keep]
        return new, _Patch((y0, y1, x0, x1), region)
    bx, by, bw, bh = cv2.boundingRect(clone)
    # OpenCV puts the mask's bounding rectangle at (cx - bw // 2, cy - bh // 2).
    centre = (x0 + bx + bw // 2, y0 + by + bh // 2)
    try:
        new = cv2.seamlessClone(patch, out, clone, centre, _CV2_FLAGS[mode])
    except cv2.error:
        return None
    return new, _Patch((y0, y1, x0, x1), region)


def _label_region(shape: tuple[int, int], patches: list[_Patch], dst_obj: np.ndarray | None, margin: int) -> np.ndarray:
    H, W = shape
    region = np.zeros((H, W), dtype=bool)
    for p in patches:
        y0, y1, x0, x1 = p.box
        ey0, ey1, ex0, ex1 = max(y0 - margin, 0), min(y1 + margin, H), max(x0 - margin, 0), min(x1 + margin, W)
        if p.region is None:
            region[ey0:ey1, ex0:ex1] = True
        else:
            region[ey0:ey1, ex0:ex1] |= dst_obj[ey0:ey1, ex0:ex1]
            region[y0:y1, x0:x1] |= p.region
    return region


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=-1, dtype=np.float32)


def _changed(
    image: np.ndarray, out: np.ndarray, region: np.ndarray, patches: list[_Patch], margin: int, tol: float
) -> np.ndarray:
    """Binary label: mean |change| over channels > tol inside ``region``, then a 5x5 median blur.

    Only the bounding box of the patches (plus room for the median filter)
    is compared: nothing outside ``region`` can count anyway.
    """
    H, W = region.shape
    pad = margin + 3
    y0 = max(min(p.box[0] for p in patches) - pad, 0)
    y1 = min(max(p.box[1] for p in patches) + pad, H)
    x0 = max(min(p.box[2] for p in patches) - pad, 0)
    x1 = min(max(p.box[3] for p in patches) + pad, W)
    diff = cv2.absdiff(image[y0:y1, x0:x1], out[y0:y1, x0:x1]).sum(axis=-1, dtype=np.uint16)
    sub = (diff > 3.0 * tol) & region[y0:y1, x0:x1]
    changed = np.zeros((H, W), dtype=bool)
    changed[y0:y1, x0:x1] = cv2.medianBlur(sub.astype(np.uint8), 5).astype(bool)
    return changed


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (yy * yy + xx * xx) <= radius * radius


def logistic_intensity_label(
    image: np.ndarray, synthetic: np.ndarray, changed: np.ndarray, k: float = 1.0 / 6.0, x0: float = 20.0
) -> np.ndarray:
    """NSA's soft label: ``changed * sigmoid(k * (d - x0))``, ``d`` = disk(5)-median of the mean |change|."""
    from scipy import ndimage

    label = np.zeros(changed.shape, dtype=np.float32)
    if not changed.any():
        return label
    ys, xs = np.nonzero(changed)
    H, W = changed.shape
    y0, y1 = max(ys.min() - 6, 0), min(ys.max() + 7, H)
    x0_, x1 = max(xs.min() - 6, 0), min(xs.max() + 7, W)
    sub = changed[y0:y1, x0_:x1]
    d = _mean_abs_diff(image[y0:y1, x0_:x1], synthetic[y0:y1, x0_:x1]) * sub
    d = ndimage.median_filter(d, footprint=_disk(5), mode="constant", cval=0.0)
    label[y0:y1, x0_:x1] = sub / (1.0 + np.exp(-k * (d - x0)))
    return label


def nsa_with_label(
    image: np.ndarray, others: Sequence[np.ndarray], rng: np.random.Generator, **options
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like :func:`nsa` but also returns the float32 label (soft with ``label_mode="logistic-intensity"``)."""
    image = check_image(image)
    others = check_others(others, image.shape)
    rng = check_rng(rng)
    opts = resolve_options(NSAOptions, options)
    H, W = image.shape[:2]

    dst_obj = object_mask_auto(image, opts.background) if opts.object_mask == "auto" else None
    obj_cache: dict[int, np.ndarray] = {}
    for _ in range(int(opts.max_draws)):
        if others:
            idx = int(rng.integers(len(others)))
            src_img = others[idx]
        else:
            idx, src_img = -1, image
        src_obj = None
        if dst_obj is not None:
            if idx not in obj_cache:
                obj_cache[idx] = dst_obj if idx < 0 else object_mask_auto(src_img, opts.background)
            src_obj = obj_cache[idx]
        mode = opts.mode if opts.mode != "mix" else ("normal", "mixed")[int(rng.integers(2))]

        out = image
        patches: list[_Patch] = []
        for i in range(int(opts.num_patches)):
            if i == 0 or rng.integers(2) > 0:
                done = _one_patch(out, src_img, dst_obj, src_obj, mode, rng, opts)
                if done is not None:
                    out, patch = done
                    patches.append(patch)
        if not patches:
            continue
        region = _label_region((H, W), patches, dst_obj, int(opts.label_margin))
        changed = _changed(image, out, region, patches, int(opts.label_margin), opts.tol)
        if not changed.any():
            continue
        if opts.label_mode == "logistic-intensity":
            k, x0 = opts.logistic_params
            label = logistic_intensity_label(image, out, changed, k, x0)
            mask = label != 0
        else:
            label = changed.astype(np.float32)
            mask = changed
        return out, mask, label
    return image.copy(), np.zeros((H, W), dtype=bool), np.zeros((H, W), dtype=np.float32)


def nsa(
    image: np.ndarray, others: Sequence[np.ndarray], rng: np.random.Generator, **options
) -> tuple[np.ndarray, np.ndarray]:
    """NSA anomaly: a resized patch of another normal image Poisson-blended into ``image``.

    See the module docstring and :class:`NSAOptions`. Returns ``(synthetic
    uint8 (H, W, 3), mask bool (H, W))``; the mask marks the pixels that
    actually changed. An empty mask comes with the unchanged image.
    """
    out, mask, _ = nsa_with_label(image, others, rng, **options)
    return out, mask
