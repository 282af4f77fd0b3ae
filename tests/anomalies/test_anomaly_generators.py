"""Synthetic-anomaly generators (methods.md §6): interface, determinism and mask honesty."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from tabad.anomalies import (
    ALIASES,
    GENERATORS,
    OPTIONS,
    CutPasteOptions,
    NSAOptions,
    PerlinOptions,
    canonical_name,
    get_generator,
    nsa,
    nsa_with_label,
    perlin_noise,
)
from tabad.anomalies.cutpaste import color_jitter, cutpaste, cutpaste_scar
from tabad.anomalies.mask import grid_mask
from tabad.anomalies.nsa import object_mask_auto
from tabad.anomalies.perlin import AUGMENTATIONS, augment_texture, perlin, procedural_texture
from tabad.errors import DataError

SIZE = 224


def textured(seed: int, size: int = SIZE) -> np.ndarray:
    """Smooth colour noise + stripes + grain: every patch has texture and gradients."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.random((8, 8, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    xx = np.arange(size, dtype=np.float32)[None, :]
    stripes = 35.0 * np.sin(xx / rng.uniform(3.0, 6.0) + rng.uniform(0, 6))
    img = 60.0 + 120.0 * base + stripes[..., None] + rng.normal(0, 6, (size, size, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [textured(s) for s in range(4)]


ALL = sorted(GENERATORS)


# --------------------------------------------------------------------------- common interface


@pytest.mark.parametrize("name", ALL)
def test_shapes_dtypes_and_input_untouched(name, images):
    img, others = images[0], images[1:]
    before = img.copy()
    out, mask = GENERATORS[name](img, others, np.random.default_rng(0))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert mask.shape == img.shape[:2] and mask.dtype == bool
    assert mask.any(), f"{name}: empty mask on a textured image"
    assert np.array_equal(img, before)
    assert out is not img


@pytest.mark.parametrize("name", ALL)
def test_deterministic_for_a_seed_and_varies_with_it(name, images):
    gen = GENERATORS[name]
    a = gen(images[0], images[1:], np.random.default_rng(123))
    b = gen(images[0], images[1:], np.random.default_rng(123))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    c = gen(images[0], images[1:], np.random.default_rng(124))
    assert not (np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1]))


@pytest.mark.parametrize("name", ALL)
def test_global_rng_untouched(name, images):
    np.random.seed(7)
    state = np.random.get_state()[1].copy()
    GENERATORS[name](images[0], images[1:], np.random.default_rng(1))
    assert np.array_equal(np.random.get_state()[1], state)


@pytest.mark.parametrize("name", ["cutpaste", "cutpaste-scar", "perlin", "mask"])
def test_pixels_outside_mask_exactly_unchanged(name, images):
    rng = np.random.default_rng(5)
    for i in range(10):
        img = images[i % 4]
        out, mask = GENERATORS[name](img, images, rng)
        assert np.array_equal(out[~mask], img[~mask])
        assert mask.any()


def test_registry_and_errors(images):
    assert set(GENERATORS) == {"nsa", "cutpaste", "cutpaste-scar", "perlin", "mask"}
    assert set(OPTIONS) == set(GENERATORS)
    assert get_generator("NSA") is nsa
    for alias, target in ALIASES.items():
        assert canonical_name(alias) == target
    with pytest.raises(ValueError, match="unknown anomaly generator 'foo'.*nsa, cutpaste, cutpaste-scar, perlin, mask"):
        get_generator("foo")
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        nsa(images[0], images[1:], 0)
    with pytest.raises(ValueError, match="unknown option.*valid options"):
        nsa(images[0], images[1:], np.random.default_rng(0), bogus=1)
    with pytest.raises(ValueError, match="uint8"):
        cutpaste(images[0].astype(np.float32), [], np.random.default_rng(0))
    with pytest.raises(ValueError, match="shape"):
        nsa(images[0], [images[1][:100]], np.random.default_rng(0))
    with pytest.raises(ValueError, match="mode"):
        NSAOptions(mode="poisson")


