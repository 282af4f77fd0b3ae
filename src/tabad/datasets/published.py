"""Readers for published anomaly-detection datasets that are not MVTec-shaped.

:func:`tabad.datasets.readers.read_category`, ``list_categories`` and
``detect_layout`` dispatch here through the :class:`~tabad.datasets.reading.Layout`
values at the end of this module (:data:`BTAD`, :data:`KSDD2`, ...); call those
functions, not the ones below. Every reader returns the same
:class:`~tabad.datasets.sample.CategoryData` as the MVTec readers
(:mod:`tabad.datasets.mvtec`) and shares their rules: natural sort order, hidden
files and foreign extensions ignored, masks binarised by
:func:`~tabad.datasets.images.load_mask` (any nonzero pixel), label 0 and
``defect_type "good"`` for normal images, ``check_files`` decodes every image
and mask once, per-file problems raise unless ``skip_bad`` (then they are
dropped, listed in ``CategoryData.skipped`` and in one
:class:`~tabad.datasets.reading.SkippedFilesWarning`).

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
  a folder (:func:`~tabad.datasets.images.load_mask_folder`).

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
  class folder are read; a root holding several class folders needs a category.

MPDD and MIAD need no reader of their own: they are MVTec-shaped
(``ground_truth/<defect>/<stem>_mask.<ext>``) and the ``"mvtec"`` reader
matches masks by stem in any image extension (``.png``, ``.jpg``, ...), so
no configurable image/mask extension is needed; ``"mvtec-stem"`` covers
masks named exactly like their images.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from functools import partial
from pathlib import Path

from tabad.datasets.images import load_mask
from tabad.datasets.listing import EXTENSIONS_TEXT, image_files, natural_key, visible_dirs
from tabad.datasets.reading import Layout, ReadOptions, finish_category, parallel_map, raise_problems
from tabad.datasets.sample import NORMAL, CategoryData, Sample
from tabad.errors import DataError

#: Layouts read by this module (the MVTec family lives in :mod:`tabad.datasets.mvtec`).
PUBLISHED_LAYOUTS = ("btad", "ksdd2", "visa", "loco", "dagm", "folders")
#: ``CategoryData.skipped`` reason for anomalous training images left out.
EXCLUDED_REASON = "defective training image excluded (unsupervised protocol)"
KSDD2_CATEGORY = "ksdd2"
VISA_CSV = Path("split_csv") / "1cls.csv"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")


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
        _is_gt_name(f) for split in ("train", "test") for f in image_files(folder / split)
    )


def is_visa_root(folder: Path) -> bool:
    return (folder / VISA_CSV).is_file()


def looks_loco(cat_dir: Path) -> bool:
    n_folders = n_files = 0
    for d in visible_dirs(cat_dir / "ground_truth"):
        if d.name == NORMAL:
            continue
        n_folders += len(visible_dirs(d))
        n_files += len(image_files(d))
    return n_folders > n_files


def class_folders(root: Path) -> list[str]:
    """Subfolders of ``root`` holding image files directly (layout folders)."""
    return [d.name for d in visible_dirs(root) if not (d / "train").is_dir() and image_files(d)]


def looks_folders(folder: Path) -> bool:
    if (folder / "train").is_dir() or any((d / "train").is_dir() for d in visible_dirs(folder)):
        return False
    return bool(image_files(folder)) or bool(class_folders(folder))


def _is_btad(folder: Path) -> bool:
    return (folder / "train" / "ok").is_dir()


def _is_ksdd2(folder: Path) -> bool:
    return (folder / "train").is_dir() and looks_ksdd2(folder)


def _is_loco(folder: Path) -> bool:
    # train/good/rgb/ is mvtec3d's, whose gt/ folders must not be taken for LOCO's mask folders.
    train = folder / "train" / NORMAL
    return train.is_dir() and not (train / "rgb").is_dir() and looks_loco(folder)


# --------------------------------------------------------------------------- layouts spanning a root


def _missing_visa_csv(root: Path) -> DataError:
    return DataError(root / VISA_CSV, "VisA split file missing (layout 'visa' reads split_csv/1cls.csv)")


def _visa_root_categories(root: Path, forced: bool) -> list[str] | None:
    """A VisA root's categories are the ``object`` values of its split file."""
    if is_visa_root(root):
        return _visa_objects(root)
    if forced:
        raise _missing_visa_csv(root)
    return None


