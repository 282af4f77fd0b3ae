"""Driver half of the side-by-side comparisons: run with tabad's interpreter (``.venv/bin/python``).

Gives both libraries the same inputs, runs each as a child process (never in parallel), times
it and scores both libraries' saved predictions with the same code, ``tabad.metrics.evaluate``.
Everything tabad-specific that the comparisons read from tabad's output folder is in
:func:`read_tabad_output` and :func:`tabad_predictions`; tabad's Python API is used through
public names only.

Typical use in a comparison (see ``padim_vs_anomalib.py``)::

    p = sidebyside.parser(__doc__, "padim_vs_anomalib")          # the common flags
    ...                                                          # the method's own flags
    args = sidebyside.parse(p, argv)
    if args.render_only:
        return sidebyside.rerender(args, render)
    weights = sidebyside.write_weights(args.work)                # ONE weights file
    for target in sidebyside.targets(args):                      # --sets / --extra-root
        runs = sidebyside.repeat_pairs(args.repeats, tabad=..., anomalib=...)
        pair = sidebyside.score_pair(anomalib_predictions(...), tabad_predictions(...))
    report.write_report({... "provenance": sidebyside.provenance(...)}, args.report, render)
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from . import report as _report
from .report import METRICS

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "benchmarks"

#: (folder under --data, category, layout)
DEFAULT_SETS = ("mvtec3d/tire/mvtec3d", "hazelnut_toy/hazelnut/mvtec-stem")
LAYOUTS = ("mvtec", "mvtec3d", "mvtec-stem")
ANOMALIB_KEYS = {  # our metric name -> anomalib Evaluator name
    "image_auroc": "image_AUROC",
    "pixel_auroc": "pixel_AUROC",
    "aupro": "pixel_AUPRO",
    "image_f1max": "image_F1Max",
    "pixel_f1max": "pixel_F1Max",
}
WEIGHTS_FILE = "resnet18_random_seed0.pt"
WEIGHTS_RECIPE = "torch.manual_seed(0); torchvision.models.resnet18().state_dict()"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

#: glibc's dynamic mmap threshold lets large short-lived temporaries (the 20-200 MB
#: ``features - centre`` blocks of anomalib's greedy coreset loop) land on the heap, which then
#: fragments: anomalib's PatchCore passed 9.6 GB RSS a third of the way through hazelnut's
#: coreset. A fixed threshold keeps such blocks mmapped (returned on free). A comparison sets
#: it for both libraries alike (``malloc=True``) or for neither.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4194304"}


# ----------------------------------------------------------------------------- paths
def rel(p: Path | str) -> str:
    """A path for reports: relative to the repository (never an absolute machine path)."""
    try:
        return os.path.relpath(os.path.abspath(p), REPO)
    except ValueError:  # other drive (Windows)
        return Path(p).name


def shown(cmd: Iterable[str]) -> str:
    """A command line for reports, absolute paths made relative to the repository."""
    return shlex.join([rel(c) if os.path.isabs(c) else c for c in cmd])


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_tabad_importable() -> None:
    """tabad from ``src/`` when the driver imports it in-process (scoring, inputs)."""
    if str(REPO / "src") not in sys.path:
        sys.path.insert(0, str(REPO / "src"))


# ----------------------------------------------------------------------------- data sets
@dataclass(frozen=True)
class Target:
    """One category of an MVTec-like root, in one layout."""

    root: Path
    category: str
    layout: str

    @property
    def name(self) -> str:
        """Its scratch folder's name under ``--work``."""
        return f"{self.root.name}__{self.category}"

    @property
    def spec(self) -> str:
        return f"{rel(self.root)}/{self.category} ({self.layout})"


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


def parse_sets(data: Path | str, sets: str, extra_roots: Iterable[Path | str] = (),
               extra_layout: str = "auto") -> list[Target]:
    """``--sets`` (comma-separated ``<folder under data>/<category>/<layout>``; missing ones are skipped with a
    message) plus every category of each ``--extra-root`` (layout detected, or ``extra_layout``)."""
    out = []
    for s in [s.strip() for s in sets.split(",") if s.strip()]:
        folder, category, layout = s.rsplit("/", 2)
        if layout not in LAYOUTS:
            raise SystemExit(f"--sets {s}: layout must be one of {', '.join(LAYOUTS)}")
        root = Path(data) / folder
        if not (root / category).is_dir():
            print(f"skipping {s}: {rel(root / category)} not found", file=sys.stderr)
            continue
        out.append(Target(root, category, layout))
    for er in map(Path, extra_roots):
        for cat in sorted(d.name for d in er.iterdir() if (d / "train").is_dir() and (d / "test").is_dir()):
            out.append(Target(er, cat, detect_layout(er / cat) if extra_layout == "auto" else extra_layout))
    return out


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


