"""The shared results store: stable resume keys, trusted and untrusted stored units, atomic reports, tables."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import tabad
from tabad import tables
from tabad.store import ResultStore, load_npz, run_key, save_npz, write_csv

# --------------------------------------------------------------------------- keys
# Expected strings were computed with the key functions as they stood before this module
# (benchmark._pair_key, fewshot._digest, classify._result_key): equal strings mean that
# result folders written before still resume.

FEWSHOT_BASE = {"data": "/data/mvtec", "target": "carpet", "weights_sha256": "ab" * 32, "backbone": "resnet18",
                "seed": 668, "resize": 224, "crop": 224, "layout": "auto", "train": {"grid": 264, "zipper": 240},
                "version": "0.1.0"}


@pytest.fixture
def version_0_1_0(monkeypatch):
    """Every key holds the package version; pin it so a release does not look like a broken key."""
    monkeypatch.setattr(tabad, "__version__", "0.1.0")


def test_run_key_matches_the_old_hashing():
    settings = {"path": Path("/x/y"), "t": (1, 2), "f": 0.1, "n": None, "u": "é"}
    assert run_key(**settings) == "bb1f32a549b9bc1f9f7d"
    assert run_key(**dict(reversed(settings.items()))) == "bb1f32a549b9bc1f9f7d"  # order-free
    assert len(run_key()) == 20 and run_key(a=1) != run_key(a=2)


def test_fewshot_keys_are_unchanged():
    assert run_key(**FEWSHOT_BASE, config={"epochs": 50, "shots": 4, "image_size": 224, "lr": 1e-4}) \
        == "359bf1b6aacd5282689a"  # the registration model's training key
    assert run_key(**FEWSHOT_BASE, config={"epochs": 50, "shots": 4}, shots=2, rounds=10, supports=[[3, 1], [0, 7]],
                   n_test=117) == "5ceb667eaa1d3cc07df9"  # one (category, weights, K) result


def test_benchmark_pair_keys_are_unchanged(version_0_1_0):
    from tabad.benchmark import BenchmarkConfig, Target, pair_key

    target = Target(Path("/data/mvtec"), "mvtec", "carpet", "mvtec", "carpet")
    cfg = BenchmarkConfig(data=Path("/data/mvtec"), out=Path("out"), seed=3,
                          method_options={"padim": {"n_features": 20}})
    assert pair_key(cfg, target, "padim", "ab" * 32, 10, 8, [2, 5, 0]) == "0c32ed0e0150b79716d8"
    cfg = BenchmarkConfig(data=Path("/data/mvtec"), out=Path("out"), methods=["rd4ad"], epochs=2,
                          resize=(48, 64), crop=None)  # --epochs enters a training method's options
    assert pair_key(cfg, target, "rd4ad", "cd" * 32, 6, 6, []) == "62a040fc6063311b6ac3"


def test_classify_result_keys_are_unchanged(version_0_1_0):
    from tabad.classify import ClassifyConfig, result_key

    cfg = ClassifyConfig(data=Path("/data/w.npz"), out=Path("out"))
    data = SimpleNamespace(sha256="ef" * 32)
    record = {"test_fraction": 0.2, "n_pool": 16, "n_train": 12, "n_test": 4, "hash": "01" * 32, "evaluate": "test"}
    assert result_key(cfg, data, "ab" * 32, "linear-probe", record, 52) == "989906765c6aeedb692b"
    assert result_key(cfg, data, "ab" * 32, "fine-tune", record, 52) == "f9ed8adf38c843e78294"


# --------------------------------------------------------------------------- stored units


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.name.endswith(".tmp")]


def test_save_then_load_only_under_the_same_key(tmp_path):
    store = ResultStore(tmp_path)
    row = {"category": "a", "value": 0.5, "key": run_key(a=1)}
    path = store.save("a__padim__random", row)
    assert path == tmp_path / "pairs" / "a__padim__random.json"
    assert store.load("a__padim__random", run_key(a=1)) == row
    assert store.load("a__padim__random", run_key(a=2)) is None  # other settings: recompute
    assert store.load("missing", run_key(a=1)) is None
    assert ResultStore(tmp_path, resume=False).load("a__padim__random", run_key(a=1)) is None
    with pytest.raises(ValueError, match="key"):
        store.save("nokey", {"value": 1})


@pytest.mark.parametrize("text", ["{ damaged", "", "[1, 2]", '"key"', "\xff\xfe"])
def test_damaged_result_is_recomputed(tmp_path, text):
    store = ResultStore(tmp_path)
    store.units.mkdir(parents=True)
    store.path("u").write_bytes(text.encode("latin-1"))
    assert store.load("u", "k") is None


def test_arrays_follow_their_result(tmp_path):
    store = ResultStore(tmp_path)
    maps = np.arange(12, dtype=np.float16).reshape(3, 2, 2)
    store.save("u", {"key": "k1"}, {"maps": maps}, suffix=".panel.npz")
    assert (tmp_path / "pairs" / "u.panel.npz").is_file()
    got = store.load_arrays("u", "k1", ".panel.npz")
    assert set(got) == {"maps"} and got["maps"].dtype == np.float16 and np.array_equal(got["maps"], maps)
    assert store.load_arrays("u", "k2", ".panel.npz") is None  # the arrays are as trusted as their JSON
    assert store.load_arrays("u", "k1", ".other.npz") is None  # missing
    (tmp_path / "pairs" / "u.panel.npz").write_bytes(b"PK\x03\x04 truncated")
    assert store.load_arrays("u", "k1", ".panel.npz") is None  # damaged


def test_failed_save_leaves_no_result_and_no_temp_files(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)

    def fail(*_, **__):
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "savez_compressed", fail)
    with pytest.raises(RuntimeError):
        store.save("u", {"key": "k"}, {"maps": np.zeros(3)})
    assert not store.path("u").exists()  # the JSON is written after the arrays, so it never claims them
    assert not store.path("u", ".npz").exists()
    assert _temp_files(tmp_path) == []


def test_npz_helpers(tmp_path):
    path = save_npz(tmp_path / "sub" / "p.npz", scores=np.arange(3.0), files=np.array(["a.png", "b.png"]))
    got = load_npz(path)
    assert got["files"].tolist() == ["a.png", "b.png"] and got["scores"].tolist() == [0.0, 1.0, 2.0]
    assert load_npz(tmp_path / "none.npz") is None
    assert _temp_files(tmp_path) == []


def test_checkpoint_paths(tmp_path):
    store = ResultStore(tmp_path)
    ck = store.checkpoint("obj__rd4ad__random")
    assert ck == tmp_path / "pairs" / "obj__rd4ad__random.train.pt" and ck.parent.is_dir()
    ck.write_bytes(b"state")
    store.drop_checkpoint("obj__rd4ad__random")
    assert not ck.exists()
    store.drop_checkpoint("obj__rd4ad__random")  # already gone: fine

    few = ResultStore(tmp_path / "few", checkpoints="train")
    few.drop_checkpoint("t__regad__w__train4", suffix=".pt")
    assert not (tmp_path / "few").exists()  # dropping creates nothing
    assert few.checkpoint("t__regad__w__train4", suffix=".pt") == tmp_path / "few" / "train" / "t__regad__w__train4.pt"


# --------------------------------------------------------------------------- the report files


def test_write_report_files(tmp_path):
    store = ResultStore(tmp_path / "out")
    results = [{"category": "a", "image_auroc": 0.5, "pixel_auroc": None, "extra": [1]},
               {"category": "b, \"quoted\"", "image_auroc": 1.0, "pixel_auroc": 0.25}]
    provenance = {"seed": 0, "path": Path("/x")}
    report = store.write(results, provenance, "# title\n", ["category", "image_auroc", "pixel_auroc"])
    assert report == {"provenance": provenance, "results": results}
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(on_disk) == ["provenance", "results"]
    assert on_disk["provenance"] == {"seed": 0, "path": "/x"} and on_disk["results"] == results
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open(newline="")))
    assert rows == [{"category": "a", "image_auroc": "0.5", "pixel_auroc": ""},
                    {"category": "b, \"quoted\"", "image_auroc": "1.0", "pixel_auroc": "0.25"}]
    assert (tmp_path / "out" / "results.md").read_text() == "# title\n"
    assert _temp_files(tmp_path) == []


def test_csv_round_trip(tmp_path):
    rows = [{"w": "random", "v": 0.125, "n": 3, "none": None, "ignored": "x"}, {"w": "tab", "v": None}]
    text = tables.csv_text(rows, ["w", "v", "n", "none"])
    assert text.splitlines()[0] == "w,v,n,none"
    back = list(csv.DictReader(io.StringIO(text)))
    assert back == [{"w": "random", "v": "0.125", "n": "3", "none": ""}, {"w": "tab", "v": "", "n": "", "none": ""}]
    assert write_csv(tmp_path / "r.csv", rows, ["w", "v", "n", "none"]).read_bytes() == text.encode()  # \r\n kept


# --------------------------------------------------------------------------- tables


def test_numbers():
    assert tables.percent(0.8) == "80.00" and tables.percent(None) == "–"
    assert tables.percent_pm(0.8, 0.1) == "80.00 ± 10.00" and tables.percent_pm(None, None) == "–"
    assert tables.fixed(0.12345) == "0.123" and tables.fixed(float("nan")) == "–" and tables.fixed(None) == "–"
    assert tables.size_text(256) == "256×256" and tables.size_text([48, 64]) == "48×64" and tables.size_text(None) == "?"
    assert tables.mean_of([0.5, None, float("nan"), 0.7]) == pytest.approx(0.6) and tables.mean_of([None]) is None
    assert tables.mean_std([0.9, 0.7, None]) == pytest.approx((0.8, 0.1)) and tables.mean_std([]) == (None, None)


def test_average_groups():
    kinds = {"zobj": "object", "carpet": "texture", "misc": "other", "grid": "texture"}
    cats, groups = tables.average_groups(kinds)
    assert cats == ["carpet", "grid", "zobj", "misc"]
    assert groups == [("Texture Avg.", ["carpet", "grid"]), ("Object Avg.", ["zobj"]),
                      ("Overall Avg.", ["carpet", "grid", "zobj", "misc"])]
    assert tables.average_groups({"a": "object"}) == (["a"], [("Object Avg.", ["a"])])  # no overall for one
    datasets = {"b1": "B", "a1": "A", "a2": "A"}
    cats, groups = tables.average_groups({c: "other" for c in datasets}, datasets)
    assert cats == ["a1", "a2", "b1"]  # datasets in first-seen order of the sorted categories
    assert groups == [("A Avg.", ["a1", "a2"]), ("Overall Avg.", ["a1", "a2", "b1"])]  # B has one category


def test_category_table_and_report_parts():
    values = {("a", 0): 0.5, ("b", 0): 0.7, ("a", 1): None, ("b", 1): 0.9}
    cats, groups = tables.average_groups({"a": "texture", "b": "object"})
    table = tables.category_table(
        ["w1", "w2"], cats, groups, cell=lambda c, j: tables.percent(values[(c, j)]),
        average=lambda members, j: tables.percent(tables.mean_of(values[(c, j)] for c in members)))
    assert table.splitlines() == [
        "| Category | w1 | w2 |", "|---|---:|---:|", "| a | 50.00 | – |", "| b | 70.00 | 90.00 |",
        "| **Texture Avg.** | 50.00 | – |", "| **Object Avg.** | 70.00 | 90.00 |",
        "| **Overall Avg.** | 60.00 | 90.00 |"]
    prov = {"environment": {"tabad_version": "9", "torch": "2.x", "date": "today"}}
    assert tables.environment_text(prov) == "tabad 9, torch 2.x, today."
    assert tables.environment_text({}) == "tabad ?, torch ?, ."
    w = {"label": "tab", "description": "file", "sha256": "0123456789abcdef" + "f" * 48}
    assert tables.weights_block([w], note=lambda _: ". note") == \
        ["Weights sources:", "- `tab`: file (sha256 `0123456789abcdef…`). note"]
    parts = tables.metric_sections([{"image_auroc": 0.5, "aupro": None}], ["image_auroc", "aupro"], lambda m: m)
    assert parts == ["", "## Image AUROC", "", "image_auroc"]
    assert tables.document(tables.heading("T") + ["x"]) == "# T\n\nx\n"


def test_store_and_tables_import_nothing_heavy():
    code = ("import sys, tabad.store, tabad.tables, tabad.report, tabad.panels; "
            "print(sorted(m for m in ('numpy', 'torch', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
