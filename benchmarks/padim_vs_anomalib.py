"""PaDiM side by side: tabad against anomalib 2.7.0, same weights, same channels, same data.

Run with tabad's interpreter (``.venv/bin/python``; tabad is imported from ``src/`` if it
is not installed). anomalib runs in its own environment (``.anomalib-venv``, see
``benchmarks/README.md``) through ``benchmarks/anomalib_padim_runner.py``.

For every category:

1. ONE weights file for both libraries: ``torchvision.models.resnet18()`` initialised after
   ``torch.manual_seed(0)`` (no ImageNet weights can be downloaded offline), saved as a
   state dict; and the channel subset ``random.seed(1024); random.sample(range(448), 100)``.
2. tabad as a subprocess: ``python -m tabad benchmark ... --method padim --weights <file>
   --seed 0 --save-predictions``; anomalib as a subprocess through the runner. Both with
   ``OMP_NUM_THREADS=2`` (and 2 torch threads), one after the other, never in parallel.
   Whole-process wall time and peak RSS of each child come from ``os.wait4``.
3. Both libraries' predictions are scored by the same code, ``tabad.metrics.evaluate``;
   anomalib's own metric values (its Evaluator) are reported too.
4. Writes ``benchmarks/reports/padim_vs_anomalib.md`` and ``.json``.

Paths given on the command line are used as given; the defaults are relative to the
repository (``../shared/data`` for the data).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent

# (folder under --data, category, layout)
DEFAULT_SETS = ("mvtec3d/tire/mvtec3d", "hazelnut_toy/hazelnut/mvtec-stem")
PARITY_TOL = 0.01
SPEED_TARGET = 0.5
METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_f1max", "pixel_f1max")
ANOMALIB_KEYS = {  # our name -> anomalib Evaluator name
    "image_auroc": "image_AUROC",
    "pixel_auroc": "pixel_AUROC",
    "aupro": "pixel_AUPRO",
    "image_f1max": "image_F1Max",
    "pixel_f1max": "pixel_F1Max",
}


# ----------------------------------------------------------------------------- helpers
def rel(p: Path | str) -> str:
    """A path for reports: relative to the repository (never an absolute machine path)."""
    try:
        return os.path.relpath(os.path.abspath(p), REPO)
    except ValueError:  # other drive (Windows)
        return p.name


def dataset_recipe(root: Path | str) -> str | None:
    """Markdown: the ``tabad make-data`` command that regenerates a procedural root (its dataset.json), else None."""
    meta = Path(root) / "dataset.json"
    try:
        params = json.loads(meta.read_text())["parameters"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if params.get("generator") != "tabad.datasets.procedural":
        return None
    return (f"`tabad make-data {rel(root)} --seed {params['seed']} --categories {','.join(params['categories'])} "
            f"--n-train {params['n_train']} --n-test-good {params['n_test_good']} "
            f"--n-test-per-defect {params['n_test_per_defect']} --size {params['size']}"
            + (f"` (generator version {params['generator_version']})" if "generator_version" in params else "`"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def detect_layout(cat_root: Path) -> str:
    if (cat_root / "train" / "good" / "rgb").is_dir():
        return "mvtec3d"
    gt = cat_root / "ground_truth"
    if gt.is_dir():
        for d in gt.iterdir():
            if d.is_dir() and any(f.stem.endswith("_mask") for f in d.iterdir()):
                return "mvtec"
        return "mvtec-stem"
    return "mvtec"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def run_child(cmd: list[str], env: dict, log: Path, cwd: Path) -> dict:
    """Run one child process; its own wall time and peak RSS (os.wait4)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with open(log, "w") as f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss_kb = ru.ru_maxrss if sys.platform != "darwin" else ru.ru_maxrss / 1024
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n--- log tail ---\n{tail}")
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"wall_seconds": wall, "peak_rss_mb": rss_kb / 1024.0, "user_seconds": ru.ru_utime,
            "sys_seconds": ru.ru_stime, "cpu_seconds": ru.ru_utime + ru.ru_stime,
            "loadavg1_before": load_before, "loadavg1_after": load_after}


