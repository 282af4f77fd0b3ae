"""``tabad export``: a fitted model as one ONNX file, from uint8 images to verdicts.

The graph is :class:`~tabad.inspection.pipeline.InspectionModel` end to end:

* input ``images``: uint8 RGB, (N, H, W, 3), with dynamic N, H **and** W: the
  bilinear, antialiased resize to the model's geometry (ONNX ``Resize``,
  ``antialias=1``, opset 18), the centre crop and the backbone's
  normalisation are part of the graph, so any image size goes in as it is
  (one size per batch: :class:`~tabad.inspection.onnx.OnnxInspectionModel`
  groups a mixed batch by size);
* the method (PaDiM, PatchCore with its memory bank as an initializer, RD4AD,
  SimpleNet) with its post-processing: map upsampling, Gaussian blur, image score;
* the thresholds: outputs ``score`` (N,) float32, ``normalised_score`` (N,)
  float32 (0.5 = threshold), ``label`` (N,) int64 (1 = anomalous),
  ``anomaly_map`` (N, h, w) float32 and ``mask`` (N, h, w) uint8, (h, w) the
  model's input size (the cropped geometry).

The model file's header goes into the ONNX ``metadata_props`` under the key
``tabad`` as JSON (:data:`FORMAT`): method, config, backbone (with the weights'
sha256), geometry, calibration, the input/output contract, tabad and torch
versions, the exporter and opset, the source model file's sha256, and the
result of the export check (below). The whole source header (training data
summary included) is kept under ``model_header``.

**Exporter.** ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` +
onnxscript), the default of torch 2.9+. The legacy TorchScript exporter
(``dynamo=False``) has no conversion for ``aten::_upsample_bilinear2d_aa``
(the antialiased resize) at any opset, and traced Python loops freeze the
batch size; the dynamo exporter maps the resize to ``Resize(antialias=1)`` and
keeps N, H and W symbolic. PatchCore's nearest-neighbour search and Eq. 7
reweighting take an exportable path while exporting (same indices, see
:mod:`tabad.methods.patchcore`).

**Parity.** ONNX Runtime does not round like PyTorch (other GEMM/convolution
kernels, its own antialias weights), so the outputs agree to float rounding,
not bit for bit: ``benchmarks/reports/export_parity.md`` measures it on real
images. The torch side of the antialiased resize is exactly the identity when
the image already has the model's resize size, so the graph (which always
resizes) equals the pipeline (which skips that resize).

**Export check.** Every export runs the new graph with ONNX Runtime on
synthetic images (a batch of 2 at one size and 1 image at another) and
compares with the PyTorch model; an export whose outputs differ by more than
float rounding is refused (nothing is written).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from tabad.errors import TabadError

from tabad.inspection.onnx import FORMAT, INPUT_NAME, METADATA_KEY, ort_session

OPSET = 18
#: methods whose fitted models export (the one-class methods `tabad fit` trains).
EXPORTABLE = ("padim", "patchcore", "rd4ad", "simplenet")
#: why the others do not.
NOT_EXPORTABLE = {
    "regad": "RegAD is a few-shot method: its normal model is fitted on a support set drawn per few-shot round "
             "(tabad.fewshot) and `tabad fit` does not make RegAD inspection models; only the one-class methods "
             f"{', '.join(EXPORTABLE)} export",
}
#: the export check refuses differences above these (relative to the PyTorch outputs' range, at least 1).
CHECK_SCORE_RTOL = 1e-3
CHECK_MAP_RTOL = 1e-3


class ExportError(TabadError):
    """A model that cannot be exported, or an export that failed its check."""


def export_reason(model) -> str | None:
    """Why ``model`` (an :class:`~tabad.inspection.pipeline.InspectionModel`) cannot be exported; None if it can."""
    name = getattr(model.method, "name", type(model.method).__name__)
    if name not in EXPORTABLE:
        return NOT_EXPORTABLE.get(name, f"{name} models cannot be exported; exportable methods: "
                                        f"{', '.join(EXPORTABLE)}")
    if model.calibration is None:
        return ("the model has no thresholds (a method file, e.g. from `tabad benchmark`, not from `tabad fit`): the "
                "exported graph computes verdicts and defect masks, so it needs the calibrated thresholds that "
                "`tabad fit` sets")
    if not getattr(model.method, "is_fitted", True):
        return f"the {name} model is not fitted"
    return None


def inspection_graph(model):
    """The ``nn.Module`` that is exported: uint8 (N, H, W, 3) → the outputs of ``model`` as a tuple."""
    import torch
    from torch import nn

    class InspectionGraph(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, images: torch.Tensor):
            m = self.inner
            # Always resized (N, H, W are symbolic): at the resize size this is exactly the identity in
            # PyTorch, which is what InspectionModel.resize_crop's skip assumes.
            x = (m.resize_crop(images, always_resize=True) - m.mean) / m.std
            out = m.method(x)
            return tuple(m.decide(out[0], out[1]))

    return InspectionGraph(model).eval()


def _example_images(model, n: int, delta: tuple[int, int], seed: int) -> np.ndarray:
    h, w = model.resize_hw
    rng = np.random.default_rng(seed)
    # Smooth images with texture (pure noise makes every map saturate near the same value).
    base = rng.integers(60, 200, (n, 1, 1, 3))
    noise = rng.normal(0, 12, (n, h + delta[0], w + delta[1], 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _torch_outputs(model, images: np.ndarray) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        out = model(torch.from_numpy(images))
    return [t.cpu().numpy() for t in out]


def check_graph(model, session, seed: int = 0) -> dict:
    """Run ``session`` (ONNX Runtime) and ``model`` (PyTorch) on synthetic images: a batch of 2, then 1 of another
    size. Returns the largest differences; raises :class:`ExportError` if they exceed float rounding."""
    from tabad.inspection.pipeline import OUTPUT_NAMES

    worst = {"score_abs": 0.0, "map_abs": 0.0, "label_mismatches": 0, "images": 0}
    sizes = []
    for n, delta in ((2, (7, 13)), (1, (-5, 9))):
        delta = (max(delta[0], 2 - model.resize_hw[0]), max(delta[1], 2 - model.resize_hw[1]))
        images = _example_images(model, n, delta, seed + n)
        sizes.append(list(images.shape))
        ref = dict(zip(OUTPUT_NAMES, _torch_outputs(model, images)))
        got = dict(zip(OUTPUT_NAMES, session.run(None, {INPUT_NAME: images})))
        for name in OUTPUT_NAMES:
            if got[name].shape != ref[name].shape:
                raise ExportError(f"export check: output {name} has shape {got[name].shape} in ONNX Runtime, "
                                  f"{ref[name].shape} in PyTorch (input {images.shape})")
        ds = float(np.abs(got["score"].astype(np.float64) - ref["score"]).max())
        dm = float(np.abs(got["anomaly_map"].astype(np.float64) - ref["anomaly_map"]).max())
        s_range = max(1.0, float(np.ptp(ref["score"])), float(np.abs(ref["score"]).max()))
        m_range = max(1.0, float(np.ptp(ref["anomaly_map"])), float(np.abs(ref["anomaly_map"]).max()))
        if ds > CHECK_SCORE_RTOL * s_range or dm > CHECK_MAP_RTOL * m_range:
            raise ExportError(f"export check: ONNX Runtime and PyTorch disagree beyond float rounding on input "
                              f"{images.shape}: max |Δ score| {ds:.3g}, max |Δ map| {dm:.3g}")
        worst["score_abs"] = max(worst["score_abs"], ds)
        worst["map_abs"] = max(worst["map_abs"], dm)
        worst["label_mismatches"] += int((got["label"] != ref["label"]).sum())
        worst["images"] += n
    worst["inputs"] = sizes
    return worst


def onnx_header(model, source_header: dict | None, source_sha256: str | None, source_name: str | None,
                exporter: str) -> dict:
    """The JSON stored under ``metadata_props['tabad']``."""
    import torch

    from tabad.inspection.pipeline import OUTPUT_NAMES
    from tabad.methods.modelfile import build_header
    from tabad.version import __version__

    method = model.method
    base = source_header if source_header is not None else build_header(method)
    g = model.geometry
    return {
        "format": FORMAT,
        "method": base.get("method", method.name),
        "kind": base.get("kind", method.kind),
        "config": base.get("config"),
        "backbone": base.get("backbone"),
        "normalisation": base.get("normalisation"),
        "geometry": {"resize": g.resize, "crop": g.crop},
        "input_size": list(model.input_size),
        "calibration": model.calibration.to_dict(),
        "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NHWC", "channels": "RGB",
                  "shape": ["batch", "height", "width", 3]},
        "outputs": list(OUTPUT_NAMES),
        "source": {"file": source_name, "sha256": source_sha256, "tensors_sha256": base.get("tensors_sha256")},
        "tabad_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "exporter": exporter,
        "opset": OPSET,
        "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model_header": base,
    }


def _versions() -> str:
    import torch

    try:
        import onnxscript

        script = f", onnxscript {onnxscript.__version__}"
    except Exception:  # pragma: no cover - a dependency of the dynamo exporter
        script = ""
    return f"torch.onnx.export(dynamo=True), torch {torch.__version__.split('+')[0]}{script}"


def to_onnx(model):
    """The ONNX ``ModelProto`` of an :class:`~tabad.inspection.pipeline.InspectionModel` (no metadata, no check)."""
    import torch

    from tabad.inspection.pipeline import OUTPUT_NAMES

    reason = export_reason(model)
    if reason is not None:
        raise ExportError(reason)
    model = model.to("cpu").eval()
    graph = inspection_graph(model)
    example = torch.from_numpy(_example_images(model, 2, (7, 13), 0))
    dim = torch.export.Dim
    shapes = {"images": {0: dim("batch", min=1), 1: dim("height", min=2), 2: dim("width", min=2)}}
    log = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph, (example,), None, input_names=[INPUT_NAME],
                                        output_names=list(OUTPUT_NAMES), opset_version=OPSET, dynamo=True,
                                        dynamic_shapes=shapes, external_data=False, verbose=False)
    except Exception as exc:  # the exporter's own errors are many; say which model and keep its message
        raise ExportError(f"the ONNX exporter failed on this {model.method.name} model: "
                          f"{type(exc).__name__}: {str(exc)[:2000]}") from exc
    return program.model_proto


def export_onnx(model, out, *, check: bool = True, log: Callable[[str], None] = print) -> Path:
    """Export ``model`` (a model file from ``tabad fit``, or an
    :class:`~tabad.inspection.pipeline.InspectionModel`) to the ONNX file ``out``; returns ``out``.

    Raises :class:`ExportError` (a :class:`~tabad.errors.TabadError`) naming the reason for a method that does
    not export (RegAD), a model without thresholds, or an export that fails its check.
    """
    import onnx

    from tabad.files import atomic_write_bytes, sha256_file
    from tabad.inspection.pipeline import InspectionModel, load_inspection

    source_sha = source_name = None
    if isinstance(model, InspectionModel):
        where = "model"
        inspection = model
    else:
        path = Path(model)
        where = str(path)
        inspection = load_inspection(path, device="cpu")
        source_sha, source_name = sha256_file(path), path.name
    reason = export_reason(inspection)
    if reason is not None:
        raise ExportError(f"{where}: cannot export to ONNX: {reason}")
    device = inspection.thresholds.device
    try:  # exported and checked on the CPU, then moved back
        proto = to_onnx(inspection)
        data = proto.SerializeToString()
        info = check_graph(inspection, ort_session(data)) if check else None
    finally:
        inspection.to(device)
    if info is not None:
        log(f"export check: {info['images']} synthetic images, ONNX Runtime vs PyTorch: max |Δ score| "
            f"{info['score_abs']:.3g}, max |Δ map| {info['map_abs']:.3g}, {info['label_mismatches']} verdicts differ")
    header = onnx_header(inspection, getattr(inspection, "header", None), source_sha, source_name, _versions())
    header["export_check"] = info
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(header, sort_keys=True, default=str)
    proto.doc_string = (f"tabad {header['method']} inspection model: uint8 images (N, H, W, 3) -> score, "
                        "normalised_score, label, anomaly_map, mask")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ExportError(f"the exported graph is not valid ONNX: {exc}") from exc
    out = atomic_write_bytes(out, proto.SerializeToString())
    log(f"exported {header['method']} to {out} ({out.stat().st_size / 1e6:.1f} MB; input uint8 N×H×W×3, any N, H, W; "
        f"maps {header['input_size'][0]}×{header['input_size'][1]})")
    return out
