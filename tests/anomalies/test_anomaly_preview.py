"""preview_grid / load_normal_images on the tiny MVTec-layout fixture."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tabad.anomalies.preview import load_normal_images, outline, preview_grid


def test_load_normal_images(tiny_mvtec):
    images = load_normal_images(tiny_mvtec, size=56, max_per_class=4)
    assert sorted(images) == ["obj", "tex"]
    for imgs in images.values():
        assert len(imgs) == 4
        assert all(i.shape == (56, 56, 3) and i.dtype == np.uint8 for i in imgs)
    only = load_normal_images(tiny_mvtec, categories=["tex"], size=32)
    assert list(only) == ["tex"] and len(only["tex"]) == 6


@pytest.mark.parametrize("method", ["nsa", "cutpaste", "scar", "perlin", "mask"])
def test_preview_grid_writes_png(tmp_path, tiny_mvtec, method):
    images = load_normal_images(tiny_mvtec, size=56)
    path = preview_grid(images, method, tmp_path / "out" / f"{method}.png", n=3, seed=1)
    assert path.exists() and not list(path.parent.glob(".*.tmp"))
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG" and min(im.size) > 100


def test_preview_grid_deterministic_and_list_input(tmp_path, tiny_mvtec):
    images = load_normal_images(tiny_mvtec, size=48, max_per_class=3)
    a = preview_grid(images["tex"], "cutpaste", tmp_path / "a.png", n=2, seed=3)
    b = preview_grid(images["tex"], "cutpaste", tmp_path / "b.png", n=2, seed=3)
    assert a.read_bytes() == b.read_bytes()
    with pytest.raises(ValueError, match="unknown anomaly generator"):
        preview_grid(images, "nope", tmp_path / "c.png")


def test_outline_draws_on_mask_border():
    img = np.zeros((20, 20, 3), np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    out = outline(img, mask)
    assert (out[5, 5:15] == (255, 0, 0)).all() and (out[10, 10] == 0).all() and (img == 0).all()
