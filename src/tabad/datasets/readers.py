"""Listing the categories of a dataset on disk and reading one of them, in any registered layout.

The layouts themselves (``mvtec``, ``mvtec3d``, ``mvtec-stem`` in :mod:`tabad.datasets.mvtec`;
``btad``, ``ksdd2``, ``visa``, ``loco``, ``dagm``, ``folders`` in
:mod:`tabad.datasets.published`) are listed in :mod:`tabad.datasets.layouts`; this module
detects and dispatches to them and holds no knowledge of any one layout, so a new layout needs
no change here.

Rules shared by all layouts: hidden files and foreign extensions are ignored and everything is
sorted in natural order (:mod:`tabad.datasets.listing`); normal images have label 0 and
``defect_type "good"``; problems with files raise a :class:`~tabad.errors.DataError` naming the
file, or with ``skip_bad=True`` are skipped with one :class:`SkippedFilesWarning`
(:mod:`tabad.datasets.reading`).
"""

from __future__ import annotations

from pathlib import Path

from tabad.datasets.layouts import ALL_LAYOUTS, LayoutError, check_layout_name, detection_order, get_layout
from tabad.datasets.listing import visible_dirs
from tabad.datasets.reading import ReadOptions, SkippedFilesWarning, has_train_folder
from tabad.datasets.sample import CategoryData
from tabad.errors import DataError

# ALL_LAYOUTS, LayoutError and SkippedFilesWarning are re-exported: they are part of what a
# caller of read_category handles (the accepted names, the errors and the warning it raises).
__all__ = ["ALL_LAYOUTS", "LayoutError", "SkippedFilesWarning", "detect_layout", "list_categories",
           "read_category"]


def _existing_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DataError(path, f"{what} does not exist" if not path.exists() else "is not a folder")
    return path


def _is_category(folder: Path) -> bool:
    """Whether some layout marks ``folder`` as a category folder (cheaply: no full detection)."""
    # Most layouts share has_train_folder: test each distinct mark once.
    marks = dict.fromkeys(layout.is_category for layout in detection_order() if layout.is_category is not None)
    return any(mark(folder) for mark in marks)


def detect_layout(category_dir: str | Path) -> str:
    """Guess the layout of one category folder: the first of
    :data:`~tabad.datasets.layouts.DETECTION_ORDER` whose check matches.

    For the MVTec family: ``train/good/rgb/`` means ``"mvtec3d"``; otherwise
    ``train/good/`` with mask names under ``ground_truth/<defect>/`` that are mostly
    ``<stem>_mask.*`` means ``"mvtec"``, mostly other names ``"mvtec-stem"``; without
    ``ground_truth/`` (or with no mask files in it) the answer is ``"mvtec"``: both MVTec
    variants read such a category the same way, with ``mask_path=None`` for every anomalous
    image.

    Raises :class:`~tabad.errors.DataError` when the folder is missing or
    matches none of the layouts (the message says what was looked for).
    """
    cat_dir = _existing_dir(category_dir, "category folder")
    for layout in detection_order():
        if layout.detect(cat_dir):
            return layout.name
    looked = "; ".join(get_layout(name).looks_for for name in ALL_LAYOUTS)
    raise DataError(cat_dir, f"not a recognised category folder: looked for {looked}")


def list_categories(root: str | Path, layout: str = "auto") -> list[str]:
    """Names of the categories under ``root``, sorted.

    ``root`` is either one category folder itself (it contains ``train/``;
    the answer is then ``[root.name]``) or a folder of category folders, each
    recognised by its ``train/`` subfolder (DAGM's by ``Train/`` and ``Test/``). Layouts that
    span a whole root answer for it first: a VisA root lists the objects of its split file, a
    KSDD2 root is the one category ``"ksdd2"``; a folder of class folders (layout ``folders``)
    is recognised only when no category folder is found. ``layout`` is validated but does not
    filter: a broken category should fail loudly in :func:`read_category` rather than vanish
    from the list.

    Raises :class:`~tabad.errors.DataError` naming ``root`` when it is
    missing or holds no category, and :class:`LayoutError` for an unknown
    layout name.
    """
    check_layout_name(layout)
    root = _existing_dir(root, "dataset folder")
    forced = layout != "auto"
    candidates = [get_layout(layout)] if forced else detection_order()
    # 1. a layout spanning a whole root (VisA, KSDD2, or the forced one) answers for it first;
    for candidate in candidates:
        if candidate.list_root is not None and (forced or not candidate.catch_all):
            names = candidate.list_root(root, forced)
            if names is not None:
                return names
    # 2. then root is one category folder, or holds some;
    if _is_category(root):
        return [root.name]
    names = [d.name for d in visible_dirs(root) if _is_category(d)]
    # 3. a catch-all layout (any folder of images) only when nothing else matched.
    if not names and not forced:
        for candidate in candidates:
            if candidate.list_root is not None and candidate.catch_all:
                names = candidate.list_root(root, False) or []
                if names:
                    break
    if not names:
        found = ", ".join(d.name for d in visible_dirs(root)[:10]) or "no subfolders"
        # the layouts whose categories are not marked by train/ (that much is said above)
        others = "; ".join(L.looks_for for L in detection_order() if L.is_category is not has_train_folder)
        raise DataError(
            root,
            f"no category found: looked for {root}/train/ (root is one category) and "
            f"{root}/<category>/train/ (root holds categories); found: {found}; also looked for {others}",
        )
    return names


