"""The one-class benchmark's report: Markdown tables and CSV of ``tabad benchmark`` results.

Tables follow the layout of the TAB paper's Tables 1-3: one row per
category, texture / object / overall averages at the bottom, one column per
(method, weights source). Values are percentages. The rendering rules shared
with the other protocols live in :mod:`tabad.tables`; the files are written
by :class:`tabad.store.ResultStore`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tabad import store, tables
from tabad.panels import heatmap_panel  # noqa: F401  (re-exported: the panels were drawn here before)

#: Metric -> table title, in table order.
METRICS = tables.METRIC_TITLES

CSV_COLUMNS = [
    "category", "kind", "method", "weights", "image_auroc", "pixel_auroc", "aupro", "image_f1max",
    "pixel_f1max", "n_train", "n_test", "n_test_anomalous", "fit_seconds", "predict_ms_per_image",
    "weights_sha256",
]


def columns_of(results: Sequence[dict]) -> list[tuple[str, str]]:
    """(method, weights) pairs in first-seen order."""
    seen: dict[tuple[str, str], None] = {}
    for r in results:
        seen.setdefault((r["method"], r["weights"]), None)
    return list(seen)


def metric_table(results: Sequence[dict], metric: str) -> str:
    """One Markdown table for ``metric``: categories × (method, weights), with kind or dataset averages."""
    cols = columns_of(results)
    by_key = {(r["category"], r["method"], r["weights"]): r for r in results}
    kinds: dict[str, str] = {}
    datasets: dict[str, str] = {}
    for r in results:
        kinds.setdefault(r["category"], r.get("kind", "other"))
        datasets.setdefault(r["category"], r.get("dataset", ""))
    cats, groups = tables.average_groups(kinds, datasets)

    def value(c: str, j: int) -> float | None:
        r = by_key.get((c, *cols[j]))
        return None if r is None else r.get(metric)

    multi_method = len({m for m, _ in cols}) > 1
    head = [f"{m} / {w}" if multi_method else w for m, w in cols]
    return tables.category_table(
        head, cats, groups, cell=lambda c, j: tables.percent(value(c, j)),
        average=lambda members, j: tables.percent(tables.mean_of(value(c, j) for c in members)))


def _cross_dataset_note(evaluated: set[str]):
    """Says, per weights source, whether it was pre-trained on the evaluated data or on other data."""

    def note(w: dict) -> str:
        trained = (w.get("trained_on") or {}).get("data_roots")
        if not trained:
            return ""
        if set(trained) & evaluated:
            return ". Pre-trained on the evaluation data's own training images"
        return (f". **Cross-dataset**: pre-trained on {', '.join(f'`{r}`' for r in trained)}, "
                f"evaluated on {', '.join(f'`{r}`' for r in sorted(evaluated))}")

    return note


def markdown_report(results: Sequence[dict], provenance: dict, metrics: Sequence[str] = tuple(METRICS),
                    title: str = "tabad benchmark") -> str:
    crop = provenance.get("crop")
    parts = tables.heading(title)
    parts.append(f"{tables.environment_text(provenance)} Data: `{provenance.get('data_root', '?')}`; "
                 f"backbone {provenance.get('backbone', '?')}; seed {provenance.get('seed', '?')}; "
                 f"images resized to {tables.size_text(provenance.get('resize'))}"
                 + (f" and centre-cropped to {tables.size_text(crop)}." if crop else ", no crop."))
    parts.append("")
    evaluated = set(provenance.get("data_roots") or [provenance.get("data_root")])
    parts += tables.weights_block(provenance.get("weights", []), note=_cross_dataset_note(evaluated))
    parts.append("")
    parts.append(f"Values are percentages; {tables.DASH} marks a metric that does not exist for that category "
                 "(no pixel masks, or a single class in the test set).")
    parts += tables.metric_sections(results, metrics, lambda m: metric_table(results, m))
    parts += ["", "## Timing", "", "| Category | method / weights | fit (s) | predict (ms/img) | n_train | n_test |",
              "|---|---|---:|---:|---:|---:|"]
    for r in results:
        parts.append(f"| {r['category']} | {r['method']} / {r['weights']} | {r['fit_seconds']:.2f} | "
                     f"{r['predict_ms_per_image']:.1f} | {r['n_train']} | {r['n_test']} |")
    return tables.document(parts)


def write_csv(path: str | Path, results: Sequence[dict]) -> Path:
    """``results.csv`` of a benchmark: one row per pair in :data:`CSV_COLUMNS`."""
    return store.write_csv(path, results, CSV_COLUMNS)