def test_options_instance_and_override(images):
    opts = NSAOptions(mode="normal", num_patches=3)
    a = nsa(images[0], images[1:], np.random.default_rng(3), options=opts)
    b = nsa(images[0], images[1:], np.random.default_rng(3), mode="normal", num_patches=3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    c = nsa(images[0], images[1:], np.random.default_rng(3), options=opts, num_patches=1)
    assert c[1].any()


# --------------------------------------------------------------------------- NSA


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(int) - b.astype(int)).mean(-1)


@pytest.mark.parametrize("mode", ["normal", "mixed", "mix", "swap"])
def test_nsa_label_reflects_real_change(mode, images):
    rng = np.random.default_rng(11)
    for i in range(12):
        img = images[i % 4]
        out, mask = nsa(img, [images[(i + 1) % 4]], rng, mode=mode, num_patches=3)
        assert mask.any()
        diff = _changed(img, out)
        # masked pixels changed noticeably on average; almost all of them by more than tol
        assert diff[mask].mean() > 3.0
        assert (diff[mask] > 1).mean() > 0.9
        # everything that changed by more than tol is labelled (up to the median filter's edges)
        far = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        assert not (diff[~far] > 1).any()


def test_nsa_untouched_outside_clone_regions(images):
    rng = np.random.default_rng(2)
    for i in range(20):
        img = images[i % 4]
        out, mask = nsa(img, images[1:], rng)
        changed = np.any(out != img, axis=-1)
        ys, xs = np.nonzero(changed)
        # one patch (TAB default): every changed pixel lies inside one box of at most 45 px per side
        assert ys.max() - ys.min() < 45 and xs.max() - xs.min() < 45
        grown = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        assert np.array_equal(out[~grown], img[~grown])


