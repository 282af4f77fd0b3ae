"""tabad fit / predict: calibrated model files, predictions on new images, resume, bad files, the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tabad
from tabad.cli import main
from tabad.errors import ConfigError, DataError, TabadError
from tabad.inspection.fit import FitConfig, fit_model, normal_images, split_calibration
from tabad.inspection.pipeline import InspectionModel, load_inspection
from tabad.inspection.predict import PredictConfig, collect_images, run_predict

SMALL = dict(backbone="resnet18", weights="random:0", resize=48, crop=40, method="padim",
             method_options={"n_features": 20}, progress=False)


def _quiet(*_):
    pass


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory) -> Path:
    """A plain folder (with a subfolder) of 12 good parts: smooth noisy discs of varying size."""
    root = tmp_path_factory.mktemp("good")
    rng = np.random.default_rng(0)
    for i in range(12):
        yy, xx = np.mgrid[0:56, 0:64]
        disc = (yy - 28) ** 2 + (xx - 32) ** 2 < (15 + rng.integers(0, 3)) ** 2
        img = np.where(disc, 70.0, 130.0)[..., None] + rng.normal(0, 3, (56, 64, 3))
        folder = root / ("batch2" if i >= 8 else "")
        folder.mkdir(exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def model_file(good_folder, tmp_path_factory) -> Path:
    return fit_model(FitConfig(data=good_folder, out=tmp_path_factory.mktemp("m") / "m.tabad", **SMALL), log=_quiet)


def _defective(path: Path, size=(56, 64)) -> Path:
    rng = np.random.default_rng(1)
    img = np.full((*size, 3), 130.0) + rng.normal(0, 3, (*size, 3))
    img[20:34, 24:40] = 250  # a bright patch
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path)
    return path


def test_normal_images_from_a_folder_and_from_a_category(good_folder, tiny_mvtec):
    files, source = normal_images(good_folder)
    assert len(files) == 12 and source == "folder of images"
    files, source = normal_images(tiny_mvtec / "obj")
    assert len(files) == 6 and "train split" in source and all("train" in str(f) for f in files)


def test_calibration_split_is_seeded_and_disjoint():
    a, b = split_calibration(20, 0.2, seed=3)
    assert len(b) == 4 and not set(a) & set(b) and sorted([*a, *b]) == list(range(20))
    assert (split_calibration(20, 0.2, seed=3)[1] == b).all()
    with pytest.raises(ConfigError, match="too few"):
        split_calibration(2, 0.2, 0)


def test_model_file_records_thresholds_and_training(model_file):
    model = load_inspection(model_file)
    assert isinstance(model, InspectionModel)
    c = model.calibration
    assert c.image.rule == "fpr" and c.image.target == 0.01 and c.image.n == 2  # 20 % of 12, rounded
    assert c.image.achieved == 0.0 and c.image.value >= c.image.low
    training = model.header["training"]
    assert training["n_train"] == 10 and training["n_calibration"] == 2 and training["created"]
    assert model.header["inspection"]["geometry"] == {"resize": 48, "crop": 40}
    assert model.input_size == (40, 40)


def test_thresholds_are_those_of_the_held_out_images(model_file):
    """The held-out good images, scored again through the saved model, sit at or below the threshold."""
    model = tabad.load_model(model_file)
    held_out = model.header["training"]["calibration_files"]
    preds = model.predict(held_out)
    assert max(p.score for p in preds) == pytest.approx(model.calibration.image.value, rel=1e-6)
    assert all(p.verdict == "normal" and p.normalised_score <= 0.5 for p in preds)


def test_python_api_predicts_paths_arrays_and_any_size(model_file, tmp_path):
    model = tabad.load_model(model_file)
    bad = _defective(tmp_path / "bad.png")
    big = _defective(tmp_path / "big.png", size=(120, 90))
    arr = np.array(Image.open(bad))
    preds = model.predict([bad, arr, big, Image.open(bad)])
    assert [p.verdict for p in preds] == ["anomalous"] * 4
    assert preds[0].score == preds[1].score == preds[3].score  # same pixels, same score
    assert preds[0].mask.shape == (40, 40) and preds[0].defect_area_px > 0
    assert preds[0].defect_area_pct == pytest.approx(100 * preds[0].defect_area_px / 1600, abs=1e-3)
    assert preds[0].normalised_score > 0.5


def test_predict_writes_records_overlays_masks_and_resumes(model_file, good_folder, tmp_path, monkeypatch):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        _defective(inputs / f"bad{i}.png")
    out = tmp_path / "out"
    cfg = PredictConfig(model=model_file, inputs=[inputs, good_folder / "batch2"], out=out, batch_size=2,
                        progress=False)
    # Interrupt after the first batch: the records of finished batches stay.
    import tabad.inspection.predict as pr

    real = pr.overlay_image
    calls = {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(pr, "overlay_image", failing)
    with pytest.raises(KeyboardInterrupt):
        run_predict(cfg, log=_quiet)
    first = (out / "predictions.jsonl").read_text().splitlines()
    assert len(first) == 2
    monkeypatch.setattr(pr, "overlay_image", real)
    scored = []
    real_predict = InspectionModel.predict
    monkeypatch.setattr(InspectionModel, "predict", lambda self, a, batch_size=8: scored.append(len(a))
                        or real_predict(self, a, batch_size))
    records = run_predict(cfg, log=_quiet)
    assert sum(scored) == 5  # only the 5 images not yet scored
    assert len(records) == 7 and [r["verdict"] for r in records[:3]] == ["anomalous"] * 3
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == "path,score,normalised_score,verdict,defect_area_px,defect_area_pct" and len(rows) == 8
    assert (out / "overlays" / "bad0.png").is_file() and (out / "masks" / "09.png").is_file()
    overlay = np.array(Image.open(out / "overlays" / "bad0.png"))
    assert overlay.shape == (40, 120, 3)  # image | heat map | contour
    mask = np.array(Image.open(out / "masks" / "bad0.png"))
    assert set(np.unique(mask)) <= {0, 255} and mask.max() == 255
    assert all(json.loads(line)["model_sha256"] for line in (out / "predictions.jsonl").read_text().splitlines())


def test_unreadable_file_stops_or_is_skipped(model_file, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _defective(folder / "ok.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="broken.png") as exc:
        run_predict(PredictConfig(model=model_file, inputs=[folder], out=tmp_path / "o1", progress=False), log=_quiet)
    assert "skip_bad=True" in str(exc.value)
    lines = []
    records = run_predict(PredictConfig(model=model_file, inputs=[folder], out=tmp_path / "o2", progress=False,
                                        skip_bad=True), log=lines.append)
    assert [Path(r["path"]).name for r in records] == ["ok.png"]
    assert "broken.png" in (tmp_path / "o2" / "skipped.txt").read_text()
    assert any("broken.png" in line for line in lines)


def test_cli_fit_and_predict(good_folder, tmp_path, capsys):
    bad = _defective(tmp_path / "bad.png")
    model = tmp_path / "cli.tabad"
    assert main(["fit", "--data", str(good_folder), "--out", str(model), "--method", "padim", "--backbone",
                 "resnet18", "--weights", "random:0", "--resize", "48", "--crop", "40", "--set", "n_features=20",
                 "--fpr", "0.05"]) == 0
    assert main(["predict", str(model), str(bad), "--out", str(tmp_path / "p")]) == 0
    assert "anomalous" in (tmp_path / "p" / "predictions.csv").read_text()
    (tmp_path / "junk.png").write_bytes(b"junk")
    assert main(["predict", str(model), str(tmp_path / "junk.png"), "--out", str(tmp_path / "p2")]) == 2
    err = capsys.readouterr().err
    assert "junk.png" in err and "--skip-bad" in err and "skip_bad=True" not in err


def test_labelled_validation_chooses_the_threshold(good_folder, tiny_mvtec, tmp_path):
    path = fit_model(FitConfig(data=tiny_mvtec / "obj", out=tmp_path / "v.tabad", validation=tiny_mvtec / "obj",
                               threshold="recall", recall=1.0, **{**SMALL, "resize": 64, "crop": 64}), log=_quiet)
    c = load_inspection(path).calibration
    assert c.image.rule == "recall" and c.image.achieved == 1.0
    with pytest.raises(ConfigError, match="no anomalous"):
        fit_model(FitConfig(data=good_folder, out=tmp_path / "w.tabad", validation=good_folder, **SMALL), log=_quiet)


def test_a_model_without_thresholds_cannot_predict(tmp_path):
    from tabad.backbones import build_backbone
    from tabad.datasets.loader import Batches
    from tabad.methods import create_method

    method = create_method("padim", build_backbone("resnet18", "random:0"), {"n_features": 10})
    x = np.random.default_rng(0).integers(0, 255, (4, 3, 32, 32), dtype=np.uint8)
    import torch

    method.fit(Batches(torch.from_numpy(x), 4))
    path = method.save(tmp_path / "bare.tabad")
    with pytest.raises(TabadError, match="no thresholds"):
        tabad.load_model(path).predict([np.zeros((32, 32, 3), np.uint8)])
    with pytest.raises(TabadError, match="no thresholds"):
        run_predict(PredictConfig(model=path, inputs=[tmp_path], out=tmp_path / "o", progress=False), log=_quiet)


def test_collect_images_mirrors_the_tree(good_folder):
    names = [n for _, n in collect_images([good_folder])]
    assert names[:2] == ["00", "01"] and "batch2/08" in names
    with pytest.raises(DataError, match="no such file"):
        collect_images([good_folder / "missing"])
