"""Readers for published anomaly-detection datasets that are not MVTec-shaped.

:func:`tabad.datasets.readers.read_category`, ``list_categories`` and
``detect_layout`` dispatch here; call those, not the functions below. Every
reader returns the same :class:`~tabad.datasets.sample.CategoryData` as the
MVTec readers and shares their rules: natural sort order, hidden files and
foreign extensions ignored, masks binarised by
:func:`~tabad.datasets.images.load_mask` (any nonzero pixel), label 0 and
``defect_type "good"`` for normal images, ``check_files`` decodes every image
and mask once, per-file problems raise unless ``skip_bad`` (then they are
dropped, listed in ``CategoryData.skipped`` and in one
:class:`~tabad.datasets.readers.SkippedFilesWarning`).

``"btad"`` (BTAD; products ``01``, ``02``, ``03`` are the categories)::

    <cat>/train/ok/*.bmp|png
    <cat>/test/ok/*, <cat>/test/ko/*          label = (folder != ok)
    <cat>/ground_truth/ko/<stem>.png          matched by stem, any extension

  Normal images get ``defect_type "good"`` (not ``"ok"``), as everywhere in
  tabad; anomalous ones the folder name (``"ko"``).

``"ksdd2"`` (KolektorSDD2; one category, always named ``"ksdd2"``)::

    <root>/train/NNNNN.png + NNNNN_GT.png
    <root>/test/NNNNN.png + NNNNN_GT.png      label = GT has a nonzero pixel

  The label needs the GT, so GT masks are decoded even with
  ``check_files=False``. Defective *training* images are excluded
  (unsupervised protocol) and listed in ``skipped`` with reason
  :data:`EXCLUDED_REASON`; that alone raises no warning. Normal test images
  keep ``mask_path=None`` (their GT is empty); anomalous ones have
  ``defect_type "defect"``.

``"visa"`` (VisA, 1-class split)::

    <root>/split_csv/1cls.csv    columns object,split,label,image,mask;
                                 paths relative to <root>

  Categories are the ``object`` values; ``label == "anomaly"`` -> 1 and
  ``defect_type "anomaly"``. Masks hold component indices (0/1/2...): any
  nonzero pixel is anomalous. Mask files in the csv's mask folders that no
  row names are reported as "mask without image". An anomalous *train* row
  (none in the official csv) would be excluded like KSDD2's.

``"loco"`` (MVTec LOCO AD)::

    <cat>/train/good/*.png, <cat>/validation/good/*.png
    <cat>/test/{good,logical_anomalies,structural_anomalies}/*.png
    <cat>/ground_truth/<defect>/<stem>/*.png  one or more masks per image

  ``mask_path`` is the *folder* ``ground_truth/<defect>/<stem>``;
  :func:`tabad.datasets.images.load_mask` returns the union of the masks in
  a folder (:func:`load_mask_folder`).

``"dagm"`` (DAGM 2007; ``Class1`` .. ``Class10`` are the categories)::

    <cat>/Train/NNNN.PNG, <cat>/Train/Label/NNNN_label.PNG (+ Labels.txt)
    <cat>/Test/NNNN.PNG,  <cat>/Test/Label/NNNN_label.PNG

  An image is defective when its label mask exists (``Labels.txt`` is not
  read). Defective training images are excluded as for KSDD2; anomalous test
  images have ``defect_type "defect"``.

``"folders"`` (class folders of normal images, e.g. a pre-training
collection such as the paper's Industrial dataset)::

    <root>/<class>/*.png|jpg|...              no train/test split

  Every image is returned as ``train``; ``test`` is empty. Such a root is
  for ``tabad pretrain``, not for benchmarking. Only files directly inside a
  class folder are read.

MPDD and MIAD need no reader of their own: they are MVTec-shaped
(``ground_truth/<defect>/<stem>_mask.<ext>``) and the ``"mvtec"`` reader
matches masks by stem in any image extension (``.png``, ``.jpg``, ...), so
no configurable image/mask extension is needed; ``"mvtec-stem"`` covers
masks named exactly like their images.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tabad.datasets.images import load_mask
from tabad.datasets.readers import (
    _EXTS,
    _PARALLEL_MIN,
    NORMAL,
    _finish_category,
    _image_files,
    _natural_key,
    _raise_problems,
    _visible_dirs,
)
from tabad.datasets.sample import CategoryData, Sample
from tabad.errors import DataError

#: Layouts read by this module (the MVTec family lives in ``readers``).
PUBLISHED_LAYOUTS = ("btad", "ksdd2", "visa", "loco", "dagm", "folders")
#: Layouts whose categories are not folders named after them, or that span the whole root.
ROOT_LAYOUTS = ("ksdd2", "visa", "folders")
#: ``CategoryData.skipped`` reason for anomalous training images left out.
EXCLUDED_REASON = "defective training image excluded (unsupervised protocol)"
KSDD2_CATEGORY = "ksdd2"
VISA_CSV = Path("split_csv") / "1cls.csv"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")

#: What detection looks for, per layout; used in "not recognised" errors.
SIGNATURES = {
    "btad": "train/ok/ (layout btad)",
    "ksdd2": "train/ holding NNNNN.png with NNNNN_GT.png (layout ksdd2)",
    "visa": "split_csv/1cls.csv (layout visa)",
    "loco": "train/good/ with ground_truth/<defect>/<stem>/ mask folders (layout loco)",
    "dagm": "Train/ and Test/ (layout dagm, a DAGM ClassN folder)",
    "folders": "image files directly in the folder or in its subfolders, no train/ (layout folders)",
}


# --------------------------------------------------------------------------- mask folders


def load_mask_folder(folder: str | Path) -> np.ndarray:
    """Union of every mask image directly inside ``folder`` (MVTec LOCO).

    Raises :class:`~tabad.errors.DataError` when the folder holds no mask,
    a mask cannot be read, or the masks differ in size.
    """
    folder = Path(folder)
    files = _image_files(folder)
    if not files:
        raise DataError(folder, f"mask folder holds no mask images (looked for *.<{_EXTS}>)")
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


# --------------------------------------------------------------------------- detection helpers


def _entry_names(folder: Path) -> set[str]:
    try:
        return {p.name for p in folder.iterdir()}
    except OSError:
        return set()


def is_dagm_class(folder: Path) -> bool:
    """``Train/`` and ``Test/`` with that exact case (DAGM 2007 class folder)."""
    names = _entry_names(folder)
    return "Train" in names and "Test" in names and (folder / "Train").is_dir() and (folder / "Test").is_dir()


def _is_gt_name(path: Path) -> bool:
    return path.stem.endswith("_GT")


def looks_ksdd2(folder: Path) -> bool:
    return (folder / "test").is_dir() and any(
        _is_gt_name(f) for split in ("train", "test") for f in _image_files(folder / split)
    )


def is_visa_root(folder: Path) -> bool:
    return (folder / VISA_CSV).is_file()


def looks_loco(cat_dir: Path) -> bool:
    n_folders = n_files = 0
    for d in _visible_dirs(cat_dir / "ground_truth"):
        if d.name == NORMAL:
            continue
        n_folders += len(_visible_dirs(d))
        n_files += len(_image_files(d))
    return n_folders > n_files


def class_folders(root: Path) -> list[str]:
    """Subfolders of ``root`` holding image files directly (layout folders)."""
    return [d.name for d in _visible_dirs(root) if not (d / "train").is_dir() and _image_files(d)]


def looks_folders(folder: Path) -> bool:
    if (folder / "train").is_dir() or any((d / "train").is_dir() for d in _visible_dirs(folder)):
        return False
    return bool(_image_files(folder)) or bool(class_folders(folder))


def detect_before_mvtec(folder: Path) -> str | None:
    """Layouts that must be tested before the MVTec family (cheap checks)."""
    if is_visa_root(folder):
        return "visa"
    if is_dagm_class(folder):
        return "dagm"
    if (folder / "train" / "ok").is_dir():
        return "btad"
    if (folder / "train" / NORMAL).is_dir() and not (folder / "train" / NORMAL / "rgb").is_dir() and looks_loco(folder):
        return "loco"
    return None


def detect_after_mvtec(folder: Path) -> str | None:
    """Layouts tested when no MVTec-family layout matched."""
    if (folder / "train").is_dir() and looks_ksdd2(folder):
        return "ksdd2"
    if looks_folders(folder):
        return "folders"
    return None


# --------------------------------------------------------------------------- dispatch (from readers)


def resolve(root: Path, category: str | None, layout: str, category_dir) -> tuple[str, Path, str, str] | None:
    """``(layout, folder, category, hint)`` when a layout of this module reads the request.

    ``None`` hands the request back to the MVTec readers (which then raise
    their own errors for a missing root or category). ``category_dir`` is
    ``readers._category_dir``.
    """
    from tabad.datasets.readers import MVTEC_LAYOUTS, detect_layout

    if layout in MVTEC_LAYOUTS:
        return None
    if not root.is_dir():
        if layout == "auto":
            return None
        raise DataError(root, "dataset folder does not exist" if not root.exists() else "is not a folder")
    if layout in ("auto", "visa"):
        if is_visa_root(root):
            if category is None:
                objects = ", ".join(_visa_objects(root)) or "none"
                raise DataError(root, f"a VisA root holds several objects; name one (objects: {objects})")
            return "visa", root, category, ""
        if is_visa_root(root.parent) and category in (None, root.name):
            return "visa", root.parent, root.name, ""
        if layout == "visa":
            raise DataError(root / VISA_CSV, "VisA split file missing (layout 'visa' reads split_csv/1cls.csv)")
    if category == KSDD2_CATEGORY and not (root / category).is_dir() and (
        layout == "ksdd2" or looks_ksdd2(root)
    ):
        category = None
    if layout == "folders" and category is None and not _image_files(root) and class_folders(root):
        names = ", ".join(class_folders(root))
        raise DataError(root, f"this root holds several classes; name one (classes: {names})")
    cat_dir, name = category_dir(root, category)
    try:
        detected = detect_layout(cat_dir)
    except DataError:
        detected = None
    if layout == "auto":
        if detected not in PUBLISHED_LAYOUTS:
            return None
        layout = detected
    if layout == "visa":  # detected on a category folder only through its parent
        return "visa", cat_dir.parent, name, ""
    if layout == "ksdd2":
        name = KSDD2_CATEGORY
    if layout == "folders" and detected == "folders" and not _image_files(cat_dir) and class_folders(cat_dir):
        names = ", ".join(class_folders(cat_dir))
        raise DataError(cat_dir, f"this root holds several classes; name one (classes: {names})")
    hint = ""
    if detected is not None and detected != layout:
        hint = f" [the folder looks like layout {detected!r}, but layout {layout!r} was requested]"
    return layout, cat_dir, name, hint


def read(layout: str, folder: Path, category: str, hint: str, skip_bad: bool, check_files: bool,
         include_validation: bool) -> CategoryData:
    reader = {
        "btad": _read_btad,
        "ksdd2": _read_ksdd2,
        "visa": _read_visa,
        "loco": _read_loco,
        "dagm": _read_dagm,
        "folders": _read_folders,
    }[layout]
    return reader(folder, category, hint, skip_bad, check_files, include_validation)


def list_published(root: Path, layout: str) -> list[str] | None:
    """Categories for the root-level layouts; ``None`` to use the generic rules."""
    if layout in ("auto", "visa") and is_visa_root(root):
        return _visa_objects(root)
    if layout == "visa":
        raise DataError(root / VISA_CSV, "VisA split file missing (layout 'visa' reads split_csv/1cls.csv)")
    if layout == "ksdd2" or (layout == "auto" and (root / "train").is_dir() and looks_ksdd2(root)):
        return [KSDD2_CATEGORY]
    if layout == "folders":
        if (root / "train").is_dir():
            return None
        if _image_files(root):
            return [root.name]
        return class_folders(root) or None
    return None


# --------------------------------------------------------------------------- shared steps


def _require_dir(folder: Path, what: str, hint: str) -> None:
    if not folder.is_dir():
        raise DataError(folder, f"{what}{hint}")


def _pick(candidates: list[Path], image: Path) -> list[Path]:
    if len(candidates) > 1:
        same_ext = [m for m in candidates if m.suffix.lower() == image.suffix.lower()]
        if len(same_ext) == 1:
            return same_ext
    return candidates


def _pair_by_key(images: list[Path], masks: list[Path], key_of_mask, key_of_image, mask_dir: Path,
                 image_dir: Path, mask_pattern: str, problems: list) -> dict[Path, Path]:
    """Map image -> its one mask; record missing, ambiguous and orphan masks in ``problems``."""
    by_key: dict[str, list[Path]] = defaultdict(list)
    for m in masks:
        by_key[key_of_mask(m)].append(m)
    pairs: dict[Path, Path] = {}
    wanted: set[str] = set()
    for image in images:
        key = key_of_image(image)
        wanted.add(key)
        candidates = _pick(by_key.get(key, []), image)
        if not candidates:
            continue
        if len(candidates) > 1:
            names = ", ".join(m.name for m in candidates)
            problems.append((image, f"several masks match this image in {mask_dir}: {names}"))
            pairs[image] = None  # type: ignore[assignment]  # marks "ambiguous"
        else:
            pairs[image] = candidates[0]
    for m in masks:
        key = key_of_mask(m)
        if key not in wanted:
            problems.append((m, f"mask without image: no image {image_dir / key}.<{_EXTS}> ({mask_pattern})"))
    return pairs


def _decode_labels(pairs: list[tuple[Path, Path]]) -> list[bool | DataError]:
    def one(pair):
        try:
            return bool(load_mask(pair[1]).any())
        except DataError as e:
            return e

    if len(pairs) < _PARALLEL_MIN:
        return [one(p) for p in pairs]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(one, pairs))


# --------------------------------------------------------------------------- btad and loco (MVTec-like)


def _read_mvtec_like(cat_dir: Path, category: str, hint: str, skip_bad: bool, check_files: bool,
                     include_validation: bool, layout: str, normal: str) -> CategoryData:
    problems: list[tuple[Path, str]] = []
    train_dir = cat_dir / "train" / normal
    _require_dir(train_dir, f"training folder missing (layout {layout!r} keeps normal training images here)", hint)
    train = [Sample(p, category, 0, NORMAL, None, "train") for p in _image_files(train_dir)]
    if not train:
        raise DataError(train_dir, f"no training images (looked for *.<{_EXTS}>){hint}")
    if include_validation:
        val_dir = cat_dir / "validation" / normal
        _require_dir(val_dir, "validation folder missing (include_validation=True)", hint)
        train += [Sample(p, category, 0, NORMAL, None, "validation") for p in _image_files(val_dir)]
    test_dir = cat_dir / "test"
    _require_dir(test_dir, "test folder missing", hint)
    gt_root = cat_dir / "ground_truth"
    has_gt = gt_root.is_dir()
    test: list[Sample] = []
    n_found = 0
    for defect_dir in _visible_dirs(test_dir):
        defect = defect_dir.name
        images = _image_files(defect_dir)
        n_found += len(images)
        if defect == normal or not has_gt:
            label = 0 if defect == normal else 1
            test += [Sample(p, category, label, NORMAL if label == 0 else defect, None, "test") for p in images]
            continue
        mask_dir = gt_root / defect
        if layout == "loco":
            folders = _visible_dirs(mask_dir)
            for f in folders:
                if not _image_files(f):
                    problems.append((f, f"mask folder holds no mask images (looked for *.<{_EXTS}>)"))
            masks = [f for f in folders if _image_files(f)]
            key_of_mask = lambda m: m.name  # noqa: E731
            pattern, looked = "masks are ground_truth/<defect>/<image stem>/*.png", "{}/"
        else:
            masks = _image_files(mask_dir)
            key_of_mask = lambda m: m.stem  # noqa: E731
            pattern, looked = "masks are ground_truth/<defect>/<image stem>.<ext>", "{}.<" + _EXTS + ">"
        pairs = _pair_by_key(images, masks, key_of_mask, lambda p: p.stem, mask_dir, defect_dir, pattern, problems)
        empty = {f.name for f in _visible_dirs(mask_dir)} if layout == "loco" else set()
        for image in images:
            if image not in pairs:
                if image.stem in empty:
                    continue  # already reported as an empty mask folder
                what = "mask folder" if layout == "loco" else "mask"
                where = looked.format(mask_dir / image.stem)
                problems.append((image, f"anomalous test image has no {what}: looked for {where}"))
            elif pairs[image] is not None:
                test.append(Sample(image, category, 1, defect, pairs[image], "test"))
    if has_gt:
        for gt_dir in _visible_dirs(gt_root):
            if gt_dir.name == NORMAL or gt_dir.name == normal or (test_dir / gt_dir.name).is_dir():
                continue
            orphans = _visible_dirs(gt_dir) if layout == "loco" else _image_files(gt_dir)
            problems += [(m, f"mask without image: there is no test folder {test_dir / gt_dir.name}") for m in orphans]
    if n_found == 0:
        raise DataError(test_dir, f"no test images (looked for {test_dir}/<defect>/*.<{_EXTS}>){hint}")
    return _finish_category(root=cat_dir.parent, cat_dir=cat_dir, category=category, layout=layout, train=train, test=test,
                   problems=problems, excluded=[], skip_bad=skip_bad, check_files=check_files, hint=hint,
                   train_dir=train_dir, test_dir=test_dir)


def _read_btad(cat_dir, category, hint, skip_bad, check_files, include_validation):
    return _read_mvtec_like(cat_dir, category, hint, skip_bad, check_files, include_validation, "btad", "ok")


def _read_loco(cat_dir, category, hint, skip_bad, check_files, include_validation):
    return _read_mvtec_like(cat_dir, category, hint, skip_bad, check_files, include_validation, "loco", NORMAL)


# --------------------------------------------------------------------------- ksdd2 and dagm (label from the mask)


def _read_label_from_mask(cat_dir: Path, category: str, hint: str, skip_bad: bool, check_files: bool,
                          layout: str) -> CategoryData:
    problems: list[tuple[Path, str]] = []
    excluded: list[tuple[Path, str]] = []
    splits = {"train": "Train", "test": "Test"} if layout == "dagm" else {"train": "train", "test": "test"}
    out: dict[str, list[Sample]] = {"train": [], "test": []}
    for split, folder_name in splits.items():
        folder = cat_dir / folder_name
        _require_dir(folder, f"{split} folder missing (layout {layout!r} keeps {split} images in {folder_name}/)", hint)
        files = _image_files(folder)
        if layout == "ksdd2":
            images = [f for f in files if not _is_gt_name(f)]
            masks = [f for f in files if _is_gt_name(f)]
            mask_dir, pattern = folder, "masks are <image stem>_GT.png"
            key_of_mask = lambda m: m.stem[: -len("_GT")]  # noqa: E731
        else:
            images = files
            mask_dir, pattern = folder / "Label", "masks are Label/<image stem>_label.PNG"
            masks = _image_files(mask_dir)
            key_of_mask = lambda m: m.stem[: -len("_label")] if m.stem.endswith("_label") else m.stem  # noqa: E731
        if not images:
            raise DataError(folder, f"no {split} images (looked for *.<{_EXTS}>){hint}")
        pairs = _pair_by_key(images, masks, key_of_mask, lambda p: p.stem, mask_dir, folder, pattern, problems)
        if layout == "ksdd2":
            for image in images:
                if image not in pairs:
                    problems.append((image, f"image has no ground-truth mask: looked for "
                                            f"{folder / image.stem}_GT.<{_EXTS}>"))
            paired = [(i, m) for i, m in pairs.items() if m is not None]
            labelled: dict[Path, tuple[int, Path | None]] = {}
            if not skip_bad and problems:
                _raise_problems(problems, category, hint)
            for (image, mask), result in zip(paired, _decode_labels(paired)):
                if isinstance(result, DataError):
                    problems.append((result.path, result.problem))
                else:
                    labelled[image] = (int(result), mask if result else None)
        else:
            labelled = {i: (0, None) for i in images if i not in pairs}
            labelled.update({i: (1, m) for i, m in pairs.items() if m is not None})
        for image in images:
            if image not in labelled:
                continue
            label, mask = labelled[image]
            if split == "train" and label:
                excluded.append((image, EXCLUDED_REASON))
            elif split == "train":
                out["train"].append(Sample(image, category, 0, NORMAL, None, "train"))
            else:
                out["test"].append(Sample(image, category, label, "defect" if label else NORMAL, mask, "test"))
    train_dir = cat_dir / splits["train"]
    if not out["train"] and not problems:
        raise DataError(train_dir, f"no normal training images (all {len(excluded)} are defective){hint}")
    return _finish_category(root=cat_dir if layout == "ksdd2" else cat_dir.parent, cat_dir=cat_dir, category=category,
                   layout=layout, train=out["train"], test=out["test"], problems=problems, excluded=excluded,
                   skip_bad=skip_bad, check_files=check_files, hint=hint, train_dir=train_dir,
                   test_dir=cat_dir / splits["test"])


def _read_ksdd2(cat_dir, category, hint, skip_bad, check_files, include_validation):
    return _read_label_from_mask(cat_dir, KSDD2_CATEGORY, hint, skip_bad, check_files, "ksdd2")


def _read_dagm(cat_dir, category, hint, skip_bad, check_files, include_validation):
    return _read_label_from_mask(cat_dir, category, hint, skip_bad, check_files, "dagm")


# --------------------------------------------------------------------------- visa


def _visa_rows(root: Path) -> list[tuple[int, dict[str, str]]]:
    path = root / VISA_CSV
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in VISA_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(path, f"missing column(s) {', '.join(missing)}; expected {','.join(VISA_COLUMNS)}")
            return [(n, {k: (v or "").strip() for k, v in row.items() if k}) for n, row in enumerate(reader, start=2)]
    except OSError as e:
        raise DataError(path, f"cannot read VisA split file ({e})") from None


def _visa_objects(root: Path) -> list[str]:
    return sorted({row["object"] for _, row in _visa_rows(root) if row["object"]}, key=_natural_key)


def _read_visa(root: Path, category: str, hint: str, skip_bad: bool, check_files: bool,
               include_validation: bool) -> CategoryData:
    csv_path = root / VISA_CSV
    rows = [(n, r) for n, r in _visa_rows(root) if r["object"] == category]
    if not rows:
        objects = ", ".join(_visa_objects(root)) or "none"
        raise DataError(root / category, f"category not listed in {csv_path} (objects: {objects}){hint}")
    problems: list[tuple[Path, str]] = []
    excluded: list[tuple[Path, str]] = []
    train: list[Sample] = []
    test: list[Sample] = []
    referenced_masks: set[Path] = set()
    for n, row in rows:
        split, label_name = row["split"].lower(), row["label"].lower()
        if split not in ("train", "test"):
            raise DataError(csv_path, f"line {n}: split {row['split']!r} is neither train nor test")
        if label_name not in ("normal", "anomaly"):
            raise DataError(csv_path, f"line {n}: label {row['label']!r} is neither normal nor anomaly")
        if not row["image"]:
            raise DataError(csv_path, f"line {n}: empty image path")
        image = root / row["image"]
        mask = root / row["mask"] if row["mask"] else None
        if mask is not None:
            referenced_masks.add(mask)
        label = int(label_name == "anomaly")
        if not image.is_file():
            problems.append((image, f"image listed in {csv_path} (line {n}) does not exist"
                                    + (f"; its mask {mask} has no image" if mask is not None else "")))
            continue
        if split == "train":
            if label:
                excluded.append((image, EXCLUDED_REASON))
            else:
                train.append(Sample(image, category, 0, NORMAL, None, "train"))
            continue
        if label and mask is None:
            problems.append((image, f"anomalous test image has no mask in {csv_path} (line {n})"))
            continue
        if label and not mask.is_file():
            problems.append((image, f"anomalous test image has no mask: {mask} (listed in {csv_path} line {n}) "
                                    "does not exist"))
            continue
        test.append(Sample(image, category, label, "anomaly" if label else NORMAL, mask if label else None, "test"))
    for mask_dir in sorted({m.parent for m in referenced_masks}):
        for m in _image_files(mask_dir):
            if m not in referenced_masks:
                problems.append((m, f"mask without image: no row of {csv_path} names this mask"))
    if not train and not problems:
        raise DataError(csv_path, f"no normal training images for {category!r}{hint}")
    if not test and not problems:
        raise DataError(csv_path, f"no test images for {category!r}{hint}")
    return _finish_category(root=root, cat_dir=root / category, category=category, layout="visa", train=train, test=test,
                   problems=problems, excluded=excluded, skip_bad=skip_bad, check_files=check_files, hint=hint,
                   train_dir=csv_path, test_dir=csv_path)


# --------------------------------------------------------------------------- folders


def _read_folders(cat_dir: Path, category: str, hint: str, skip_bad: bool, check_files: bool,
                  include_validation: bool) -> CategoryData:
    train = [Sample(p, category, 0, NORMAL, None, "train") for p in _image_files(cat_dir)]
    if not train:
        raise DataError(cat_dir, f"no images directly in this class folder (looked for *.<{_EXTS}>){hint}")
    return _finish_category(root=cat_dir.parent, cat_dir=cat_dir, category=category, layout="folders", train=train, test=[],
                   problems=[], excluded=[], skip_bad=skip_bad, check_files=check_files, hint=hint,
                   train_dir=cat_dir, test_dir=None)


__all__ = ["EXCLUDED_REASON", "PUBLISHED_LAYOUTS", "ROOT_LAYOUTS", "load_mask_folder"]
