"""Paper-style tables, CSV and the Markdown report, from hand-made result dicts."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from tabad.report import CSV_COLUMNS, heatmap_panel, markdown_report, metric_table, write_csv


def _r(category, kind, weights, image_auroc, method="padim", **extra):
    base = {
        "category": category, "kind": kind, "method": method, "weights": weights,
        "image_auroc": image_auroc, "pixel_auroc": None, "aupro": None, "image_f1max": None, "pixel_f1max": None,
        "n_train": 10, "n_test": 8, "n_test_anomalous": 4, "fit_seconds": 1.5, "predict_ms_per_image": 12.25,
        "weights_sha256": ("a" if weights == "random" else "b") * 64,
    }
    base.update(extra)
    return base


@pytest.fixture
def results():
    # Objects listed first on purpose: the table must put textures first.
    return [
        _r("zobj", "object", "random", 0.50),
        _r("zobj", "object", "tab", 0.70),
        _r("carpet", "texture", "random", 0.80),
        _r("carpet", "texture", "tab", 0.90),
        _r("grid", "texture", "random", 0.60),
        _r("grid", "texture", "tab", None),
        _r("apple", "object", "random", 0.30),
        _r("apple", "object", "tab", 0.40),
    ]


def _rows(table: str) -> dict[str, list[str]]:
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_metric_table_layout_and_averages(results):
    table = metric_table(results, "image_auroc")
    lines = table.splitlines()
    assert lines[0] == "| Category | random | tab |"  # one column per weights source
    assert lines[1] == "|---|---:|---:|"
    names = [line.strip("|").split("|")[0].strip() for line in lines[2:]]
    assert names == ["carpet", "grid", "apple", "zobj", "**Texture Avg.**", "**Object Avg.**", "**Overall Avg.**"]
    rows = _rows(table)
    assert rows["carpet"] == ["80.00", "90.00"]
    assert rows["grid"] == ["60.00", "–"]
    assert rows["zobj"] == ["50.00", "70.00"]
    assert rows["**Texture Avg.**"] == ["70.00", "90.00"]  # None left out of the mean
    assert rows["**Object Avg.**"] == ["40.00", "55.00"]
    # Overall = mean over categories (not the mean of the two group means).
    assert rows["**Overall Avg.**"] == ["55.00", f"{100 * (0.9 + 0.7 + 0.4) / 3:.2f}"]


def test_metric_table_all_none_column_and_missing_pair(results):
    results = [r for r in results if not (r["category"] == "apple" and r["weights"] == "tab")]
    rows = _rows(metric_table(results, "pixel_auroc"))
    assert rows["carpet"] == ["–", "–"]
    assert rows["**Overall Avg.**"] == ["–", "–"]
    rows = _rows(metric_table(results, "image_auroc"))
    assert rows["apple"] == ["30.00", "–"]  # a pair that was never run
    assert rows["**Object Avg.**"] == ["40.00", "70.00"]


def test_metric_table_nan_is_skipped_in_means():
    res = [_r("a", "texture", "w", 0.5), _r("b", "texture", "w", float("nan")), _r("c", "texture", "w", 0.7)]
    assert _rows(metric_table(res, "image_auroc"))["**Texture Avg.**"] == ["60.00"]


def test_metric_table_groups_only_when_present():
    single = metric_table([_r("carpet", "texture", "w", 0.5)], "image_auroc")
    names = [line.split("|")[1].strip() for line in single.splitlines()[2:]]
    assert names == ["carpet", "**Texture Avg.**"]  # no object group, no overall for one category
    other = metric_table([_r("b", "other", "w", 0.2), _r("a", "object", "w", 0.4)], "image_auroc")
    rows = _rows(other)
    assert list(rows) == ["a", "b", "**Object Avg.**", "**Overall Avg.**"]
    assert rows["**Object Avg.**"] == ["40.00"] and rows["**Overall Avg.**"] == ["30.00"]


def test_metric_table_several_methods():
    res = [_r("a", "object", "random", 0.5), _r("a", "object", "random", 0.6, method="other")]
    head = metric_table(res, "image_auroc").splitlines()[0]
    assert head == "| Category | padim / random | other / random |"


def test_write_csv(tmp_path, results):
    results[0]["extra_key"] = "ignored"
    path = write_csv(tmp_path / "sub" / "results.csv", results)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CSV_COLUMNS
    for col in ("category", "kind", "method", "weights", "image_auroc", "pixel_auroc", "aupro", "image_f1max",
                "pixel_f1max", "n_train", "n_test", "n_test_anomalous", "fit_seconds", "predict_ms_per_image",
                "weights_sha256"):
        assert col in CSV_COLUMNS
    assert len(rows) == len(results)
    assert rows[0]["category"] == "zobj" and float(rows[0]["image_auroc"]) == 0.5
    assert rows[5]["image_auroc"] == ""  # None -> empty cell
    assert rows[0]["pixel_auroc"] == ""
    assert rows[2]["weights_sha256"] == "a" * 64


def test_markdown_report(results):
    provenance = {
        "environment": {"tabad_version": "9.9.9", "torch": "2.x", "date": "2026-01-01"},
        "data_root": "/data/mvtec", "backbone": "resnet18", "seed": 3, "resize": 64, "crop": 56,
        "weights": [
            {"label": "random", "description": "torchvision default initialisation", "sha256": "0123456789abcdef" + "f" * 48},
            {"label": "tab", "description": "state dict file", "sha256": "fedcba9876543210" + "0" * 48},
        ],
    }
    results[2]["pixel_auroc"] = 0.75
    md = markdown_report(results, provenance, title="My run")
    assert md.startswith("# My run\n")
    assert "tabad 9.9.9" in md and "/data/mvtec" in md and "seed 3" in md
    assert "`random`" in md and "0123456789abcdef" in md and "fedcba9876543210" in md
    assert "f" * 48 not in md  # only a prefix of the hash
    assert "## Image AUROC" in md and "## Pixel AUROC" in md
    assert "## AUPRO" not in md and "Image F1-max" not in md  # all-None metrics are left out
    assert metric_table(results, "image_auroc") in md
    assert f"| carpet | padim / random | 1.50 | {12.25:.1f} | 10 | 8 |" in md  # timing table
    assert "–" in md


def test_heatmap_panel_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    maps = [rng.random((2, 16, 16)), rng.random((2, 16, 16))]
    masks = np.zeros((2, 16, 16), bool)
    masks[0, 4:8, 4:8] = True
    path = heatmap_panel(tmp_path / "panels" / "c__padim.png", images, maps, ["a", "b"], masks, ["r0", "r1"],
                         [(0.0, 1.0), (0.0, 1.0)])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    assert not list((tmp_path / "panels").glob(".*"))  # no temp files left
