"""Listing the samples of one category on disk, for three folder layouts.

(The published layouts btad, ksdd2, visa, loco, dagm and folders are read by
:mod:`tabad.datasets.published`; the functions here detect and dispatch them.)

``<cat>`` is a category folder, ``<defect>`` a defect-type folder; the folder
named ``good`` always holds normal images. Image files are ``.png``, ``.jpg``,
``.jpeg``, ``.bmp``, ``.tif`` and ``.tiff`` in any letter case.

``"mvtec"`` (MVTec AD)::

    <cat>/train/good/*.png
    <cat>/test/good/*.png
    <cat>/test/<defect>/*.png
    <cat>/ground_truth/<defect>/<stem>_mask.png     mask of test/<defect>/<stem>.*

``"mvtec3d"`` (MVTec 3D-AD, RGB part only)::

    <cat>/train/good/rgb/*.png
    <cat>/validation/good/rgb/*.png                 read only with include_validation=True
    <cat>/test/<defect>/rgb/*.png
    <cat>/test/<defect>/gt/<same stem>.png          mask; test/good/gt holds empty masks
                                                    and is ignored

``"mvtec-stem"`` (MVTec-like, masks named like their images, e.g. anomalib's
"hazelnut toy" set)::

    <cat>/train/good/*.jpg
    <cat>/test/<defect>/*.jpg
    <cat>/ground_truth/<defect>/<stem>.<any image extension>

Rules shared by all layouts:

* files and folders whose name starts with ``.`` and files with other
  extensions are ignored; everything is sorted in natural order
  (``2.png`` before ``10.png``), so listings are deterministic;
* label 0 and ``defect_type "good"`` for normal images, label 1 and the folder
  name for anomalous ones; normal images never carry a mask;
* a category "has ground truth" when ``<cat>/ground_truth/`` exists (mvtec,
  mvtec-stem) or any ``<cat>/test/<defect>/gt/`` exists for a defect other
  than good (mvtec3d). Then every anomalous test image must have exactly one
  mask, every mask must have an image, and their sizes must agree. A category
  without ground truth is valid: its anomalous images get ``mask_path=None``
  and only image-level metrics apply to it. Masks of ``good`` images
  (``ground_truth/good/``, ``test/good/gt/``) are ignored.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tabad.datasets.images import IMAGE_EXTENSIONS, is_image_file, load_image, load_mask
from tabad.datasets.sample import CategoryData, Sample
from tabad.errors import DataError, TabadError

#: The MVTec-family layouts read by this module.
MVTEC_LAYOUTS = ("mvtec", "mvtec3d", "mvtec-stem")
LAYOUTS = MVTEC_LAYOUTS
#: Every layout name accepted by the functions below: the MVTec family, then
#: the published layouts of :mod:`tabad.datasets.published` (btad, ksdd2,
#: visa, loco, dagm, folders).
ALL_LAYOUTS = MVTEC_LAYOUTS + ("btad", "ksdd2", "visa", "loco", "dagm", "folders")
NORMAL = "good"

_EXTS = "|".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
# Below this many files, starting threads costs more than it saves.
_PARALLEL_MIN = 16


class LayoutError(TabadError, ValueError):
    """An unknown layout name was requested (not a problem with the data)."""


class SkippedFilesWarning(UserWarning):
    """``read_category(skip_bad=True)`` left out files; the message lists them."""


# --------------------------------------------------------------------------- listing helpers


def _natural_key(name: str) -> tuple:
    parts = re.split(r"(\d+)", name)
    # Even positions are text and odd positions numbers, so keys always compare.
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def _visible_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    with os.scandir(folder) as it:
        dirs = [Path(e.path) for e in it if not e.name.startswith(".") and e.is_dir()]
    return sorted(dirs, key=lambda p: _natural_key(p.name))


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    with os.scandir(folder) as it:
        files = [Path(e.path) for e in it if is_image_file(e.name) and e.is_file()]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _check_layout_name(layout: str) -> None:
    if layout != "auto" and layout not in ALL_LAYOUTS:
        raise LayoutError(f"unknown dataset layout {layout!r}; expected 'auto' or one of {', '.join(ALL_LAYOUTS)}")


def _train_dir(cat_dir: Path, layout: str, split: str = "train") -> Path:
    folder = cat_dir / split / NORMAL
    return folder / "rgb" if layout == "mvtec3d" else folder


def _test_image_dir(defect_dir: Path, layout: str) -> Path:
    return defect_dir / "rgb" if layout == "mvtec3d" else defect_dir


def _mask_dir(cat_dir: Path, defect: str, layout: str) -> Path:
    if layout == "mvtec3d":
        return cat_dir / "test" / defect / "gt"
    return cat_dir / "ground_truth" / defect


def _mask_stem(image_stem: str, layout: str) -> str:
    return image_stem + "_mask" if layout == "mvtec" else image_stem


def _has_ground_truth(cat_dir: Path, layout: str) -> bool:
    if layout == "mvtec3d":
        return any((d / "gt").is_dir() for d in _visible_dirs(cat_dir / "test") if d.name != NORMAL)
    return (cat_dir / "ground_truth").is_dir()


# --------------------------------------------------------------------------- public API


def detect_layout(category_dir: str | Path) -> str:
    """Guess the layout of one category folder; one of :data:`LAYOUTS`.

    * ``train/good/rgb/`` exists -> ``"mvtec3d"``;
    * otherwise ``train/good/`` must exist, and the mask names under
      ``ground_truth/<defect>/`` decide: mostly ``<stem>_mask.*`` ->
      ``"mvtec"``, mostly other names -> ``"mvtec-stem"``;
    * without ``ground_truth/`` (or with no mask files in it) the answer is
      ``"mvtec"``: both MVTec variants read such a category the same way, with
      ``mask_path=None`` for every anomalous image.

    Raises :class:`~tabad.errors.DataError` when the folder is missing or
    matches none of the layouts.
    """
    from tabad.datasets import published

    cat_dir = Path(category_dir)
    if not cat_dir.is_dir():
        raise DataError(cat_dir, "category folder does not exist" if not cat_dir.exists() else "is not a folder")
    found = published.detect_before_mvtec(cat_dir)
    if found is not None:
        return found
    if (cat_dir / "train" / NORMAL / "rgb").is_dir():
        return "mvtec3d"
    if (cat_dir / "train" / NORMAL).is_dir():
        masks = [
            m
            for d in _visible_dirs(cat_dir / "ground_truth")
            if d.name != NORMAL
            for m in _image_files(d)
        ]
        suffixed = sum(m.stem.endswith("_mask") for m in masks)
        if masks and 2 * suffixed < len(masks):
            return "mvtec-stem"
        return "mvtec"
    found = published.detect_after_mvtec(cat_dir)
    if found is not None:
        return found
    others = "; ".join(published.SIGNATURES[name] for name in published.PUBLISHED_LAYOUTS)
    raise DataError(
        cat_dir,
        "not a recognised category folder: looked for train/good/rgb/ (layout mvtec3d) and "
        "train/good/ (layouts mvtec, with masks ground_truth/<defect>/<stem>_mask.png, and "
        "mvtec-stem, with masks ground_truth/<defect>/<stem>.<ext>); also looked for " + others,
    )


def list_categories(root: str | Path, layout: str = "auto") -> list[str]:
    """Names of the categories under ``root``, sorted.

    ``root`` is either one category folder itself (it contains ``train/``;
    the answer is then ``[root.name]``) or a folder of category folders, each
    recognised by its ``train/`` subfolder. ``layout`` is validated but does
    not filter: every layout marks a category by its ``train/`` folder, and a
    broken category should fail loudly in :func:`read_category` rather than
    vanish from the list.

    Raises :class:`~tabad.errors.DataError` naming ``root`` when it is
    missing or holds no category, and :class:`LayoutError` for an unknown
    layout name.
    """
    from tabad.datasets import published

    _check_layout_name(layout)
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset folder does not exist" if not root.exists() else "is not a folder")
    names = published.list_published(root, layout)
    if names is not None:
        return names
    if (root / "train").is_dir() or published.is_dagm_class(root):
        return [root.name]
    names = [d.name for d in _visible_dirs(root) if (d / "train").is_dir() or published.is_dagm_class(d)]
    if not names and layout == "auto" and published.looks_folders(root):
        names = [root.name] if _image_files(root) else published.class_folders(root)
    if not names:
        found = ", ".join(d.name for d in _visible_dirs(root)[:10]) or "no subfolders"
        raise DataError(
            root,
            f"no category found: looked for {root}/train/ (root is one category) and "
            f"{root}/<category>/train/ (root holds categories); found: {found}; also looked for "
            f"{root}/split_csv/1cls.csv (layout visa), <category>/Train/ and Test/ (layout dagm) and "
            f"class folders of images without train/ (layout folders)",
        )
    return names


def _category_dir(root: str | Path, category: str | None) -> tuple[Path, str]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset folder does not exist" if not root.exists() else "is not a folder")
    if category is None:
        return root, root.name
    candidate = root / category
    if candidate.is_dir():
        return candidate, category
    if root.name == category:
        return root, category
    available = ", ".join(d.name for d in _visible_dirs(root) if (d / "train").is_dir()) or "none"
    raise DataError(candidate, f"category folder does not exist (categories found in {root}: {available})")


def _layout_and_hint(cat_dir: Path, layout: str) -> tuple[str, str]:
    _check_layout_name(layout)
    if layout == "auto":
        return detect_layout(cat_dir), ""
    try:
        detected = detect_layout(cat_dir)
    except DataError:
        return layout, ""
    mvtec_family = {"mvtec", "mvtec-stem"}
    if detected == layout or (
        {detected, layout} <= mvtec_family and not (cat_dir / "ground_truth").is_dir()
    ):
        return layout, ""
    return layout, f" [the folder looks like layout {detected!r}, but layout {layout!r} was requested]"


def _check_sample(sample: Sample) -> list[tuple[Path, str]]:
    """Decode a sample's image and mask once; return its problems."""
    try:
        width, height = load_image(sample.image_path).size
    except DataError as e:
        return [(e.path, e.problem)]
    if sample.mask_path is None:
        return []
    try:
        mask = load_mask(sample.mask_path)
    except DataError as e:
        return [(e.path, e.problem)]
    mask_h, mask_w = mask.shape
    if (mask_w, mask_h) != (width, height):
        return [
            (
                sample.mask_path,
                f"mask is {mask_w}x{mask_h} pixels but its image {sample.image_path} is {width}x{height}",
            )
        ]
    return []


