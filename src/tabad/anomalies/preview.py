"""Picture grids of synthetic anomalies, for checking a generator by eye.

:func:`load_normal_images` reads ``train/good`` images of a data set (any
layout :mod:`tabad.datasets.readers` understands) at the test geometry
(resize 256 -> centre-crop 224 by default); :func:`preview_grid` draws
``n`` examples of one generator: the original on the first row, the
synthetic image with the mask outline on the second, the mask on the third.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

from tabad.anomalies import canonical_name, get_generator

OUTLINE_COLOUR = (255, 0, 0)  # red (RGB)


def load_normal_images(
    root: str | Path,
    categories: Sequence[str] | None = None,
    size: int = 224,
    max_per_class: int = 16,
    resize: int | None = None,
    layout: str = "auto",
) -> dict[str, list[np.ndarray]]:
    """Normal training images per category: ``{category: [uint8 (size, size, 3), ...]}``.

    Images are resized to ``resize`` x ``resize`` (default
    ``round(size * 256 / 224)``, i.e. 256 for 224) and centre-cropped to
    ``size``; at most ``max_per_class`` per category, the first ones in the
    readers' natural file order. ``categories=None`` takes all of
    :func:`~tabad.datasets.readers.list_categories`. File errors are
    :class:`~tabad.errors.DataError` naming the file.
    """
    from tabad.datasets.images import load_image
    from tabad.datasets.readers import list_categories, read_category
    from tabad.datasets.transforms import Geometry, resize_crop_image

    if max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
    resize = int(round(size * 256 / 224)) if resize is None else int(resize)
    geometry = Geometry(resize=resize, crop=size)
    names = list(categories) if categories is not None else list_categories(root, layout=layout)
    images: dict[str, list[np.ndarray]] = {}
    for name in names:
        data = read_category(root, name, layout=layout, check_files=False)
        samples = data.train[:max_per_class]
        images[data.category] = [resize_crop_image(load_image(s.image_path), geometry) for s in samples]
    return images


def outline(image: np.ndarray, mask: np.ndarray, colour=OUTLINE_COLOUR, thickness: int = 1) -> np.ndarray:
    """A copy of ``image`` with the outline of ``mask`` drawn in ``colour``."""
    out = np.ascontiguousarray(image.copy())
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if contours:
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in colour), thickness)
    return out


def _examples(
    images: Mapping[str, Sequence[np.ndarray]], n: int, rng: np.random.Generator
) -> list[tuple[str, int]]:
    """``n`` (class, index) pairs, cycling through the classes."""
    classes = [c for c, imgs in images.items() if len(imgs) > 0]
    if not classes:
        raise ValueError("no images to preview")
    picks = []
    for i in range(n):
        cls = classes[i % len(classes)]
        picks.append((cls, int(rng.integers(len(images[cls])))))
    return picks


def preview_grid(
    images: Mapping[str, Sequence[np.ndarray]] | Sequence[np.ndarray],
    method: str,
    out_path: str | Path,
    n: int = 8,
    seed: int = 0,
    **options,
) -> Path:
    """Draw ``n`` examples of generator ``method`` into a PNG at ``out_path``; return the path.

    ``images`` maps a class name to its normal images (a plain list counts as
    one class); all images of a class must have the same size. Each example
    (column) uses one image and the rest of its class as ``others``. Rows:
    original; synthetic with the mask outline in red; mask. ``options`` go to
    the generator. Deterministic for a given ``seed``. The file is written
    atomically (:func:`tabad.files.atomic_write`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from tabad.files import atomic_write

    name = canonical_name(method)
    generator = get_generator(name)
    if not isinstance(images, Mapping):
        images = {"images": list(images)}
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    picks = _examples(images, n, rng)

    columns = []
    for cls, idx in picks:
        pool = images[cls]
        others = [img for j, img in enumerate(pool) if j != idx]
        synthetic, mask = generator(pool[idx], others, rng, **options)
        columns.append((cls, pool[idx], synthetic, mask))

    fig = Figure(figsize=(2.0 * n, 6.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, n, squeeze=False)
    row_names = ("original", f"{name} + outline", "mask")
    for j, (cls, original, synthetic, mask) in enumerate(columns):
        pct = 100.0 * mask.mean()
        panels = (original, outline(synthetic, mask), mask)
        for i, panel in enumerate(panels):
            ax = axes[i][j]
            if panel.ndim == 2:
                ax.imshow(panel, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(row_names[i], fontsize=9)
        axes[0][j].set_title(str(cls), fontsize=9)
        axes[2][j].set_title("empty mask" if pct == 0 else f"{pct:.1f}% of pixels", fontsize=8)
    fig.suptitle(f"synthetic anomalies: {name} (seed {seed})", fontsize=11)
    fig.tight_layout()

    def write(tmp: Path) -> None:
        fig.savefig(tmp, format="png")

    return atomic_write(out_path, write)
