"""What every layout reader shares: the :class:`Layout` protocol and the common end of a read.

A layout module (:mod:`tabad.datasets.mvtec`, :mod:`tabad.datasets.published`) describes each
layout it reads as a :class:`Layout` value; :mod:`tabad.datasets.layouts` names them, and
:mod:`tabad.datasets.readers` dispatches to them. Layout modules import this module and never
the dispatcher, which keeps the dependencies one-way.

Every reader ends in :func:`finish_category`, so all layouts report problems alike: pairing
problems (a mask without its image, ...) are raised before anything is decoded; with
``check_files`` every image and mask is decoded once, in threads; unless ``skip_bad`` the first
problem raises a :class:`~tabad.errors.DataError` that also lists the next ones; with it, bad
samples are dropped, listed in ``CategoryData.skipped`` and in one :class:`SkippedFilesWarning`.
"""

from __future__ import annotations

import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from tabad.datasets.images import load_image, load_mask
from tabad.datasets.sample import CategoryData, Sample
from tabad.errors import DataError

#: Below this many files, starting threads costs more than it saves.
PARALLEL_MIN = 16

T = TypeVar("T")
R = TypeVar("R")
Problem = tuple[Path, str]


class SkippedFilesWarning(UserWarning):
    """``read_category(skip_bad=True)`` left out files; the message lists them."""


@dataclass(frozen=True)
class ReadOptions:
    """The caller's choices that every layout reader honours (see ``read_category``)."""

    skip_bad: bool = False
    check_files: bool = True
    include_validation: bool = False


def has_train_folder(folder: Path) -> bool:
    """The usual mark of a category folder: a ``train/`` subfolder."""
    return (folder / "train").is_dir()


@dataclass(frozen=True)
class Layout:
    """How one folder layout is recognised and read.

    Required:

    * ``name``: what users pass as ``layout=`` (and ``--layout``);
    * ``looks_for``: what :attr:`detect` checks, in words, for "not recognised" errors, ending in
      ``(layout <name>)``;
    * ``detect(folder)``: is ``folder`` a category of this layout? Detection tries layouts in
      :data:`tabad.datasets.layouts.DETECTION_ORDER`, so a check may rely on earlier layouts having
      said no (``mvtec`` only runs after ``mvtec3d``);
    * ``read(folder, category, hint, options)``: the samples of the category in ``folder``. ``hint``
      (empty, or a note that the folder looks like another layout) ends every error message.
      Finish with :func:`finish_category`.

    Optional, with defaults that suit a layout whose categories are folders:

    * ``is_category(folder)``: cheap test used by ``list_categories`` to find category folders in a
      root (default: a ``train/`` subfolder; ``None`` for layouts whose categories are not folders);
    * ``list_root(root, forced)``: for layouts that span a whole dataset root (VisA's csv, KSDD2,
      class folders), the categories of ``root`` or ``None`` when ``root`` is not such a root;
      ``forced`` is true when the user asked for this layout (the function may then raise);
    * ``locate(root, category, forced)``: same kind of layout, for ``read_category``: the folder
      to read and the category name, or ``None`` to read ``root/category`` as usual;
    * ``reads_like(folder, detected)``: whether forcing this layout on a folder detected as
      ``detected`` reads it just the same, so no hint is needed (default: same name);
    * ``catch_all``: the layout accepts almost any folder of images, so when listing a root it is
      tried only after category folders were looked for.
    """

    name: str
    looks_for: str
    detect: Callable[[Path], bool]
    read: Callable[[Path, str, str, ReadOptions], CategoryData]
    is_category: Callable[[Path], bool] | None = has_train_folder
    list_root: Callable[[Path, bool], list[str] | None] | None = None
    locate: Callable[[Path, str | None, bool], tuple[Path, str] | None] | None = None
    reads_like: Callable[[Path, str], bool] | None = None
    catch_all: bool = False

    def same_reading(self, folder: Path, detected: str) -> bool:
        """True when forcing this layout on ``folder``, detected as ``detected``, needs no hint."""
        if self.reads_like is not None:
            return self.reads_like(folder, detected)
        return detected == self.name


# --------------------------------------------------------------------------- the common end


def parallel_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]``, in threads when there are enough items to gain from it.

    PIL and numpy release the GIL while decoding, so threads give a real speed-up on image files.
    """
    items = list(items)
    if len(items) < PARALLEL_MIN:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(fn, items))


def check_sample(sample: Sample) -> list[Problem]:
    """Decode a sample's image and mask once; return its problems (empty when it is fine)."""
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


def raise_problems(problems: list[Problem], category: str, hint: str) -> None:
    """Raise the first problem as a :class:`DataError` naming its file; the message lists up to 5 more."""
    path, reason = problems[0]
    message = reason
    rest = problems[1:]
    if rest:
        listed = "; ".join(f"{p}: {r}" for p, r in rest[:5])
        message += f" (and {len(rest)} more problem(s) in category {category!r}: {listed}"
        message += " ...)" if len(rest) > 5 else ")"
    message += f"{hint}; pass skip_bad=True to leave bad files out"
    raise DataError(path, message, option="skip_bad")


def _stacklevel_outside_datasets() -> int:
    """The ``stacklevel`` that makes a warning point at the first caller outside this package.

    Readers call each other through a varying number of frames, so a fixed stacklevel would
    point at different places for different layouts.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here:
        frame, level = frame.f_back, level + 1
    return level


def finish_category(*, root: Path, cat_dir: Path, category: str, layout: str, train: list[Sample],
                    test: list[Sample], problems: list[Problem], excluded: list[Problem], options: ReadOptions,
                    hint: str, train_dir: Path, test_dir: Path | None) -> CategoryData:
    """The end every reader shares: pairing problems, file checks, one warning, emptiness checks.

    ``excluded`` lists files left out by a dataset's protocol (e.g. defective KSDD2 training
    images): reported in ``skipped`` but not warned about. ``test_dir=None`` allows an empty
    test split (collections of normal images for pre-training).
    """
    # Pairing problems are cheap to find; report them before decoding anything.
    if problems and not options.skip_bad:
        raise_problems(problems, category, hint)
    if options.check_files:
        samples = train + test
        bad: set[int] = set()
        for i, found in enumerate(parallel_map(check_sample, samples)):
            if found:
                problems += found
                bad.add(i)
        if bad:
            n_train = len(train)
            train = [s for i, s in enumerate(train) if i not in bad]
            test = [s for i, s in enumerate(test, start=n_train) if i not in bad]
        if problems and not options.skip_bad:
            raise_problems(problems, category, hint)
    if problems:
        lines = "\n".join(f"  {p}: {r}" for p, r in problems)
        warnings.warn(f"category {category!r} ({cat_dir}): skipped {len(problems)} bad file(s):\n{lines}",
                      SkippedFilesWarning, stacklevel=_stacklevel_outside_datasets())
    if not train:
        raise DataError(train_dir, "no readable training images left after skipping bad files")
    if test_dir is not None and not test:
        raise DataError(test_dir, "no usable test images left after skipping bad files")
    return CategoryData(root=root, category=category, layout=layout, train=train, test=test,
                        skipped=list(excluded) + list(problems))