def data_recipes(targets: Iterable[Target]) -> dict[str, str]:
    """How to regenerate each procedural root among ``targets``."""
    roots = sorted({t.root for t in targets})
    return {rel(r): dataset_recipe(r) for r in roots if dataset_recipe(r)}


# ----------------------------------------------------------------------------- shared inputs
@dataclass(frozen=True)
class Weights:
    """The one backbone weights file both libraries load."""

    path: Path
    sha256: str
    recipe: str = WEIGHTS_RECIPE

    def record(self) -> dict:
        return {"file": self.path.name, "sha256": self.sha256, "recipe": self.recipe}


def write_weights(work: Path) -> Weights:
    """``torch.manual_seed(0); torchvision.models.resnet18().state_dict()`` (no ImageNet weights offline),
    written once per driver run (atomically) and given to both libraries and every set."""
    import torch
    import torchvision

    path = Path(work) / WEIGHTS_FILE
    # torch.save names the archive's inner folder after the file: save under the final name (in a private
    # folder, then moved into place) so the bytes, and the sha256 the reports record, never depend on it.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".weights-", dir=path.parent))
    try:
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18().state_dict(), tmp_dir / WEIGHTS_FILE)
        os.replace(tmp_dir / WEIGHTS_FILE, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return Weights(path, sha256_file(path))


def resized_copy(target: Target, size: int, out_root: Path) -> Target:
    """The category as tabad decodes it (S×S uint8, masks nearest), written as lossless PNGs (MVTec layout).

    Both libraries then read the same pixels and masks: resizing an S×S image to S×S is the
    identity in PIL and in torchvision, so only the models differ.
    """
    import numpy as np
    from PIL import Image

    from tabad.datasets.loader import load_split
    from tabad.datasets.readers import read_category
    from tabad.datasets.transforms import Geometry

    data = read_category(target.root, target.category, layout=target.layout)
    cat_out = out_root / target.category
    shutil.rmtree(cat_out, ignore_errors=True)
    for split, samples in (("train", data.train), ("test", data.test)):
        loaded = load_split(samples, Geometry(size, size))
        for i, s in enumerate(samples):
            img_dir = cat_out / split / s.defect_type
            img_dir.mkdir(parents=True, exist_ok=True)
            stem = Path(s.image_path).stem
            Image.fromarray(loaded.images[i].permute(1, 2, 0).numpy()).save(img_dir / f"{stem}.png")
            if split == "test" and s.label == 1:
                gt_dir = cat_out / "ground_truth" / s.defect_type
                gt_dir.mkdir(parents=True, exist_ok=True)
                mask = loaded.masks[i].numpy().astype(np.uint8) * 255
                Image.fromarray(mask).save(gt_dir / f"{stem}_mask.png")
    return Target(out_root, target.category, "mvtec")


def training_order(target: Target, epochs: int, batch_size: int, seed: int, out: Path) -> Path:
    """The training batches of every epoch, as tabad's ``Batches.epoch`` draws them, as file names relative to
    the category root (a runner's ``--order``: anomalib then trains on exactly tabad's batches)."""
    import torch

    from tabad.datasets.loader import Batches
    from tabad.datasets.readers import read_category

    data = read_category(target.root, target.category, layout=target.layout, check_files=False)
    cat_root = Path(target.root) / target.category
    files = [os.path.relpath(s.image_path, cat_root) for s in data.train]
    # Batches of the indices themselves: the exact code path tabad trains with.
    idx = Batches(torch.arange(len(files), dtype=torch.float64).view(-1, 1, 1, 1) * 255.0, batch_size,
                  normalise=False)
    plan = [[[files[int(round(float(i)))] for i in b.flatten()] for b in idx.epoch(e, seed=seed, drop_last=True)]
            for e in range(epochs)]
    out.write_text(json.dumps({"files": files, "batch_size": batch_size, "seed": seed, "epochs": plan}))
    return out


# ----------------------------------------------------------------------------- child processes
def child_env(threads: int, side: str, malloc: bool = False) -> dict:
    """The environment of a child: ``threads`` for every BLAS/OpenMP pool, no progress bars, a fixed hash seed,
    tabad's ``src`` on the path for tabad and kept out of anomalib's environment; ``MALLOC_ENV`` if asked."""
    env = dict(os.environ)
    for k in THREAD_VARS:
        env[k] = str(threads)
    env["TQDM_DISABLE"] = "1"
    env["PYTHONHASHSEED"] = "0"
    if malloc:
        env.update(MALLOC_ENV)
    if side == "tabad":
        env["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    else:
        env.pop("PYTHONPATH", None)
    return env


def env_record(threads: int, malloc: bool) -> dict:
    """The child environment settings a report records."""
    return {**{k: str(threads) for k in THREAD_VARS}, **(MALLOC_ENV if malloc else {}), "PYTHONHASHSEED": "0"}


def env_prefix(threads: int, side: str, malloc: bool = False) -> str:
    """How a reader reproduces a child's environment from the repository root (for reports)."""
    parts = (["PYTHONPATH=src"] if side == "tabad" else []) + [f"OMP_NUM_THREADS={threads}"]
    return " ".join(parts + [f"{k}={v}" for k, v in MALLOC_ENV.items()] if malloc else parts)


def run_child(cmd: list[str], env: dict, log: Path, cwd: Path = REPO) -> dict:
    """Run one child process to its end: its wall time, CPU time and peak RSS (``os.wait4``) and the machine's
    load around it. Raises with the log's tail if it fails."""
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


def tabad_cli_available(py: str) -> bool:
    r = subprocess.run([py, "-m", "tabad", "benchmark", "--help"], capture_output=True, text=True,
                       env=child_env(1, "tabad"), cwd=REPO)
    return r.returncode == 0


def read_tabad_output(out: Path, category: str, method: str) -> tuple[dict, dict]:
    """(result row, provenance) of one ``tabad benchmark`` output folder (``results.json``)."""
    res = json.loads((out / "results.json").read_text())
    row = next(r for r in res["results"] if r["category"] == category and r["method"] == method)
    return row, res.get("provenance", {})


def tabad_predictions(out: Path, category: str, required: bool = True) -> dict | None:
    """The predictions ``tabad benchmark --save-predictions`` saved (``labels``, ``scores``, ``masks``, ``maps``,
    ``files``), or None when there are none and ``required`` is false."""
    import numpy as np

    files = sorted((out / "predictions").glob(f"{category}__*.npz"))
    if not files:
        if required:
            raise FileNotFoundError(f"no predictions for {category} in {out / 'predictions'}")
        return None
    pred = dict(np.load(files[0], allow_pickle=False))
    pred["_file"] = files[0].name
    return pred


def anomalib_predictions(out: Path) -> dict:
    """What a runner saved: raw ``scores``, ``maps``, ``labels``, ``masks``, ``image_paths``."""
    import numpy as np

    return dict(np.load(out / "predictions.npz"))


def run_tabad(args, target: Target, method: str, weights: Path, out: Path, *, seed: int = 0, resize: int,
              crop: int, save: bool = False, extra: Iterable[str] = (), threads: int | None = None,
              malloc: bool = False, note: str = "") -> dict:
    """``python -m tabad benchmark --method METHOD`` on one set as a child process.

    Returns the run: ``process`` (:func:`run_child`), ``result`` (its ``results.json`` row), ``provenance``,
    ``phases`` (the fit and predict times tabad reports), ``command`` (for the report) and ``out``.
    """
    threads = args.threads if threads is None else threads
    shutil.rmtree(out, ignore_errors=True)
    cmd = [args.tabad_python, "-m", "tabad", "benchmark", "--data", str(target.root), "--categories",
           target.category, "--method", method, "--weights", str(weights), "--seed", str(seed), "--layout",
           target.layout, "--resize", str(resize), "--crop", str(crop), "--device", "cpu", "--panels", "0",
           "--no-resume", "--out", str(out)] + (["--save-predictions"] if save else []) + list(extra)
    print(f"[{target.category}] tabad {out.name}{note}", flush=True)
    proc = run_child(cmd, child_env(threads, "tabad", malloc), out.with_suffix(".log"))
    row, prov = read_tabad_output(out, target.category, method)
    print(f"[{target.category}] tabad: {proc['wall_seconds']:.1f} s, fit {row.get('fit_seconds')} s, "
          f"{proc['peak_rss_mb']:.0f} MB, img AUROC {row.get('image_auroc')}", flush=True)
    return {"process": proc, "result": row, "provenance": prov, "out": out,
            "phases": {k: row.get(k) for k in ("fit_seconds", "predict_ms_per_image")},
            "command": f"{env_prefix(threads, 'tabad', malloc)} {shown(cmd)}"}


def run_anomalib(args, runner: str, target: Target, weights: Path, out: Path, runner_args: Iterable[str] = (), *,
                 seed: int = 0, threads: int | None = None, malloc: bool = False, note: str = "") -> dict:
    """``benchmarks/RUNNER`` in anomalib's environment on one set as a child process.

    Every runner takes ``--data --category --layout --weights --threads --seed --out`` (see
    ``harness.anomalib_side.runner_parser``) and writes ``anomalib.json`` (with its phase ``timings``) and
    ``predictions.npz``. Lightning's checkpoint folder is deleted afterwards. Returns the run as
    :func:`run_tabad` does (``result`` = ``anomalib.json``, ``phases`` = its ``timings``).
    """
    threads = args.threads if threads is None else threads
    shutil.rmtree(out, ignore_errors=True)
    cmd = [args.anomalib_python, str(HERE / runner), "--data", str(target.root), "--category", target.category,
           "--layout", target.layout, "--weights", str(weights), *runner_args, "--threads", str(threads),
           "--seed", str(seed), "--out", str(out)]
    print(f"[{target.category}] anomalib {out.name}{note}", flush=True)
    proc = run_child(cmd, child_env(threads, "anomalib", malloc), out.with_suffix(".log"))
    result = json.loads((out / "anomalib.json").read_text())
    shutil.rmtree(out / "engine", ignore_errors=True)  # Lightning's checkpoint (100+ MB)
    timings = result.get("timings", {})
    print(f"[{target.category}] anomalib: {proc['wall_seconds']:.1f} s, fit {timings.get('fit_seconds')} s, "
          f"{proc['peak_rss_mb']:.0f} MB", flush=True)
    return {"process": proc, "result": result, "out": out, "phases": timings,
            "command": f"{env_prefix(threads, 'anomalib', malloc)} {shown(cmd)}"}


def repeat_pairs(repeats: int, tabad: Callable[[int], dict] | None, anomalib: Callable[[int], dict]) -> dict:
    """``repeats`` runs per library, alternating (tabad then anomalib), never in parallel."""
    runs: dict[str, list[dict]] = {"anomalib": [], "tabad": []}
    for rep in range(repeats):
        if tabad is not None:
            runs["tabad"].append(tabad(rep))
        runs["anomalib"].append(anomalib(rep))
    return runs


def slim_runs(runs: dict) -> dict:
    """The per-run records a report keeps: the process measurements and the phases the child reported."""
    return {side: [{"process": r["process"], **({"timings": r["phases"]} if side == "anomalib" else r["phases"])}
                   for r in rs] for side, rs in runs.items()}


# ----------------------------------------------------------------------------- timings
def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def timing_summary(runs: list[dict], phases: Iterable[str] = ("fit_seconds", "predict_ms_per_image")) -> dict:
    """Medians over repeats of the whole process (wall, CPU, peak RSS) and of the named reported phases."""
    out = {k: median([r["process"][k] for r in runs]) for k in ("wall_seconds", "cpu_seconds", "peak_rss_mb")}
    out.update({k: median([r["phases"].get(k) for r in runs]) for k in phases})
    out["wall_seconds_min"] = min(r["process"]["wall_seconds"] for r in runs)
    out["repeats"] = len(runs)
    return out


def ratios(timing: dict) -> dict:
    """tabad / anomalib: wall (medians), wall (minimums), CPU."""
    t, a = timing["tabad"], timing["anomalib"]
    return {"wall_ratio_tabad_over_anomalib": t["wall_seconds"] / a["wall_seconds"],
            "wall_ratio_of_minimums": t["wall_seconds_min"] / a["wall_seconds_min"],
            "cpu_ratio_tabad_over_anomalib": t["cpu_seconds"] / a["cpu_seconds"]}


# ----------------------------------------------------------------------------- scoring
def score(pred: dict) -> dict:
    """Saved predictions scored by ``tabad.metrics.evaluate``: the one scorer for both libraries."""
    ensure_tabad_importable()
    from tabad.metrics import evaluate

    return {k: (None if v is None else float(v))
            for k, v in evaluate(pred["labels"], pred["scores"], pred["masks"], pred["maps"]).items()}


def diff(a: dict, b: dict, metrics: Iterable[str] = METRICS) -> dict:
    return {k: None if a.get(k) is None or b.get(k) is None else abs(a[k] - b[k]) for k in metrics}


def path_key(p: str) -> str:
    """'<...>/<category>/test/<defect>[/rgb]/<name>' -> '<defect>[/rgb]/<name>' (for alignment)."""
    parts = Path(str(p)).parts
    if "test" in parts:
        i = len(parts) - 1 - parts[::-1].index("test")
        return "/".join(parts[i + 1:])
    return "/".join(parts[-3:])


def as_anomalib(pred: dict) -> dict:
    """tabad's predictions under the runner's key names (to compare two tabad runs with :func:`compare_predictions`)."""
    return {"image_paths": pred["files"], "scores": pred["scores"], "maps": pred["maps"], "masks": pred["masks"],
            "labels": pred["labels"]}


def compare_predictions(a: dict, t: dict) -> dict:
    """Per-image agreement of anomalib's (``a``) and tabad's (``t``) outputs, aligned by file path."""
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
    am = a["maps"]
    mask_diff = int((tmask.astype(bool) != a["masks"].astype(bool)).sum())
    map_r = [float(pearsonr(am[i].ravel(), tm[i].ravel())[0]) for i in range(len(am))]
    rel_score = np.abs(a["scores"] - ts) / np.maximum(np.abs(ts), 1e-12)
    rel_map = np.abs(am - tm).max(axis=(1, 2)) / np.maximum(np.abs(tm).max(axis=(1, 2)), 1e-12)
    out = {
        "aligned": True,
        "same_labels": bool((tl.astype(int) == a["labels"].astype(int)).all()),
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
    if mask_diff:  # anomalib's maps scored against tabad's masks: isolates the GT-resizing difference
        out["anomalib_maps_on_tabad_masks"] = score({"labels": a["labels"], "scores": a["scores"], "masks": tmask,
                                                     "maps": am})
    return out


def score_pair(a: dict, t: dict, parity: Iterable[str] = (), tol: float | None = None) -> dict:
    """Both libraries' predictions scored by ``tabad.metrics`` and compared.

    ``tabad``/``anomalib``: each scored on its own masks; ``anomalib_on_tabad_masks``: anomalib's maps on tabad's
    masks (= ``anomalib`` when the masks agree); ``agreement`` (:func:`compare_predictions`); ``diff`` (tabad vs
    anomalib), ``diff_same_masks`` (tabad vs anomalib on tabad's masks; only when the masks differ); with
    ``tol``: ``parity_ok`` (every ``parity`` metric's diff ≤ tol) and ``parity_ok_same_masks``.
    """
    m_t, m_a = score(t), score(a)
    agreement = compare_predictions(a, t)
    same = agreement.get("anomalib_maps_on_tabad_masks")
    out = {"tabad": m_t, "anomalib": m_a, "anomalib_on_tabad_masks": same or m_a, "agreement": agreement,
           "diff": diff(m_t, m_a)}
    if same is not None:
        out["diff_same_masks"] = diff(m_t, same)
    if tol is not None:
        out["parity_ok"] = within(out["diff"], parity, tol)
        if same is not None:
            out["parity_ok_same_masks"] = within(out["diff_same_masks"], parity, tol)
    return out


def within(d: dict, keys: Iterable[str], tol: float) -> bool:
    return all(d.get(k) is not None and d[k] <= tol for k in keys)


def evaluator_metrics(result: dict, key: str = "metrics_anomalib_evaluator") -> dict:
    """A runner's anomalib metric values under tabad's metric names."""
    return {k: result[key].get(v) for k, v in ANOMALIB_KEYS.items()}


# ----------------------------------------------------------------------------- provenance
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


def machine() -> dict:
    return {"nproc": os.cpu_count(), "cpu_model": cpu_model(), "mem_total_gb": mem_total_gb(),
            "platform": platform.platform()}


def tabad_stack(run: dict | None) -> dict | None:
    """tabad's versions as its child recorded them (``results.json`` provenance)."""
    if run is None:
        return None
    env = run.get("provenance", {}).get("environment", {})
    return {k: env.get(k) for k in ("tabad_version", "git_commit", "python", "torch", "torchvision", "numpy")}


def provenance(script: str, argv: list[str] | None, args, weights: Weights, targets: list[Target],
               runs: dict, *, seed: int = 0, malloc: bool = False) -> dict:
    """What every report records: date, weights (file, sha256, recipe), seed, threads, repeats, data (root, sets,
    recipes), both stacks (from the first tabad run and the first anomalib run of ``runs``), the machine, the
    children's environment and the driver command. A comparison adds its geometry and its own inputs."""
    argv = sys.argv[1:] if argv is None else argv
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "weights": weights.record(), "seed": seed, "threads": args.threads, "repeats": args.repeats,
        "data_root": rel(args.data), "sets": [t.spec for t in targets], "data_recipes": data_recipes(targets),
        "tabad_stack": tabad_stack(runs["tabad"][0] if runs.get("tabad") else None),
        "anomalib_stack": runs["anomalib"][0]["result"].get("versions") if runs.get("anomalib") else None,
        "machine": machine(), "child_env": env_record(args.threads, malloc),
        "command": f"python benchmarks/{script}.py " + shlex.join([rel(a) if os.path.isabs(a) else a for a in argv]),
    }


# ----------------------------------------------------------------------------- command line
def parser(doc: str, name: str, *, only: bool = True, threads: int = 2) -> argparse.ArgumentParser:
    """The flags every comparison shares. ``name``: the script's name (default ``--work``/``--report``)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--data", default=str(REPO / ".." / "shared" / "data"),
                   help="folder holding the default sets (default: ../shared/data relative to the repo)")
    p.add_argument("--sets", default=",".join(DEFAULT_SETS),
                   help="comma-separated <folder under --data>/<category>/<layout> (default: %(default)s)")
    p.add_argument("--extra-root", action="append", default=[],
                   help="another MVTec-like root (e.g. a procedural set); all its categories are added")
    p.add_argument("--extra-layout", default="auto", choices=["auto", *LAYOUTS])
    p.add_argument("--repeats", type=int, default=1, help="timing runs per side (median reported; metrics: first run)")
    p.add_argument("--threads", type=int, default=threads, help="threads per library (OMP/MKL/OpenBLAS and torch)")
    if only:
        p.add_argument("--only", choices=["both", "anomalib"], default="both",
                       help="'anomalib' runs the anomalib side alone (e.g. while tabad's CLI is missing)")
    p.add_argument("--anomalib-python", default=str(REPO / ".anomalib-venv" / "bin" / "python"))
    p.add_argument("--tabad-python", default=sys.executable)
    p.add_argument("--work", default=str(HERE / ".work" / name),
                   help="scratch folder for runs, logs and predictions (default: benchmarks/.work/..., git-ignored)")
    p.add_argument("--report", default=str(HERE / "reports" / name),
                   help="report path without extension (.md and .json are written)")
    p.add_argument("--render-only", action="store_true",
                   help="rewrite the .md from the report's existing .json; runs nothing")
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse, with ``--data``, ``--work`` and ``--report`` made absolute (children run from the repository)."""
    args = p.parse_args(argv)
    args.data, args.work, args.report = (Path(a).resolve() for a in (args.data, args.work, args.report))
    args.extra_root = [Path(a).resolve() for a in args.extra_root]
    return args


def rerender(args, render: Callable[[dict], str]) -> int:
    """``--render-only``: the Markdown again from the committed JSON."""
    md = _report.render_only(args.report, render)
    print(f"wrote {rel(md)}")
    return 0


def check_interpreters(args, need_tabad: bool) -> None:
    if not Path(args.anomalib_python).exists():
        raise SystemExit(f"anomalib interpreter not found: {args.anomalib_python} (see benchmarks/README.md)")
    if need_tabad and not tabad_cli_available(args.tabad_python):
        raise SystemExit("`python -m tabad benchmark` is not available; use --only anomalib")


def targets(args) -> list[Target]:
    found = parse_sets(args.data, args.sets, args.extra_root, args.extra_layout)
    if not found:
        raise SystemExit("no data found")
    return found
