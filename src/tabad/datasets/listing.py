"""Which entries of a dataset folder count, and in which order.

Every layout reader lists folders through these functions, so all layouts share one rule:
entries whose name starts with ``.`` are ignored, image files are recognised by their suffix in
any letter case (:data:`IMAGE_EXTENSIONS`), and everything is sorted in natural order (``2.png``
before ``10.png``), so a listing is the same on every file system. Standard library only, so
that any module, however light, can use it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: File name suffixes treated as images (compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: The suffixes as one alternation, for messages such as ``looked for *.<png|jpg|...>``.
EXTENSIONS_TEXT = "|".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)


def is_image_file(path: str | Path) -> bool:
    """True for a visible file whose suffix is one of :data:`IMAGE_EXTENSIONS`."""
    path = Path(path)
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def natural_key(name: str) -> tuple:
    """Sort key putting ``2.png`` before ``10.png``; ties are broken by the name itself."""
    parts = re.split(r"(\d+)", name)
    # Even positions are text and odd positions numbers, so keys always compare.
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def visible_dirs(folder: Path) -> list[Path]:
    """Subfolders of ``folder`` not starting with ``.``, in natural order; ``[]`` if it is no folder."""
    if not folder.is_dir():
        return []
    with os.scandir(folder) as it:
        dirs = [Path(e.path) for e in it if not e.name.startswith(".") and e.is_dir()]
    return sorted(dirs, key=lambda p: natural_key(p.name))


def image_files(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, in natural order; ``[]`` if it is no folder."""
    if not folder.is_dir():
        return []
    with os.scandir(folder) as it:
        files = [Path(e.path) for e in it if is_image_file(e.name) and e.is_file()]
    return sorted(files, key=lambda p: natural_key(p.name))
