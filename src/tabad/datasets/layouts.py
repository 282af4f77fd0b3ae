"""The folder layouts tabad reads: their names, the module reading each, the auto-detection order.

This is the one place that lists layouts. To add one, write its module (a
:class:`~tabad.datasets.reading.Layout` value saying how to detect and read it, see
:mod:`tabad.datasets.mvtec` for an example), then add an entry to :data:`REGISTRY` and its name
to :data:`DETECTION_ORDER` below. :func:`~tabad.datasets.readers.read_category`,
``list_categories``, ``detect_layout`` and the CLI's ``--layout`` choices and help all take
it from here.

Standard library only, and a layout's module is imported only when the layout is used (as
:data:`tabad.methods.REGISTRY` does for methods): the CLI builds its parser from this module
without importing numpy or PIL, so ``tabad --help`` stays instant.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from tabad.errors import TabadError

if TYPE_CHECKING:  # the real import would pull in numpy and PIL
    from tabad.datasets.reading import Layout


@dataclass(frozen=True)
class LayoutEntry:
    """One layout: its name, ``"module:attribute"`` of its :class:`Layout`, a line of help."""

    name: str
    reader: str
    summary: str


#: Every layout, in the order users see them (``--layout`` choices, help, error messages).
REGISTRY: tuple[LayoutEntry, ...] = (
    LayoutEntry("mvtec", "tabad.datasets.mvtec:MVTEC",
                "<cat>/train/good, <cat>/test/<defect>, <cat>/ground_truth/<defect>/<stem>_mask.png"),
    LayoutEntry("mvtec3d", "tabad.datasets.mvtec:MVTEC3D",
                "<cat>/train/good/rgb, <cat>/test/<defect>/rgb, masks in <cat>/test/<defect>/gt"),
    LayoutEntry("mvtec-stem", "tabad.datasets.mvtec:MVTEC_STEM",
                "like mvtec, but masks named <stem>.png (hazelnut toy, MPDD, MIAD and others)"),
    LayoutEntry("btad", "tabad.datasets.published:BTAD",
                "01|02|03/train/ok, test/ok|ko, ground_truth/ko (bmp or png, masks by stem)"),
    LayoutEntry("ksdd2", "tabad.datasets.published:KSDD2",
                "train|test/NNNNN.png + NNNNN_GT.png (defective train images are left out)"),
    LayoutEntry("visa", "tabad.datasets.published:VISA", "split_csv/1cls.csv (masks binarised with != 0)"),
    LayoutEntry("loco", "tabad.datasets.published:LOCO", "MVTec LOCO: a folder of masks per image, unioned"),
    LayoutEntry("dagm", "tabad.datasets.published:DAGM", "Class*/Train|Test with Label/NNNN_label.PNG"),
    LayoutEntry("folders", "tabad.datasets.published:FOLDERS",
                "<class>/*.png: class folders of normal images, no train/test split (for pretrain)"),
)

#: Every layout name, in :data:`REGISTRY` order.
ALL_LAYOUTS: tuple[str, ...] = tuple(e.name for e in REGISTRY)

#: The order in which auto-detection tries the layouts, on a category folder and on a dataset
#: root alike: specific signatures first (VisA's csv, DAGM's Train/ and Test/, BTAD's
#: train/ok/, LOCO's mask folders, MVTec 3D's train/good/rgb/), then the plain MVTec shapes,
#: then KSDD2's flat train/ and, last, any folder of images.
DETECTION_ORDER: tuple[str, ...] = ("visa", "dagm", "btad", "loco", "mvtec3d", "mvtec-stem", "mvtec", "ksdd2",
                                    "folders")


class LayoutError(TabadError, ValueError):
    """An unknown layout name was requested (not a problem with the data)."""


def check_layout_name(name: str) -> None:
    """Raise :class:`LayoutError` unless ``name`` is ``"auto"`` or a registered layout."""
    if name != "auto" and name not in ALL_LAYOUTS:
        raise LayoutError(f"unknown dataset layout {name!r}; expected 'auto' or one of {', '.join(ALL_LAYOUTS)}")


@lru_cache(maxsize=None)
def get_layout(name: str) -> "Layout":
    """The :class:`~tabad.datasets.reading.Layout` called ``name`` (imports its module)."""
    check_layout_name(name)
    if name == "auto":
        raise LayoutError("'auto' is not a layout; detect one with tabad.datasets.readers.detect_layout")
    (entry,) = (e for e in REGISTRY if e.name == name)
    module, attribute = entry.reader.split(":")
    layout = getattr(importlib.import_module(module), attribute)
    if layout.name != name:  # a copy-paste slip in REGISTRY would otherwise read the wrong layout
        raise LayoutError(f"{entry.reader} is layout {layout.name!r}, registered as {name!r}")
    return layout


def detection_order() -> list["Layout"]:
    """Every layout, in :data:`DETECTION_ORDER`."""
    return [get_layout(name) for name in DETECTION_ORDER]
