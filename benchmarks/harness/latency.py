"""Inference-latency child of ``benchmarks/export_latency.py``: one runtime, one model, one batch size per process.

Runs with either interpreter (standard library + numpy at import; the runtime is imported
inside :func:`load_runtime`), so every runtime is timed by the same loop:

``tabad-torch``     tabad's interpreter: ``tabad.inspection.pipeline.load_inspection(model)`` and
                    ``InspectionModel.forward`` under ``torch.no_grad()`` on a uint8 (B, H, W, 3) tensor.
``tabad-onnx``      tabad's interpreter: ``tabad.inspection.onnx.OnnxInspectionModel(model, threads=T).run``
                    on the uint8 (B, H, W, 3) batch (ONNX Runtime).
``onnxruntime``     any interpreter with onnxruntime (tabad's: anomalib's venv has none) and without
                    tabad: a bare ``onnxruntime.InferenceSession`` with the session options tabad's
                    ``ort_session`` uses; the uint8 batch is converted to float32 (B, 3, H, W) in [0, 1]
                    inside the timed call (anomalib's graph takes that).
``openvino``        anomalib's interpreter: ``openvino.Core().compile_model(xml, "CPU", config)``, one
                    infer request, the same float32 (B, 3, H, W) conversion inside the timed call.

Every timed call starts from a uint8 (B, H, W, 3) numpy batch already in memory (decoded
beforehand) and ends with every output as a numpy array. Writes ``--out`` (JSON: per-call
milliseconds, load time, RSS marks, runtime settings) and ``--outputs`` (npz: the image score and
the anomaly map of every test image, once, in order, at this batch size).

    python benchmarks/harness/latency.py --runtime onnxruntime --model m.onnx --images test.npy \
        --batch 8 --threads 2 --out r.json --outputs r.npz
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

RUNTIMES = ("tabad-torch", "tabad-onnx", "onnxruntime", "openvino")
#: output names (in the graph) of the image score and the anomaly map, per library.
SCORE_MAP = {"tabad": ("score", "anomaly_map"), "anomalib": ("pred_score", "anomaly_map")}


def status_mb(key: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process in MB (Linux), else None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def to_nchw_float(batch: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W, 3) → float32 (B, 3, H, W) in [0, 1], contiguous (what anomalib's exported graph takes)."""
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


def ort_options(threads: int):
    """The ONNX Runtime session options of ``tabad.inspection.onnx.ort_session`` (without importing tabad)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = int(threads)
    return opts


def load_runtime(runtime: str, model: str, threads: int):
    """``(call, names, settings)``: ``call(uint8 batch) -> {name: ndarray}``, the (score, map) output names and
    the runtime's settings as read back where the runtime allows."""
    if runtime == "tabad-torch":
        import torch

        from tabad.inspection.pipeline import OUTPUT_NAMES, load_inspection

        torch.set_num_threads(threads)
        m = load_inspection(model, device="cpu").eval()

        def call(batch):
            with torch.no_grad():
                out = m(torch.from_numpy(batch))
            return {k: v.numpy() for k, v in zip(OUTPUT_NAMES, out)}

        return call, SCORE_MAP["tabad"], {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                                          "torch_interop_threads": torch.get_num_interop_threads(),
                                          "call": "InspectionModel.forward(torch.from_numpy(uint8 BxHxWx3)) "
                                                  "under torch.no_grad(); outputs .numpy()"}
    if runtime == "tabad-onnx":
        import onnxruntime as ort

        from tabad.inspection.onnx import OnnxInspectionModel

        m = OnnxInspectionModel(model, threads=threads)
        so = m.session.get_session_options()
        return m.run, SCORE_MAP["tabad"], {
            "onnxruntime": ort.__version__, "providers": m.session.get_providers(),
            "intra_op_num_threads": so.intra_op_num_threads, "inter_op_num_threads": so.inter_op_num_threads,
            "graph_optimization_level": str(so.graph_optimization_level),
            "call": "OnnxInspectionModel(model, threads=T).run(uint8 BxHxWx3) = session.run(None, {'images': batch})"}
    if runtime == "onnxruntime":
        import onnxruntime as ort

        sess = ort.InferenceSession(model, sess_options=ort_options(threads), providers=["CPUExecutionProvider"])
        in_name = sess.get_inputs()[0].name
        names = [o.name for o in sess.get_outputs()]

        def call(batch):
            return dict(zip(names, sess.run(None, {in_name: to_nchw_float(batch)})))

        so = sess.get_session_options()
        return call, SCORE_MAP["anomalib"], {
            "onnxruntime": ort.__version__, "providers": sess.get_providers(),
            "intra_op_num_threads": so.intra_op_num_threads, "inter_op_num_threads": so.inter_op_num_threads,
            "graph_optimization_level": str(so.graph_optimization_level),
            "input": [in_name, sess.get_inputs()[0].shape], "outputs": names,
            "call": "session.run(None, {'input': float32 Bx3xHxW = uint8 BxHxWx3 transposed / 255})"}
    if runtime == "openvino":
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": int(threads), "INFERENCE_PRECISION_HINT": "f32",
                  "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        outs = list(compiled.outputs)
        names = [o.get_any_name() for o in outs]

        def call(batch):
            request.infer({0: to_nchw_float(batch)})
            return {n: np.array(request.get_tensor(o).data) for n, o in zip(names, outs)}

        read = {}
        for key in ("INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "NUM_STREAMS",
                    "ENABLE_CPU_PINNING", "ENABLE_HYPER_THREADING"):
            try:
                read[key] = str(compiled.get_property(key))
            except Exception as exc:  # noqa: BLE001 - a property this build does not report
                read[key] = f"n/a ({type(exc).__name__})"
        return call, SCORE_MAP["anomalib"], {
            "openvino": ov.get_version(), "config_requested": {k: str(v) for k, v in config.items()},
            "config_read_back": read, "input": str(compiled.input(0).get_partial_shape()), "outputs": names,
            "call": "infer_request.infer({0: float32 Bx3xHxW = uint8 BxHxWx3 transposed / 255}); outputs copied "
                    "with np.array"}
    raise SystemExit(f"unknown runtime {runtime!r}; choose one of {RUNTIMES}")


