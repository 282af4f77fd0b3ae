"""RIAD-style grid masking, as in TAB's ``gen_mask`` (methods.md §6d).

The image is divided into square cells of ``cell`` px (16 at 224 px; by
default the cell scales with the image: ``round(16 * H / 224)``; the last
row / column of cells may be partial when the side is not a multiple). A
random permutation of the cells is split into ``groups`` (52) disjoint
groups and the cells of one randomly chosen group are set to ``fill`` (0,
black). The mask is exactly those cells.

Deviation from RIAD/TAB: they pad the permutation with dummy entries
(``-1``) up to a multiple of 52 and reshape row-wise, which leaves the last
groups made of padding only -- 3 of the 52 groups at 224 px would black out
nothing. Here the permutation is split with ``np.array_split`` instead, so
every group holds 3 or 4 cells at 224 px (196 cells / 52 groups) and the
mask is never empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tabad.anomalies.checks import check_image, check_others, check_rng, resolve_options


@dataclass(frozen=True)
class MaskOptions:
    """Options of :func:`grid_mask` (methods.md §6d).

    Attributes:
        cell: cell side in px; ``None`` scales 16 px at 224 with the image
            height: ``max(1, round(16 * H / 224))``.
        base_cell: the cell side at ``base_size`` (16).
        base_size: the image size ``base_cell`` refers to (224).
        groups: number of disjoint groups the cells are split into (52); one
            group is masked, so about ``cells / groups`` cells.
        fill: grey value written into the masked cells (0).
    """

    cell: int | None = None
    base_cell: int = 16
    base_size: int = 224
    groups: int = 52
    fill: int = 0

    def __post_init__(self):
        if self.cell is not None and int(self.cell) < 1:
            raise ValueError(f"cell must be >= 1 px, got {self.cell}")
        if int(self.base_cell) < 1 or int(self.base_size) < 1 or int(self.groups) < 1:
            raise ValueError("base_cell, base_size and groups must be >= 1")
        if not 0 <= int(self.fill) <= 255:
            raise ValueError(f"fill must be in [0, 255], got {self.fill}")

    def cell_size(self, height: int) -> int:
        if self.cell is not None:
            return int(self.cell)
        return max(1, int(round(self.base_cell * height / self.base_size)))


def grid_mask(
    image: np.ndarray, others: Sequence[np.ndarray], rng: np.random.Generator, **options
) -> tuple[np.ndarray, np.ndarray]:
    """Black out one random group of grid cells (``others`` unused); mask = those cells."""
    image = check_image(image)
    check_others(others, image.shape)
    rng = check_rng(rng)
    opts = resolve_options(MaskOptions, options)
    H, W = image.shape[:2]
    k = opts.cell_size(H)
    rows, cols = -(-H // k), -(-W // k)
    n_cells = rows * cols
    groups = np.array_split(rng.permutation(n_cells), min(int(opts.groups), n_cells))
    chosen = groups[int(rng.integers(len(groups)))]

    cells = np.zeros(n_cells, dtype=bool)
    cells[chosen] = True
    mask = np.repeat(np.repeat(cells.reshape(rows, cols), k, axis=0), k, axis=1)[:H, :W]
    out = image.copy()
    out[mask] = int(opts.fill)
    return out, np.ascontiguousarray(mask)