def _check_all(samples: list[Sample]) -> list[list[tuple[Path, str]]]:
    if len(samples) < _PARALLEL_MIN:
        return [_check_sample(s) for s in samples]
    # PIL releases the GIL while decoding, so threads give a real speed-up.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(_check_sample, samples))


def _orphan_reason(mask: Path, image_dir: Path, layout: str) -> str:
    if layout == "mvtec" and not mask.stem.endswith("_mask"):
        return "mask without image: the mvtec layout names masks <image stem>_mask.<ext>"
    stem = mask.stem[: -len("_mask")] if layout == "mvtec" else mask.stem
    return f"mask without image: no test image {image_dir / stem}.<{_EXTS}>"


def _raise_problems(problems: list[tuple[Path, str]], category: str, hint: str) -> None:
    path, reason = problems[0]
    message = reason
    rest = problems[1:]
    if rest:
        listed = "; ".join(f"{p}: {r}" for p, r in rest[:5])
        message += f" (and {len(rest)} more problem(s) in category {category!r}: {listed}"
        message += " ...)" if len(rest) > 5 else ")"
    message += f"{hint}; pass skip_bad=True to leave bad files out"
    raise DataError(path, message)


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
    folder that contains the category folder.

    ``layout`` is ``"auto"`` (see :func:`detect_layout`) or one of
    :data:`ALL_LAYOUTS`; the MVTec family is described in the module
    docstring, btad, ksdd2, visa, loco, dagm and folders in
    :mod:`tabad.datasets.published` (which reads them).

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
    """
    from tabad.datasets import published

    _check_layout_name(layout)
    target = published.resolve(Path(root), category, layout, _category_dir)
    if target is not None:
        return published.read(*target, skip_bad=skip_bad, check_files=check_files,
                              include_validation=include_validation)
    cat_dir, category = _category_dir(root, category)
    layout, hint = _layout_and_hint(cat_dir, layout)
    problems: list[tuple[Path, str]] = []

    train_dir = _train_dir(cat_dir, layout)
    if not train_dir.is_dir():
        raise DataError(train_dir, f"training folder missing (layout {layout!r} keeps normal training images here){hint}")
    train = [Sample(p, category, 0, NORMAL, None, "train") for p in _image_files(train_dir)]
    if not train:
        raise DataError(train_dir, f"no training images (looked for *.<{_EXTS}>){hint}")
    if include_validation:
        val_dir = _train_dir(cat_dir, layout, split="validation")
        if not val_dir.is_dir():
            raise DataError(val_dir, f"validation folder missing (include_validation=True){hint}")
        train += [Sample(p, category, 0, NORMAL, None, "validation") for p in _image_files(val_dir)]

    test_dir = cat_dir / "test"
    if not test_dir.is_dir():
        raise DataError(test_dir, f"test folder missing{hint}")
    has_gt = _has_ground_truth(cat_dir, layout)
    test: list[Sample] = []
    n_test_found = 0
    for defect_dir in _visible_dirs(test_dir):
        defect = defect_dir.name
        image_dir = _test_image_dir(defect_dir, layout)
        images = _image_files(image_dir)
        n_test_found += len(images)
        if defect == NORMAL or not has_gt:
            label = 0 if defect == NORMAL else 1
            test += [Sample(p, category, label, defect, None, "test") for p in images]
            continue
        mask_dir = _mask_dir(cat_dir, defect, layout)
        masks = _image_files(mask_dir)
        masks_by_stem: dict[str, list[Path]] = defaultdict(list)
        for m in masks:
            masks_by_stem[m.stem].append(m)
        wanted: set[str] = set()
        for image in images:
            key = _mask_stem(image.stem, layout)
            wanted.add(key)
            candidates = masks_by_stem.get(key, [])
            if len(candidates) > 1:
                # e.g. 000_mask.png next to 000_mask.bmp: prefer the image's own format.
                same_ext = [m for m in candidates if m.suffix.lower() == image.suffix.lower()]
                candidates = same_ext if len(same_ext) == 1 else candidates
            if not candidates:
                problems.append((image, f"anomalous test image has no mask: looked for {mask_dir / key}.<{_EXTS}>"))
            elif len(candidates) > 1:
                names = ", ".join(m.name for m in candidates)
                problems.append((image, f"several masks match this image in {mask_dir}: {names}"))
            else:
                test.append(Sample(image, category, 1, defect, candidates[0], "test"))
        problems += [(m, _orphan_reason(m, image_dir, layout)) for m in masks if m.stem not in wanted]

    if has_gt and layout != "mvtec3d":
        for gt_dir in _visible_dirs(cat_dir / "ground_truth"):
            if gt_dir.name == NORMAL or (test_dir / gt_dir.name).is_dir():
                continue
            problems += [
                (m, f"mask without image: there is no test folder {test_dir / gt_dir.name}")
                for m in _image_files(gt_dir)
            ]

    if n_test_found == 0:
        where = f"{test_dir}/<defect>/rgb/" if layout == "mvtec3d" else f"{test_dir}/<defect>/"
        raise DataError(test_dir, f"no test images (looked for {where}*.<{_EXTS}>){hint}")

    return _finish_category(root=cat_dir.parent, cat_dir=cat_dir, category=category, layout=layout, train=train,
                            test=test, problems=problems, excluded=[], skip_bad=skip_bad, check_files=check_files,
                            hint=hint, train_dir=train_dir, test_dir=test_dir)


def _finish_category(*, root: Path, cat_dir: Path, category: str, layout: str, train: list[Sample],
                     test: list[Sample], problems: list[tuple[Path, str]], excluded: list[tuple[Path, str]],
                     skip_bad: bool, check_files: bool, hint: str, train_dir: Path,
                     test_dir: Path | None) -> CategoryData:
    """The end every reader shares: pairing problems, file checks, one warning, emptiness checks.

    ``excluded`` lists files left out by a dataset's protocol (e.g. defective KSDD2 training
    images): reported in ``skipped`` but not warned about. ``test_dir=None`` allows an empty
    test split (collections of normal images for pre-training).
    """
    # Pairing problems are cheap to find; report them before decoding anything.
    if problems and not skip_bad:
        _raise_problems(problems, category, hint)
    if check_files:
        samples = train + test
        bad: set[int] = set()
        for i, found in enumerate(_check_all(samples)):
            if found:
                problems += found
                bad.add(i)
        if bad:
            n_train = len(train)
            train = [s for i, s in enumerate(train) if i not in bad]
            test = [s for i, s in enumerate(test, start=n_train) if i not in bad]
        if problems and not skip_bad:
            _raise_problems(problems, category, hint)
    if problems:
        lines = "\n".join(f"  {p}: {r}" for p, r in problems)
        warnings.warn(f"category {category!r} ({cat_dir}): skipped {len(problems)} bad file(s):\n{lines}",
                      SkippedFilesWarning, stacklevel=4)
    if not train:
        raise DataError(train_dir, "no readable training images left after skipping bad files")
    if test_dir is not None and not test:
        raise DataError(test_dir, "no usable test images left after skipping bad files")
    return CategoryData(root=root, category=category, layout=layout, train=train, test=test,
                        skipped=list(excluded) + list(problems))
