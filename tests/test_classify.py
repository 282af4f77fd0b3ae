"""Defect classification: metrics against sklearn, splits, a tiny end-to-end run with resume, the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from tabad.classify import (
    ClassifyConfig,
    multiclass_metrics,
    multilabel_metrics,
    run_classify,
    split_hash,
    stratified_split,
)
from tabad.datasets.wafers import PATTERNS, make_wafers
from tabad.errors import ConfigError

sklearn_metrics = pytest.importorskip("sklearn.metrics")


# --------------------------------------------------------------------------- metrics


def test_multilabel_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y_true = (rng.random((40, 8)) < 0.3).astype(np.uint8)
    y_pred = np.where(rng.random((40, 8)) < 0.8, y_true, 1 - y_true)
    y_pred[:, 5] = 0  # a label never predicted: precision 0 by zero_division=0
    y_true[:, 7] = 0  # a label without support
    m = multilabel_metrics(y_true, y_pred, PATTERNS)
    p, r, f, s = sklearn_metrics.precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    assert m["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y_true, y_pred))
    for name, ours, theirs in (("precision", m["precision"], p.mean()), ("recall", m["recall"], r.mean()),
                               ("f1", m["f1"], f.mean())):
        assert ours == pytest.approx(theirs), name
    assert m["f1"] == pytest.approx(sklearn_metrics.f1_score(y_true, y_pred, average="macro", zero_division=0))
    for j, name in enumerate(PATTERNS):
        assert m["per_class"][name]["f1"] == pytest.approx(f[j])
        assert m["per_class"][name]["support"] == s[j]


def test_multilabel_metrics_by_hand():
    y_true = np.array([[1, 0], [0, 0], [1, 1]])
    y_pred = np.array([[1, 0], [0, 1], [1, 0]])
    m = multilabel_metrics(y_true, y_pred)
    # exact match: rows 0 only... and row 1 is wrong (predicted a pattern on a normal sample)
    assert m["accuracy"] == pytest.approx(1 / 3)
    # label 0: tp 2 fp 0 fn 0 -> 1, 1, 1; label 1: tp 0 fp 1 fn 1 -> 0, 0, 0
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((0.5, 0.5, 0.5))


def test_multiclass_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 5, 60)
    y_pred = np.where(rng.random(60) < 0.6, y_true, rng.integers(0, 6, 60))
    m = multiclass_metrics(y_true, y_pred, [f"c{i}" for i in range(7)])
    p, r, f, _ = sklearn_metrics.precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    assert m["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y_true, y_pred))
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((p, r, f))
    assert m["per_class"]["c6"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_stratified_split():
    groups = ["a"] * 10 + ["b"] * 5 + ["c"] * 1
    keep, out = stratified_split(groups, 0.2, seed=0)
    assert sorted(keep.tolist() + out.tolist()) == list(range(16))
    assert sum(groups[i] == "a" for i in out) == 2 and sum(groups[i] == "b" for i in out) == 1
    assert 15 in keep  # a group of one stays in training
    again = stratified_split(groups, 0.2, seed=0)
    assert split_hash(keep, out) == split_hash(*again) != split_hash(*stratified_split(groups, 0.2, seed=1))
    with pytest.raises(ConfigError):
        stratified_split(groups, 1.0, 0)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_wafers(tmp_path_factory):
    """16 maps of 4 classes: 12 to train, 4 to test."""
    return make_wafers(tmp_path_factory.mktemp("wafers") / "w.npz", n_per_class=4, size=32, seed=0,
                       classes=[(), ("Center",), ("Edge-Ring",), ("Loc", "Scratch")])


def _cfg(data, out, **kw):
    base = dict(data=data, out=out, weights=["random:0"], image_size=32, epochs=1, probe_epochs=2,
                batch_size=16, augment=True, progress=False)
    return ClassifyConfig(**{**base, **kw})


def test_classify_writes_everything_and_resumes(tiny_wafers, tmp_path, monkeypatch):
    out = tmp_path / "cls"
    report = run_classify(_cfg(tiny_wafers, out), log=lambda s: None)
    assert [(r["weights"], r["mode"]) for r in report["results"]] == [("random-0", "linear-probe"),
                                                                      ("random-0", "fine-tune")]
    for r in report["results"]:
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["f1"] <= 1 and set(r["per_class"]) == set(PATTERNS)
        assert (r["n_train"], r["n_eval"]) == (12, 4) and r["evaluated_on"] == "test"
    prov = json.loads((out / "results.json").read_text())["provenance"]
    assert len(prov["data"]["sha256"]) == 64 and len(prov["split"]["hash"]) == 64
    assert prov["weights"][0]["sha256"] and prov["image_size"] == 32 and prov["seed"] == 0
    assert "torch" in prov["environment"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["mode"] for r in rows] == ["linear-probe", "fine-tune"]
    assert len(list(csv.DictReader((out / "per_class.csv").open()))) == 16  # 2 results x 8 patterns
    md = (out / "results.md").read_text()
    assert "| random-0 | linear probe | ✓ |" in md and "F1 per pattern" in md and "| Scratch |" in md
    assert not list((out / "pairs").glob("*.train.pt"))

    # a rerun reuses both results without training
    import tabad.classify as C

    def boom(*a, **k):
        raise AssertionError("should have been reused")

    monkeypatch.setattr(C, "_run_linear_probe", boom)
    monkeypatch.setattr(C, "_run_fine_tune", boom)
    again = run_classify(_cfg(tiny_wafers, out), log=lambda s: None)
    assert [r["f1"] for r in again["results"]] == [r["f1"] for r in report["results"]]


def test_fine_tune_resumes_from_its_epoch_checkpoint(tiny_wafers, tmp_path, monkeypatch):
    import torch

    import tabad.classify as C

    cfg = dict(epochs=2, modes=["fine-tune"], augment=False)
    full = run_classify(_cfg(tiny_wafers, tmp_path / "full", **cfg), log=lambda s: None)["results"][0]
    # interrupt the same run right after its first epoch checkpoint is written
    real_write = C.atomic_write_torch

    def write_then_stop(path, obj):
        real_write(path, obj)
        if str(path).endswith(".train.pt"):
            raise KeyboardInterrupt

    monkeypatch.setattr(C, "atomic_write_torch", write_then_stop)
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run_classify(_cfg(tiny_wafers, out, **cfg), log=lambda s: None)
    ck = out / "pairs" / "random-0__fine-tune.train.pt"
    assert torch.load(ck, weights_only=True)["epoch"] == 1
    monkeypatch.setattr(C, "atomic_write_torch", real_write)
    resumed = run_classify(_cfg(tiny_wafers, out, **cfg), log=lambda s: None)["results"][0]
    assert [e["loss"] for e in resumed["train_log"]] == pytest.approx([e["loss"] for e in full["train_log"]])
    assert resumed["f1"] == pytest.approx(full["f1"]) and not ck.exists()


def test_class_folders_and_validation_split(tmp_path):
    root = tmp_path / "folders"
    rng = np.random.default_rng(0)
    for c, level in (("dark", 40), ("bright", 210), ("mid", 128)):
        (root / c).mkdir(parents=True)
        for i in range(5):
            img = np.clip(level + rng.normal(0, 10, (20, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / c / f"{i}.png")
    report = run_classify(_cfg(root, tmp_path / "out", modes=["linear-probe"], evaluate="validation",
                               probe_epochs=100, probe_lr=1e-2, augment=False), log=lambda s: None)
    r = report["results"][0]
    assert set(r["per_class"]) == {"bright", "dark", "mid"} and r["evaluated_on"] == "validation"
    assert report["provenance"]["data"]["kind"] == "class-folders"
    assert report["provenance"]["split"]["n_validation"] == 3 and r["n_train"] == 9
    assert r["accuracy"] == 1.0  # grey levels this far apart are trivially separable
    assert "validation split" in (tmp_path / "out" / "results.md").read_text()


def test_bad_config_and_data(tmp_path, tiny_wafers):
    from tabad.errors import DataError

    with pytest.raises(ConfigError, match="mode"):
        run_classify(_cfg(tiny_wafers, tmp_path / "o", modes=["zero-shot"]))
    with pytest.raises(DataError, match="class folder"):
        run_classify(_cfg(tmp_path, tmp_path / "o"))


# --------------------------------------------------------------------------- CLI


def test_cli_make_wafers_and_classify(tmp_path, capsys):
    from tabad.cli import main

    npz = tmp_path / "w.npz"
    assert main(["make-wafers", str(npz), "--seed", "1", "--n-per-class", "2", "--size", "32"]) == 0
    assert "76 maps" in capsys.readouterr().out
    out = tmp_path / "cls"
    rc = main(["classify", "--data", str(npz), "--weights", "random:0", "--out", str(out), "--epochs", "1",
               "--probe-epochs", "1", "--modes", "linear-probe", "--no-progress"])
    assert rc == 0
    assert "| random-0 | linear probe | ✓ |" in capsys.readouterr().out
    # without --image-size the maps keep their own size
    assert json.loads((out / "results.json").read_text())["provenance"]["image_size"] == 32
    assert main(["classify", "--data", str(tmp_path / "missing.npz"), "--out", str(out)]) == 2
    assert "missing.npz" in capsys.readouterr().err


def test_help_stays_light():
    import subprocess
    import sys

    code = ("import sys\nfrom tabad.cli import main\n"
            "for argv in (['classify', '--help'], ['make-wafers', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code in (0, None)\n"
            "assert 'torch' not in sys.modules and 'tabad.classify' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--validation" in proc.stdout and "MixedWM38" in proc.stdout