def _locate_visa(root: Path, category: str | None, forced: bool) -> tuple[Path, str] | None:
    """VisA's categories are csv rows, not folders: read ``(visa root, object)``."""
    if is_visa_root(root):
        if category is None:
            objects = ", ".join(_visa_objects(root)) or "none"
            raise DataError(root, f"a VisA root holds several objects; name one (objects: {objects})")
        return root, category
    if is_visa_root(root.parent) and category in (None, root.name):
        return root.parent, root.name  # an object's folder inside a VisA root
    if forced:
        raise _missing_visa_csv(root)
    return None


def _ksdd2_root_categories(root: Path, forced: bool) -> list[str] | None:
    """A KSDD2 root is one category, always named :data:`KSDD2_CATEGORY`."""
    return [KSDD2_CATEGORY] if forced or _is_ksdd2(root) else None


def _locate_ksdd2(root: Path, category: str | None, forced: bool) -> tuple[Path, str] | None:
    """``read_category(ksdd2_root, "ksdd2")``: the category name is not a folder of the root."""
    if category == KSDD2_CATEGORY and not (root / category).is_dir() and (forced or _is_ksdd2(root)):
        return root, KSDD2_CATEGORY
    return None


def _folders_root_categories(root: Path, forced: bool) -> list[str] | None:
    """The root itself when it holds images, else its class folders."""
    if forced:
        if (root / "train").is_dir():
            return None
        if image_files(root):
            return [root.name]
        return class_folders(root) or None
    if not looks_folders(root):
        return None
    return [root.name] if image_files(root) else class_folders(root)


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
            problems.append((m, f"mask without image: no image {image_dir / key}.<{EXTENSIONS_TEXT}> ({mask_pattern})"))
    return pairs


def _decode_labels(pairs: list[tuple[Path, Path]]) -> list[bool | DataError]:
    def one(pair):
        try:
            return bool(load_mask(pair[1]).any())
        except DataError as e:
            return e

    return parallel_map(one, pairs)


# --------------------------------------------------------------------------- btad and loco (MVTec-like)


