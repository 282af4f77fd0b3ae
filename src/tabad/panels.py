"""Heat-map panels: what a method's anomaly maps look like next to the image and its ground truth.

A figure, not a table: kept apart from the reports so that rendering
Markdown never imports matplotlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from tabad.files import atomic_write

if TYPE_CHECKING:
    import numpy as np


def heatmap_panel(path: str | Path, images: "np.ndarray", maps: Sequence["np.ndarray"], map_titles: Sequence[str],
                  masks: "np.ndarray", row_titles: Sequence[str], ranges: Sequence[tuple[float, float]]) -> Path:
    """Grid: test image | heat map per weights source | ground truth, one row per image.

    ``images`` (N, H, W, 3) uint8; ``maps[k]`` (N, H, W) for weights source k,
    drawn with the (min, max) of ``ranges[k]`` — the range over the whole test
    set, so panels show what the scores really rank, not a per-image stretch.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, ncol = len(images), 2 + len(maps)
    fig, axes = plt.subplots(n, ncol, figsize=(2.2 * ncol, 2.2 * n + 0.3), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i])
        axes[i, 0].set_ylabel(row_titles[i], fontsize=8)
        for k, (m, (lo, hi)) in enumerate(zip(maps, ranges)):
            ax = axes[i, 1 + k]
            ax.imshow(images[i])
            ax.imshow((m[i] - lo) / max(hi - lo, 1e-12), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        axes[i, -1].imshow(masks[i], cmap="gray", vmin=0, vmax=1)
    for k, title in enumerate(["image", *map_titles, "ground truth"]):
        axes[0, k].set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=80, format="png"))
    plt.close(fig)
    return Path(path)
