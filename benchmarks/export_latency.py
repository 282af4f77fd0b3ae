"""Export latency: tabad's PyTorch and ONNX paths against anomalib 2.7.0's own exported ONNX and OpenVINO models.

    .venv/bin/python benchmarks/export_latency.py [--repeats 1] [--coreset-ratio 0.1]

Run with tabad's interpreter. For PaDiM and PatchCore (ResNet18, resize 256 → centre crop 224,
the same random ResNet18 weights file in both libraries, PatchCore coreset ratio 0.1 on both
sides), on one data set (default the hazelnut toy):

1. tabad: ``tabad fit`` (CLI, child process) then ``tabad export --format onnx``;
2. anomalib: ``benchmarks/anomalib_export_runner.py`` in ``.anomalib-venv``: ``Engine.fit`` on the
   same training images tabad fitted on (tabad holds 20 % out for its thresholds; anomalib gets the
   other 80 % through a folder of links) and ``Engine.export`` to ONNX and to OpenVINO (FP32);
3. latency: ``benchmarks/harness/latency.py``, one child process per (method, batch size, runtime):
   tabad PyTorch (``InspectionModel.forward``), tabad ONNX (``OnnxInspectionModel.run``, ONNX
   Runtime), anomalib ONNX (ONNX Runtime, tabad's interpreter: anomalib's has no onnxruntime) and
   anomalib OpenVINO (anomalib's interpreter). Each times the same test images, decoded once to
   uint8 256×256×3 arrays, cycled, after a warm-up; peak RSS per process from ``os.wait4``.

Every process gets 2 threads (``OMP/MKL/OPENBLAS_NUM_THREADS``, torch's intra-op threads, ONNX
Runtime's ``intra_op_num_threads``, OpenVINO's ``INFERENCE_NUM_THREADS``). Writes
``benchmarks/reports/export_latency.{md,json}``; ``--render-only`` rewrites the ``.md`` from the ``.json``.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import statistics
import sys
from pathlib import Path

from harness import sidebyside as sbs
from harness.report import fmt, table, write_report

SCRIPT = "export_latency"
LATENCY = sbs.HERE / "harness" / "latency.py"
RUNNER = "anomalib_export_runner.py"
RUNTIMES = ("tabad-torch", "tabad-onnx", "anomalib-onnx", "anomalib-openvino")
LABELS = {"tabad-torch": "tabad PyTorch", "tabad-onnx": "tabad ONNX (ORT)", "anomalib-onnx": "anomalib ONNX (ORT)",
          "anomalib-openvino": "anomalib OpenVINO FP32"}
CHILD_RUNTIME = {"tabad-torch": "tabad-torch", "tabad-onnx": "tabad-onnx", "anomalib-onnx": "onnxruntime",
                 "anomalib-openvino": "openvino"}
DEFAULT_SET = "hazelnut_toy/hazelnut/mvtec-stem"
IDX_RECIPE = "tabad.methods.padim.select_channels(448, None, 'resnet18', 1024)"


# ----------------------------------------------------------------------------- inputs
def test_images(target: sbs.Target, out: Path) -> tuple[Path, list[str]]:
    """Every test image of the set decoded once (PIL, RGB) into one uint8 (N, H, W, 3) array: both libraries time
    the same pixels, and decoding is outside every timed call."""
    import numpy as np
    from PIL import Image

    cat = target.root / target.category / "test"
    files = sorted(p for p in cat.rglob("*") if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise SystemExit(f"test images of {target.spec} have several sizes {shapes}; one size is needed per batch")
    path = out / "test_images.npy"
    np.save(path, np.stack(arrays))
    return path, [str(p.relative_to(cat)) for p in files]


def padim_idx(work: Path) -> tuple[Path, list[int]]:
    sbs.ensure_tabad_importable()
    from tabad.methods.padim import select_channels

    idx = [int(i) for i in select_channels(448, None, "resnet18", 1024)]
    path = work / "padim_idx_tabad.json"
    path.write_text(json.dumps(idx))
    return path, idx


def tabad_model_info(path: Path) -> dict:
    """What the driver needs from a ``tabad fit`` model file: its training/calibration split and bank size."""
    sbs.ensure_tabad_importable()
    from tabad.methods.modelfile import read_model_file

    header, tensors = read_model_file(path)
    training = header.get("training", {})
    bank = tensors.get("memory_bank")
    return {"calibration_files": training.get("calibration_files", []), "n_train": training.get("n_train"),
            "n_calibration": training.get("n_calibration"), "fit_seconds": training.get("fit_seconds"),
            "memory_bank": list(bank.shape) if bank is not None else None,
            "calibration": header.get("inspection", {}).get("calibration")}


def anomalib_data(target: sbs.Target, calibration_files: list[str], out: Path) -> tuple[Path, int]:
    """A category root for anomalib whose ``train/good`` links to the images tabad trained on (its train split less
    its calibration images); ``test`` and ``ground_truth`` link to the originals."""
    cat = target.root / target.category
    dst = out / target.category
    shutil.rmtree(out, ignore_errors=True)
    (dst / "train" / "good").mkdir(parents=True)
    held = {Path(p).resolve() for p in calibration_files}
    n = 0
    for p in sorted((cat / "train" / "good").iterdir()):
        if p.is_file() and p.resolve() not in held:
            (dst / "train" / "good" / p.name).symlink_to(p.resolve())
            n += 1
    for sub in ("test", "ground_truth"):
        if (cat / sub).exists():
            (dst / sub).symlink_to((cat / sub).resolve(), target_is_directory=True)
    return out, n


# ----------------------------------------------------------------------------- children
def tabad_cli(args, sub: list[str], log: Path) -> dict:
    cmd = [args.tabad_python, "-m", "tabad", *sub]
    proc = sbs.run_child(cmd, sbs.child_env(args.threads, "tabad", malloc=True), log)
    return {"process": proc, "command": f"{sbs.env_prefix(args.threads, 'tabad', True)} {sbs.shown(cmd)}"}


def fit_tabad(args, target: sbs.Target, method: str, weights: Path, out: Path) -> dict:
    model = out / f"{method}.tabad"
    onnx = out / f"{method}.onnx"
    out.mkdir(parents=True, exist_ok=True)
    sets = ["--set", f"coreset_ratio={args.coreset_ratio}"] if method == "patchcore" else []
    print(f"[{method}] tabad fit + export", flush=True)
    fit = tabad_cli(args, ["fit", "--data", str(target.root / target.category), "--method", method, "--backbone",
                           "resnet18", "--weights", str(weights), "--resize", str(args.resize), "--crop", str(args.crop),
                           "--layout", target.layout, "--seed", "0", *sets, "--device", "cpu", "--out", str(model)],
                    out / f"{method}_fit.log")
    export = tabad_cli(args, ["export", str(model), "--format", "onnx", "--out", str(onnx)], out / f"{method}_export.log")
    info = tabad_model_info(model)
    info.update({"model": model, "onnx": onnx, "fit": fit, "export": export,
                 "model_mb": model.stat().st_size / 1e6, "onnx_mb": onnx.stat().st_size / 1e6,
                 "export_log_tail": [line.replace(str(sbs.REPO) + os.sep, "") for line in
                                     (out / f"{method}_export.log").read_text(errors="replace").strip().splitlines()[-2:]]})
    print(f"[{method}] tabad: fit {fit['process']['wall_seconds']:.1f} s, export "
          f"{export['process']['wall_seconds']:.1f} s", flush=True)
    return info


def fit_anomalib(args, target: sbs.Target, method: str, weights: Path, data_root: Path, out: Path,
                 idx_path: Path | None) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    extra = ["--method", method, "--resize", str(args.resize), "--crop", str(args.crop), "--batch-sizes",
             ",".join(map(str, args.batch_sizes))]
    extra += ["--idx", str(idx_path)] if method == "padim" else ["--coreset-ratio", str(args.coreset_ratio)]
    cmd = [args.anomalib_python, str(sbs.HERE / RUNNER), "--data", str(data_root), "--category", target.category,
           "--layout", target.layout, "--weights", str(weights), *extra, "--threads", str(args.threads), "--seed", "0",
           "--out", str(out)]
    print(f"[{method}] anomalib fit + export", flush=True)
    # MALLOC_ENV as in patchcore_vs_anomalib.py: without it anomalib's coreset loop fragments glibc's heap (its
    # process reached 20 GB RSS on this set and was killed by the OOM killer)
    proc = sbs.run_child(cmd, sbs.child_env(args.threads, "anomalib", malloc=True), out.with_suffix(".log"))
    result = json.loads((out / "export.json").read_text())
    shutil.rmtree(out / "engine", ignore_errors=True)  # Lightning's checkpoint
    print(f"[{method}] anomalib: fit {result['timings']['fit_seconds']:.1f} s, whole {proc['wall_seconds']:.1f} s, "
          f"dynamic batch: {result['default_export']['dynamic_batch']}", flush=True)
    return {"process": proc, "result": result, "command": f"{sbs.env_prefix(args.threads, 'anomalib', True)} {sbs.shown(cmd)}"}


def time_runtime(args, runtime: str, model: Path | str, images: Path, batch: int, out: Path) -> dict:
    """One latency child: its result JSON, outputs file, process measurements and command."""
    py = args.anomalib_python if runtime == "anomalib-openvino" else args.tabad_python
    side = "tabad" if runtime.startswith("tabad") else "anomalib"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [py, str(LATENCY), "--runtime", CHILD_RUNTIME[runtime], "--model", str(model), "--images", str(images),
           "--batch", str(batch), "--threads", str(args.threads), "--min-images", str(args.min_images),
           "--min-calls", str(args.min_calls), "--out", str(out.with_suffix(".json")),
           "--outputs", str(out.with_suffix(".npz"))]
    proc = sbs.run_child(cmd, sbs.child_env(args.threads, side), out.with_suffix(".log"))
    res = json.loads(out.with_suffix(".json").read_text())
    s = res["summary"]
    print(f"    {runtime:18s} b{batch}: median {s['median_ms_per_image']:7.1f} ms/img  p90 {s['p90_ms_per_image']:7.1f}"
          f"  {s['images_per_second']:6.1f} img/s  peak RSS {res['rss_mb']['peak']:6.0f} MB  "
          f"(load avg {proc['loadavg1_before']:.2f}→{proc['loadavg1_after']:.2f})", flush=True)
    return {"process": proc, "result": res, "outputs": str(out.with_suffix(".npz")),
            "command": f"{sbs.env_prefix(args.threads, side)} {sbs.shown(cmd)}"}


# ----------------------------------------------------------------------------- summaries
def pooled(runs: list[dict]) -> dict:
    """Per-image statistics over the timed calls of every round, the peak RSS (largest over rounds) and the rest."""
    import numpy as np

    batch = runs[0]["result"]["batch"]
    call_ms = [t for r in runs for t in r["result"]["call_ms"]]
    per_img = np.asarray(call_ms) / batch
    return {"calls": len(call_ms), "images": len(call_ms) * batch,
            "median_ms_per_image": float(np.percentile(per_img, 50)),
            "p90_ms_per_image": float(np.percentile(per_img, 90)), "min_ms_per_image": float(per_img.min()),
            "images_per_second": len(call_ms) * batch / (sum(call_ms) / 1000.0),
            "round_medians_ms_per_image": [r["result"]["summary"]["median_ms_per_image"] for r in runs],
            "peak_rss_mb": max(r["result"]["rss_mb"]["peak"] for r in runs),
            "peak_rss_mb_wait4": max(r["process"]["peak_rss_mb"] for r in runs),
            "rss_after_load_mb": max(r["result"]["rss_mb"]["after_load"] or 0 for r in runs),
            "load_seconds": statistics.median(r["result"]["load_seconds"] for r in runs),
            "process_wall_seconds": statistics.median(r["process"]["wall_seconds"] for r in runs),
            "loadavg1": [x for r in runs for x in (r["process"]["loadavg1_before"], r["process"]["loadavg1_after"])],
            "settings": runs[0]["result"]["settings"], "model": runs[0]["result"]["model"],
            "map_shape": runs[0]["result"]["map_shape"], "warmup_calls": runs[0]["result"]["warmup_calls"]}


def agreement(a: str, b: str) -> dict:
    """Max |Δ| of image scores and maps between two outputs files (the same test images, in the same order)."""
    import numpy as np

    x, y = np.load(a), np.load(b)
    ds = np.abs(x["scores"].astype(np.float64) - y["scores"])
    dm = np.abs(x["maps"].astype(np.float64) - y["maps"])
    s_range = float(np.ptp(x["scores"])) or 1.0
    m_range = float(np.ptp(x["maps"])) or 1.0
    return {"max_abs_score": float(ds.max()), "max_abs_map": float(dm.max()),
            "max_rel_score": float(ds.max()) / s_range, "max_rel_map": float(dm.max()) / m_range,
            "score_range": s_range, "map_range": m_range, "n": int(len(ds))}


def cross_library(tabad_out: str, anomalib_out: str) -> dict:
    """Rank agreement of tabad's raw image scores and anomalib's normalised ones (a monotone map of its raw scores,
    clamped to [0, 1]): a check that both compute the same model, not a parity test."""
    import numpy as np
    from scipy.stats import spearmanr

    t, a = np.load(tabad_out)["scores"], np.load(anomalib_out)["scores"]
    clamped = int(((a <= 0.0) | (a >= 1.0)).sum())
    return {"image_score_spearman": float(spearmanr(t, a)[0]), "anomalib_scores_clamped": clamped, "n": int(len(t))}


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = sbs.parser(__doc__, SCRIPT, only=False)
    p.set_defaults(sets=DEFAULT_SET)
    p.add_argument("--methods", default="padim,patchcore")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--coreset-ratio", type=float, default=0.1, help="PatchCore, both libraries (default 0.1)")
    p.add_argument("--resize", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--min-images", type=int, default=69, help="timed images per latency child, at least")
    p.add_argument("--min-calls", type=int, default=24, help="timed calls per latency child, at least")
    args = sbs.parse(p, argv)
    if args.render_only:
        return sbs.rerender(args, render)
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",")]
    methods = [m for m in args.methods.split(",") if m]
    sbs.check_interpreters(args, need_tabad=False)
    targets = sbs.targets(args)
    if len(targets) != 1:
        raise SystemExit("export_latency times one data set; give one --sets entry")
    target = targets[0]
    args.work.mkdir(parents=True, exist_ok=True)
    load_start = loadavg()
    import datetime as dt
    started = dt.datetime.now(dt.timezone.utc)

    weights = sbs.write_weights(args.work)
    images, names = test_images(target, args.work)
    idx_path, _ = padim_idx(args.work)

    models: dict = {}
    for method in methods:
        t = fit_tabad(args, target, method, weights.path, args.work / "tabad")
        data_root, n_train = anomalib_data(target, t["calibration_files"], args.work / "anomalib_data" / method)
        if n_train != t["n_train"]:
            raise SystemExit(f"anomalib's training folder has {n_train} images, tabad trained on {t['n_train']}")
        a = fit_anomalib(args, target, method, weights.path, data_root, args.work / f"anomalib_{method}",
                         idx_path if method == "padim" else None)
        models[method] = {"tabad": t, "anomalib": a}

    runs: dict = {m: {str(b): {r: [] for r in RUNTIMES} for b in args.batch_sizes} for m in methods}
    for rnd in range(args.repeats):
        order = RUNTIMES[rnd % len(RUNTIMES):] + RUNTIMES[:rnd % len(RUNTIMES)]
        for method in methods:
            t, a = models[method]["tabad"], models[method]["anomalib"]["result"]
            for b in args.batch_sizes:
                print(f"[{method}] batch {b}, round {rnd + 1}/{args.repeats}", flush=True)
                for rt in order:
                    model = {"tabad-torch": t["model"], "tabad-onnx": t["onnx"],
                             "anomalib-onnx": a["exports"]["onnx"][str(b)]["path"],
                             "anomalib-openvino": a["exports"]["openvino"][str(b)]["path"]}[rt]
                    runs[method][str(b)][rt].append(
                        time_runtime(args, rt, model, images, b, args.work / "latency" / f"{method}_b{b}_{rt}_r{rnd}"))
    finished = dt.datetime.now(dt.timezone.utc)

    entries = []
    for method in methods:
        t, a = models[method]["tabad"], models[method]["anomalib"]
        ar = a["result"]
        e: dict = {"method": method, "latency": {}, "goal": {}, "sanity": {}}
        for b in args.batch_sizes:
            rb = runs[method][str(b)]
            lat = {rt: pooled(rb[rt]) for rt in RUNTIMES}
            e["latency"][str(b)] = lat
            fastest = min(("anomalib-onnx", "anomalib-openvino"), key=lambda r: lat[r]["median_ms_per_image"])
            tab = lat["tabad-onnx"]["median_ms_per_image"]
            ano = lat[fastest]["median_ms_per_image"]
            e["goal"][str(b)] = {"tabad_onnx_ms": tab, "anomalib_fastest": fastest, "anomalib_fastest_ms": ano,
                                 "ratio_tabad_over_anomalib": tab / ano, "met": tab <= ano,
                                 "tabad_onnx_p90_ms": lat["tabad-onnx"]["p90_ms_per_image"],
                                 "anomalib_fastest_p90_ms": lat[fastest]["p90_ms_per_image"]}
            first = {rt: rb[rt][0]["outputs"] for rt in RUNTIMES}
            e["sanity"][str(b)] = {"tabad_torch_vs_onnx": agreement(first["tabad-torch"], first["tabad-onnx"]),
                                   "anomalib_onnx_vs_openvino": agreement(first["anomalib-onnx"],
                                                                          first["anomalib-openvino"]),
                                   "tabad_onnx_vs_anomalib_onnx": cross_library(first["tabad-onnx"],
                                                                                first["anomalib-onnx"])}
        if len(args.batch_sizes) > 1:
            b0, b1 = (str(x) for x in args.batch_sizes[:2])
            e["sanity"]["batch_sizes"] = {rt: agreement(runs[method][b0][rt][0]["outputs"],
                                                        runs[method][b1][rt][0]["outputs"]) for rt in RUNTIMES}
        e["models"] = {
            "tabad": {"model_file_mb": t["model_mb"], "onnx_mb": t["onnx_mb"], "n_train": t["n_train"],
                      "n_calibration": t["n_calibration"], "memory_bank": t["memory_bank"],
                      "fit_seconds_in_tabad": t["fit_seconds"], "fit_process_seconds": t["fit"]["process"]["wall_seconds"],
                      "export_process_seconds": t["export"]["process"]["wall_seconds"],
                      "export_check": t["export_log_tail"], "onnx_file": sbs.rel(t["onnx"])},
            "anomalib": {"n_train": ar["n_train"], "memory_bank": ar["memory_bank"], "fit_seconds": ar["timings"]["fit_seconds"],
                         "process_seconds": a["process"]["wall_seconds"], "default_export": {
                             k: ar["default_export"][k] for k in ("input_batch_dim", "dynamic_batch", "inputs", "outputs",
                                                                  "opsets", "seconds", "size_mb", "call")},
                         "exports": {fmt_: {b: {"file": sbs.rel(x["path"]), "seconds": x["seconds"], "size_mb": x["size_mb"],
                                                **({"inputs": x["inputs"]} if "inputs" in x else {})}
                                            for b, x in v.items()} for fmt_, v in ar["exports"].items()},
                         "export_calls": ar["export_calls"], "export_transform": ar["export_transform"],
                         "post_processor": ar["post_processor"], "weights": ar["weights"],
                         "padim_idx_is_tabads": ar["padim_idx_set"]},
        }
        e["commands"] = {"tabad fit": t["fit"]["command"], "tabad export": t["export"]["command"],
                         "anomalib fit + export": a["command"],
                         **{f"latency {rt} b{b}": runs[method][str(b)][rt][-1]["command"]
                            for b in args.batch_sizes for rt in RUNTIMES}}
        entries.append(e)

    goal_met = all(g["met"] for e in entries for g in e["goal"].values())
    anomalib_stack = models[methods[0]]["anomalib"]["result"]["versions"]
    some = runs[methods[0]][str(args.batch_sizes[0])]
    report = {
        "title": "Export latency: tabad vs anomalib 2.7.0 exported models",
        "data": target.spec, "test_images": names, "image_shape": _shape(images),
        "resize": args.resize, "crop": args.crop, "batch_sizes": args.batch_sizes, "threads": args.threads,
        "coreset_ratio": args.coreset_ratio, "rounds": args.repeats, "min_images": args.min_images,
        "min_calls": args.min_calls, "methods": entries, "goal_met": goal_met,
        "provenance": {
            "date": started.isoformat(timespec="seconds"), "finished": finished.isoformat(timespec="seconds"),
            "weights": weights.record(), "padim_idx": IDX_RECIPE,
            "tabad_stack": _tabad_stack(), "anomalib_stack": anomalib_stack,
            "runtimes": {rt: some[rt][0]["result"]["settings"] for rt in RUNTIMES},
            "interpreters": {rt: some[rt][0]["result"]["executable_venv"] for rt in RUNTIMES},
            "machine": sbs.machine(), "child_env": sbs.env_record(args.threads, False),
            "fit_env": sbs.env_record(args.threads, True),
            "loadavg_start": load_start, "loadavg_end": loadavg(),
            "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "loadavg1_children": [min(x for e in entries for lat in e["latency"].values() for r in lat.values()
                                      for x in r["loadavg1"]),
                                  max(x for e in entries for lat in e["latency"].values() for r in lat.values()
                                      for x in r["loadavg1"])],
            "command": f"python benchmarks/{SCRIPT}.py "
                       + " ".join(sbs.rel(x) if os.path.isabs(x) else x for x in (sys.argv[1:] if argv is None else argv)),
        },
    }
    js, md = write_report(report, args.report, render)
    print(f"wrote {sbs.rel(js)} and {sbs.rel(md)}; goal met: {goal_met}")
    return 0


def _shape(images: Path) -> list[int]:
    import numpy as np

    return list(np.load(images, mmap_mode="r").shape)


def _tabad_stack() -> dict:
    sbs.ensure_tabad_importable()
    import numpy
    import onnx
    import onnxruntime
    import torch

    from tabad.version import __version__

    return {"tabad": __version__, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__, "numpy": numpy.__version__, "python": sys.version.split()[0]}


# ----------------------------------------------------------------------------- report
def render(report: dict) -> str:
    R = "---:"
    prov = report["provenance"]
    m = prov["machine"]
    bs = report["batch_sizes"]
    n = len(report["test_images"])
    h, w = report["image_shape"][1:3]
    lines = [f"# {report['title']}", "",
             f"Generated by `benchmarks/{SCRIPT}.py` on {prov['date']} ({m['cpu_model']}, {m['nproc']} CPUs, "
             f"{m['mem_total_gb']} GB RAM). Data: `{report['data']}`, {n} test images ({h}×{w}), resize "
             f"{report['resize']} → centre crop {report['crop']}; ResNet18 with the same random weights file in both "
             f"libraries (`{prov['weights']['file']}`, sha256 `{prov['weights']['sha256']}`); PatchCore coreset ratio "
             f"{report['coreset_ratio']} in both; {report['threads']} threads in every process; one process per "
             f"(method, batch size, runtime), run one after the other; {report['rounds']} round(s).", "",
             "## Goal: tabad's exported path no slower per image than anomalib's fastest exported path", ""]
    rows = []
    for e in report["methods"]:
        for b in bs:
            g = e["goal"][str(b)]
            rows.append([e["method"], b, fmt(g["tabad_onnx_ms"], 1), f"{fmt(g['anomalib_fastest_ms'], 1)} "
                         f"({LABELS[g['anomalib_fastest']]})", f"{g['ratio_tabad_over_anomalib']:.2f}",
                         "**met**" if g["met"] else "**not met**"])
    lines += table(["method", "batch", "tabad ONNX median ms/img", "anomalib fastest export, median ms/img",
                    "tabad / anomalib", "goal"], rows, ["---", R, R, R, R, "---"])
    lines += ["", f"**Overall: {'met' if report['goal_met'] else 'NOT met'}** (every method and batch size"
              f"{'' if report['goal_met'] else ' must meet it'}).", ""]

    lines += ["## What each timed call includes", "",
              f"All four start from the same uint8 {h}×{w}×3 RGB arrays already in memory (the {n} test JPEGs "
              "decoded once with PIL before any process starts; decoding is outside every timing) and end with "
              "every output as a numpy array. Batch B = B consecutive images of the test set taken as an endless "
              "cycle, stacked before the timer starts.", "",
              f"- **tabad PyTorch**: `InspectionModel.forward(torch.from_numpy(uint8 B×{h}×{w}×3))` under "
              "`torch.no_grad()`: uint8 → float /255, resize (skipped by `resize_crop` when the image is already "
              f"{report['resize']}×{report['resize']}), centre crop {report['crop']}, ImageNet normalisation, "
              "backbone, method, σ=4 blur, thresholds; outputs score, normalised score, label, map, mask.",
              f"- **tabad ONNX**: `OnnxInspectionModel.run(uint8 B×{h}×{w}×3)` = one ONNX Runtime `session.run`: the "
              "same pipeline in the graph, except that the graph always runs its antialiased bilinear `Resize` "
              f"(here {h}→{report['resize']}, an identity that is still computed).",
              f"- **anomalib ONNX** and **anomalib OpenVINO**: the uint8 batch converted to float32 B×3×{h}×{w} in "
              "[0, 1] with numpy (transpose + /255: anomalib's graph takes that; inside the timed call), then one "
              "`session.run` / `infer_request.infer`. anomalib's graph (`Engine.export`) holds its pre-processor's "
              f"export transform (`Resize(({report['resize']}, {report['resize']}))` with antialias off, "
              f"`CenterCrop({report['crop']})` as `ExportableCenterCrop`, ImageNet `Normalize`), the torch model and "
              "its PostProcessor (min-max normalisation with the stored statistics, thresholds); outputs "
              "`pred_score`, `pred_label`, `anomaly_map`, `pred_mask`.", "",
              f"Warm-up: at least 8 images and 2 calls per process, not timed. Timed: at least {report['min_images']} "
              f"images and {report['min_calls']} calls per process and round. ms/img = a call's time / B; median and "
              "p90 over the calls; images/s = timed images / total timed seconds.", ""]

    lines += ["## Latency", ""]
    w4 = [x["peak_rss_mb_wait4"] for e in report["methods"] for lat in e["latency"].values() for x in lat.values()]
    rows = []
    for e in report["methods"]:
        for b in bs:
            for rt in RUNTIMES:
                x = e["latency"][str(b)][rt]
                rows.append([e["method"], b, LABELS[rt], fmt(x["median_ms_per_image"], 1), fmt(x["p90_ms_per_image"], 1),
                             fmt(x["images_per_second"], 1), fmt(x["peak_rss_mb"], 0), fmt(x["rss_after_load_mb"], 0),
                             fmt(x["load_seconds"], 2), x["calls"]])
    lines += table(["method", "batch", "runtime", "median ms/img", "p90 ms/img", "images/s", "peak RSS (MB)",
                    "RSS after load (MB)", "model load (s)", "timed calls"], rows,
                   ["---", R, "---", R, R, R, R, R, R, R])
    lines += ["", "Peak RSS: the inference process's own high-water mark (`VmHWM` at its end: interpreter, runtime "
              "imports, model and inference included); RSS after load: its resident set once the model is loaded, "
              "before the first inference. `os.wait4`'s `ru_maxrss` is in the JSON (`peak_rss_mb_wait4`) but not "
              "used: Linux carries the parent's high-water mark across the child's `exec` (Python's `subprocess` "
              "uses vfork/posix_spawn), so a child reports at least the driver's high-water mark (driver "
              f"{report['provenance'].get('driver_peak_rss_mb', 0):.0f} MB; `ru_maxrss` of the latency children here: "
              f"{min(w4):.0f}–{max(w4):.0f} MB).", ""]
    if report["rounds"] > 1:
        lines += ["Per-round medians (ms/img), to show the spread between rounds:", ""]
        rows = [[e["method"], b, LABELS[rt], ", ".join(f"{v:.1f}" for v in e["latency"][str(b)][rt]["round_medians_ms_per_image"])]
                for e in report["methods"] for b in bs for rt in RUNTIMES]
        lines += table(["method", "batch", "runtime", "round medians"], rows, ["---", R, "---", "---"]) + [""]

    lines += ["## Sanity: do the paths compute the same thing?", ""]
    rows = []
    for e in report["methods"]:
        for b in bs:
            s = e["sanity"][str(b)]
            t, a, c = s["tabad_torch_vs_onnx"], s["anomalib_onnx_vs_openvino"], s["tabad_onnx_vs_anomalib_onnx"]
            rows.append([e["method"], b, f"{t['max_abs_score']:.2e} ({t['max_rel_score']:.1e})",
                         f"{t['max_abs_map']:.2e} ({t['max_rel_map']:.1e})",
                         f"{a['max_abs_score']:.2e} ({a['max_rel_score']:.1e})",
                         f"{a['max_abs_map']:.2e} ({a['max_rel_map']:.1e})",
                         f"{c['image_score_spearman']:.4f} ({c['anomalib_scores_clamped']} clamped)"])
    lines += table(["method", "batch", "tabad PyTorch vs ONNX: max \\|Δ score\\| (rel.)", "max \\|Δ map\\| (rel.)",
                    "anomalib ONNX vs OpenVINO: max \\|Δ score\\| (rel.)", "max \\|Δ map\\| (rel.)",
                    "Spearman tabad vs anomalib image scores"], rows, ["---", R, R, R, R, R, R])
    lines += ["", f"Over the {n} test images, each scored once at that batch size. rel. = |Δ| / the range of the first "
              "path's values over the test images. tabad's scores are raw (PaDiM: Mahalanobis distance; PatchCore: "
              "reweighted NN distance); anomalib's exported `pred_score` is min-max normalised and clamped to "
              "[0, 1], so only its ranking is compared across libraries (PaDiM: same channel subset; PatchCore: "
              "different coreset samplers, so the banks differ).", ""]
    bsz = [e for e in report["methods"] if "batch_sizes" in e["sanity"]]
    if bsz:
        rows = [[e["method"], LABELS[rt], f"{v['max_abs_score']:.2e}", f"{v['max_abs_map']:.2e}"]
                for e in bsz for rt, v in e["sanity"]["batch_sizes"].items()]
        lines += [f"Batch {bs[0]} vs batch {bs[1]} within each runtime (same images):", ""]
        lines += table(["method", "runtime", "max \\|Δ score\\|", "max \\|Δ map\\|"], rows, ["---", "---", R, R]) + [""]

    lines += ["## Models", ""]
    rows = []
    for e in report["methods"]:
        t, a = e["models"]["tabad"], e["models"]["anomalib"]
        d = a["default_export"]
        rows.append([e["method"], f"{t['n_train']} / {a['n_train']}",
                     f"{t['memory_bank']} / {a['memory_bank']}" if t["memory_bank"] else "–",
                     fmt(t["onnx_mb"], 1), ", ".join(f"b{b}: {fmt(x['size_mb'], 1)}" for b, x in a["exports"]["onnx"].items()),
                     ", ".join(f"b{b}: {fmt(x['size_mb'], 1)}" for b, x in a["exports"]["openvino"].items()),
                     f"{d['inputs'][0][2]}" + (" (dynamic batch)" if d["dynamic_batch"] else " (**static batch**)"),
                     fmt(t["fit_process_seconds"], 1), fmt(a["fit_seconds"], 1)])
    lines += table(["method", "train images (tabad / anomalib)", "memory bank (tabad / anomalib)", "tabad ONNX (MB)",
                    "anomalib ONNX (MB)", "anomalib OpenVINO (MB)", "anomalib default export input",
                    "tabad fit process (s)", "anomalib Engine.fit (s)"], rows,
                   ["---", R, "---", R, "---", "---", "---", R, R])
    lines += ["", "tabad holds 20 % of the training images out to set its thresholds; anomalib was given the other "
              "80 % (the images tabad trained on) so both models see the same training images and PatchCore's "
              "banks have the same number of rows. anomalib's export calls (exactly as run):", ""]
    for e in report["methods"]:
        a = e["models"]["anomalib"]
        for c in a["export_calls"]:
            lines.append(f"- {e['method']}: `{c}`")
        if not a["default_export"]["dynamic_batch"]:
            lines.append(f"- {e['method']}: anomalib's default call exported a graph with a static batch of "
                         f"{a['default_export']['input_batch_dim']} (input {a['default_export']['inputs'][0][2]}), "
                         "which cannot run at batch 1 or 8, so the model was exported once per batch size with a "
                         "static batch (the calls above); those per-batch models are the ones timed.")
    lines += ["", "## Provenance", "",
              f"- tabad stack: {json.dumps(prov['tabad_stack'])}",
              f"- anomalib stack: {json.dumps(prov['anomalib_stack'])}",
              f"- interpreters (venv per runtime): {json.dumps(prov['interpreters'])}; anomalib's venv has no "
              "onnxruntime (its `[openvino]` extra does not install it), so anomalib's ONNX model runs on tabad's "
              "ONNX Runtime, the same build as tabad's ONNX model, in a process that does not import tabad",
              f"- runtime settings: {json.dumps(prov['runtimes'])}",
              f"- machine: {json.dumps(prov['machine'])}",
              f"- latency processes' environment: {json.dumps(prov['child_env'])}; fit and export processes (both "
              f"libraries): {json.dumps(prov.get('fit_env'))} (without the fixed mmap threshold anomalib's PatchCore "
              "coreset fragmented glibc's heap to 20 GB and was OOM-killed)",
              f"- load average (1, 5, 15 min) at start {prov['loadavg_start']}, at end {prov['loadavg_end']}; 1-min "
              f"load around the latency processes {prov['loadavg1_children'][0]:.2f}–{prov['loadavg1_children'][1]:.2f} "
              "(the machine was shared with other work: treat differences of a few per cent as noise)",
              f"- weights: {json.dumps(prov['weights'])}; PaDiM channel subset in both libraries: `{prov['padim_idx']}`",
              f"- run: {prov['date']} → {prov['finished']}",
              f"- driver command: `{prov['command']}`", "", "Child commands (from the repository root):", ""]
    for e in report["methods"]:
        for k, c in e["commands"].items():
            lines.append(f"- {e['method']} / {k}: `{c}`")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
