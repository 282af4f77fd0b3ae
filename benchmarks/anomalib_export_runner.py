"""Fit anomalib 2.7.0's PaDiM or PatchCore and export it with anomalib's own ``Engine.export`` (ONNX and OpenVINO).

The anomalib half of ``benchmarks/export_latency.py``; run it with anomalib's own interpreter
(``.anomalib-venv/bin/python``). Data, transform and weights loading come from
``harness/anomalib_side.py``; the models are built as in ``anomalib_padim_runner.py`` and
``anomalib_patchcore_runner.py``:

* ``Padim(backbone="resnet18", layers=["layer1", "layer2", "layer3"], pre_trained=False,
  n_features=100)`` with the ``idx`` buffer set to ``--idx`` (tabad's channel subset), or
  ``Patchcore(backbone="resnet18", layers=["layer2", "layer3"], pre_trained=False,
  coreset_sampling_ratio=R, num_neighbors=9)``;
* pre-processor ``Resize((resize, resize))`` → ``CenterCrop(crop)`` → ImageNet ``Normalize``;
  ``evaluator=False``, ``visualizer=False``; the default PostProcessor (its min/max/threshold
  statistics come from the validation pass of ``Engine.fit``);
* ``Engine.fit`` on the ``Folder`` datamodule, then ``Engine.export(model, ExportType.ONNX,
  export_root, input_size=(resize, resize))`` and ``Engine.export(model, ExportType.OPENVINO,
  export_root, input_size=(resize, resize), compression_type=None)`` (FP32: anomalib compresses to
  FP16 only for ``CompressionType.FP16``).

anomalib's default export leaves the batch axis dynamic; when the exported graph nevertheless
has a static batch (PatchCore with torch 2.14's dynamo exporter: batch 2, whatever is asked),
the model is exported once per ``--batch-sizes`` entry with
``onnx_kwargs={"dynamic_shapes": ({0: B},)}`` (a static batch of B), which is how a user gets a
model that runs at batch B. Writes ``export.json`` (the model file of every (format, batch size),
the exact calls, times, graph inputs and outputs) under ``--out``.
"""

from __future__ import annotations

import time

from harness.anomalib_side import (folder_datamodule, import_stack, load_backbone, make_engine, prepare,
                                   runner_parser, seed_and_threads, transform, versions)