def batch_indices(n_images: int, batch: int, call: int) -> list[int]:
    """The images of timed call ``call``: the test images as an endless cycle, ``batch`` at a time."""
    return [(call * batch + k) % n_images for k in range(batch)]


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of ``xs``."""
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


def summarise(call_ms: list[float], batch: int) -> dict:
    """Per-image milliseconds (a call's time / batch): median, p90, min, mean; images/s over all timed calls."""
    per_img = [t / batch for t in call_ms]
    total_s = sum(call_ms) / 1000.0
    return {"calls": len(call_ms), "images": len(call_ms) * batch,
            "median_ms_per_image": percentile(per_img, 50), "p90_ms_per_image": percentile(per_img, 90),
            "min_ms_per_image": min(per_img), "mean_ms_per_image": float(np.mean(per_img)),
            "images_per_second": len(call_ms) * batch / total_s if total_s > 0 else None,
            "median_ms_per_call": percentile(call_ms, 50)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runtime", choices=RUNTIMES, required=True)
    p.add_argument("--model", required=True, help=".tabad, .onnx or OpenVINO .xml")
    p.add_argument("--images", required=True, help=".npy uint8 (N, H, W, 3)")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup-images", type=int, default=8, help="warm-up: at least this many images (≥ 2 calls)")
    p.add_argument("--min-images", type=int, default=69, help="timed: at least this many images ...")
    p.add_argument("--min-calls", type=int, default=24, help="... and at least this many calls")
    p.add_argument("--out", required=True)
    p.add_argument("--outputs", required=True)
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    rss_start = status_mb("VmRSS")
    images = np.load(args.images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise SystemExit(f"{args.images}: expected uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    n, b = len(images), args.batch

    t = time.perf_counter()
    call, (score_name, map_name), settings = load_runtime(args.runtime, args.model, args.threads)
    load_seconds = time.perf_counter() - t
    rss_loaded = status_mb("VmRSS")

    # every test image once, in order (static-batch graphs: the last batch is filled up cyclically)
    scores, maps = [], []
    t = time.perf_counter()
    for lo in range(0, n, b):
        out = call(np.ascontiguousarray(images[[(lo + k) % n for k in range(b)]]))
        keep = min(b, n - lo)
        scores.append(np.asarray(out[score_name], dtype=np.float32).reshape(b)[:keep])
        maps.append(np.asarray(out[map_name], dtype=np.float32).reshape(b, *out[map_name].shape[-2:])[:keep])
    first_pass_seconds = time.perf_counter() - t
    scores_arr, maps_arr = np.concatenate(scores), np.concatenate(maps)
    np.savez_compressed(args.outputs, scores=scores_arr, maps=maps_arr)

    n_warm = max(2, math.ceil(args.warmup_images / b))
    n_timed = max(args.min_calls, math.ceil(args.min_images / b))
    batches = [np.ascontiguousarray(images[batch_indices(n, b, c)]) for c in range(n_warm + n_timed)]
    for x in batches[:n_warm]:
        call(x)
    call_ms = []
    for x in batches[n_warm:]:
        t = time.perf_counter()
        call(x)
        call_ms.append((time.perf_counter() - t) * 1000.0)

    result = {
        "runtime": args.runtime, "model": os.path.basename(args.model), "batch": b, "threads": args.threads,
        "n_test_images": n, "image_shape": list(images.shape[1:]), "warmup_calls": n_warm,
        "summary": summarise(call_ms, b), "call_ms": call_ms, "load_seconds": load_seconds,
        "first_pass_seconds": first_pass_seconds, "output_names": [score_name, map_name],
        "map_shape": list(maps_arr.shape[1:]), "settings": settings,
        # VmHWM: this process's own high-water mark. getrusage/wait4's ru_maxrss is not: Linux carries the
        # parent's high-water mark over the exec of a vfork/posix_spawn child (a 1.4 GB driver → every child ≥ 1.4 GB).
        "rss_mb": {"start": rss_start, "after_load": rss_loaded, "end": status_mb("VmRSS"), "peak": status_mb("VmHWM"),
                   "ru_maxrss_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0},
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        "python": platform.python_version(), "numpy": np.__version__, "executable_venv": Path(sys.prefix).name,
        "process_seconds": time.perf_counter() - T0,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    s = result["summary"]
    print(f"{args.runtime} b{b}: median {s['median_ms_per_image']:.1f} ms/img, p90 {s['p90_ms_per_image']:.1f}, "
          f"{s['images_per_second']:.1f} img/s, load {load_seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
