"""The side-by-side harness in ``benchmarks/harness/`` and the comparisons built on it.

* Every committed side-by-side report re-renders byte for byte from its committed JSON.
* The harness's pieces (sets, child environment and measurement, timing summaries, scoring,
  report files, the anomalib side's pure functions) on small inputs.
* One end-to-end run of ``padim_vs_anomalib.py`` on the tiny dataset: the real tabad child,
  and a stand-in for anomalib's interpreter that writes the runner's output format (anomalib
  itself is never installed in tabad's environment).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

from harness import anomalib_side, report, sidebyside as sbs  # noqa: E402

REPORTS = [("padim_vs_anomalib", "padim_vs_anomalib"),
           ("patchcore_vs_anomalib", "patchcore_vs_anomalib"),
           ("patchcore_vs_anomalib", "patchcore_vs_anomalib_procedural"),
           ("rd4ad_vs_anomalib", "rd4ad_vs_anomalib"),
           ("rd4ad_vs_anomalib", "rd4ad_vs_anomalib_procedural"),
           ("export_parity", "export_parity"),
           ("export_latency", "export_latency")]


# ----------------------------------------------------------------------------- committed reports
@pytest.mark.parametrize("module,name", REPORTS)
def test_committed_report_rerenders_byte_identical(module, name):
    mod = __import__(module)
    stem = BENCH / "reports" / name
    assert mod.render(json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))) == \
        stem.with_suffix(".md").read_text(encoding="utf-8")


@pytest.mark.parametrize("module,name", REPORTS[1:2] + REPORTS[3:4])
def test_render_only_writes_the_md_and_leaves_the_json(module, name, tmp_path):
    src = BENCH / "reports" / name
    js = (tmp_path / name).with_suffix(".json")
    js.write_bytes(src.with_suffix(".json").read_bytes())
    assert __import__(module).main(["--render-only", "--report", str(tmp_path / name)]) == 0
    assert js.read_bytes() == src.with_suffix(".json").read_bytes()
    assert js.with_suffix(".md").read_bytes() == src.with_suffix(".md").read_bytes()


def test_every_comparison_and_runner_parses_help():
    for name in ("padim_vs_anomalib", "patchcore_vs_anomalib", "rd4ad_vs_anomalib", "anomalib_padim_runner",
                 "anomalib_patchcore_runner", "anomalib_rd4ad_runner", "export_latency", "anomalib_export_runner"):
        with pytest.raises(SystemExit) as e:
            __import__(name).main(["--help"])
        assert e.value.code == 0


def test_runner_side_imports_neither_tabad_nor_torch():
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import harness.anomalib_side, harness.report; "
            "import anomalib_padim_runner, anomalib_patchcore_runner, anomalib_rd4ad_runner; "
            "bad = [m for m in ('tabad', 'torch', 'anomalib', 'numpy') if m in sys.modules]; "
            "assert not bad, bad")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True)


# ----------------------------------------------------------------------------- harness pieces
def test_weights_file_is_the_committed_reports_file(tmp_path):
    import torch

    prov = json.loads((BENCH / "reports" / "padim_vs_anomalib.json").read_text())["provenance"]
    if torch.__version__ != prov["tabad_stack"]["torch"]:
        pytest.skip(f"the committed sha256 was written by torch {prov['tabad_stack']['torch']}")
    w = sbs.write_weights(tmp_path / "work")
    assert w.record() == prov["weights"] and w.path.name == prov["weights"]["file"]
    assert [p.name for p in (tmp_path / "work").iterdir()] == [w.path.name]  # no temporary folder left


def test_rd4ad_initial_weights_are_the_committed_reports(tmp_path):
    import torch

    import rd4ad_vs_anomalib

    prov = json.loads((BENCH / "reports" / "rd4ad_vs_anomalib.json").read_text())["provenance"]
    if torch.__version__ != prov["tabad_stack"]["torch"]:
        pytest.skip(f"the committed sha256 was written by torch {prov['tabad_stack']['torch']}")
    _, info = rd4ad_vs_anomalib.make_init(sbs.write_weights(tmp_path).path, tmp_path, 0)
    assert info == prov["init"]


def test_parse_sets(tiny_mvtec, capsys):
    data = tiny_mvtec.parent
    found = sbs.parse_sets(data, f"{tiny_mvtec.name}/obj/mvtec, nowhere/obj/mvtec")
    assert found == [sbs.Target(tiny_mvtec, "obj", "mvtec")]
    assert "skipping nowhere/obj/mvtec" in capsys.readouterr().err
    assert found[0].name == f"{tiny_mvtec.name}__obj"
    extra = sbs.parse_sets(data, "", [tiny_mvtec])
    assert [(t.category, t.layout) for t in extra] == [("obj", "mvtec"), ("tex", "mvtec")]
    with pytest.raises(SystemExit):
        sbs.parse_sets(data, f"{tiny_mvtec.name}/obj/other")


def test_child_env_and_prefix(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    t = sbs.child_env(3, "tabad")
    assert t["PYTHONPATH"].split(os.pathsep) == [str(REPO / "src"), "/elsewhere"]
    assert t["OMP_NUM_THREADS"] == t["MKL_NUM_THREADS"] == t["OPENBLAS_NUM_THREADS"] == "3"
    assert "MALLOC_MMAP_THRESHOLD_" not in t
    a = sbs.child_env(1, "anomalib", malloc=True)
    assert "PYTHONPATH" not in a and a["MALLOC_MMAP_THRESHOLD_"] == "4194304"
    assert sbs.env_prefix(2, "tabad") == "PYTHONPATH=src OMP_NUM_THREADS=2"
    assert sbs.env_prefix(1, "anomalib", True) == "OMP_NUM_THREADS=1 MALLOC_MMAP_THRESHOLD_=4194304"


def test_run_child_measures_and_raises(tmp_path):
    proc = sbs.run_child([sys.executable, "-c", "print('hi')"], dict(os.environ), tmp_path / "ok.log")
    assert proc["wall_seconds"] > 0 and proc["peak_rss_mb"] > 1 and proc["cpu_seconds"] >= 0
    assert (tmp_path / "ok.log").read_text().strip() == "hi"
    with pytest.raises(RuntimeError, match="boom"):
        sbs.run_child([sys.executable, "-c", "raise SystemExit('boom')"], dict(os.environ), tmp_path / "bad.log")


def test_timing_summary_ratios_and_slim_runs():
    def run(wall, cpu, fit):
        return {"process": {"wall_seconds": wall, "cpu_seconds": cpu, "peak_rss_mb": 100.0},
                "phases": {"fit_seconds": fit, "predict_ms_per_image": 2.0}}

    runs = {"tabad": [run(3.0, 4.0, 1.0), run(1.0, 2.0, 3.0), run(2.0, 3.0, 2.0)],
            "anomalib": [run(8.0, 8.0, 4.0), run(4.0, 6.0, 4.0), run(6.0, 7.0, 4.0)]}
    t = {side: sbs.timing_summary(rs) for side, rs in runs.items()}
    assert t["tabad"] == {"wall_seconds": 2.0, "cpu_seconds": 3.0, "peak_rss_mb": 100.0, "fit_seconds": 2.0,
                          "predict_ms_per_image": 2.0, "wall_seconds_min": 1.0, "repeats": 3}
    assert sbs.ratios(t) == {"wall_ratio_tabad_over_anomalib": 2.0 / 6.0, "wall_ratio_of_minimums": 1.0 / 4.0,
                             "cpu_ratio_tabad_over_anomalib": 3.0 / 7.0}
    slim = sbs.slim_runs(runs)
    assert slim["anomalib"][0] == {"process": runs["anomalib"][0]["process"], "timings": runs["anomalib"][0]["phases"]}
    assert slim["tabad"][0] == {"process": runs["tabad"][0]["process"], "fit_seconds": 1.0, "predict_ms_per_image": 2.0}


def _predictions(order, rng, mask_shift=0):
    names = [f"good/{i:03d}.png" for i in range(4)] + [f"cut/{i:03d}.png" for i in range(4)]
    labels = np.array([0] * 4 + [1] * 4)
    masks = np.zeros((8, 16, 16), dtype=np.uint8)
    masks[4:, 4:8, 4 + mask_shift:8 + mask_shift] = 1
    maps = rng.random((8, 16, 16)).astype(np.float32) + 2.0 * masks
    pred = {"labels": labels, "masks": masks, "maps": maps, "scores": maps.reshape(8, -1).max(1)}
    pred = {k: v[order] for k, v in pred.items()}
    return pred, [f"/data/cat/test/{names[i]}" for i in order]


def test_score_pair_aligns_by_file_and_scores_on_both_masks():
    rng = np.random.default_rng(0)
    t, files = _predictions(np.arange(8), rng)
    t["files"] = np.array(files)
    order = np.array([3, 7, 0, 4, 1, 5, 2, 6])  # anomalib's own order, same images
    a = {k: v[order] for k, v in t.items() if k != "files"}
    a["image_paths"] = np.array([f"cat/test/{Path(f).parent.name}/{Path(f).name}" for f in np.array(files)[order]])
    pair = sbs.score_pair(a, t, ("image_auroc", "pixel_auroc"), 0.01)
    assert pair["agreement"]["aligned"] and pair["agreement"]["image_score_spearman"] == pytest.approx(1.0)
    assert pair["diff"]["image_auroc"] == 0.0 and pair["parity_ok"] and "diff_same_masks" not in pair
    a["masks"] = np.roll(a["masks"], 1, axis=2)  # anomalib's masks shifted by one pixel
    pair = sbs.score_pair(a, t, ("image_auroc", "pixel_auroc"), 0.01)
    assert pair["agreement"]["gt_mask_pixels_differing"] > 0
    assert pair["anomalib_on_tabad_masks"]["pixel_auroc"] == pytest.approx(pair["tabad"]["pixel_auroc"])
    assert pair["diff_same_masks"]["pixel_auroc"] == pytest.approx(0.0) and pair["parity_ok_same_masks"]


def test_report_blocks_and_files(tmp_path):
    assert [report.fmt(x) for x in (None, True, False, 0.5, 3)] == ["–", "yes", "**NO**", "0.5000", "3"]
    assert report.table(["a", "b"], [[1, "x"]], ["---", "---:"]) == ["| a | b |", "|---|---:|", "| 1 | x |"]
    data = {"x": 1.5}
    js, md = report.write_report(data, tmp_path / "r", lambda r: f"x = {r['x']}\n")
    assert json.loads(js.read_text()) == data and md.read_text() == "x = 1.5\n"
    js.write_text(json.dumps({"x": 2}))
    before = js.read_bytes()
    report.render_only(tmp_path / "r", lambda r: f"x = {r['x']}\n")
    assert md.read_text() == "x = 2\n" and js.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


# ----------------------------------------------------------------------------- anomalib side (no anomalib needed)
Row = namedtuple("Row", "label_index image_path mask_path")


class _Samples:
    def __init__(self, rows):
        self.rows = rows

    def itertuples(self):
        return iter(self.rows)


@pytest.mark.parametrize("layout,image,mask", [
    ("mvtec", "c/test/cut/000.png", "c/ground_truth/cut/000_mask.png"),
    ("mvtec-stem", "c/test/cut/000.jpg", "c/ground_truth/cut/000.png"),
    ("mvtec3d", "c/test/cut/rgb/000.png", "c/test/cut/gt/000.png"),
])
def test_check_pairing(layout, image, mask):
    good = Row(0, "c/test/good/000.png", "")
    assert anomalib_side.check_pairing(_Samples([good, Row(1, image, mask)]), layout) == \
        {"n_abnormal": 1, "n_pairs_verified": 1}
    wrong = mask.replace("000", "001")
    with pytest.raises(SystemExit, match="wrong mask"):
        anomalib_side.check_pairing(_Samples([good, Row(1, image, wrong)]), layout)


def test_folder_dirs(tiny_mvtec):
    d = anomalib_side.folder_dirs(tiny_mvtec / "obj", "mvtec")
    assert d == {"normal_dir": "train/good", "abnormal_dir": ["test/square"], "normal_test_dir": "test/good",
                 "mask_dir": ["ground_truth/square"], "defects": ["square"]}


# ----------------------------------------------------------------------------- end to end (fake anomalib)
FAKE_RUNNER = r'''
"""Stands in for anomalib's interpreter running anomalib_padim_runner.py: writes its output format.
Maps are the grey levels of the resized, centre-cropped image (the tiny set's defects are bright)."""
import argparse, json, sys
from pathlib import Path
import numpy as np
from PIL import Image

runner, argv = Path(sys.argv[1]), sys.argv[2:]
assert runner.name == "anomalib_padim_runner.py" and runner.is_file(), runner
p = argparse.ArgumentParser()
for a in ("--data", "--category", "--layout", "--weights", "--idx", "--out"):
    p.add_argument(a)
for a in ("--resize", "--crop", "--threads", "--seed"):
    p.add_argument(a, type=int)
args = p.parse_args(argv)
assert len(json.loads(Path(args.idx).read_text())) == 100 and Path(args.weights).is_file()
root, out = Path(args.data), Path(args.out)
out.mkdir(parents=True, exist_ok=True)
lo = (args.resize - args.crop) // 2

def load(path, mode, resample):
    img = Image.open(path).convert(mode).resize((args.resize, args.resize), resample)
    return np.asarray(img)[lo:lo + args.crop, lo:lo + args.crop]

files = sorted((root / args.category / "test").glob("*/*.png"))
labels = np.array([int(f.parent.name != "good") for f in files])
maps = np.stack([load(f, "L", Image.BILINEAR).astype(np.float32) / 255 for f in files])
masks = np.stack([(load(root / args.category / "ground_truth" / f.parent.name / f"{f.stem}_mask.png", "L",
                        Image.NEAREST) > 0).astype(np.uint8) if l else np.zeros_like(maps[0], np.uint8)
                  for f, l in zip(files, labels)])
np.savez_compressed(out / "predictions.npz", scores=maps.reshape(len(maps), -1).max(1), maps=maps, labels=labels,
                    masks=masks, image_paths=np.array([str(f.relative_to(root)) for f in files]))
own = {"image_AUROC": 0.5, "pixel_AUROC": 0.5, "pixel_AUPRO": 0.5, "image_F1Max": 0.5, "pixel_F1Max": 0.5}
timings = {k: 0.01 for k in ("import_seconds", "fit_seconds", "fit_gaussian_seconds", "fit_validation_pass_seconds",
                             "test_seconds", "predict_ms_per_image", "model_forward_ms_per_image")}
n_train = len(list((root / args.category / "train" / "good").glob("*.png")))
(out / "anomalib.json").write_text(json.dumps({
    "n_train": n_train, "n_test": len(files), "mask_pairing": {"n_abnormal": int(labels.sum())},
    "metrics_anomalib_evaluator": own, "metrics_anomalib_on_raw_minmax": own,
    "postprocessor": {"image_scores_clamped_to_0": 0, "n_pixels": int(maps.size)}, "timings": timings,
    "versions": {"anomalib": "fake"}}))
(out / "engine").mkdir()
'''


def test_padim_side_by_side_end_to_end(tiny_mvtec, tmp_path):
    """The real tabad child on the tiny ``obj`` set against a fake anomalib; the report renders and re-renders."""
    import padim_vs_anomalib

    fake = tmp_path / "fake-anomalib-python"
    fake.write_text(f"#!{sys.executable}\n{FAKE_RUNNER}")
    fake.chmod(0o755)
    stem = tmp_path / "report" / "padim"
    argv = ["--data", str(tiny_mvtec.parent), "--sets", f"{tiny_mvtec.name}/obj/mvtec", "--resize", "64",
            "--crop", "56", "--threads", "1", "--anomalib-python", str(fake), "--work", str(tmp_path / "work"),
            "--report", str(stem)]
    assert padim_vs_anomalib.main(argv) == 0
    rep = json.loads(stem.with_suffix(".json").read_text())
    (e,) = rep["categories"]
    assert e["tabad"]["metrics_tabad_code"] == pytest.approx(e["tabad"]["metrics_results_json"], abs=1e-6)
    assert e["agreement"]["aligned"] and e["agreement"]["gt_mask_pixels_differing"] == 0
    assert e["anomalib"]["metrics_tabad_code"]["image_auroc"] == 1.0  # the bright squares
    assert e["timing"]["tabad"]["wall_seconds"] > 0 and e["timing"]["anomalib"]["fit_seconds"] == 0.01
    assert not (tmp_path / "work" / f"{tiny_mvtec.name}__obj" / "anomalib_r0" / "engine").exists()
    prov = rep["provenance"]
    assert prov["weights"]["sha256"] == sbs.sha256_file(tmp_path / "work" / sbs.WEIGHTS_FILE)
    assert prov["tabad_default_idx_equal"] is True and prov["anomalib_stack"] == {"anomalib": "fake"}
    assert prov["child_env"]["OMP_NUM_THREADS"] == "1" and prov["tabad_stack"]["tabad_version"]
    assert e["commands"]["tabad"].startswith("PYTHONPATH=src OMP_NUM_THREADS=1 ")
    md = stem.with_suffix(".md").read_text()
    assert md == padim_vs_anomalib.render(rep) and "| obj | image_auroc |" in md
    stem.with_suffix(".md").unlink()
    assert padim_vs_anomalib.main(["--render-only", "--report", str(stem)]) == 0
    assert stem.with_suffix(".md").read_text() == md