def _read_mvtec_like(cat_dir: Path, category: str, hint: str, options: ReadOptions, layout: str,
                     normal: str) -> CategoryData:
    problems: list[tuple[Path, str]] = []
    train_dir = cat_dir / "train" / normal
    _require_dir(train_dir, f"training folder missing (layout {layout!r} keeps normal training images here)", hint)
    train = [Sample(p, category, 0, NORMAL, None, "train") for p in image_files(train_dir)]
    if not train:
        raise DataError(train_dir, f"no training images (looked for *.<{EXTENSIONS_TEXT}>){hint}")
    if options.include_validation:
        val_dir = cat_dir / "validation" / normal
        _require_dir(val_dir, "validation folder missing (include_validation=True)", hint)
        train += [Sample(p, category, 0, NORMAL, None, "validation") for p in image_files(val_dir)]
    test_dir = cat_dir / "test"
    _require_dir(test_dir, "test folder missing", hint)
    gt_root = cat_dir / "ground_truth"
    has_gt = gt_root.is_dir()
    test: list[Sample] = []
    n_found = 0
    for defect_dir in visible_dirs(test_dir):
        defect = defect_dir.name
        images = image_files(defect_dir)
        n_found += len(images)
        if defect == normal or not has_gt:
            label = 0 if defect == normal else 1
            test += [Sample(p, category, label, NORMAL if label == 0 else defect, None, "test") for p in images]
            continue
        mask_dir = gt_root / defect
        if layout == "loco":
            folders = visible_dirs(mask_dir)
            for f in folders:
                if not image_files(f):
                    problems.append((f, f"mask folder holds no mask images (looked for *.<{EXTENSIONS_TEXT}>)"))
            masks = [f for f in folders if image_files(f)]
            key_of_mask = lambda m: m.name  # noqa: E731
            pattern, looked = "masks are ground_truth/<defect>/<image stem>/*.png", "{}/"
        else:
            masks = image_files(mask_dir)
            key_of_mask = lambda m: m.stem  # noqa: E731
            pattern, looked = "masks are ground_truth/<defect>/<image stem>.<ext>", "{}.<" + EXTENSIONS_TEXT + ">"
        pairs = _pair_by_key(images, masks, key_of_mask, lambda p: p.stem, mask_dir, defect_dir, pattern, problems)
        empty = {f.name for f in visible_dirs(mask_dir)} if layout == "loco" else set()
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
        for gt_dir in visible_dirs(gt_root):
            if gt_dir.name == NORMAL or gt_dir.name == normal or (test_dir / gt_dir.name).is_dir():
                continue
            orphans = visible_dirs(gt_dir) if layout == "loco" else image_files(gt_dir)
            problems += [(m, f"mask without image: there is no test folder {test_dir / gt_dir.name}") for m in orphans]
    if n_found == 0:
        raise DataError(test_dir, f"no test images (looked for {test_dir}/<defect>/*.<{EXTENSIONS_TEXT}>){hint}")
    return finish_category(root=cat_dir.parent, cat_dir=cat_dir, category=category, layout=layout, train=train,
                           test=test, problems=problems, excluded=[], options=options, hint=hint,
                           train_dir=train_dir, test_dir=test_dir)




# --------------------------------------------------------------------------- ksdd2 and dagm (label from the mask)


def _read_label_from_mask(cat_dir: Path, category: str, hint: str, options: ReadOptions,
                          layout: str) -> CategoryData:
    problems: list[tuple[Path, str]] = []
    excluded: list[tuple[Path, str]] = []
    splits = {"train": "Train", "test": "Test"} if layout == "dagm" else {"train": "train", "test": "test"}
    out: dict[str, list[Sample]] = {"train": [], "test": []}
    for split, folder_name in splits.items():
        folder = cat_dir / folder_name
        _require_dir(folder, f"{split} folder missing (layout {layout!r} keeps {split} images in {folder_name}/)", hint)
        files = image_files(folder)
        if layout == "ksdd2":
            images = [f for f in files if not _is_gt_name(f)]
            masks = [f for f in files if _is_gt_name(f)]
            mask_dir, pattern = folder, "masks are <image stem>_GT.png"
            key_of_mask = lambda m: m.stem[: -len("_GT")]  # noqa: E731
        else:
            images = files
            mask_dir, pattern = folder / "Label", "masks are Label/<image stem>_label.PNG"
            masks = image_files(mask_dir)
            key_of_mask = lambda m: m.stem[: -len("_label")] if m.stem.endswith("_label") else m.stem  # noqa: E731
        if not images:
            raise DataError(folder, f"no {split} images (looked for *.<{EXTENSIONS_TEXT}>){hint}")
        pairs = _pair_by_key(images, masks, key_of_mask, lambda p: p.stem, mask_dir, folder, pattern, problems)
        if layout == "ksdd2":
            for image in images:
                if image not in pairs:
                    problems.append((image, f"image has no ground-truth mask: looked for "
                                            f"{folder / image.stem}_GT.<{EXTENSIONS_TEXT}>"))
            paired = [(i, m) for i, m in pairs.items() if m is not None]
            labelled: dict[Path, tuple[int, Path | None]] = {}
            if not options.skip_bad and problems:
                raise_problems(problems, category, hint)
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
    return finish_category(root=cat_dir if layout == "ksdd2" else cat_dir.parent, cat_dir=cat_dir,
                           category=category, layout=layout, train=out["train"], test=out["test"],
                           problems=problems, excluded=excluded, options=options, hint=hint,
                           train_dir=train_dir, test_dir=cat_dir / splits["test"])