def test_nsa_patch_comes_from_another_image():
    size = 128
    black = np.zeros((size, size, 3), np.uint8)
    white = np.full((size, size, 3), 255, np.uint8)
    out, mask = nsa(black, [white], np.random.default_rng(0), mode="swap")
    assert mask.any() and (out[mask] == 255).all()
    # Poisson blending keeps the destination's level, so the source must carry structure:
    # a flat grey image and a striped partner -> the pasted region shows the stripes.
    flat = np.full((size, size, 3), 128, np.uint8)
    xx = np.arange(size)[None, :, None]
    stripes = np.broadcast_to(np.where((xx // 4) % 2 == 0, 60, 200), (size, size, 3)).astype(np.uint8)
    for seed in range(5):
        out, mask = nsa(flat, [stripes], np.random.default_rng(seed), mode="normal")
        assert mask.any()
        gx = np.abs(np.diff(out.astype(int), axis=1)).mean(-1)[:-1, :]
        gy = np.abs(np.diff(out.astype(int), axis=0)).mean(-1)[:, :-1]
        inside = mask[:-1, :-1]
        assert gx[inside].mean() > 20 and gx[inside].mean() > 2 * gy[inside].mean()  # vertical stripes


def test_nsa_flat_image_gives_empty_mask_and_unchanged_image():
    flat = np.full((64, 64, 3), 90, np.uint8)
    out, mask = nsa(flat, [flat.copy()], np.random.default_rng(0), mode="normal")
    assert not mask.any() and np.array_equal(out, flat)


def test_nsa_without_others_uses_image_itself(images):
    out, mask = nsa(images[0], [], np.random.default_rng(4), mode="normal")
    assert mask.shape == (SIZE, SIZE)
    assert mask.any()


def test_nsa_logistic_label_and_object_masks(images):
    out, mask, label = nsa_with_label(images[0], images[1:], np.random.default_rng(9), label_mode="logistic-intensity")
    assert label.dtype == np.float32 and 0 <= label.min() and label.max() <= 1
    assert np.array_equal(mask, label != 0) and mask.any()
    _, mask_b, label_b = nsa_with_label(images[0], images[1:], np.random.default_rng(9))
    assert np.array_equal(mask, mask_b) and set(np.unique(label_b)) <= {0.0, 1.0}

    # object on a bright background: the object mask finds the disc, patches land on it
    size = 128
    yy, xx = np.mgrid[0:size, 0:size]
    disc = (yy - 64) ** 2 + (xx - 64) ** 2 < 40**2
    objs = []
    for s in range(3):
        img = np.full((size, size, 3), 210, np.uint8)
        img[disc] = textured(s, size)[disc] // 2
        objs.append(img)
    obj = object_mask_auto(objs[0], (200, 60))
    assert obj[64, 64] and not obj[2, 2]
    for seed in range(5):
        out, mask = nsa(objs[0], objs[1:], np.random.default_rng(seed), object_mask="auto", mode="normal")
        assert mask.any()
        assert (mask & obj).sum() >= 0.5 * mask.sum()


def test_nsa_patch_sizes_follow_tab_setting(images):
    """Changed regions stay within the resized patch bounds (11..45 px at 224)."""
    rng = np.random.default_rng(0)
    for i in range(30):
        out, mask = nsa(images[i % 4], images, rng, mode="swap")
        ys, xs = np.nonzero(mask)
        assert np.ptp(ys) + 1 <= 45 and np.ptp(xs) + 1 <= 45


def test_nsa_speed(images):
    import time

    rng = np.random.default_rng(0)
    t = time.perf_counter()
    n = 0
    while n < 40:
        nsa(images[n % 4], images, rng)
        n += 1
    rate = n / (time.perf_counter() - t)
    assert rate > 20, f"NSA too slow: {rate:.1f} samples/s"  # typically several hundred


# --------------------------------------------------------------------------- CutPaste


def test_cutpaste_mask_is_rectangle_with_area_in_range(images):
    rng = np.random.default_rng(0)
    for opts in (CutPasteOptions(), CutPasteOptions.tab()):
        lo, hi = opts.area_ratio
        for i in range(30):
            out, mask = cutpaste(images[i % 4], images, rng, options=opts)
            ys, xs = np.nonzero(mask)
            h, w = np.ptp(ys) + 1, np.ptp(xs) + 1
            assert mask.sum() == h * w  # a filled rectangle
            area = mask.mean()
            assert lo * 0.8 <= area <= hi * 1.2
            a_lo, a_hi = opts.aspect_ratio
            assert a_lo * 0.8 <= w / h <= a_hi * 1.25


def test_cutpaste_from_others():
    black = np.zeros((64, 64, 3), np.uint8)
    white = np.full((64, 64, 3), 255, np.uint8)
    out, mask = cutpaste(black, [white], np.random.default_rng(0), from_others=True)
    assert (out[mask] > 200).all() and (out[~mask] == 0).all()
    out, mask = cutpaste(black, [white], np.random.default_rng(0))  # same image: stays black
    assert (out == 0).all() and mask.any()


def test_color_jitter_is_mild_and_deterministic(images):
    patch = images[0][:50, :50]
    a = color_jitter(patch, np.random.default_rng(1))
    b = color_jitter(patch, np.random.default_rng(1))
    assert np.array_equal(a, b) and a.shape == patch.shape and a.dtype == np.uint8
    assert 0 < np.abs(a.astype(int) - patch).mean() < 60
    assert np.array_equal(color_jitter(patch, np.random.default_rng(1), (0, 0, 0, 0)), patch)


def test_scar_mask_thin_rotated_and_nonempty(images):
    rng = np.random.default_rng(0)
    for i in range(30):
        out, mask = cutpaste_scar(images[i % 4], images, rng)
        n = int(mask.sum())
        assert 2 * 10 * 0.5 <= n <= 16 * 25 * 1.3
        ys, xs = np.nonzero(mask)
        assert max(np.ptp(ys), np.ptp(xs)) + 1 <= 25 + 16  # bounding box of a rotated 16x25 patch
        assert np.array_equal(out[~mask], images[i % 4][~mask])


# --------------------------------------------------------------------------- Perlin


def test_perlin_noise_any_size_and_fade():
    rng = np.random.default_rng(0)
    for shape in [(224, 224), (100, 75), (33, 257)]:
        for res in [(1, 1), (32, 32), (4, 16)]:
            n = perlin_noise(shape, res, rng)
            assert n.shape == shape and n.dtype == np.float32 and np.isfinite(n).all()
            assert np.abs(n).max() <= 1.5
    # zero at lattice points (noise = 0 where the local coordinate is 0)
    n = perlin_noise((64, 64), (4, 4), np.random.default_rng(1))
    assert np.allclose(n[::16, ::16], 0, atol=1e-6)
    # smooth: neighbouring pixels close
    assert np.abs(np.diff(n, axis=0)).max() < 0.2


def test_perlin_blend_formula_and_threshold(images):
    img = images[0]
    out, mask = perlin(img, [], np.random.default_rng(3), beta=(0.0, 0.0))
    tex_only = out[mask]
    out_b, mask_b = perlin(img, [], np.random.default_rng(3), beta=(1.0, 1.0))
    assert np.array_equal(mask, mask_b)
    assert np.array_equal(out_b, img)  # beta = 1 keeps the image
    assert not np.array_equal(tex_only, img[mask])
    # TAB threshold: smaller regions on average
    r1, r2 = np.random.default_rng(0), np.random.default_rng(0)
    a = np.mean([perlin(img, [], r1)[1].mean() for _ in range(20)])
    b = np.mean([perlin(img, [], r2, options=PerlinOptions.tab())[1].mean() for _ in range(20)])
    assert b < a


def test_perlin_always_anomalous_or_empty_after_tries(images):
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert perlin(images[1], [], rng, threshold=0.65)[1].any()
    out, mask = perlin(images[1], [], np.random.default_rng(0), threshold=5.0, max_tries=3)
    assert not mask.any() and np.array_equal(out, images[1])


def test_perlin_texture_dir(tmp_path, images):
    (tmp_path / "sub").mkdir()
    Image.fromarray(np.full((40, 60, 3), (255, 0, 0), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((80, 80, 3), (0, 0, 255), np.uint8)).save(tmp_path / "sub" / "b.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    rng = np.random.default_rng(0)
    for _ in range(5):
        out, mask = perlin(images[0], [], rng, texture_dir=tmp_path, num_augment_ops=0, beta=(0.0, 0.0))
        assert mask.any()
        colours = {tuple(c) for c in out[mask].reshape(-1, 3)}
        assert colours <= {(255, 0, 0), (0, 0, 255)} or len(colours) <= 4  # jpg may shift a value
    out2, _ = perlin(images[0], [], np.random.default_rng(1), texture_dir=str(tmp_path))
    assert out2.shape == images[0].shape
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no image files"):
        perlin(images[0], [], rng, texture_dir=empty)


def test_procedural_textures_and_augmentations():
    rng = np.random.default_rng(0)
    for kind in ("noise", "stripes", "checker", "marble"):
        tex = procedural_texture((70, 90), rng, (kind,))
        assert tex.shape == (70, 90, 3) and tex.dtype == np.uint8 and tex.std() > 5
    tex = procedural_texture((64, 64), rng)
    for name, op in AUGMENTATIONS.items():
        out = op(tex, np.random.default_rng(2))
        assert out.shape == tex.shape and out.dtype == np.uint8, name
    out = augment_texture(tex, np.random.default_rng(3), n=3)
    assert out.shape == tex.shape


# --------------------------------------------------------------------------- grid mask


def _cells(mask: np.ndarray, k: int) -> np.ndarray:
    H, W = mask.shape
    blocks = mask.reshape(H // k, k, W // k, k)
    full, any_ = blocks.all(axis=(1, 3)), blocks.any(axis=(1, 3))
    assert np.array_equal(full, any_), "mask is not a union of whole cells"
    return full


def test_grid_mask_is_union_of_cells(images):
    rng = np.random.default_rng(0)
    counts = []
    for i in range(30):
        out, mask = grid_mask(images[i % 4], [], rng)
        cells = _cells(mask, 16)
        counts.append(int(cells.sum()))
        assert (out[mask] == 0).all()
    assert set(counts) <= {3, 4} and 4 in counts  # 196 cells / 52 groups


def test_grid_mask_scales_with_size():
    img = textured(0, 112)
    out, mask = grid_mask(img, [], np.random.default_rng(0))
    _cells(mask, 8)
    img = textured(0, 100)  # 100 / 224 * 16 = 7.1 -> 7 px cells, partial last row
    out, mask = grid_mask(img, [], np.random.default_rng(1))
    assert mask.any() and np.array_equal(out[~mask], img[~mask])
    out, mask = grid_mask(textured(0, 64), [], np.random.default_rng(1), cell=16, groups=4)
    assert _cells(mask, 16).sum() == 4
