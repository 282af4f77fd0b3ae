"""Result tables (Markdown, CSV, JSON) and heat-map panels.

Tables follow the layout of the TAB paper's Tables 1-3: one row per
category, texture / object / overall averages at the bottom, one column per
(method, weights source). Values are percentages.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from tabad.files import atomic_write, atomic_write_text

METRICS = {
    "image_auroc": "Image AUROC",
    "pixel_auroc": "Pixel AUROC",
    "aupro": "AUPRO (FPR ≤ 0.3)",
    "image_f1max": "Image F1-max",
    "pixel_f1max": "Pixel F1-max",
}

CSV_COLUMNS = [
    "category", "kind", "method", "weights", "image_auroc", "pixel_auroc", "aupro", "image_f1max",
    "pixel_f1max", "n_train", "n_test", "n_test_anomalous", "fit_seconds", "predict_ms_per_image",
    "weights_sha256",
]


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def columns_of(results: Sequence[dict]) -> list[tuple[str, str]]:
    """(method, weights) pairs in first-seen order."""
    seen: dict[tuple[str, str], None] = {}
    for r in results:
        seen.setdefault((r["method"], r["weights"]), None)
    return list(seen)


def metric_table(results: Sequence[dict], metric: str) -> str:
    """One Markdown table for ``metric``: categories × (method, weights)."""
    cols = columns_of(results)
    by_key = {(r["category"], r["method"], r["weights"]): r for r in results}
    kinds: dict[str, str] = {}
    for r in results:
        kinds.setdefault(r["category"], r.get("kind", "other"))
    order = {"texture": 0, "object": 1, "other": 2}
    cats = sorted(kinds, key=lambda c: (order.get(kinds[c], 2), c))

    multi_method = len({m for m, _ in cols}) > 1
    head = [f"{m} / {w}" if multi_method else w for m, w in cols]
    lines = ["| Category | " + " | ".join(head) + " |", "|---|" + "---:|" * len(cols)]

    def value(c: str, col: tuple[str, str]) -> float | None:
        r = by_key.get((c, *col))
        return None if r is None else r.get(metric)

    datasets: dict[str, str] = {}
    for r in results:
        datasets.setdefault(r["category"], r.get("dataset", ""))
    if len(set(datasets.values())) > 1:
        # Several datasets in one table (paper Table 4): rows grouped and averaged per dataset.
        names = list(dict.fromkeys(datasets[c] for c in cats))
        cats = sorted(cats, key=lambda c: (names.index(datasets[c]), c))
        groups = [(f"{d} Avg.", [c for c in cats if datasets[c] == d]) for d in names]
        groups = [g for g in groups if len(g[1]) > 1] + [("Overall Avg.", cats)]
    else:
        groups = [("Texture Avg.", [c for c in cats if kinds[c] == "texture"]),
                  ("Object Avg.", [c for c in cats if kinds[c] == "object"]),
                  ("Overall Avg.", cats)]
    for c in cats:
        lines.append(f"| {c} | " + " | ".join(_fmt(value(c, col)) for col in cols) + " |")
    for name, members in groups:
        if not members or (name == "Overall Avg." and len(cats) < 2):
            continue
        lines.append(f"| **{name}** | " + " | ".join(_fmt(_mean([value(c, col) for c in members])) for col in cols) + " |")
    return "\n".join(lines)


def _size_text(size) -> str:
    """256 -> '256×256'; [256, 512] -> '256×512' (H×W)."""
    if size is None:
        return "?"
    h, w = (size, size) if isinstance(size, int) else size
    return f"{h}×{w}"


def markdown_report(results: Sequence[dict], provenance: dict, metrics: Sequence[str] = tuple(METRICS),
                    title: str = "tabad benchmark") -> str:
    parts = [f"# {title}", ""]
    env = provenance.get("environment", {})
    parts.append(f"tabad {env.get('tabad_version', '?')}, torch {env.get('torch', '?')}, "
                 f"{env.get('date', '')}. Data: `{provenance.get('data_root', '?')}`; "
                 f"backbone {provenance.get('backbone', '?')}; seed {provenance.get('seed', '?')}; "
                 f"images resized to {_size_text(provenance.get('resize'))}"
                 + (f" and centre-cropped to {_size_text(provenance.get('crop'))}." if provenance.get("crop") else
                    ", no crop."))
    parts.append("")
    parts.append("Weights sources:")
    evaluated = set(provenance.get("data_roots") or [provenance.get("data_root")])
    for w in provenance.get("weights", []):
        line = f"- `{w['label']}`: {w['description']} (sha256 `{w['sha256'][:16]}…`)"
        trained = (w.get("trained_on") or {}).get("data_roots")
        if trained:
            same = set(trained) & evaluated
            line += (f". **Cross-dataset**: pre-trained on {', '.join(f'`{r}`' for r in trained)}, "
                     f"evaluated on {', '.join(f'`{r}`' for r in sorted(evaluated))}" if not same else
                     ". Pre-trained on the evaluation data's own training images")
        parts.append(line)
    parts.append("")
    parts.append("Values are percentages; – marks a metric that does not exist for that category "
                 "(no pixel masks, or a single class in the test set).")
    for m in metrics:
        if all(r.get(m) is None for r in results):
            continue
        parts += ["", f"## {METRICS[m]}", "", metric_table(results, m)]
    parts += ["", "## Timing", "", "| Category | method / weights | fit (s) | predict (ms/img) | n_train | n_test |",
              "|---|---|---:|---:|---:|---:|"]
    for r in results:
        parts.append(f"| {r['category']} | {r['method']} / {r['weights']} | {r['fit_seconds']:.2f} | "
                     f"{r['predict_ms_per_image']:.1f} | {r['n_train']} | {r['n_test']} |")
    return "\n".join(parts) + "\n"


def write_csv(path: str | Path, results: Sequence[dict]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for r in results:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    return atomic_write_text(path, buf.getvalue())


def heatmap_panel(path: str | Path, images: np.ndarray, maps: Sequence[np.ndarray], map_titles: Sequence[str],
                  masks: np.ndarray, row_titles: Sequence[str], ranges: Sequence[tuple[float, float]]) -> Path:
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
