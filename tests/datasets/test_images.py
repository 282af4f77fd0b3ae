"""Decoding of odd image and mask formats, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from tabad.datasets.images import (
    as_mask,
    as_rgb,
    image_size,
    is_image_file,
    load_image,
    load_mask,
)
from tabad.errors import DataError, TabadError

W, H = 20, 12


def _gradient(dtype=np.uint8, top=255) -> np.ndarray:
    return np.linspace(0, top, W * H).reshape(H, W).astype(dtype)


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def _truncated_copy(image: Image.Image, path: Path, fmt: str) -> Path:
    _save(image, path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _noise_rgb(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))


# --------------------------------------------------------------------------- load_image


def test_truncation_is_never_tolerated_globally():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_rgb_png_round_trips(tmp_path):
    src = _noise_rgb()
    image = load_image(_save(src, tmp_path / "a.png"))
    assert image.mode == "RGB" and image.size == (W, H)
    assert np.array_equal(np.asarray(image), np.asarray(src))


def test_grayscale_is_replicated_to_rgb(tmp_path):
    gray = _gradient()
    image = load_image(_save(Image.fromarray(gray), tmp_path / "g.png"))
    assert image.mode == "RGB" and image.size == (W, H)
    arr = np.asarray(image)
    for c in range(3):
        assert np.array_equal(arr[..., c], gray)


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_is_dropped_not_composited(tmp_path, mode):
    colour = (200,) if mode == "LA" else (10, 120, 230)
    src = Image.new(mode, (W, H), colour + (0,))  # fully transparent
    image = load_image(_save(src, tmp_path / f"{mode}.png"))
    assert image.mode == "RGB" and image.size == (W, H)
    expected = colour * 3 if mode == "LA" else colour
    assert tuple(np.asarray(image)[0, 0]) == expected


def test_palette_with_and_without_transparency(tmp_path):
    src = Image.fromarray(_gradient(top=3)).convert("P")
    src.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 - 4) * 3)
    plain = load_image(_save(src, tmp_path / "p.png"))
    assert plain.mode == "RGB" and plain.size == (W, H)
    assert tuple(np.asarray(plain)[-1, -1]) == (0, 0, 255)

    src.info["transparency"] = 0
    with_t = load_image(_save(src, tmp_path / "pt.png", transparency=0))
    assert with_t.mode == "RGB" and with_t.size == (W, H)
    assert tuple(np.asarray(with_t)[-1, -1]) == (0, 0, 255)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_is_scaled_not_clipped(tmp_path, fmt):
    arr = np.full((H, W), 32768, dtype=np.uint16)
    arr[0, 0], arr[0, 1] = 0, 65535
    path = _save(Image.fromarray(arr), tmp_path / f"i16.{fmt.lower()}", format=fmt)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (W, H)
    out = np.asarray(image)
    assert abs(int(out[5, 5, 0]) - 128) <= 1  # clipping would give 255
    assert tuple(out[0, 0]) == (0, 0, 0) and tuple(out[0, 1]) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["I;16B", "I"])
def test_sixteen_bit_in_memory_modes(mode):
    arr = np.full((H, W), 32768, dtype=">u2" if mode == "I;16B" else np.int32)
    src = Image.frombytes(mode, (W, H), arr.tobytes()) if mode == "I;16B" else Image.fromarray(arr)
    out = np.asarray(as_rgb(src))
    assert out.shape == (H, W, 3) and abs(int(out[3, 3, 1]) - 128) <= 1


def test_float_image_in_unit_range():
    out = np.asarray(as_rgb(Image.fromarray(np.full((H, W), 0.5, np.float32))))
    assert abs(int(out[0, 0, 0]) - 128) <= 1


def test_one_bit_image(tmp_path):
    src = Image.fromarray(_gradient() > 127).convert("1")
    image = load_image(_save(src, tmp_path / "b.png"))
    assert image.mode == "RGB" and image.size == (W, H)
    assert set(np.unique(np.asarray(image))) <= {0, 255}
    assert tuple(np.asarray(image)[-1, -1]) == (255, 255, 255)


def test_cmyk_jpeg(tmp_path):
    src = Image.new("CMYK", (W, H), (0, 0, 0, 0))  # CMYK "no ink" is white
    image = load_image(_save(src, tmp_path / "c.jpg", quality=95))
    assert image.mode == "RGB" and image.size == (W, H)
    assert np.asarray(image).min() > 240


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp"), ("TIFF", "tif")])
def test_truncated_image_raises(tmp_path, fmt, ext):
    path = _truncated_copy(_noise_rgb(), tmp_path / f"t.{ext}", fmt)
    with pytest.raises(DataError, match="truncated") as info:
        load_image(path)
    assert str(path) in str(info.value) and info.value.path == path


@pytest.mark.parametrize(
    "content,expect",
    [(None, "does not exist"), (b"", "not a readable image"), (b"hello, not an image", "not a readable image")],
)
def test_missing_empty_and_garbage_files(tmp_path, content, expect):
    path = tmp_path / "x.png"
    if content is not None:
        path.write_bytes(content)
    for fn in (load_image, load_mask, image_size):
        with pytest.raises(DataError, match=expect) as info:
            fn(path)
        assert str(path) in str(info.value)
        assert isinstance(info.value, TabadError)


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(DataError, match="folder"):
        load_image(tmp_path)


def test_image_size_reads_header_only(tmp_path):
    assert image_size(_save(_noise_rgb(), tmp_path / "a.png")) == (W, H)


def test_is_image_file():
    assert is_image_file("a.PNG") and is_image_file("b.JpEg") and is_image_file("c.tiff")
    assert not is_image_file(".hidden.png") and not is_image_file("notes.txt")


# --------------------------------------------------------------------------- load_mask


def _box() -> np.ndarray:
    box = np.zeros((H, W), dtype=bool)
    box[3:7, 5:15] = True
    return box


@pytest.mark.parametrize("on_value", [255, 1])
def test_mask_gray_values_binarise(tmp_path, on_value):
    arr = _box().astype(np.uint8) * on_value
    mask = load_mask(_save(Image.fromarray(arr), tmp_path / "m.png"))
    assert mask.dtype == bool and mask.shape == (H, W)
    assert np.array_equal(mask, _box())


def test_mask_palette_binarises_by_colour(tmp_path):
    src = Image.fromarray(_box().astype(np.uint8)).convert("P")
    # Index 0 is painted black and index 1 red, as annotation tools do.
    src.putpalette([0, 0, 0, 255, 0, 0] + [0] * 254 * 3)
    assert np.array_equal(load_mask(_save(src, tmp_path / "p.png")), _box())
    # Index 0 painted white and index 1 black: the white pixels (index 0,
    # inside the box) are the defect, whatever their index.
    inverted = Image.fromarray((~_box()).astype(np.uint8)).convert("P")
    inverted.putpalette([255, 255, 255, 0, 0, 0] + [0] * 254 * 3)
    assert np.array_equal(load_mask(_save(inverted, tmp_path / "q.png")), _box())


def test_mask_sixteen_bit_one_bit_and_rgb(tmp_path):
    box = _box()
    sixteen = Image.fromarray(box.astype(np.uint16) * 1)  # tiny nonzero value still counts
    assert np.array_equal(load_mask(_save(sixteen, tmp_path / "s.png")), box)
    one = Image.fromarray(box).convert("1")
    assert np.array_equal(load_mask(_save(one, tmp_path / "o.png")), box)
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[box, 2] = 7  # only the blue channel is set
    assert np.array_equal(load_mask(_save(Image.fromarray(rgb), tmp_path / "r.png")), box)


def test_mask_alpha_is_ignored():
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[_box(), 0] = 255
    assert np.array_equal(as_mask(Image.fromarray(rgba)), _box())


def test_truncated_mask_raises(tmp_path):
    src = Image.fromarray(np.random.default_rng(1).integers(0, 2, (64, 64), dtype=np.uint8) * 255)
    path = _truncated_copy(src, tmp_path / "m.png", "PNG")
    with pytest.raises(DataError, match="truncated") as info:
        load_mask(path)
    assert str(path) in str(info.value)
