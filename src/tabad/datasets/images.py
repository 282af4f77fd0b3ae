"""Decoding image and mask files, with errors that name the file.

Every reader in :mod:`tabad` goes through :func:`load_image` and
:func:`load_mask`, so the rules for odd pixel formats live in one place:

* images always come back as fully decoded 8-bit RGB ``PIL.Image.Image``;
  grayscale is replicated to three channels, alpha is dropped (not
  composited), 16-bit data is scaled down to 8 bits (not clipped);
* masks always come back as ``bool`` arrays of shape ``(H, W)``: a pixel is
  anomalous when any of its colour channels is nonzero, whatever the bit
  depth, so 0/1, 0/255, 0/65535 and component-index masks all work;
* a missing, unreadable, truncated or corrupt file raises
  :class:`tabad.errors.DataError` naming the file and the reason.

Truncated files are never accepted: PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES``
is left at ``False`` (its default), so a half-written image raises instead of
being padded with grey. EXIF orientation is deliberately ignored: pixel masks
are drawn on the stored pixel grid, and rotating the image but not its mask
would misalign them.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# IMAGE_EXTENSIONS and is_image_file are re-exported: callers (perlin, classify) and users know
# them as part of this module; they are defined with the other listing rules.
from tabad.datasets.listing import EXTENSIONS_TEXT, IMAGE_EXTENSIONS, image_files, is_image_file
from tabad.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "as_mask", "as_rgb", "decode_image", "image_size", "is_image_file", "load_image",
           "load_mask", "load_mask_folder"]

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
# What PIL raises on malformed data besides OSError, depending on the codec.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


def _open_decoded(path: str | Path) -> Image.Image:
    """Open and fully decode ``path``; every failure becomes a DataError."""
    path = Path(path)
    try:
        # Reading through our own file object keeps the decoded image valid
        # after the file is closed (Image.close() would discard the pixels).
        with open(path, "rb") as f:
            return _decode_stream(f, path)
    except FileNotFoundError:
        raise DataError(path, "file does not exist") from None
    except IsADirectoryError:
        raise DataError(path, "is a folder, not an image file") from None
    except PermissionError:
        raise DataError(path, "permission denied") from None
    except OSError as e:  # raised by open() itself, e.g. an I/O error
        raise DataError(path, f"cannot read file ({e})") from None


def _decode_stream(f, path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode the image in file object ``f`` (named ``path`` in errors)."""
    try:
        image = Image.open(f)
    except UnidentifiedImageError:
        raise DataError(path, "not a readable image (unknown format or corrupt header)") from None
    except Image.DecompressionBombError as e:
        raise DataError(path, f"image too large to decode safely ({e})") from None
    except _DECODE_ERRORS as e:
        raise DataError(path, f"corrupt image header ({e})") from None
    if max_pixels is not None and image.width * image.height > max_pixels:
        raise DataError(path, f"image is {image.width}x{image.height} pixels, more than the {max_pixels} allowed")
    try:
        image.load()
    except Image.DecompressionBombError as e:
        raise DataError(path, f"image too large to decode safely ({e})") from None
    except _DECODE_ERRORS as e:
        raise DataError(path, f"truncated or corrupt image data ({e})") from None
    return image


