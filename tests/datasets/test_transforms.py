"""Test-time geometry, normalisation (transforms.py) and split decoding (loader.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tabad.datasets.loader import LoadedSplit, load_split
from tabad.datasets.readers import read_category
from tabad.datasets.sample import Sample
from tabad.datasets.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Geometry,
    normalize,
    resize_crop_image,
    resize_crop_mask,
)
from tabad.errors import DataError


def _coord_image(h: int, w: int) -> Image.Image:
    """R = column index, G = row index, B = 7: every pixel says where it came from."""
    yy, xx = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([xx, yy, np.full_like(xx, 7)], -1).astype(np.uint8))


# --------------------------------------------------------------------------- Geometry


def test_geometry_output_size():
    assert Geometry(64, 56).output_size == (56, 56)
    assert Geometry(256, 224).output_size == (224, 224)
    assert Geometry(64, None).output_size == (64, 64)
    assert Geometry((40, 80), None).output_size == (40, 80)
    assert Geometry((40, 80), (32, 48)).output_size == (32, 48)


@pytest.mark.parametrize("resize, crop", [(56, 64), (64, 65), ((64, 32), 40), ((32, 64), (40, 40)), (64, (32, 70))])
def test_crop_larger_than_resize_is_rejected(resize, crop):
    with pytest.raises(ValueError, match="larger than resize"):
        Geometry(resize, crop)


def test_resize_crop_image_size_and_dtype():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8))
    out = resize_crop_image(img, Geometry(64, 56))
    assert out.shape == (56, 56, 3) and out.dtype == np.uint8


def test_non_square_resize_is_height_width():
    img = _coord_image(100, 100)
    out = resize_crop_image(img, Geometry((40, 80), None))
    assert out.shape == (40, 80, 3)  # (H, W), not PIL's (W, H)
    out = resize_crop_image(img, Geometry((40, 80), (20, 60)))
    assert out.shape == (20, 60, 3)


def test_grayscale_and_rgba_images_become_rgb():
    gray = Image.fromarray(np.full((20, 30), 90, np.uint8))
    rgba = Image.fromarray(np.full((20, 30, 4), 90, np.uint8), mode="RGBA")
    for img in (gray, rgba):
        out = resize_crop_image(img, Geometry(16, 12))
        assert out.shape == (12, 12, 3)
        assert (out == 90).all()


@pytest.mark.parametrize("crop", [56, 57, 61, 64, 1])
def test_center_crop_matches_torchvision(crop):
    import torchvision.transforms.functional as TF

    img = _coord_image(64, 64)
    out = resize_crop_image(img, Geometry(64, crop))  # resize to the same size: identity
    want = TF.center_crop(torch.from_numpy(np.array(img)).permute(2, 0, 1), [crop, crop]).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(out, want)


def test_center_crop_offsets():
    out = resize_crop_image(_coord_image(64, 64), Geometry(64, 56))
    assert tuple(out[0, 0, :2]) == (4, 4) and tuple(out[-1, -1, :2]) == (59, 59)


# --------------------------------------------------------------------------- masks


def test_mask_resize_is_nearest_and_binary():
    mask = np.zeros((100, 100), bool)
    mask[40:60, 40:60] = True
    out = resize_crop_mask(mask, Geometry(50, None))
    assert out.dtype == bool and out.shape == (50, 50)
    assert out.sum() == 100  # a 20 px square is exactly 10 px after halving
    out = resize_crop_mask(mask, Geometry(64, 56))
    assert out.dtype == bool and out.shape == (56, 56)
    assert set(np.unique(out)) <= {False, True}


def test_thin_mask_line_survives_downscaling():
    mask = np.zeros((100, 100), bool)
    mask[41, 10:90] = True  # a 1 px line
    out = resize_crop_mask(mask, Geometry(50, None))
    assert out[20, 10:40].all()
    assert out.sum() == 40
    # What the helper exists to avoid: bilinear resizing + threshold erases the line.
    bilinear = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((50, 50), Image.BILINEAR)) > 127
    assert not bilinear.any()


def test_thin_mask_line_survives_upscaling():
    mask = np.zeros((32, 32), bool)
    mask[:, 10] = True
    out = resize_crop_mask(mask, Geometry(64, None))
    assert out.dtype == bool
    assert out[:, 20:22].all() and out.sum() == 128


def test_mask_and_image_get_the_same_geometry():
    arr = np.zeros((90, 120, 3), np.uint8)
    mask = np.zeros((90, 120), bool)
    arr[30:50, 70:100] = 255
    mask[30:50, 70:100] = True
    g = Geometry((64, 64), 48)
    img = resize_crop_image(Image.fromarray(arr), g)
    m = resize_crop_mask(mask, g)
    assert m.shape == img.shape[:2]
    assert img[..., 0][m].mean() > 200  # the mask covers bright pixels
    assert img[..., 0][~m].mean() < 20


# --------------------------------------------------------------------------- normalisation


def test_normalize_values():
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 3, 5, 4), dtype=np.uint8))
    before = x.clone()
    y = normalize(x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    want = (x.double() / 255 - torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD, dtype=torch.float64
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(y.double(), want, rtol=1e-6, atol=1e-6)
    assert torch.equal(x, before)  # input untouched


# --------------------------------------------------------------------------- load_split


def test_load_split_on_tiny_mvtec(tiny_mvtec):
    cat = read_category(tiny_mvtec, "obj")
    g = Geometry(64, 56)
    split = load_split(cat.test, g, workers=2)
    assert isinstance(split, LoadedSplit) and len(split) == len(cat.test) == 6
    assert split.images.dtype == torch.uint8 and tuple(split.images.shape) == (6, 3, 56, 56)
    assert split.masks.dtype == torch.bool and tuple(split.masks.shape) == (6, 56, 56)
    assert split.labels.dtype == np.int64 and split.labels.tolist() == [s.label for s in cat.test]
    for i, s in enumerate(cat.test):
        # order kept and every image equals the single-image transform
        want = resize_crop_image(Image.open(s.image_path), g)
        np.testing.assert_array_equal(split.images[i].permute(1, 2, 0).numpy(), want)
        assert bool(split.masks[i].any()) == (s.label == 1)
        if s.label:
            # the defect is the bright square: masked pixels are bright
            assert split.images[i][:, split.masks[i]].float().mean() > 200


def test_batches_are_normalised_and_sized(tiny_mvtec):
    cat = read_category(tiny_mvtec, "tex")
    split = load_split(cat.train, Geometry(32, None))
    batches = list(split.batches(4))
    assert [b.shape[0] for b in batches] == [4, 2]
    assert all(b.dtype == torch.float32 and tuple(b.shape[1:]) == (3, 32, 32) for b in batches)
    torch.testing.assert_close(torch.cat(batches), normalize(split.images))


def test_load_split_progress_bar(tiny_mvtec):
    cat = read_category(tiny_mvtec, "tex")
    split = load_split(cat.train[:2], Geometry(32, None), progress=True, desc="x")
    assert len(split) == 2


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def test_mask_size_mismatch_names_the_mask(tmp_path):
    img = _write(tmp_path / "img" / "000.png", np.zeros((32, 32, 3), np.uint8))
    mask = _write(tmp_path / "gt" / "000_mask.png", np.zeros((30, 32), np.uint8))
    sample = Sample(img, "c", 1, "crack", mask, "test")
    with pytest.raises(DataError) as exc:
        load_split([sample], Geometry(32, 16))
    assert exc.value.path == mask
    assert str(mask) in str(exc.value) and str(img) in str(exc.value)
    assert "32x30" in str(exc.value) and "32x32" in str(exc.value)


def test_anomalous_sample_without_mask_gets_empty_mask(tmp_path):
    img = _write(tmp_path / "000.png", np.full((20, 20, 3), 200, np.uint8))
    split = load_split([Sample(img, "c", 1, "crack", None, "test")], Geometry(16, None))
    assert split.labels.tolist() == [1]
    assert not split.masks.any()


def test_unreadable_image_is_a_data_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError) as exc:
        load_split([Sample(bad, "c", 0, "good", None, "test")], Geometry(16, None))
    assert exc.value.path == bad
