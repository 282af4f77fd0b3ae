"""The leave-one-category-out few-shot protocol (``run_fewshot``) on the tiny dataset."""

from __future__ import annotations

import json

import pytest
import torch

from tabad.errors import ConfigError, TabadError
from tabad.fewshot import FewShotConfig, fewshot_table, regad_config, run_fewshot, support_indices
from tabad.methods.regad import RegAD


def _cfg(data, out, **kw) -> FewShotConfig:
    base = dict(shots=[1, 2], rounds=2, epochs=1, resize=48, crop=48, weights=["random:0"], progress=False,
                method_options={"batch_size": 4})
    base.update(kw)
    return FewShotConfig(data=data, out=out, **base)


def _quiet(*_):
    pass


@pytest.fixture
def trained_on(monkeypatch):
    """Records, per call of fit_registration, the categories and image counts it was given."""
    calls: list[dict[str, int]] = []
    original = RegAD.fit_registration

    def recording(self, train_sets, **kw):
        calls.append({c: len(x) for c, x in train_sets.items()})
        return original(self, train_sets, **kw)

    monkeypatch.setattr(RegAD, "fit_registration", recording)
    return calls


@pytest.fixture(scope="module")
def run(tiny_mvtec, tmp_path_factory):
    out = tmp_path_factory.mktemp("fewshot")
    calls: list[dict] = []
    original = RegAD.fit_registration

    def recording(self, train_sets, **kw):
        calls.append({c: x.clone() for c, x in train_sets.items()})
        return original(self, train_sets, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RegAD, "fit_registration", recording)
        report = run_fewshot(_cfg(tiny_mvtec, out), log=_quiet)
    return out, report, calls


def test_leave_one_out_never_trains_on_the_target(run, tiny_mvtec):
    from tabad.datasets.loader import load_split
    from tabad.datasets.readers import read_category
    from tabad.datasets.transforms import Geometry

    _, report, calls = run
    # one model per target (shared by K = 1 and 2), trained on exactly the other category's train/good images
    assert [sorted(c) for c in calls] == [["tex"], ["obj"]]
    for call, other in zip(calls, ["tex", "obj"]):
        want = load_split(read_category(tiny_mvtec, other).train, Geometry(48, 48)).images
        assert torch.equal(call[other], want)
    for r in report["results"]:
        assert r["category"] not in r["train_categories"] and r["n_train_registration"] == 6


def test_outputs_and_provenance(run):
    out, report, _ = run
    assert [(r["category"], r["shots"]) for r in report["results"]] == [("obj", 1), ("obj", 2), ("tex", 1), ("tex", 2)]
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["results"] == json.loads(json.dumps(report["results"]))
    prov = report["provenance"]
    assert prov["shots"] == [1, 2] and prov["rounds"] == 2 and prov["epochs"] == 1 and prov["seed"] == 668
    assert prov["image_size"] == [48, 48] and prov["input_normalisation"] is False
    assert len(prov["weights"][0]["sha256"]) == 64
    assert prov["support_indices"]["obj"]["2"] == [support_indices(6, 2, 668, r) for r in range(2)]
    for r in report["results"]:
        assert len(r["per_round"]) == 2 and r["rounds"] == 2
        assert [x["support_indices"] for x in r["per_round"]] == prov["support_indices"][r["category"]][str(r["shots"])]
        assert all(len(files) == r["shots"] for files in r["support_files"])
        vals = [x["image_auroc"] for x in r["per_round"]]
        assert r["image_auroc"] == pytest.approx(sum(vals) / 2)
        assert 0 <= r["pixel_auroc"] <= 1 and 0 <= r["aupro"] <= 1 and r["image_auroc_std"] >= 0
        assert r["config"]["image_size"] == 48 and r["train_shots"] == 4
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("category,kind,method,weights,shots,rounds,image_auroc,image_auroc_std")
    assert len(csv_lines) == 5
    md = (out / "results.md").read_text()
    assert "| Category | 1-shot | 2-shot |" in md and "**Texture Avg.**" in md and "**Overall Avg.**" in md
    assert "±" in md
    assert not (out / "train").exists() or not any((out / "train").iterdir())  # checkpoints of finished targets go


def test_rerun_reuses_finished_results(run, tiny_mvtec, trained_on):
    out, report, _ = run
    again = run_fewshot(_cfg(tiny_mvtec, out), log=_quiet)
    assert trained_on == []
    assert [r["image_auroc"] for r in again["results"]] == [r["image_auroc"] for r in report["results"]]
    # one more K: only that K is computed (its model trained again, the others reused)
    more = run_fewshot(_cfg(tiny_mvtec, out, shots=[1, 2, 3], categories=["obj"]), log=_quiet)
    assert trained_on == [{"tex": 6}]
    assert [r["shots"] for r in more["results"]] == [1, 2, 3]
    assert more["results"][0]["image_auroc"] == report["results"][0]["image_auroc"]


def test_train_per_shot_trains_one_model_per_k(tiny_mvtec, tmp_path, trained_on):
    report = run_fewshot(_cfg(tiny_mvtec, tmp_path, categories=["tex"], shots=[1, 2], rounds=1,
                              train_per_shot=True), log=_quiet)
    assert trained_on == [{"obj": 6}, {"obj": 6}]
    assert [r["train_shots"] for r in report["results"]] == [1, 2]


def test_support_indices():
    a = support_indices(10, 4, 668, 0)
    assert a == support_indices(10, 4, 668, 0) and len(set(a)) == 4 and all(0 <= i < 10 for i in a)
    assert a != support_indices(10, 4, 668, 1) or a != support_indices(10, 4, 669, 0)
    with pytest.raises(ConfigError, match="cannot draw"):
        support_indices(3, 4, 0, 0)


def test_bad_settings(tiny_mvtec, tmp_path):
    with pytest.raises(ConfigError, match="no option"):
        regad_config(_cfg(tiny_mvtec, tmp_path, method_options={"nope": 1}))
    with pytest.raises(TabadError, match="unknown target"):
        run_fewshot(_cfg(tiny_mvtec, tmp_path, categories=["zzz"]), log=_quiet)
    with pytest.raises(TabadError, match="at least 2 categories"):
        run_fewshot(_cfg(tiny_mvtec / "obj", tmp_path), log=_quiet)
    assert regad_config(_cfg(tiny_mvtec, tmp_path, epochs=7, crop=None, resize=40)).epochs == 7
    assert regad_config(_cfg(tiny_mvtec, tmp_path, crop=None, resize=40)).image_size == 40


def test_table_averages_round_by_round():
    def row(cat, kind, values):
        return {"category": cat, "kind": kind, "weights": "w", "shots": 2, "image_auroc": sum(values) / 2,
                "image_auroc_std": abs(values[0] - values[1]) / 2, "per_round": [{"image_auroc": v} for v in values]}

    table = fewshot_table([row("a", "texture", [0.9, 0.7]), row("b", "object", [0.5, 0.9])], "image_auroc")
    lines = table.splitlines()
    assert lines[0] == "| Category | 2-shot |"
    assert lines[2] == "| a | 80.00 ± 10.00 |" and lines[3] == "| b | 70.00 ± 20.00 |"
    # round averages 0.7 and 0.8: mean 75, std 5 (not the mean of the stds)
    assert lines[-1] == "| **Overall Avg.** | 75.00 ± 5.00 |"