def _read_ksdd2(cat_dir: Path, category: str, hint: str, options: ReadOptions) -> CategoryData:
    # KSDD2 is one category whatever its folder is called.
    return _read_label_from_mask(cat_dir, KSDD2_CATEGORY, hint, options, "ksdd2")


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
    return sorted({row["object"] for _, row in _visa_rows(root) if row["object"]}, key=natural_key)


def _read_visa(root: Path, category: str, hint: str, options: ReadOptions) -> CategoryData:
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
        for m in image_files(mask_dir):
            if m not in referenced_masks:
                problems.append((m, f"mask without image: no row of {csv_path} names this mask"))
    if not train and not problems:
        raise DataError(csv_path, f"no normal training images for {category!r}{hint}")
    if not test and not problems:
        raise DataError(csv_path, f"no test images for {category!r}{hint}")
    return finish_category(root=root, cat_dir=root / category, category=category, layout="visa", train=train,
                           test=test, problems=problems, excluded=excluded, options=options, hint=hint,
                           train_dir=csv_path, test_dir=csv_path)


# --------------------------------------------------------------------------- folders


def _read_folders(cat_dir: Path, category: str, hint: str, options: ReadOptions) -> CategoryData:
    train = [Sample(p, category, 0, NORMAL, None, "train") for p in image_files(cat_dir)]
    if not train and class_folders(cat_dir):
        names = ", ".join(class_folders(cat_dir))
        raise DataError(cat_dir, f"this root holds several classes; name one (classes: {names})")
    if not train:
        raise DataError(cat_dir, f"no images directly in this class folder (looked for *.<{EXTENSIONS_TEXT}>){hint}")
    return finish_category(root=cat_dir.parent, cat_dir=cat_dir, category=category, layout="folders", train=train,
                           test=[], problems=[], excluded=[], options=options, hint=hint,
                           train_dir=cat_dir, test_dir=None)


# --------------------------------------------------------------------------- the layouts


BTAD = Layout(
    name="btad",
    looks_for="train/ok/ (layout btad)",
    detect=_is_btad,
    read=partial(_read_mvtec_like, layout="btad", normal="ok"),
)
KSDD2 = Layout(
    name="ksdd2",
    looks_for="train/ holding NNNNN.png with NNNNN_GT.png (layout ksdd2)",
    detect=_is_ksdd2,
    read=_read_ksdd2,
    list_root=_ksdd2_root_categories,
    locate=_locate_ksdd2,
)
VISA = Layout(
    name="visa",
    looks_for="split_csv/1cls.csv (layout visa)",
    detect=is_visa_root,
    read=_read_visa,
    is_category=None,  # objects are rows of the split file, not folders
    list_root=_visa_root_categories,
    locate=_locate_visa,
)
LOCO = Layout(
    name="loco",
    looks_for="train/good/ with ground_truth/<defect>/<stem>/ mask folders (layout loco)",
    detect=_is_loco,
    read=partial(_read_mvtec_like, layout="loco", normal=NORMAL),
)
DAGM = Layout(
    name="dagm",
    looks_for="Train/ and Test/ (layout dagm, a DAGM ClassN folder)",
    detect=is_dagm_class,
    read=partial(_read_label_from_mask, layout="dagm"),
    is_category=is_dagm_class,
)
FOLDERS = Layout(
    name="folders",
    looks_for="image files directly in the folder or in its subfolders, no train/ (layout folders)",
    detect=looks_folders,
    read=_read_folders,
    is_category=None,  # a class folder is recognised only where no category folder is found
    list_root=_folders_root_categories,
    catch_all=True,
)
