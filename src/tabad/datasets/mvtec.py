"""The MVTec family of folder layouts: ``"mvtec"``, ``"mvtec3d"`` and ``"mvtec-stem"``.

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

Rules shared by all layouts (see also :mod:`tabad.datasets.listing`):

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

Detection: ``train/good/rgb/`` means mvtec3d; otherwise, with ``train/good/``,
the mask names under ``ground_truth/<defect>/`` decide: mostly
``<stem>_mask.*`` -> mvtec, mostly other names -> mvtec-stem. Without masks
the answer is mvtec: both variants read such a category the same way.
"""

from __future__ import annotations

from collections import defaultdict
from functools import partial
from pathlib import Path

from tabad.datasets.listing import EXTENSIONS_TEXT, image_files, visible_dirs
from tabad.datasets.reading import Layout, ReadOptions, finish_category
from tabad.datasets.sample import NORMAL, CategoryData, Sample
from tabad.errors import DataError

#: The layouts of this module, in the order users see them.
MVTEC_LAYOUTS = ("mvtec", "mvtec3d", "mvtec-stem")


# --------------------------------------------------------------------------- where things are


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
        return any((d / "gt").is_dir() for d in visible_dirs(cat_dir / "test") if d.name != NORMAL)
    return (cat_dir / "ground_truth").is_dir()


# --------------------------------------------------------------------------- detection


def _is_mvtec3d(folder: Path) -> bool:
    return (folder / "train" / NORMAL / "rgb").is_dir()


def _masks_named_like_images(folder: Path) -> bool:
    """Most masks under ``ground_truth/<defect>/`` lack the ``_mask`` suffix (False without masks)."""
    masks = [m for d in visible_dirs(folder / "ground_truth") if d.name != NORMAL for m in image_files(d)]
    suffixed = sum(m.stem.endswith("_mask") for m in masks)
    return bool(masks) and 2 * suffixed < len(masks)


def _is_mvtec(folder: Path) -> bool:
    return (folder / "train" / NORMAL).is_dir() and not _masks_named_like_images(folder)


def _is_mvtec_stem(folder: Path) -> bool:
    return (folder / "train" / NORMAL).is_dir() and _masks_named_like_images(folder)


def _reads_like(layout: str, folder: Path, detected: str) -> bool:
    # mvtec and mvtec-stem differ only in mask names: without ground_truth/ they read a folder alike.
    if detected == layout:
        return True
    return {detected, layout} <= {"mvtec", "mvtec-stem"} and not (folder / "ground_truth").is_dir()


# --------------------------------------------------------------------------- reading


def _orphan_reason(mask: Path, image_dir: Path, layout: str) -> str:
    if layout == "mvtec" and not mask.stem.endswith("_mask"):
        return "mask without image: the mvtec layout names masks <image stem>_mask.<ext>"
    stem = mask.stem[: -len("_mask")] if layout == "mvtec" else mask.stem
    return f"mask without image: no test image {image_dir / stem}.<{EXTENSIONS_TEXT}>"


def read_mvtec(cat_dir: Path, category: str, hint: str, options: ReadOptions, layout: str = "mvtec") -> CategoryData:
    """The samples of the category folder ``cat_dir`` in MVTec-family ``layout`` (module docstring)."""
    problems: list[tuple[Path, str]] = []

    train_dir = _train_dir(cat_dir, layout)
    if not train_dir.is_dir():
        raise DataError(train_dir, f"training folder missing (layout {layout!r} keeps normal training images here){hint}")
    train = [Sample(p, category, 0, NORMAL, None, "train") for p in image_files(train_dir)]
    if not train:
        raise DataError(train_dir, f"no training images (looked for *.<{EXTENSIONS_TEXT}>){hint}")
    if options.include_validation:
        val_dir = _train_dir(cat_dir, layout, split="validation")
        if not val_dir.is_dir():
            raise DataError(val_dir, f"validation folder missing (include_validation=True){hint}")
        train += [Sample(p, category, 0, NORMAL, None, "validation") for p in image_files(val_dir)]

    test_dir = cat_dir / "test"
    if not test_dir.is_dir():
        raise DataError(test_dir, f"test folder missing{hint}")
    has_gt = _has_ground_truth(cat_dir, layout)
    test: list[Sample] = []
    n_test_found = 0
    for defect_dir in visible_dirs(test_dir):
        defect = defect_dir.name
        image_dir = _test_image_dir(defect_dir, layout)
        images = image_files(image_dir)
        n_test_found += len(images)
        if defect == NORMAL or not has_gt:
            label = 0 if defect == NORMAL else 1
            test += [Sample(p, category, label, defect, None, "test") for p in images]
            continue
        mask_dir = _mask_dir(cat_dir, defect, layout)
        masks = image_files(mask_dir)
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
                problems.append((image, f"anomalous test image has no mask: looked for "
                                        f"{mask_dir / key}.<{EXTENSIONS_TEXT}>"))
            elif len(candidates) > 1:
                names = ", ".join(m.name for m in candidates)
                problems.append((image, f"several masks match this image in {mask_dir}: {names}"))
            else:
                test.append(Sample(image, category, 1, defect, candidates[0], "test"))
        problems += [(m, _orphan_reason(m, image_dir, layout)) for m in masks if m.stem not in wanted]

    if has_gt and layout != "mvtec3d":
        for gt_dir in visible_dirs(cat_dir / "ground_truth"):
            if gt_dir.name == NORMAL or (test_dir / gt_dir.name).is_dir():
                continue
            problems += [
                (m, f"mask without image: there is no test folder {test_dir / gt_dir.name}")
                for m in image_files(gt_dir)
            ]

    if n_test_found == 0:
        where = f"{test_dir}/<defect>/rgb/" if layout == "mvtec3d" else f"{test_dir}/<defect>/"
        raise DataError(test_dir, f"no test images (looked for {where}*.<{EXTENSIONS_TEXT}>){hint}")

    return finish_category(root=cat_dir.parent, cat_dir=cat_dir, category=category, layout=layout, train=train,
                           test=test, problems=problems, excluded=[], options=options, hint=hint,
                           train_dir=train_dir, test_dir=test_dir)


# --------------------------------------------------------------------------- the layouts


MVTEC = Layout(
    name="mvtec",
    looks_for="train/good/ with masks ground_truth/<defect>/<stem>_mask.png (layout mvtec)",
    detect=_is_mvtec,
    read=partial(read_mvtec, layout="mvtec"),
    reads_like=partial(_reads_like, "mvtec"),
)
MVTEC3D = Layout(
    name="mvtec3d",
    looks_for="train/good/rgb/ (layout mvtec3d)",
    detect=_is_mvtec3d,
    read=partial(read_mvtec, layout="mvtec3d"),
)
MVTEC_STEM = Layout(
    name="mvtec-stem",
    looks_for="train/good/ with masks ground_truth/<defect>/<stem>.<ext> (layout mvtec-stem)",
    detect=_is_mvtec_stem,
    read=partial(read_mvtec, layout="mvtec-stem"),
    reads_like=partial(_reads_like, "mvtec-stem"),
)
