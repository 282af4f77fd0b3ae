"""``run_benchmark`` end to end on the tiny dataset: outputs, provenance, resume, predictions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tabad
from tabad import metrics
from tabad.backbones import build_backbone as _real_build_backbone
from tabad.benchmark import BenchmarkConfig, run_benchmark, select_panel_indices
from tabad.datasets.sample import Sample
from tabad.errors import TabadError, WeightsError

RESULT_KEYS = {
    "category", "method", "weights", "image_auroc", "pixel_auroc", "aupro", "image_f1max", "pixel_f1max",
    "n_train", "n_test", "n_test_anomalous", "fit_seconds", "predict_ms_per_image",
}
_BACKBONES: dict = {}


def _cached_build_backbone(arch, source, seed=0, allow_download=False, memory_format="channels_last"):
    """build_backbone, once per (arch, source, seed, layout) for the whole module: the backbone is frozen."""
    key = (arch, source, seed, memory_format)
    if key not in _BACKBONES:
        _BACKBONES[key] = _real_build_backbone(arch, source, seed=seed, allow_download=allow_download,
                                               memory_format=memory_format)
    return _BACKBONES[key]


@pytest.fixture(autouse=True)
def _cache_backbones(monkeypatch):
    monkeypatch.setattr("tabad.backbones.build_backbone", _cached_build_backbone)


def _cfg(data, out, **kw) -> BenchmarkConfig:
    # Small and without panels unless asked: the full-size run is the module fixture ``bench``.
    base = dict(methods=["padim"], weights=["random:5"], categories=["obj"], resize=40, crop=32, n_panels=0,
                progress=False)
    base.update(kw)
    return BenchmarkConfig(data=data, out=out, **base)


def _quiet(*_):
    pass


@pytest.fixture(scope="module")
def bench(tiny_mvtec, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("tabad.backbones.build_backbone", _cached_build_backbone)
        cfg = BenchmarkConfig(data=tiny_mvtec, out=out, methods=["padim"], weights=["random", "random:1"],
                              resize=64, crop=56, n_panels=2, progress=False, save_predictions=True)
        report = run_benchmark(cfg, log=_quiet)
    return out, report


@pytest.fixture
def fit_calls(monkeypatch):
    from tabad.methods.padim import Padim

    calls: list[int] = []
    original = Padim.fit

    def counting_fit(self, batches, context=None):
        calls.append(1)
        return original(self, batches, context)

    monkeypatch.setattr(Padim, "fit", counting_fit)
    return calls


# --------------------------------------------------------------------------- outputs of one run


def test_results_json_provenance(bench, tiny_mvtec):
    out, report = bench
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["results"] == json.loads(json.dumps(report["results"]))
    prov = on_disk["provenance"]
    assert prov["data_root"] == str(Path(tiny_mvtec).resolve())
    assert prov["seed"] == 0 and prov["image_size"] == [56, 56]
    assert prov["resize"] == 64 and prov["crop"] == 56 and prov["backbone"] == "resnet18"
    assert prov["environment"]["tabad_version"] == tabad.__version__
    weights = {w["label"]: w for w in prov["weights"]}
    assert set(weights) == {"random", "random-1"}
    shas = [w["sha256"] for w in prov["weights"]]
    assert all(len(s) == 64 and int(s, 16) >= 0 for s in shas) and shas[0] != shas[1]
    assert weights["random-1"]["source"] == "random:1"
    cats = prov["categories"]
    assert set(cats) == {"tex", "obj"}
    assert cats["obj"]["kind"] == "object" and cats["tex"]["kind"] == "texture"  # from dataset.json
    assert cats["obj"]["n_train"] == 6 and cats["obj"]["n_test"] == 6 and cats["obj"]["n_test_anomalous"] == 3
    assert cats["obj"]["has_masks"] is True
    assert prov["method_configs"]["padim"]["n_features"] is None
    assert prov["method_configs"]["padim"]["layers"] == ["layer1", "layer2", "layer3"]


def test_results_rows(bench):
    out, report = bench
    results = report["results"]
    assert len(results) == 4  # 2 categories x 1 method x 2 weights
    assert {(r["category"], r["weights"]) for r in results} == {
        (c, w) for c in ("tex", "obj") for w in ("random", "random-1")
    }
    sha = {w["label"]: w["sha256"] for w in report["provenance"]["weights"]}
    for r in results:
        assert RESULT_KEYS <= set(r), RESULT_KEYS - set(r)
        assert r["method"] == "padim"
        assert (r["n_train"], r["n_test"], r["n_test_anomalous"]) == (6, 6, 3)
        for m in ("image_auroc", "pixel_auroc", "aupro", "image_f1max", "pixel_f1max"):
            assert r[m] is not None and 0.0 <= r[m] <= 1.0, m
        assert r["image_auroc"] == 1.0  # the bright square is obvious
        assert r["fit_seconds"] >= 0 and r["predict_ms_per_image"] >= 0
        assert r["weights_sha256"] == sha[r["weights"]]
        assert r["image_size"] == [56, 56] and r["seed"] == 0


def test_csv_and_markdown(bench):
    import csv

    out, report = bench
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert {"category", "method", "weights", "image_auroc", "pixel_auroc", "aupro"} <= set(rows[0])
    md = (out / "results.md").read_text()
    assert "## Image AUROC" in md and "## AUPRO" in md
    assert "| Category | random | random-1 |" in md
    assert "**Texture Avg.**" in md and "**Object Avg.**" in md and "**Overall Avg.**" in md
    for w in report["provenance"]["weights"]:
        assert w["sha256"][:16] in md


def test_panels_are_png(bench):
    out, _ = bench
    for cat in ("tex", "obj"):
        path = out / "panels" / f"{cat}__padim.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width > im.height  # 2 rows x 4 columns


def test_pair_files(bench):
    out, report = bench
    names = sorted(p.name for p in (out / "pairs").iterdir())
    assert names == sorted(f"{c}__padim__{w}.{ext}" for c in ("tex", "obj") for w in ("random", "random-1")
                           for ext in ("json", "panel.npz"))
    with np.load(out / "pairs" / "obj__padim__random.panel.npz") as z:
        assert z["maps"].shape == (2, 56, 56)


def test_save_predictions(bench):
    out, report = bench
    files = sorted(p.name for p in (out / "predictions").glob("*.npz"))
    assert files == sorted(f"{c}__padim__{w}.npz" for c in ("tex", "obj") for w in ("random", "random-1"))
    with np.load(out / "predictions" / "obj__padim__random-1.npz") as z:
        assert z["scores"].shape == (6,) and z["labels"].shape == (6,)
        assert z["maps"].shape == (6, 56, 56) and z["masks"].shape == (6, 56, 56)
        assert z["masks"].dtype == bool and z["files"].shape == (6,)
        assert z["labels"].tolist() == [0, 0, 0, 1, 1, 1]
        assert z["masks"][3:].any(axis=(1, 2)).all() and not z["masks"][:3].any()
        np.testing.assert_allclose(z["scores"], z["maps"].reshape(6, -1).max(1), rtol=1e-6)
        # the stored predictions reproduce the reported numbers
        row = next(r for r in report["results"] if r["category"] == "obj" and r["weights"] == "random-1")
        values = metrics.evaluate(z["labels"], z["scores"], z["masks"], z["maps"])
        for k, v in values.items():
            assert row[k] == pytest.approx(v, abs=1e-9), k


# --------------------------------------------------------------------------- special cases


def test_category_without_ground_truth(tiny_mvtec, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_mvtec / "obj", data / "obj", ignore=shutil.ignore_patterns("ground_truth"))
    report = run_benchmark(_cfg(data, tmp_path / "out", n_panels=2), log=_quiet)
    (r,) = report["results"]
    assert r["pixel_auroc"] is None and r["aupro"] is None and r["pixel_f1max"] is None
    assert r["image_auroc"] == 1.0 and r["image_f1max"] == 1.0
    assert report["provenance"]["categories"]["obj"]["has_masks"] is False
    assert report["provenance"]["categories"]["obj"]["kind"] == "other"  # not an MVTec name, no dataset.json
    md = (tmp_path / "out" / "results.md").read_text()
    assert "## Image AUROC" in md and "## Pixel AUROC" not in md
    assert (tmp_path / "out" / "panels" / "obj__padim.png").is_file()
    stored = json.loads((tmp_path / "out" / "results.json").read_text())["results"][0]
    assert stored["pixel_auroc"] is None


def test_unknown_method(tiny_mvtec, tmp_path):
    with pytest.raises(TabadError, match="unknown method"):
        run_benchmark(_cfg(tiny_mvtec, tmp_path / "out", methods=["padim", "nope"]), log=_quiet)


def test_bad_weights_fail_before_any_work(tiny_mvtec, tmp_path, fit_calls):
    with pytest.raises(WeightsError, match="missing.pt"):
        run_benchmark(_cfg(tiny_mvtec, tmp_path / "out", weights=["random:5", str(tmp_path / "missing.pt")]),
                      log=_quiet)
    assert fit_calls == []


def test_duplicate_weights_labels(tiny_mvtec, tmp_path):
    with pytest.raises(TabadError, match="share the label"):
        run_benchmark(_cfg(tiny_mvtec, tmp_path / "out", weights=["random:5", "random:5"]), log=_quiet)


# --------------------------------------------------------------------------- resume


def test_resume_reuses_and_recomputes(tiny_mvtec, tmp_path, fit_calls):
    out = tmp_path / "out"
    pair = out / "pairs" / "obj__padim__random-5.json"

    first = run_benchmark(_cfg(tiny_mvtec, out), log=_quiet)["results"]
    assert len(fit_calls) == 1
    mtime = pair.stat().st_mtime_ns

    again = run_benchmark(_cfg(tiny_mvtec, out), log=_quiet)["results"]
    assert len(fit_calls) == 1  # reused, not refitted
    assert again == first  # fit_seconds included: the stored numbers come back
    assert pair.stat().st_mtime_ns == mtime
    assert json.loads((out / "results.json").read_text())["results"] == first

    run_benchmark(_cfg(tiny_mvtec, out, resume=False), log=_quiet)
    assert len(fit_calls) == 2
    assert pair.stat().st_mtime_ns != mtime or json.loads(pair.read_text())["fit_seconds"] != first[0]["fit_seconds"]

    # "random:5" has the same weights whatever --seed says, so only the seed changes the key.
    seeded = run_benchmark(_cfg(tiny_mvtec, out, seed=1), log=_quiet)["results"]
    assert len(fit_calls) == 3 and seeded[0]["seed"] == 1
    run_benchmark(_cfg(tiny_mvtec, out, seed=1), log=_quiet)
    assert len(fit_calls) == 3

    run_benchmark(_cfg(tiny_mvtec, out, seed=1, method_options={"padim": {"n_features": 20}}), log=_quiet)
    assert len(fit_calls) == 4

    pair.write_text("{ damaged")
    run_benchmark(_cfg(tiny_mvtec, out, seed=1, method_options={"padim": {"n_features": 20}}), log=_quiet)
    assert len(fit_calls) == 5
    assert json.loads(pair.read_text())["config"]["n_features"] == 20

    other = run_benchmark(_cfg(tiny_mvtec, out, seed=1, crop=24, method_options={"padim": {"n_features": 20}}),
                          log=_quiet)["results"]
    assert len(fit_calls) == 6 and other[0]["image_size"] == [24, 24]


def test_resume_with_more_panels(tiny_mvtec, tmp_path):
    out = tmp_path / "out"
    run_benchmark(_cfg(tiny_mvtec, out, n_panels=1), log=_quiet)
    run_benchmark(_cfg(tiny_mvtec, out, n_panels=3), log=_quiet)
    assert (out / "panels" / "obj__padim.png").is_file()


# --------------------------------------------------------------------------- panel selection


def _samples(types):
    return [Sample(Path(f"{t}_{i}.png"), "c", int(t != "good"), t, None) for i, t in enumerate(types)]


def test_select_panel_indices_one_per_defect_type_and_a_normal():
    samples = _samples(["good", "good", "crack", "crack", "scratch", "hole", "hole"])
    idx = select_panel_indices(samples, 4)
    assert len(idx) == 4 and len(set(idx)) == 4
    assert {samples[i].defect_type for i in idx} == {"good", "crack", "scratch", "hole"}
    assert idx[:3] == [2, 4, 5] and idx[-1] == 0  # first of each type, then a normal image


def test_select_panel_indices_fills_with_more_anomalies():
    samples = _samples(["good", "crack", "crack", "crack", "good"])
    assert select_panel_indices(samples, 3) == [1, 2, 0]
    assert select_panel_indices(samples, 10) == [1, 2, 3, 0]


def test_select_panel_indices_edge_cases():
    samples = _samples(["good", "crack", "scratch"])
    assert select_panel_indices(samples, 0) == []
    assert select_panel_indices(samples, -1) == []
    assert select_panel_indices(samples, 1) == [1]
    assert select_panel_indices(samples, 2) == [1, 0]
    assert select_panel_indices(_samples(["crack", "scratch", "crack"]), 2) == [0, 1]  # no normals
    assert select_panel_indices(_samples(["good", "good"]), 2) == [0]  # no anomalies


# --------------------------------------------------------------------------- several roots, cross-dataset


def test_two_dataset_roots_in_one_table(tiny_mvtec, tmp_path):
    other = tmp_path / "other_ds"
    shutil.copytree(tiny_mvtec, other)
    report = run_benchmark(_cfg([tiny_mvtec, other], tmp_path / "out", categories=None), log=_quiet)
    names = sorted({r["category"] for r in report["results"]})
    first = Path(tiny_mvtec).resolve().name
    assert names == sorted([f"{first}/obj", f"{first}/tex", "other_ds/obj", "other_ds/tex"])
    prov = report["provenance"]
    assert prov["data_roots"] == [str(Path(tiny_mvtec).resolve()), str(other.resolve())]
    assert prov["categories"]["other_ds/obj"]["root"] == str(other.resolve())
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| **other_ds Avg.** |" in md and f"| **{first} Avg.** |" in md
    # same data under two roots: same numbers
    by = {r["category"]: r for r in report["results"]}
    assert by[f"{first}/obj"]["image_auroc"] == by["other_ds/obj"]["image_auroc"]
    with pytest.raises(TabadError, match="layouts"):
        run_benchmark(_cfg([tiny_mvtec, other], tmp_path / "o2", layout=["mvtec"]), log=_quiet)


def test_non_square_geometry(tiny_mvtec, tmp_path):
    report = run_benchmark(_cfg(tiny_mvtec, tmp_path / "out", resize=(48, 64), crop=None, save_predictions=True),
                           log=_quiet)
    (row,) = report["results"]
    assert row["image_size"] == [48, 64]
    with np.load(next((tmp_path / "out" / "predictions").glob("*.npz"))) as z:
        assert z["maps"].shape[1:] == (48, 64) and z["masks"].shape[1:] == (48, 64)
    assert "no crop" in (tmp_path / "out" / "results.md").read_text()


def test_cross_dataset_weights_are_named(tiny_mvtec, tmp_path):
    """A TAB checkpoint with its backbone.json: the report says what it was trained on and that it differs."""
    import hashlib

    import torch
    import torchvision

    run = tmp_path / "tab_btad"
    run.mkdir()
    torch.manual_seed(3)
    torch.save(torchvision.models.resnet18().state_dict(), run / "backbone.pt")
    sha = hashlib.sha256((run / "backbone.pt").read_bytes()).hexdigest()
    record = {"kind": "tab-backbone", "sha256": sha, "data_roots": ["/data/btad"], "categories": ["01", "02"],
              "text_encoder": "minilm:x", "prompts": "idpa", "loss": "tab", "synthetic": "nsa", "epochs": 2,
              "init": {"source": "random:0"}, "seed": 0}
    (run / "backbone.json").write_text(json.dumps(record))
    report = run_benchmark(_cfg(tiny_mvtec, tmp_path / "out", weights=[str(run / "backbone.pt")]), log=_quiet)
    (w,) = report["provenance"]["weights"]
    assert w["label"] == "tab_btad" and w["trained_on"]["data_roots"] == [str(Path("/data/btad").resolve())]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "Cross-dataset" in md and "/data/btad" in md and str(Path(tiny_mvtec).resolve()) in md
    # a record of another file (sha mismatch) is not credited
    other = tmp_path / "tab_other"
    shutil.copytree(run, other)  # another path: the module's backbone cache is keyed by source
    record["sha256"] = "0" * 64
    (other / "backbone.json").write_text(json.dumps(record))
    report = run_benchmark(_cfg(tiny_mvtec, tmp_path / "out2", weights=[str(other / "backbone.pt")]), log=_quiet)
    assert report["provenance"]["weights"][0]["trained_on"] is None


def test_paper_geometry_per_method(tiny_mvtec, tmp_path, monkeypatch):
    """geometry="paper": each method is fed its reference input size; the splits are decoded per geometry."""
    from tabad.datasets.transforms import Geometry
    from tabad.methods.padim import PadimConfig
    from tabad.methods.patchcore import PatchCoreConfig

    # Each method's config class owns its reference geometry.
    assert PadimConfig.paper_geometry == Geometry(256, 224)
    monkeypatch.setattr(PadimConfig, "paper_geometry", Geometry(48, None))
    monkeypatch.setattr(PatchCoreConfig, "paper_geometry", Geometry(40, 32))
    report = run_benchmark(_cfg(tiny_mvtec, tmp_path / "out", methods=["padim", "patchcore"], geometry="paper"),
                           log=_quiet)
    sizes = {r["method"]: r["image_size"] for r in report["results"]}
    assert sizes == {"padim": [48, 48], "patchcore": [32, 32]}
    assert report["provenance"]["method_geometry"]["padim"] == {"resize": 48, "crop": None}


# --------------------------------------------------------------------------- methods without a backbone


def test_method_without_backbone_runs_once_per_category(tiny_mvtec, tmp_path, monkeypatch):
    """uses_backbone=False (DRAEM, the auto-encoder): one pair per category, whatever the weights sources."""
    from dataclasses import dataclass
    from typing import ClassVar

    import torch

    from tabad.datasets.transforms import Geometry
    from tabad.methods import REGISTRY
    from tabad.methods.base import AnomalyModel, AnomalyOutput

    @dataclass(frozen=True)
    class MeanImageConfig:
        paper_geometry: ClassVar[Geometry] = Geometry(64, None)
        batch_size: int = 4

    class MeanImage(AnomalyModel):
        """|x - mean training image|: a method with no backbone at all."""

        name = "mean-image"
        uses_backbone = False
        config_class = MeanImageConfig

        def __init__(self, backbone, config=MeanImageConfig()):
            assert backbone is None
            super().__init__(backbone, config)
            self.register_buffer("mean", torch.empty(0))

        @property
        def normalisation(self):
            return None

        def fit(self, data, context=None):
            self.mean = torch.cat(list(data)).mean(0)
            return self

        def forward(self, x):
            maps = (x - self.mean).abs().mean(1)
            return AnomalyOutput(maps.flatten(1).amax(1), maps)

    monkeypatch.setitem(REGISTRY, "mean-image", MeanImage)
    report = run_benchmark(_cfg(tiny_mvtec, tmp_path / "out", methods=["padim", "mean-image"],
                                weights=["random:0", "random:1"], categories=None), log=_quiet)
    rows = [(r["category"], r["method"], r["weights"]) for r in report["results"]]
    assert sorted(r for r in rows if r[1] == "mean-image") == [("obj", "mean-image", "own"), ("tex", "mean-image", "own")]
    assert sum(r[1] == "padim" for r in rows) == 4
    own = [r for r in report["results"] if r["method"] == "mean-image"]
    assert all(r["weights_sha256"] == "" and r["image_auroc"] > 0.9 for r in own)  # bright squares are found
