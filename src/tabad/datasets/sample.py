"""Typed records for one image and for one category of a dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: ``defect_type`` of every normal sample, whatever its dataset calls them (BTAD's ``ok``
#: becomes ``good``); also the name of the normal-image folders of the MVTec-like layouts.
NORMAL = "good"


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    ``label`` is 0 for normal and 1 for anomalous. ``defect_type`` is
    ``"good"`` for normal images. ``mask_path`` is ``None`` for normal images
    and for datasets without pixel annotations; an all-zero mask is implied.
    """

    image_path: Path
    category: str
    label: int
    defect_type: str
    mask_path: Path | None = None
    split: str = "test"


@dataclass
class CategoryData:
    """The train and test samples of one category, as read from disk.

    ``skipped`` lists ``(path, reason)`` for every file left out under
    ``skip_bad``; it is empty otherwise (problems raise instead).
    """

    root: Path
    category: str
    layout: str
    train: list[Sample]
    test: list[Sample]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def has_masks(self) -> bool:
        """True when the anomalous test images carry pixel masks."""
        return any(s.mask_path is not None for s in self.test if s.label == 1)

    @property
    def n_test_anomalous(self) -> int:
        return sum(s.label for s in self.test)