def _category_dir(root: Path, category: str | None) -> tuple[Path, str]:
    if category is None:
        return root, root.name
    candidate = root / category
    if candidate.is_dir():
        return candidate, category
    if root.name == category:
        return root, category
    available = ", ".join(d.name for d in visible_dirs(root) if _is_category(d)) or "none"
    raise DataError(candidate, f"category folder does not exist (categories found in {root}: {available})")


def _hint(folder: Path, layout: str) -> str:
    """A note for error messages when ``folder`` looks like another layout than the forced one."""
    try:
        detected = detect_layout(folder)
    except DataError:
        return ""
    if get_layout(layout).same_reading(folder, detected):
        return ""
    return f" [the folder looks like layout {detected!r}, but layout {layout!r} was requested]"


def read_category(
    root: str | Path,
    category: str | None = None,
    layout: str = "auto",
    skip_bad: bool = False,
    check_files: bool = True,
    include_validation: bool = False,
) -> CategoryData:
    """Read the train and test samples of one category.

    The category folder is ``root/category``. For convenience ``root`` may
    also be the category folder itself: when ``root/category`` does not exist
    but ``root`` is named ``category``, or when ``category`` is ``None`` (its
    name is then taken from the folder). ``CategoryData.root`` is always the
    folder that contains the category folder. A VisA root takes an object name as
    ``category``, and a KSDD2 root the name ``"ksdd2"``.

    ``layout`` is ``"auto"`` (see :func:`detect_layout`) or one of
    :data:`ALL_LAYOUTS`; the MVTec family is described in :mod:`tabad.datasets.mvtec`,
    btad, ksdd2, visa, loco, dagm and folders in :mod:`tabad.datasets.published`.

    With ``check_files`` every image and mask is decoded once (in threads) so
    that unreadable or truncated files and masks whose size differs from
    their image are found now, not halfway through training. Without it no
    file is opened; only names and pairings are checked.

    ``include_validation`` (mvtec3d's ``validation/good/rgb/``, or
    ``validation/good/`` for the other layouts) appends those normal images
    to ``train`` with ``split="validation"``; they are left out by default.

    Errors are :class:`~tabad.errors.DataError` naming the offending path:

    * always raised: missing root or category folder, missing or empty
      ``train`` image folder, missing ``test`` folder or no test images, no
      train or test images left after skipping;
    * per-file problems, raised unless ``skip_bad``: unreadable or truncated
      image or mask, mask size differing from its image, anomalous test image
      without a mask (in a category with ground truth), several masks for one
      image, mask without an image. With ``skip_bad=True`` the affected
      samples are dropped, every problem is recorded in
      ``CategoryData.skipped`` as ``(path, reason)`` and one
      :class:`SkippedFilesWarning` lists them all.

    When a forced ``layout`` fails on a folder that looks like another layout, the error
    message says so.
    """
    check_layout_name(layout)
    root = _existing_dir(root, "dataset folder")
    options = ReadOptions(skip_bad=skip_bad, check_files=check_files, include_validation=include_validation)
    forced = layout != "auto"
    # Layouts spanning a whole root (VisA, KSDD2) may claim the request before it is taken as
    # the folder root/category.
    for candidate in [get_layout(layout)] if forced else detection_order():
        located = candidate.locate(root, category, forced) if candidate.locate is not None else None
        if located is not None:
            folder, category = located
            hint = _hint(folder, candidate.name) if forced else ""
            return candidate.read(folder, category, hint, options)
    folder, category = _category_dir(root, category)
    if forced:
        name, hint = layout, _hint(folder, layout)
    else:
        name, hint = detect_layout(folder), ""
    return get_layout(name).read(folder, category, hint, options)
