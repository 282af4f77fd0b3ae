"""Rendering shared by every protocol's report: numbers, averages, Markdown tables, CSV text.

The one-class benchmark, the few-shot protocol and classification print
their results the same way (a title, a provenance paragraph, the weights
sources, per-metric tables with texture / object / overall averages, a CSV
of one row per result). Each protocol keeps only what is its own (its
columns, its cells, its timing table); how a number is written, which
categories are averaged together and how a table row is laid out lives here
once, so a new protocol's report reads like the others without a copy.

Pure functions of plain Python values; nothing here touches the disk (see
:mod:`tabad.store`) or imports numpy at import time.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Callable, Iterable, Mapping, Sequence

#: Shown where a metric does not exist (no masks, one class only) or a result is missing.
DASH = "–"

#: Table titles of the anomaly-detection metrics of :func:`tabad.metrics.evaluate`, in table order.
METRIC_TITLES = {
    "image_auroc": "Image AUROC",
    "pixel_auroc": "Pixel AUROC",
    "aupro": "AUPRO (FPR ≤ 0.3)",
    "image_f1max": "Image F1-max",
    "pixel_f1max": "Pixel F1-max",
}

#: Average rows of a category table; the overall one is left out for a single category.
TEXTURE_AVG, OBJECT_AVG, OVERALL_AVG = "Texture Avg.", "Object Avg.", "Overall Avg."
_KIND_ORDER = {"texture": 0, "object": 1}


# --------------------------------------------------------------------------- numbers


def percent(v: float | None) -> str:
    """A fraction as a percentage with 2 decimals (0.8 -> '80.00'); None -> '–'."""
    return DASH if v is None else f"{100 * v:.2f}"


def percent_pm(mean: float | None, std: float | None) -> str:
    """Mean ± std of fractions as percentages ('80.00 ± 10.00'); a missing mean -> '–'."""
    return DASH if mean is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def fixed(v: float | None, digits: int = 3) -> str:
    """A value as it is (not a percentage) with ``digits`` decimals; None and NaN -> '–'."""
    return DASH if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def size_text(size) -> str:
    """256 -> '256×256'; [256, 512] -> '256×512' (H×W); None -> '?'."""
    if size is None:
        return "?"
    h, w = (size, size) if isinstance(size, int) else size
    return f"{h}×{w}"


def mean_of(values: Iterable[float | None]) -> float | None:
    """Mean of the values that exist: None and NaN are left out, so a missing metric never drags an average."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """numpy's mean and population std of the values that are not None; (None, None) when none are."""
    import numpy as np

    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals))


# --------------------------------------------------------------------------- which rows, which averages


def category_order(kinds: Mapping[str, str]) -> list[str]:
    """Textures, then objects, then anything else; by name within each (the paper's table order)."""
    return sorted(kinds, key=lambda c: (_KIND_ORDER.get(kinds[c], 2), c))


def average_groups(kinds: Mapping[str, str], datasets: Mapping[str, str] | None = None
                   ) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The rows of a category table and its average rows: ``(categories, [(label, members), ...])``.

    One dataset: texture, object and overall averages. Several datasets
    (``datasets`` maps category -> dataset, paper Table 4): rows grouped by
    dataset in first-seen order, one average per dataset with more than one
    category, then the overall one. Empty groups, and the overall average of a
    single category, are left out: they would repeat a row or show nothing.
    """
    cats = category_order(kinds)
    if datasets is not None and len({datasets[c] for c in cats}) > 1:
        names = list(dict.fromkeys(datasets[c] for c in cats))
        cats = sorted(cats, key=lambda c: (names.index(datasets[c]), c))
        groups = [(f"{d} Avg.", [c for c in cats if datasets[c] == d]) for d in names]
        groups = [g for g in groups if len(g[1]) > 1] + [(OVERALL_AVG, cats)]
    else:
        groups = [(TEXTURE_AVG, [c for c in cats if kinds[c] == "texture"]),
                  (OBJECT_AVG, [c for c in cats if kinds[c] == "object"]),
                  (OVERALL_AVG, cats)]
    shown = [(name, members) for name, members in groups
             if members and not (name == OVERALL_AVG and len(cats) < 2)]
    return cats, shown


# --------------------------------------------------------------------------- Markdown


def table_row(first: str, cells: Iterable[str]) -> str:
    """``| first | a | b |``."""
    return f"| {first} | " + " | ".join(cells) + " |"


def category_table(columns: Sequence[str], categories: Sequence[str], groups: Sequence[tuple[str, Sequence[str]]],
                   cell: Callable[[str, int], str], average: Callable[[Sequence[str], int], str]) -> str:
    """Categories × ``columns``, then one bold row per average group.

    ``cell(category, j)`` and ``average(members, j)`` give the text of column
    ``j``; the caller decides what a value and an average are (a percentage, a
    mean ± std over rounds), this function only how the table is laid out.
    """
    idx = range(len(columns))
    lines = [table_row("Category", columns), "|---|" + "---:|" * len(columns)]
    lines += [table_row(c, (cell(c, j) for j in idx)) for c in categories]
    lines += [table_row(f"**{name}**", (average(members, j) for j in idx)) for name, members in groups]
    return "\n".join(lines)


def heading(title: str) -> list[str]:
    return [f"# {title}", ""]


def environment_text(provenance: Mapping) -> str:
    """'tabad 0.1.0, torch 2.x, <date>.': the opening of every report's provenance paragraph."""
    env = provenance.get("environment", {})
    return f"tabad {env.get('tabad_version', '?')}, torch {env.get('torch', '?')}, {env.get('date', '')}."


def weights_line(w: Mapping) -> str:
    """One weights source: label, description, the package that shipped it (if any) and a 16-hex prefix of its
    sha256 (enough to tell files apart; results.json has all of it)."""
    package = f"; package `{w['package']}`" if w.get("package") else ""
    return f"- `{w['label']}`: {w['description']} (sha256 `{w['sha256'][:16]}…`{package})"


def weights_block(weights: Iterable[Mapping], note: Callable[[Mapping], str] | None = None) -> list[str]:
    """'Weights sources:' and one line per source, each followed by ``note(w)`` when given."""
    return ["Weights sources:"] + [weights_line(w) + (note(w) if note else "") for w in weights]


def metric_sections(results: Sequence[Mapping], metrics: Iterable[str], table: Callable[[str], str]) -> list[str]:
    """'## <title>' and ``table(metric)`` per metric; a metric no result has is left out, not shown as dashes."""
    parts: list[str] = []
    for m in metrics:
        if all(r.get(m) is None for r in results):
            continue
        parts += ["", f"## {METRIC_TITLES[m]}", "", table(m)]
    return parts


def document(parts: Iterable[str]) -> str:
    """The lines of a report as one text ending in a newline."""
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- CSV


def csv_text(rows: Iterable[Mapping], columns: Sequence[str]) -> str:
    """One line per row in ``columns`` order; None becomes an empty cell, keys not in ``columns`` are left out."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return buf.getvalue()