def child_env(threads: int, with_src: bool) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    env["TQDM_DISABLE"] = "1"
    env["PYTHONHASHSEED"] = "0"
    if with_src:
        env["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    else:  # keep tabad's src out of anomalib's environment
        env.pop("PYTHONPATH", None)
    return env


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def path_key(p: str) -> str:
    """'<...>/<category>/test/<defect>[/rgb]/<name>' -> '<defect>[/rgb]/<name>' (for alignment)."""
    parts = Path(str(p)).parts
    if "test" in parts:
        i = len(parts) - 1 - parts[::-1].index("test")
        return "/".join(parts[i + 1:])
    return "/".join(parts[-3:])


# ----------------------------------------------------------------------------- inputs
def make_weights(work: Path) -> Path:
    import torch
    import torchvision

    path = work / "resnet18_random_seed0.pt"
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    torch.save(model.state_dict(), path)
    return path


def make_idx(work: Path) -> tuple[Path, list[int]]:
    random.seed(1024)
    idx = random.sample(range(448), 100)
    path = work / "padim_idx_seed1024.json"
    path.write_text(json.dumps(idx))
    return path, idx


def tabad_default_idx() -> list[int] | None:
    try:
        from tabad.methods.padim import select_channels
    except Exception:  # noqa: BLE001 - tabad not importable: nothing to cross-check
        return None
    return list(select_channels(448, None, "resnet18", 1024))


def tabad_cli_available(py: str) -> bool:
    r = subprocess.run([py, "-m", "tabad", "benchmark", "--help"], capture_output=True, text=True,
                       env=child_env(2, True), cwd=REPO)
    return r.returncode == 0


# ----------------------------------------------------------------------------- scoring
def score_with_tabad(labels, scores, masks, maps) -> dict:
    from tabad.metrics import evaluate

    return {k: (None if v is None else float(v)) for k, v in evaluate(labels, scores, masks, maps).items()}


def compare_predictions(a: dict, t: dict) -> dict:
    """Per-image agreement of the two libraries' outputs, aligned by file path."""
    import numpy as np
    from scipy.stats import pearsonr, spearmanr

    ka = [path_key(p) for p in a["image_paths"]]
    kt = [path_key(p) for p in t["files"]]
    if sorted(ka) != sorted(kt):
        return {"aligned": False, "only_anomalib": sorted(set(ka) - set(kt))[:5],
                "only_tabad": sorted(set(kt) - set(ka))[:5]}
    pos = {k: i for i, k in enumerate(kt)}
    order = np.array([pos[k] for k in ka])
    ts, tm, tmask, tl = t["scores"][order], t["maps"][order], t["masks"][order], t["labels"][order]
    same_labels = bool((tl.astype(int) == a["labels"].astype(int)).all())
    am = a["maps"]
    mask_diff = int((tmask.astype(bool) != a["masks"].astype(bool)).sum())
    # per-image map correlation
    map_r = [float(pearsonr(am[i].ravel(), tm[i].ravel())[0]) for i in range(len(am))]
    rel_score = np.abs(a["scores"] - ts) / np.maximum(np.abs(ts), 1e-12)
    rel_map = np.abs(am - tm).max(axis=(1, 2)) / np.maximum(np.abs(tm).max(axis=(1, 2)), 1e-12)
    out = {
        "aligned": True,
        "same_labels": same_labels,
        "gt_mask_pixels_differing": mask_diff,
        "gt_mask_pixels_total": int(tmask.size),
        "image_score_spearman": float(spearmanr(a["scores"], ts)[0]),
        "image_score_pearson": float(pearsonr(a["scores"], ts)[0]),
        "image_score_rel_diff_median": float(np.median(rel_score)),
        "image_score_rel_diff_max": float(rel_score.max()),
        "map_pearson_median": float(np.median(map_r)),
        "map_pearson_min": float(np.min(map_r)),
        "map_rel_maxabs_diff_median": float(np.median(rel_map)),
    }
    if mask_diff:
        # anomalib's maps scored against tabad's masks: isolates the GT-resizing difference
        out["anomalib_maps_on_tabad_masks"] = score_with_tabad(a["labels"], a["scores"], tmask, am)
    return out


# ----------------------------------------------------------------------------- main work
def run_category(args, root: Path, category: str, layout: str, weights: Path, idx_path: Path, work: Path,
                 do_tabad: bool) -> dict:
    import numpy as np

    entry: dict = {"category": category, "data": rel(root), "layout": layout, "runs": {"anomalib": [], "tabad": []}}
    cat_work = work / f"{root.name}__{category}"
    a_cmd_shown = t_cmd_shown = None
    for rep in range(args.repeats):
        # ---------------- tabad
        if do_tabad:
            t_out = cat_work / f"tabad_r{rep}"
            shutil.rmtree(t_out, ignore_errors=True)
            t_cmd = [args.tabad_python, "-m", "tabad", "benchmark", "--data", str(root), "--categories", category,
                     "--method", "padim", "--weights", str(weights), "--seed", "0", "--layout", layout,
                     "--resize", str(args.resize), "--crop", str(args.crop), "--device", "cpu", "--panels", "0",
                     "--no-resume", "--out", str(t_out)]
            if rep == 0:
                t_cmd.append("--save-predictions")
            t_cmd_shown = t_cmd
            print(f"[{category}] tabad run {rep + 1}/{args.repeats}", flush=True)
            proc = run_child(t_cmd, child_env(args.threads, True), t_out.parent / f"tabad_r{rep}.log", REPO)
            res = json.loads((t_out / "results.json").read_text())
            row = next(r for r in res["results"] if r["category"] == category and r["method"] == "padim")
            entry["runs"]["tabad"].append({"process": proc, "result": row, "provenance": res.get("provenance", {})})
            print(f"[{category}] tabad: {proc['wall_seconds']:.1f} s, {proc['peak_rss_mb']:.0f} MB, "
                  f"img AUROC {row.get('image_auroc')}", flush=True)
        # ---------------- anomalib
        a_out = cat_work / f"anomalib_r{rep}"
        shutil.rmtree(a_out, ignore_errors=True)
        a_cmd = [args.anomalib_python, str(HERE / "anomalib_padim_runner.py"), "--data", str(root), "--category",
                 category, "--layout", layout, "--weights", str(weights), "--idx", str(idx_path), "--resize",
                 str(args.resize), "--crop", str(args.crop), "--threads", str(args.threads), "--seed", "0",
                 "--out", str(a_out)]
        a_cmd_shown = a_cmd
        print(f"[{category}] anomalib run {rep + 1}/{args.repeats}", flush=True)
        proc = run_child(a_cmd, child_env(args.threads, False), a_out.parent / f"anomalib_r{rep}.log", REPO)
        aj = json.loads((a_out / "anomalib.json").read_text())
        shutil.rmtree(a_out / "engine", ignore_errors=True)  # its 100+ MB checkpoint
        entry["runs"]["anomalib"].append({"process": proc, "result": aj})
        print(f"[{category}] anomalib: {proc['wall_seconds']:.1f} s, {proc['peak_rss_mb']:.0f} MB, "
              f"img AUROC {aj['metrics_anomalib_evaluator'].get('image_AUROC')}", flush=True)

    def cmd_text(cmd):
        if cmd is None:
            return None
        shown = [rel(c) if os.path.isabs(c) else c for c in cmd]
        if cmd is t_cmd_shown:
            return "PYTHONPATH=src OMP_NUM_THREADS=%d %s" % (args.threads, shlex.join(shown))
        return "OMP_NUM_THREADS=%d %s" % (args.threads, shlex.join(shown))

    entry["commands"] = {"tabad": cmd_text(t_cmd_shown), "anomalib": cmd_text(a_cmd_shown)}

    # ---------------- metrics (first run's predictions; repeats only refine timings)
    a0 = entry["runs"]["anomalib"][0]["result"]
    ap = dict(np.load(cat_work / "anomalib_r0" / "predictions.npz"))
    entry["anomalib"] = {
        "metrics_tabad_code": score_with_tabad(ap["labels"], ap["scores"], ap["masks"], ap["maps"]),
        "metrics_anomalib_evaluator": {k: a0["metrics_anomalib_evaluator"].get(v) for k, v in ANOMALIB_KEYS.items()},
        "metrics_anomalib_code_on_raw_minmax": {k: a0["metrics_anomalib_on_raw_minmax"].get(v)
                                                 for k, v in ANOMALIB_KEYS.items()},
        "n_train": a0["n_train"], "n_test": a0["n_test"], "mask_pairing": a0["mask_pairing"],
        "postprocessor_clamping": {k: v for k, v in a0["postprocessor"].items() if "clamped" in k or k == "n_pixels"},
    }
    # repeat-to-repeat determinism of anomalib's metrics
    entry["anomalib"]["evaluator_metrics_all_repeats"] = [r["result"]["metrics_anomalib_evaluator"]
                                                          for r in entry["runs"]["anomalib"]]
    if do_tabad:
        t0 = entry["runs"]["tabad"][0]["result"]
        entry["tabad"] = {"metrics_results_json": {k: t0.get(k) for k in METRICS},
                          "n_train": t0.get("n_train"), "n_test": t0.get("n_test"),
                          "weights_label": t0.get("weights"), "config": t0.get("config")}
        pred_files = sorted((cat_work / "tabad_r0" / "predictions").glob(f"{category}__*.npz"))
        if pred_files:
            tp = dict(np.load(pred_files[0], allow_pickle=False))
            entry["tabad"]["predictions_file"] = pred_files[0].name
            entry["tabad"]["metrics_tabad_code"] = score_with_tabad(tp["labels"], tp["scores"], tp["masks"], tp["maps"])
            if "files" in tp:
                entry["agreement"] = compare_predictions(ap, tp)
        t_metrics = entry["tabad"].get("metrics_tabad_code") or entry["tabad"]["metrics_results_json"]
        entry["diff"] = {k: (None if t_metrics.get(k) is None or entry["anomalib"]["metrics_tabad_code"].get(k) is None
                             else abs(t_metrics[k] - entry["anomalib"]["metrics_tabad_code"][k])) for k in METRICS}
        entry["parity_ok"] = all(entry["diff"][k] is not None and entry["diff"][k] <= PARITY_TOL
                                 for k in ("image_auroc", "pixel_auroc", "aupro"))
        same = entry.get("agreement", {}).get("anomalib_maps_on_tabad_masks")
        if same is not None:  # the GT masks differ: also compare on one set of masks (tabad's)
            entry["diff_same_masks"] = {k: (None if t_metrics.get(k) is None or same.get(k) is None
                                            else abs(t_metrics[k] - same[k])) for k in METRICS}
            entry["parity_ok_same_masks"] = all(entry["diff_same_masks"][k] <= PARITY_TOL
                                                for k in ("image_auroc", "pixel_auroc", "aupro"))

    # ---------------- timings (median over repeats)
    def tim(side, getter):
        return median([getter(r) for r in entry["runs"][side]])

    timing = {"anomalib": {
        "wall_seconds": tim("anomalib", lambda r: r["process"]["wall_seconds"]),
        "cpu_seconds": tim("anomalib", lambda r: r["process"]["cpu_seconds"]),
        "peak_rss_mb": tim("anomalib", lambda r: r["process"]["peak_rss_mb"]),
        "import_seconds": tim("anomalib", lambda r: r["result"]["timings"]["import_seconds"]),
        "fit_seconds": tim("anomalib", lambda r: r["result"]["timings"]["fit_seconds"]),
        "fit_gaussian_seconds": tim("anomalib", lambda r: r["result"]["timings"]["fit_gaussian_seconds"]),
        "fit_validation_pass_seconds": tim("anomalib", lambda r: r["result"]["timings"]["fit_validation_pass_seconds"]),
        "test_seconds": tim("anomalib", lambda r: r["result"]["timings"]["test_seconds"]),
        "predict_ms_per_image": tim("anomalib", lambda r: r["result"]["timings"]["predict_ms_per_image"]),
        "model_forward_ms_per_image": tim("anomalib", lambda r: r["result"]["timings"]["model_forward_ms_per_image"]),
        "repeats": len(entry["runs"]["anomalib"]),
    }}
    if do_tabad:
        timing["tabad"] = {
            "wall_seconds": tim("tabad", lambda r: r["process"]["wall_seconds"]),
            "cpu_seconds": tim("tabad", lambda r: r["process"]["cpu_seconds"]),
            "peak_rss_mb": tim("tabad", lambda r: r["process"]["peak_rss_mb"]),
            "fit_seconds": tim("tabad", lambda r: r["result"].get("fit_seconds")),
            "predict_ms_per_image": tim("tabad", lambda r: r["result"].get("predict_ms_per_image")),
            "repeats": len(entry["runs"]["tabad"]),
        }
        timing["wall_ratio_tabad_over_anomalib"] = timing["tabad"]["wall_seconds"] / timing["anomalib"]["wall_seconds"]
        timing["tabad"]["wall_seconds_min"] = min(r["process"]["wall_seconds"] for r in entry["runs"]["tabad"])
        timing["anomalib"]["wall_seconds_min"] = min(r["process"]["wall_seconds"] for r in entry["runs"]["anomalib"])
        timing["wall_ratio_of_minimums"] = timing["tabad"]["wall_seconds_min"] / timing["anomalib"]["wall_seconds_min"]
        timing["cpu_ratio_tabad_over_anomalib"] = timing["tabad"]["cpu_seconds"] / timing["anomalib"]["cpu_seconds"]
        timing["speed_ok"] = timing["wall_ratio_tabad_over_anomalib"] <= SPEED_TARGET
    entry["timing"] = timing
    return entry


# ----------------------------------------------------------------------------- report
def fmt(x, nd=4):
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "**NO**"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def write_markdown(report: dict, path: Path) -> None:
    prov = report["provenance"]
    L = ["# PaDiM: tabad vs anomalib 2.7.0", ""]
    L.append(f"Generated by `benchmarks/padim_vs_anomalib.py` on {prov['date']} "
             f"({prov['machine']['cpu_model']}, {prov['machine']['nproc']} CPUs, "
             f"{prov['machine']['mem_total_gb']} GB RAM; {prov['threads']} threads per library, runs sequential; "
             f"timings are the median of {prov['repeats']} run(s)).")
    L.append("")
    L.append("Same backbone weights file for both (torchvision `resnet18()` random init after "
             "`torch.manual_seed(0)`, sha256 `%s`; no ImageNet weights offline, so absolute numbers are "
             "sanity checks only), same 100 channels (`random.seed(1024); random.sample(range(448), 100)`), same "
             "transform (Resize((%d,%d)) → CenterCrop(%d) → ImageNet normalisation). Both libraries' raw "
             "predictions are scored by the same code, `tabad.metrics.evaluate`. Targets: |Δ| ≤ %.2f for image "
             "AUROC, pixel AUROC and AUPRO; whole-process wall time tabad/anomalib ≤ %.1f."
             % (prov["weights"]["sha256"], prov["resize"], prov["resize"], prov["crop"], PARITY_TOL, SPEED_TARGET))
    L.append("")
    has_tabad = any("tabad" in e for e in report["categories"])
    L.append("## Accuracy (scored by `tabad.metrics`)")
    L.append("")
    if has_tabad:
        L.append("| category | metric | tabad | anomalib | \\|Δ\\| | anomalib maps on tabad's GT masks (\\|Δ\\|) "
                 "| anomalib's own Evaluator |")
        L.append("|---|---|---|---|---|---|---|")
    else:
        L.append("| category | metric | anomalib (tabad.metrics) | anomalib's own Evaluator |")
        L.append("|---|---|---|---|")
    for e in report["categories"]:
        for k in METRICS:
            a = e["anomalib"]["metrics_tabad_code"].get(k)
            own = e["anomalib"]["metrics_anomalib_evaluator"].get(k)
            if has_tabad and "tabad" in e:
                t = (e["tabad"].get("metrics_tabad_code") or e["tabad"]["metrics_results_json"]).get(k)
                d = e["diff"].get(k)
                flag = "" if d is None or k not in ("image_auroc", "pixel_auroc", "aupro") or d <= PARITY_TOL else " ✗"
                same = e.get("agreement", {}).get("anomalib_maps_on_tabad_masks")
                same_txt = ("same masks" if same is None else
                            f"{fmt(same.get(k))} ({fmt(e['diff_same_masks'].get(k))})")
                L.append(f"| {e['category']} | {k} | {fmt(t)} | {fmt(a)} | {fmt(d)}{flag} | {same_txt} | {fmt(own)} |")
            else:
                L.append(f"| {e['category']} | {k} | {fmt(a)} | {fmt(own)} |")
    L.append("")
    if has_tabad:
        L.append("Each library is scored against its own ground-truth masks. Where the two libraries' masks differ "
                 "(see 'GT-mask pixels differing' below), the column 'anomalib maps on tabad's GT masks' scores "
                 "anomalib's maps against tabad's masks, which separates the model from the mask resizing.")
        L.append("")
    L.append("## Speed and memory (whole process, incl. imports and data loading)")
    L.append("")
    if has_tabad:
        L.append("| category | n train / test | tabad wall s | anomalib wall s | ratio tabad/anomalib (ratio of minimum walls) | "
                 "CPU s (user+sys) tabad / anomalib (ratio) | tabad fit s | "
                 "anomalib fit s (Gaussian / +val pass) | tabad predict ms/img | anomalib test ms/img (model fwd) | "
                 "tabad peak RSS MB | anomalib peak RSS MB |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    else:
        L.append("| category | n train / test | anomalib wall s | anomalib import s | anomalib fit s (Gaussian / +val pass) "
                 "| anomalib test ms/img (model fwd) | anomalib peak RSS MB |")
        L.append("|---|---|---|---|---|---|---|")
    for e in report["categories"]:
        ta = e["timing"]["anomalib"]
        afit = f"{fmt(ta['fit_seconds'], 1)} ({fmt(ta['fit_gaussian_seconds'], 1)} / {fmt(ta['fit_validation_pass_seconds'], 1)})"
        apred = f"{fmt(ta['predict_ms_per_image'], 0)} ({fmt(ta['model_forward_ms_per_image'], 0)})"
        n = f"{e['anomalib']['n_train']} / {e['anomalib']['n_test']}"
        if has_tabad and "tabad" in e["timing"]:
            tt = e["timing"]["tabad"]
            ratio = e["timing"]["wall_ratio_tabad_over_anomalib"]
            L.append(f"| {e['category']} | {n} | {fmt(tt['wall_seconds'], 1)} | {fmt(ta['wall_seconds'], 1)} | "
                     f"{fmt(ratio, 2)}{'' if ratio <= SPEED_TARGET else ' ✗'} "
                     f"({fmt(e['timing']['wall_ratio_of_minimums'], 2)}) | {fmt(tt['cpu_seconds'], 1)} / "
                     f"{fmt(ta['cpu_seconds'], 1)} ({fmt(e['timing']['cpu_ratio_tabad_over_anomalib'], 2)}) | "
                     f"{fmt(tt['fit_seconds'], 2)} | {afit} | "
                     f"{fmt(tt['predict_ms_per_image'], 0)} | {apred} | {fmt(tt['peak_rss_mb'], 0)} | "
                     f"{fmt(ta['peak_rss_mb'], 0)} |")
        else:
            L.append(f"| {e['category']} | {n} | {fmt(ta['wall_seconds'], 1)} | {fmt(ta['import_seconds'], 1)} | "
                     f"{afit} | {apred} | {fmt(ta['peak_rss_mb'], 0)} |")
    L.append("")
    loads = [r["process"].get("loadavg1_before") for e in report["categories"] for runs in e["runs"].values()
             for r in runs] + [r["process"].get("loadavg1_after") for e in report["categories"]
                               for runs in e["runs"].values() for r in runs]
    loads = [x for x in loads if x is not None]
    if loads:
        L.append(f"1-minute load average of the machine around the runs: {min(loads):.1f}–{max(loads):.1f} on "
                 f"{prov['machine']['nproc']} CPUs. Above the CPU count other processes were competing: wall times "
                 f"(and, through cache and memory-bandwidth contention, CPU times too) are inflated, by up to 5× "
                 f"seen on this machine, so compare the two libraries only within a category and prefer the ratio "
                 f"of minimum wall times when the load was high.")
        L.append("")
    L.append("anomalib's *fit* is `Engine.fit`: feature extraction of the training set, the per-position Gaussian "
             "(`fit_gaussian`) and, because `val_split_mode=same_as_test`, a validation pass over the test set that "
             "learns its thresholds and min-max statistics (`+val pass`, which includes the Gaussian fit: the "
             "memory-bank fit runs at validation start). *test* is `Engine.test` (pre-processing, model, "
             "post-processing and metrics) per image; *model fwd* is `PadimModel.forward` alone.")
    L.append("")
    if any("agreement" in e for e in report["categories"]):
        L.append("## Per-image agreement (aligned by file name)")
        L.append("")
        L.append("| category | image-score Spearman | median rel. score diff | max rel. score diff | "
                 "median per-image map Pearson | min map Pearson | GT-mask pixels differing |")
        L.append("|---|---|---|---|---|---|---|")
        for e in report["categories"]:
            g = e.get("agreement")
            if not g or not g.get("aligned"):
                continue
            L.append(f"| {e['category']} | {fmt(g['image_score_spearman'])} | {fmt(g['image_score_rel_diff_median'], 5)} | "
                     f"{fmt(g['image_score_rel_diff_max'], 5)} | {fmt(g['map_pearson_median'])} | "
                     f"{fmt(g['map_pearson_min'])} | {g['gt_mask_pixels_differing']} / {g['gt_mask_pixels_total']} |")
        L.append("")
    L.append("## How anomalib is run, and where its PaDiM differs from the reference")
    L.append("")
    for line in report["anomalib_notes"]:
        L.append(f"- {line}")
    L.append("")
    L.append("## Provenance")
    L.append("")
    L.append(f"- weights: `{prov['weights']['file']}` sha256 `{prov['weights']['sha256']}`; "
             f"channel indices (first 10): {prov['idx'][:10]}")
    L.append(f"- tabad stack: {json.dumps(prov.get('tabad_stack'))}")
    L.append(f"- anomalib stack: {json.dumps(prov.get('anomalib_stack'))} (full freeze: "
             f"`benchmarks/reports/anomalib-env.txt`)")
    L.append(f"- machine: {json.dumps(prov['machine'])}")
    L.append(f"- driver command: `{prov['command']}`")
    for e in report["categories"]:
        for side in ("tabad", "anomalib"):
            if e["commands"].get(side):
                L.append(f"- {e['category']} / {side}: `{e['commands'][side]}`")
    L.append("")
    path.write_text("\n".join(L) + "\n")


ANOMALIB_NOTES = [
    "`Engine(accelerator='cpu', devices=1)` + `Folder(normal_dir, abnormal_dir=[per defect], normal_test_dir, "
    "mask_dir=[per defect], val_split_mode='same_as_test', test_split_mode='from_dir', num_workers=0, batch 32)`; "
    "`Padim(backbone='resnet18', layers=['layer1','layer2','layer3'], pre_trained=False, n_features=100, "
    "visualizer=False)`; `Engine.fit` then `Engine.test`; `seed_everything(0)`; 2 torch threads.",
    "Weights: `model.model.feature_extractor.feature_extractor.load_state_dict(sd, strict=False)` (timm "
    "`features_only` ResNet18); the runner asserts that nothing is missing and that only `layer4.*`/`fc.*` are "
    "unexpected. Channels: the runner overwrites the `idx` buffer of `PadimModel` (by default anomalib draws it "
    "with `torch.randperm(448)[:100]`). Channel order does not matter (Mahalanobis is permutation-invariant).",
    "Transform: `PreProcessor(transform=v2.Compose([Resize((256,256), antialias=True), CenterCrop(224), "
    "Normalize(ImageNet)]))`. anomalib applies it to `(image, gt_mask)` per batch and also copies the `Resize` into "
    "the datasets (before collation), so each image is resized once; masks are `tv_tensors.Mask`, so they get the "
    "same geometry with NEAREST. Images are resized as float tensors (torch antialiased bilinear); tabad resizes "
    "uint8 PIL images (PIL antialiased bilinear, rounded to uint8): tiny input differences (per-image score "
    "differences of ~0.1 %).",
    "GT masks: anomalib binarises `> 0` and resizes with torchvision's NEAREST, i.e. `F.interpolate(mode="
    "'nearest')`, which picks source pixel floor(i·scale) instead of the pixel under the output pixel's centre "
    "(floor((i+0.5)·scale), as PIL NEAREST, torch 'nearest-exact' and the bilinear image resize do). With a "
    "non-integer scale (tire: 341×256 (H×W) → 256×256) anomalib's masks are shifted by up to one output pixel "
    "against the image (a tire 'cut' mask: 30 of 126 foreground pixels differ, centroid moved 0.94 px). tabad's "
    "masks (PIL NEAREST) stay aligned. The effect is largest on AUPRO (per-region overlap of small regions).",
    "Folder mask pairing: it sorts all image and mask paths and assigns masks to anomalous images by position, "
    "then only checks that the mask stem *contains* the image stem. With several defect folders whose files share "
    "names (MVTec 3D-AD: `000.png` in every defect) a missing mask would silently shift pairs while still passing "
    "that check, so the runner verifies every pair (same defect folder, same stem) and aborts otherwise.",
    "Scores saved = raw `PadimModel.forward` output (before the PostProcessor). Its post-processing is "
    "`((x − threshold)/(max − min) + 0.5).clamp(0, 1)` with min/max/threshold learned on the validation set (= the "
    "test set here): monotone but the clamp creates ties at 0 and 1; the count of clamped values is in the JSON. "
    "anomalib's own Evaluator (column 'anomalib's own Evaluator') computes on these post-processed values.",
    "Pitfall seen: anomalib's AUROC/F1Max metric classes fed raw PaDiM distances (a user who disables "
    "normalisation) go through torchmetrics' input formatting, which applies a sigmoid to values outside [0, 1]; "
    "distances above ~17 all become 1.0 in float32, so the metrics are wrong (hazelnut: image AUROC 0.917 instead "
    "of 1.000). AUPRO is unaffected. The JSON keeps anomalib's metric code applied to min-max scaled raw values too.",
    "Differences from methods.md §1: Gaussian blur σ=4 with a 33×33 kernel (`2·int(4σ+0.5)+1`, same taps as "
    "scipy truncate=4) but torch `reflect` padding, i.e. (d c b | a b c d), while scipy's `reflect` repeats the edge "
    "pixel (d c b a | a b c d) — different values within 16 px of the border; covariance gets +0.01·I and then "
    "another +1e-5·I before inversion (float32 `torch.linalg.inv`); coarse layers are upsampled with "
    "`F.interpolate(mode='nearest')` (= replicate, as the reference); Mahalanobis map upsampled bilinearly "
    "(align_corners=False) to the input size; image score = max of the smoothed map; the Gaussian is fitted by "
    "a Python loop over the 3136 positions (slow on CPU) from all training embeddings held in memory.",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(REPO / ".." / "shared" / "data"),
                   help="folder holding the default sets (default: ../shared/data relative to the repo)")
    p.add_argument("--sets", default=",".join(DEFAULT_SETS),
                   help="comma-separated <folder under --data>/<category>/<layout> (default: %(default)s)")
    p.add_argument("--extra-root", action="append", default=[],
                   help="another MVTec-like root (e.g. a procedural set); all its categories are added")
    p.add_argument("--extra-layout", default="auto", choices=["auto", "mvtec", "mvtec3d", "mvtec-stem"])
    p.add_argument("--repeats", type=int, default=1, help="timing runs per side (median reported)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resize", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--only", choices=["both", "anomalib"], default="both",
                   help="'anomalib' runs the anomalib side alone (e.g. while tabad's CLI is missing)")
    p.add_argument("--anomalib-python", default=str(REPO / ".anomalib-venv" / "bin" / "python"))
    p.add_argument("--tabad-python", default=sys.executable)
    p.add_argument("--work", default=str(HERE / ".work" / "padim_vs_anomalib"),
                   help="scratch folder for runs, logs and predictions (default: benchmarks/.work/..., git-ignored)")
    p.add_argument("--report", default=str(HERE / "reports" / "padim_vs_anomalib"),
                   help="report path without extension (.md and .json are written)")
    args = p.parse_args(argv)

    if str(REPO / "src") not in sys.path:
        sys.path.insert(0, str(REPO / "src"))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not Path(args.anomalib_python).exists():
        raise SystemExit(f"anomalib interpreter not found: {args.anomalib_python} (see benchmarks/README.md)")

    do_tabad = args.only == "both"
    if do_tabad and not tabad_cli_available(args.tabad_python):
        raise SystemExit("`python -m tabad benchmark` is not available; use --only anomalib")

    weights = make_weights(work)
    idx_path, idx = make_idx(work)
    t_idx = tabad_default_idx()
    if do_tabad and t_idx is not None and t_idx != idx:
        raise SystemExit("tabad's default PaDiM channel subset differs from random.seed(1024) sample")

    targets: list[tuple[Path, str, str]] = []
    data = Path(args.data)
    for s in [s for s in args.sets.split(",") if s.strip()]:
        folder, category, layout = s.strip().rsplit("/", 2)
        root = data / folder
        if not (root / category).is_dir():
            print(f"skipping {s}: {rel(root / category)} not found", file=sys.stderr)
            continue
        targets.append((root, category, layout))
    for er in args.extra_root:
        er = Path(er)
        for cat in sorted(d.name for d in er.iterdir() if (d / "train").is_dir() and (d / "test").is_dir()):
            layout = detect_layout(er / cat) if args.extra_layout == "auto" else args.extra_layout
            targets.append((er, cat, layout))
    if not targets:
        raise SystemExit("no data found")

    entries = []
    for root, category, layout in targets:
        entries.append(run_category(args, root, category, layout, weights, idx_path, work, do_tabad))

    a_versions = entries[0]["runs"]["anomalib"][0]["result"]["versions"]
    tabad_stack = None
    if do_tabad:
        env = entries[0]["runs"]["tabad"][0]["provenance"].get("environment", {})
        tabad_stack = {k: env.get(k) for k in ("tabad_version", "git_commit", "python", "torch", "torchvision", "numpy")}
    shown_argv = [rel(a) if os.path.isabs(a) else a for a in (argv if argv is not None else sys.argv[1:])]
    report = {
        "benchmark": "padim_vs_anomalib",
        "targets": {"parity_abs_diff_max": PARITY_TOL, "wall_ratio_max": SPEED_TARGET},
        "provenance": {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "weights": {"file": weights.name, "sha256": sha256_file(weights),
                        "recipe": "torch.manual_seed(0); torchvision.models.resnet18().state_dict()"},
            "idx": idx,
            "idx_recipe": "random.seed(1024); random.sample(range(448), 100)",
            "tabad_default_idx_equal": None if t_idx is None else t_idx == idx,
            "resize": args.resize, "crop": args.crop, "threads": args.threads, "repeats": args.repeats,
            "tabad_stack": tabad_stack,
            "anomalib_stack": a_versions,
            "machine": {"nproc": os.cpu_count(), "cpu_model": cpu_model(), "mem_total_gb": mem_total_gb(),
                        "platform": platform.platform()},
            "command": "python benchmarks/padim_vs_anomalib.py " + shlex.join(shown_argv),
        },
        "anomalib_notes": ANOMALIB_NOTES,
        "categories": [{k: v for k, v in e.items() if k != "runs"} | {
            "runs": {side: [{"process": r["process"],
                             **({"timings": r["result"]["timings"]} if side == "anomalib" else
                                {"fit_seconds": r["result"].get("fit_seconds"),
                                 "predict_ms_per_image": r["result"].get("predict_ms_per_image")})}
                            for r in runs] for side, runs in e["runs"].items()}} for e in entries],
    }
    out = Path(args.report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, out.with_suffix(".md"))
    print(f"wrote {rel(out.with_suffix('.md'))} and .json")
    if do_tabad:
        for e in entries:
            print(f"{e['category']}: parity {'OK' if e.get('parity_ok') else 'FAIL'} {e.get('diff')}; "
                  f"wall ratio {e['timing'].get('wall_ratio_tabad_over_anomalib'):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