def _sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    # Shifting keeps the full 16-bit range: 65535 -> 255, 32768 -> 128.
    # PIL's own convert("L") clips at 255 instead, which turns most 16-bit
    # images white.
    return (np.clip(values, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)


def _float_to_eight(values: np.ndarray) -> np.ndarray:
    # Float images carry no declared range, so guess from the values: [0, 1]
    # is the usual normalised form, above 255 is taken as 16-bit data.
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(values.max()) if values.size else 0.0
    if top <= 1.0:
        values = values * 255.0
    elif top > 255.0:
        values = values / 257.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def as_rgb(image: Image.Image) -> Image.Image:
    """Return ``image`` as 8-bit RGB (see the module docstring for the rules).

    Mode ``I`` (32-bit integer) is assumed to hold 16-bit data, as it does for
    16-bit PNG and TIFF files in older Pillow versions. Raises ``ValueError``
    for a mode PIL cannot convert.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        gray = _sixteen_to_eight(np.asarray(image))
        return Image.fromarray(gray).convert("RGB")
    if mode == "F":
        return Image.fromarray(_float_to_eight(np.asarray(image))).convert("RGB")
    if mode in ("LA", "La"):
        return image.getchannel(0).convert("RGB")
    if (mode == "P" and "transparency" in image.info) or mode == "PA":
        # PIL warns on (and mishandles) P -> RGB with byte transparency.
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")


def as_mask(image: Image.Image) -> np.ndarray:
    """Binarise ``image`` to a ``bool`` array ``(H, W)``: any nonzero colour.

    Alpha channels are ignored. Palette masks are judged by the colour of
    each pixel, not by its palette index, so a palette whose index 0 is white
    still reads correctly.
    """
    mode = image.mode
    if mode == "P" or mode == "PA":
        image = image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
        mode = image.mode
    elif mode not in ("1", "L", "LA", "La", "I", "F", "RGB", "RGBA", "RGBa", "RGBX") and mode not in _SIXTEEN_BIT_MODES:
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV ...
        mode = "RGB"
    values = np.asarray(image)
    if values.ndim == 3:
        channels = 1 if mode in ("LA", "La") else 3
        return np.ascontiguousarray((values[..., :channels] != 0).any(axis=-1))
    return np.ascontiguousarray(values != 0)


def load_image(path: str | Path) -> Image.Image:
    """Decode the image at ``path`` completely and return it as 8-bit RGB.

    Raises :class:`~tabad.errors.DataError` naming ``path`` when the file is
    missing, not an image, truncated, corrupt or in an unconvertible mode.
    """
    image = _open_decoded(path)
    try:
        return as_rgb(image)
    except _DECODE_ERRORS as e:
        raise DataError(path, f"cannot convert image mode {image.mode!r} to RGB ({e})") from None


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int | None = None) -> Image.Image:
    """Decode an image file held in memory (an upload) completely and return it as 8-bit RGB.

    The same rules as :func:`load_image`; errors name ``name``. ``max_pixels`` refuses larger images
    from their header, before their pixels are decoded.
    """
    import io

    image = _decode_stream(io.BytesIO(data), name, max_pixels)
    try:
        return as_rgb(image)
    except _DECODE_ERRORS as e:
        raise DataError(name, f"cannot convert image mode {image.mode!r} to RGB ({e})") from None


def load_mask(path: str | Path) -> np.ndarray:
    """Decode the mask at ``path`` to a ``bool`` array ``(H, W)``.

    Any image mode is accepted; a pixel is ``True`` when any colour channel
    is nonzero. Raises :class:`~tabad.errors.DataError` like
    :func:`load_image`.

    ``path`` may also be a folder of masks (MVTec LOCO keeps one or more
    masks per image in ``ground_truth/<defect>/<stem>/``): the answer is then
    their union, see :func:`load_mask_folder`.
    """
    if Path(path).is_dir():
        return load_mask_folder(path)
    image = _open_decoded(path)
    try:
        return as_mask(image)
    except _DECODE_ERRORS as e:
        raise DataError(path, f"cannot read mask of image mode {image.mode!r} ({e})") from None


def load_mask_folder(folder: str | Path) -> np.ndarray:
    """Union of every mask image directly inside ``folder`` (MVTec LOCO).

    Raises :class:`~tabad.errors.DataError` when the folder holds no mask,
    a mask cannot be read, or the masks differ in size.
    """
    folder = Path(folder)
    files = image_files(folder)
    if not files:
        raise DataError(folder, f"mask folder holds no mask images (looked for *.<{EXTENSIONS_TEXT}>)")
    union = load_mask(files[0])
    for f in files[1:]:
        mask = load_mask(f)
        if mask.shape != union.shape:
            raise DataError(
                f,
                f"mask is {mask.shape[1]}x{mask.shape[0]} pixels but {files[0].name} in the same "
                f"folder is {union.shape[1]}x{union.shape[0]}",
            )
        union |= mask
    return union


def image_size(path: str | Path) -> tuple[int, int]:
    """Return ``(width, height)`` from the file header without decoding pixels.

    A damaged pixel stream is not detected here; use :func:`load_image` for
    that. Raises :class:`~tabad.errors.DataError` naming ``path`` on failure.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            with Image.open(f) as image:
                return image.size
    except FileNotFoundError:
        raise DataError(path, "file does not exist") from None
    except IsADirectoryError:
        raise DataError(path, "is a folder, not an image file") from None
    except PermissionError:
        raise DataError(path, "permission denied") from None
    except UnidentifiedImageError:
        raise DataError(path, "not a readable image (unknown format or corrupt header)") from None
    except Image.DecompressionBombError as e:
        raise DataError(path, f"image too large to decode safely ({e})") from None
    except _DECODE_ERRORS as e:
        raise DataError(path, f"cannot read image header ({e})") from None