def graph_io(onnx_path) -> dict:
    """Inputs and outputs (name, element type, dims) and opsets of an ONNX file (without its external data)."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)

    def dims(v):
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]

    return {"inputs": [[v.name, v.type.tensor_type.elem_type, dims(v)] for v in m.graph.input],
            "outputs": [[v.name, v.type.tensor_type.elem_type, dims(v)] for v in m.graph.output],
            "opsets": [[o.domain, o.version] for o in m.opset_import],
            "ops": sorted({n.op_type for n in m.graph.node})}


def files_mb(path) -> float:
    """Size of a model and its companion files (``model.onnx`` + ``model.onnx.data``; ``.xml`` + ``.bin``)."""
    from pathlib import Path

    path = Path(path)
    return sum(f.stat().st_size for f in path.parent.iterdir() if f.name.startswith(path.stem)) / 1e6


def main(argv: list[str] | None = None) -> int:
    p = runner_parser(__doc__, batch_size=32)
    p.add_argument("--method", choices=["padim", "patchcore"], required=True)
    p.add_argument("--idx", default=None, help="PaDiM: JSON list of channel indices (of 448)")
    p.add_argument("--coreset-ratio", type=float, default=0.1)
    p.add_argument("--resize", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batch-sizes", default="1,8")
    args = p.parse_args(argv)
    out, data_root = prepare(args)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    import_seconds = import_stack("anomalib.models", "anomalib.deploy")
    import json
    import logging
    from pathlib import Path

    import torch
    from anomalib.deploy import ExportType
    from anomalib.models import Padim, Patchcore
    from anomalib.pre_processing import PreProcessor

    logging.getLogger("anomalib").setLevel(logging.WARNING)
    seed_and_threads(args)
    _, datamodule, pairing = folder_datamodule(data_root / args.category, args.category, args.layout,
                                               args.batch_size, args.seed)
    pre = PreProcessor(transform=transform(args.resize, args.crop))
    if args.method == "padim":
        model = Padim(backbone="resnet18", layers=["layer1", "layer2", "layer3"], pre_trained=False, n_features=100,
                      pre_processor=pre, evaluator=False, visualizer=False)
    else:
        model = Patchcore(backbone="resnet18", layers=["layer2", "layer3"], pre_trained=False,
                          coreset_sampling_ratio=args.coreset_ratio, num_neighbors=9, pre_processor=pre,
                          evaluator=False, visualizer=False)
    weights = load_backbone(model.model.feature_extractor.feature_extractor, args.weights)
    if args.method == "padim" and args.idx:
        idx = json.loads(Path(args.idx).read_text())
        model.model.idx.copy_(torch.tensor(idx, dtype=model.model.idx.dtype))
        assert model.model.idx.tolist() == idx

    engine = make_engine(out, [])
    t = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - t
    model.eval()

    exports: dict = {"onnx": {}, "openvino": {}}
    calls: list[str] = []
    size = (args.resize, args.resize)
    export_root = out / "export"

    def export(kind, root, batch=None):
        onnx_kwargs = None if batch is None else {"dynamic_shapes": ({0: batch},)}
        et = ExportType.ONNX if kind == "onnx" else ExportType.OPENVINO
        extra = {} if kind == "onnx" else {"compression_type": None}
        t = time.perf_counter()
        path = engine.export(model=model, export_type=et, export_root=root, input_size=size, onnx_kwargs=onnx_kwargs,
                             **extra)
        seconds = time.perf_counter() - t
        calls.append(f"engine.export(model=model, export_type=ExportType.{et.name}, export_root=..., "
                     f"input_size={size}" + ("" if kind == "onnx" else ", compression_type=None")
                     + ("" if onnx_kwargs is None else f", onnx_kwargs={{'dynamic_shapes': ({{0: {batch}}},)}}") + ")")
        return {"path": str(path), "seconds": seconds, "size_mb": files_mb(path), "call": calls[-1]}

    # anomalib's default call first: dynamic batch requested
    first = export("onnx", export_root / "default")
    first.update(graph_io(first["path"]))
    batch_dim = first["inputs"][0][2][0]
    dynamic = not isinstance(batch_dim, int) or batch_dim == 0
    default_export = {"input_batch_dim": batch_dim, "dynamic_batch": dynamic, **first}
    if dynamic:
        ov = export("openvino", export_root / "default")
        for b in batch_sizes:
            exports["onnx"][str(b)] = first
            exports["openvino"][str(b)] = ov
    else:
        for b in batch_sizes:
            e = export("onnx", export_root / f"b{b}", b)
            e.update(graph_io(e["path"]))
            if e["inputs"][0][2][0] != b:
                raise SystemExit(f"asked for a static batch of {b}, the graph's input is {e['inputs'][0][2]}")
            exports["onnx"][str(b)] = e
            exports["openvino"][str(b)] = export("openvino", export_root / f"b{b}", b)

    pp = model.post_processor
    stats = {k: float(getattr(pp, k)) for k in ("image_min", "image_max", "pixel_min", "pixel_max")
             if hasattr(pp, k)}
    for k in ("image_threshold", "pixel_threshold"):
        v = getattr(pp, k, None)
        stats[k] = float(v.value if hasattr(v, "value") else v) if v is not None else None
    result = {
        "library": "anomalib", "method": args.method, "category": args.category, "mask_pairing": pairing,
        "n_train": len(datamodule.train_data), "n_test": len(datamodule.test_data), "weights": weights,
        "coreset_ratio": args.coreset_ratio if args.method == "patchcore" else None,
        "memory_bank": list(model.model.memory_bank.shape) if args.method == "patchcore" else None,
        "padim_idx_set": bool(args.method == "padim" and args.idx),
        "pre_processor": repr(model.pre_processor.transform),
        "export_transform": repr(model.pre_processor.export_transform),
        "post_processor": {"class": type(pp).__name__, **stats},
        "default_export": default_export, "exports": exports, "export_calls": calls,
        "timings": {"import_seconds": import_seconds, "fit_seconds": fit_seconds},
        "versions": {**versions(), **_export_versions()}, "torch_threads": torch.get_num_threads(),
    }
    (out / "export.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({"method": args.method, "fit_seconds": fit_seconds, "dynamic_batch": dynamic,
                      "exports": {k: {b: e["path"] for b, e in v.items()} for k, v in exports.items()}}), flush=True)
    return 0


def _export_versions() -> dict:
    out = {}
    for name in ("onnx", "onnxscript", "openvino", "nncf"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", None) or (mod.get_version() if name == "openvino" else None)
        except Exception:  # noqa: BLE001 - optional
            out[name] = None
    return out


if __name__ == "__main__":
    raise SystemExit(main())
