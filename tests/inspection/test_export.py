"""tabad export: ONNX graphs from uint8 images to verdicts, run by ONNX Runtime, against the PyTorch pipeline.

Tolerances (ONNX Runtime rounds differently from PyTorch, so parity is to float rounding, not bitwise):

* scores: max |Δ| ≤ 1e-4 × the range of the PyTorch scores over the images compared;
* maps: max |Δ| ≤ 1e-3 × the range of the PyTorch maps over the images compared;
* verdicts identical, except for an image whose score lies within the score tolerance of the threshold;
* masks identical, except at pixels whose map value lies within the map tolerance of the pixel threshold.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from tabad.cli import main  # noqa: E402
from tabad.files import sha256_file  # noqa: E402
from tabad.inspection.export import EXPORTABLE, ExportError, export_onnx  # noqa: E402
from tabad.inspection.fit import FitConfig, fit_model  # noqa: E402
from tabad.inspection.onnx import OnnxInspectionModel, OnnxModelError, read_onnx_header  # noqa: E402
from tabad.inspection.pipeline import InspectionModel, load_inspection  # noqa: E402
from tabad.inspection.predict import PredictConfig, run_predict  # noqa: E402

SIZE = (60, 72)  # (H, W) of the generated parts: neither the resize nor the crop size
OPTIONS = {
    "padim": ({"n_features": 24}, 64, 56),
    "patchcore": ({"coreset_ratio": 0.25}, 64, 56),
    "rd4ad": ({"epochs": 1, "batch_size": 4}, 64, None),  # needs sides divisible by 32
    "simplenet": ({"epochs": 2, "dsc_hidden": 32}, 64, 56),
}


def _quiet(*_):
    pass


def _part(rng: np.random.Generator, size=SIZE, defect: bool = False) -> np.ndarray:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.28 * min(h, w) + rng.integers(0, 3)) ** 2
    img = np.where(disc, 70.0, 130.0)[..., None] + 8 * np.sin(xx / 5.0)[..., None] + rng.normal(0, 3, (h, w, 3))
    if defect:
        top, left = int(0.3 * h) + int(rng.integers(0, 6)), int(0.25 * w) + int(rng.integers(0, 10))
        img[top : top + h // 5, left : left + w // 5] = 250
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_data")
    rng = np.random.default_rng(0)
    good, test = root / "good", root / "test"
    good.mkdir()
    test.mkdir()
    for i in range(10):
        Image.fromarray(_part(rng)).save(good / f"{i:02d}.png")
    for i in range(6):
        Image.fromarray(_part(rng, defect=i >= 3)).save(test / f"{i:02d}.png")
    return good, test


@pytest.fixture(scope="module")
def test_images(folders):
    return np.stack([np.array(Image.open(p)) for p in sorted(folders[1].glob("*.png"))])


@pytest.fixture(scope="module")
def exported(folders, tmp_path_factory):
    """method -> (model file, ONNX file), each fitted on the good folder and exported once."""
    out = tmp_path_factory.mktemp("export_models")
    files = {}
    for method in EXPORTABLE:
        options, resize, crop = OPTIONS[method]
        model = fit_model(FitConfig(data=folders[0], out=out / f"{method}.tabad", method=method, backbone="resnet18",
                                    weights="random:0", resize=resize, crop=crop, method_options=options,
                                    progress=False), log=_quiet)
        if method == "padim":  # through the command line (each export takes seconds: one per method)
            log = io.StringIO()
            with contextlib.redirect_stdout(log):
                assert main(["export", str(model), "--format", "onnx", "--out", str(out / "padim.onnx")]) == 0
            files["cli_log"] = log.getvalue()
            files[method] = (model, out / "padim.onnx")
        else:
            files[method] = (model, export_onnx(model, out / f"{method}.onnx", log=_quiet))
    return files


def _torch(model: InspectionModel, images: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(torch.from_numpy(images))
    return {k: v.numpy() for k, v in out._asdict().items()}


def _assert_parity(ref: dict, got: dict, calibration) -> None:
    s_tol = 1e-4 * float(np.ptp(ref["score"]))
    m_tol = 1e-3 * float(np.ptp(ref["anomaly_map"]))
    assert s_tol > 0 and m_tol > 0
    assert np.abs(got["score"] - ref["score"]).max() <= s_tol
    assert np.abs(got["anomaly_map"] - ref["anomaly_map"]).max() <= m_tol
    sure = np.abs(ref["score"] - calibration.image.value) > s_tol
    assert np.array_equal(got["label"][sure], ref["label"][sure])
    assert np.abs(got["normalised_score"] - ref["normalised_score"]).max() <= 1e-3
    sure = np.abs(ref["anomaly_map"] - calibration.pixel.value) > m_tol
    assert np.array_equal(got["mask"][sure], ref["mask"][sure])
    assert got["label"].dtype == np.int64 and got["mask"].dtype == np.uint8


@pytest.mark.parametrize("method", EXPORTABLE)
def test_onnx_runtime_matches_pytorch(exported, test_images, method):
    model_file, onnx_file = exported[method]
    model = load_inspection(model_file)
    onnx_model = OnnxInspectionModel(onnx_file)
    ref, got = _torch(model, test_images), onnx_model.run(test_images)
    assert got["anomaly_map"].shape == (6, *model.input_size) == ref["anomaly_map"].shape
    _assert_parity(ref, got, model.calibration)
    # The defective parts are found (the data is easy), so the comparison covers both verdicts.
    assert ref["label"][3:].all() and ref["score"][3:].min() > ref["score"][:3].max()


@pytest.mark.parametrize("method", EXPORTABLE)
def test_dynamic_batch_and_image_size(exported, test_images, method):
    model_file, onnx_file = exported[method]
    model = load_inspection(model_file)
    onnx_model = OnnxInspectionModel(onnx_file)
    one = onnx_model.run(test_images[3:4])
    three = onnx_model.run(test_images[:3])
    assert one["score"].shape == (1,) and three["score"].shape == (3,)
    rng = np.random.default_rng(5)
    # Larger and smaller than the model's geometry, and exactly its resize size (no resize in PyTorch).
    for size in ((97, 83), (40, 50), model.resize_hw):
        images = np.stack([_part(rng, size, defect=True), _part(rng, size)])
        ref, got = _torch(model, images), onnx_model.run(images)
        assert got["anomaly_map"].shape == (2, *model.input_size)
        _assert_parity(ref, got, model.calibration)


def test_metadata_holds_the_model_header(exported):
    model_file, onnx_file = exported["patchcore"]
    model = load_inspection(model_file)
    header = read_onnx_header(onnx_file)
    assert header["format"] == "tabad-onnx/1" and header["method"] == "patchcore" and header["opset"] == 18
    assert header["source"]["sha256"] == sha256_file(model_file) and header["source"]["file"] == "patchcore.tabad"
    assert header["calibration"] == model.calibration.to_dict()
    assert header["backbone"]["weights"]["sha256"] == model.header["backbone"]["weights"]["sha256"]
    assert header["config"] == model.header["config"] and header["tabad_version"]
    assert header["geometry"] == {"resize": 64, "crop": 56} and header["input_size"] == [56, 56]
    assert header["model_header"]["training"]["n_train"] == 8
    assert header["export_check"]["images"] == 3 and "dynamo=True" in header["exporter"]
    proto = onnx.load(str(onnx_file))
    (inp,) = proto.graph.input
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in dims] == [True, True, True, False] and dims[3].dim_value == 3
    assert [o.name for o in proto.graph.output] == ["score", "normalised_score", "label", "anomaly_map", "mask"]
    # The memory bank is in the file (an initializer or constant equal to it).
    bank = model.method.memory_bank.numpy()
    tensors = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer]
    tensors += [onnx.numpy_helper.to_array(a.t) for n in proto.graph.node if n.op_type == "Constant"
                for a in n.attribute if a.name == "value"]
    assert any(t.shape == bank.shape and np.array_equal(t, bank) for t in tensors)


def test_predict_with_the_onnx_file_gives_the_same_verdicts(exported, folders, tmp_path):
    model_file, onnx_file = exported["patchcore"]
    runs = {}
    for name, path in (("torch", model_file), ("onnx", onnx_file)):
        out = tmp_path / name
        run_predict(PredictConfig(model=path, inputs=[folders[1]], out=out, batch_size=4, progress=False),
                    log=_quiet)
        runs[name] = out
    rows = {k: (v / "predictions.csv").read_text().splitlines() for k, v in runs.items()}
    assert rows["torch"][0] == rows["onnx"][0] and len(rows["torch"]) == 7
    for a, b in zip(rows["torch"][1:], rows["onnx"][1:]):
        a, b = a.split(","), b.split(",")
        assert a[0] == b[0] and a[3] == b[3]  # path, verdict
        assert float(a[1]) == pytest.approx(float(b[1]), rel=1e-4)
    assert sorted(p.name for p in (runs["onnx"] / "overlays").iterdir()) == [f"{i:02d}.png" for i in range(6)]
    # The overlay's image (PIL resize in the ONNX model) is the pipeline's within ±1 grey level.
    torch_model, onnx_model = load_inspection(model_file), OnnxInspectionModel(onnx_file)
    image = np.array(Image.open(folders[1] / "03.png"))
    a, b = torch_model.view_image(image), onnx_model.view_image(image)
    assert a.shape == b.shape == (56, 56, 3) and np.abs(a.astype(int) - b.astype(int)).max() <= 1
    preds = onnx_model.predict([image, _part(np.random.default_rng(2), (90, 70)), image], batch_size=3)
    assert [p.verdict for p in preds][::2] == ["anomalous", "anomalous"] and preds[0].mask.shape == (56, 56)
    assert preds[0].score == preds[2].score and onnx_model.calibration == torch_model.calibration


def test_cli_export_and_models_that_cannot_be_exported(exported, tmp_path, capsys):
    from tabad.backbones import build_backbone
    from tabad.datasets.transforms import Geometry
    from tabad.methods import create_method

    model_file, out = exported["padim"]  # exported with `tabad export`
    assert "export check: 3 synthetic images" in exported["cli_log"] and "exported padim" in exported["cli_log"]
    assert OnnxInspectionModel(out).method == "padim"
    # A method file without thresholds (saved by the method, not by `tabad fit`).
    bare = load_inspection(model_file).method.save(tmp_path / "bare.tabad")
    assert main(["export", str(bare), "--out", str(tmp_path / "bare.onnx")]) != 0
    err = capsys.readouterr().err
    assert "bare.tabad" in err and "no thresholds" in err and not (tmp_path / "bare.onnx").exists()
    # RegAD: a few-shot method.
    regad = create_method("regad", build_backbone("resnet18", "random", seed=0), {"image_size": 64})
    with pytest.raises(ExportError, match="few-shot"):
        export_onnx(InspectionModel(regad, Geometry(64, None), load_inspection(model_file).calibration),
                    tmp_path / "regad.onnx", log=_quiet)


def test_foreign_files_are_refused_with_their_name(tmp_path, exported):
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    with pytest.raises(OnnxModelError, match="notes.onnx: not an ONNX model"):
        OnnxInspectionModel(text)
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(foreign))
    with pytest.raises(OnnxModelError, match="foreign.onnx: an ONNX model without tabad metadata"):
        OnnxInspectionModel(foreign)
    with pytest.raises(OnnxModelError, match="missing.onnx: ONNX model file not found"):
        OnnxInspectionModel(tmp_path / "missing.onnx")
    # tabad predict names the file too.
    assert main(["predict", str(foreign), str(tmp_path), "--out", str(tmp_path / "o")]) != 0


def test_antialiased_resize_at_the_same_size_is_the_identity():
    """The graph always resizes; the pipeline skips a resize to the same size: equal only because this holds."""
    x = torch.rand(2, 3, 56, 72)
    y = torch.nn.functional.interpolate(x, size=(56, 72), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(x, y)
