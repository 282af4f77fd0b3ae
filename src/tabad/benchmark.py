"""``tabad benchmark``: every (category, method, weights) pair, scored and reported.

Output folder::

    results.json   {"provenance": {...}, "results": [...]}
    results.csv    one row per pair
    results.md     paper-style tables (per category, texture/object/overall averages)
    panels/        <category>__<method>.png: image | heat map per weights | ground truth
    pairs/         one JSON (+ panel maps .npz, + predictions .npz on request) per
                   finished pair: the resume state. A rerun reuses a pair whose
                   settings and weights hash are unchanged, so an interrupted run
                   loses no finished work.

Each split of a category is decoded once and shared by every weights source
and method; each weights source is loaded once and shared by every category.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tabad.errors import TabadError
from tabad.files import atomic_write, atomic_write_json, atomic_write_text


@dataclass
class BenchmarkConfig:
    #: one dataset root, or several (e.g. BTAD and KSDD2 for the paper's Table 4).
    data: Path | list[Path]
    out: Path
    methods: list[str] = field(default_factory=lambda: ["padim"])
    weights: list[str] = field(default_factory=lambda: ["random"])
    categories: list[str] | None = None
    backbone: str = "resnet18"
    seed: int = 0
    #: S (square) or (H, W); never aspect-preserving.
    resize: int | tuple[int, int] = 256
    #: C, (H, W), or None for no crop (RD4AD's 256 px).
    crop: int | tuple[int, int] | None = 224
    #: "shared": every method sees resize/crop; "paper": each method its paper's geometry (PAPER_GEOMETRY).
    geometry: str = "shared"
    #: one layout for every root, or one per root.
    layout: str | list[str] = "auto"
    skip_bad: bool = False
    n_panels: int = 4
    save_predictions: bool = False
    method_options: dict[str, dict] = field(default_factory=dict)
    #: epochs for every training-based method (None: each method's default).
    epochs: int | None = None
    allow_download: bool = False
    resume: bool = True
    progress: bool = True
    device: str = "auto"
    #: the backbone's tensor layout: "channels_last" (fast on CPU) or "contiguous" (torch's
    #: default; bit-identical to another library's contiguous ResNet, for side-by-side runs).
    memory_format: str = "channels_last"
    title: str = "tabad benchmark"


#: Input geometry (resize, crop) of each method's reference run (methods.md §1-§5), for
#: ``geometry="paper"``. SimpleNet's official run.sh uses 329 -> 288 (with WideResNet50).
PAPER_GEOMETRY: dict[str, tuple[int, int | None]] = {
    "padim": (256, 224), "patchcore": (256, 224), "rd4ad": (256, None), "simplenet": (329, 288),
}


def method_geometry(cfg: "BenchmarkConfig", method: str):
    from tabad.datasets.transforms import Geometry

    if cfg.geometry == "paper" and method in PAPER_GEOMETRY:
        return Geometry(*PAPER_GEOMETRY[method])
    if cfg.geometry not in ("shared", "paper"):
        raise TabadError(f"geometry={cfg.geometry!r}; choose 'shared' or 'paper'")
    return Geometry(cfg.resize, cfg.crop)


def _pair_name(category: str, method: str, weights_label: str) -> str:
    return f"{category.replace('/', '__')}__{method}__{weights_label}"


@dataclass(frozen=True)
class Target:
    """One category to evaluate: where it lives and how it is named in the tables."""

    root: Path
    layout: str
    category: str
    dataset: str  # the root's name
    name: str  # row label: the category, or dataset/category when several roots are evaluated


def dataset_roots(cfg: BenchmarkConfig) -> list[tuple[Path, str]]:
    """(root, layout) for every dataset root of the run."""
    roots = [Path(d) for d in (cfg.data if isinstance(cfg.data, (list, tuple)) else [cfg.data])]
    layouts = cfg.layout if isinstance(cfg.layout, (list, tuple)) else [cfg.layout] * len(roots)
    if len(layouts) != len(roots):
        raise TabadError(f"{len(layouts)} layouts given for {len(roots)} dataset roots; give one, or one per root")
    return list(zip(roots, layouts))


def list_targets(cfg: BenchmarkConfig) -> list[Target]:
    """Every (root, category) of the run; ``cfg.categories`` filters by category name in every root."""
    from tabad.datasets.readers import list_categories

    roots = dataset_roots(cfg)
    targets = []
    for root, layout in roots:
        names = list_categories(root, layout)
        if cfg.categories:
            names = [c for c in names if c in cfg.categories]
        dataset = root.resolve().name
        for c in names:
            targets.append(Target(root, layout, c, dataset, f"{dataset}/{c}" if len(roots) > 1 else c))
    if cfg.categories:
        missing = sorted(set(cfg.categories) - {t.category for t in targets})
        if missing:
            raise TabadError(f"categories {missing} not found under {', '.join(str(r) for r, _ in roots)}")
    if not targets:
        raise TabadError("no categories to evaluate")
    return targets


def _pair_key(cfg: BenchmarkConfig, target: Target, method: str, weights_sha: str, n_train: int, n_test: int,
              panel_idx: list[int]) -> str:
    """Everything that changes a pair's numbers; a stored pair is reused only if this matches."""
    import tabad

    key = {
        "data": str(target.root.resolve()), "category": target.category, "method": method,
        "options": method_options(cfg, method), "weights_sha256": weights_sha, "backbone": cfg.backbone,
        "seed": cfg.seed, "geometry": repr(method_geometry(cfg, method)), "layout": target.layout, "n_train": n_train,
        "n_test": n_test, "panels": panel_idx, "version": tabad.__version__,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def select_panel_indices(samples, n: int) -> list[int]:
    """Up to ``n`` test images: the first of each defect type, then more anomalies, then a normal one."""
    if n <= 0:
        return []
    first_of_type: dict[str, int] = {}
    for i, s in enumerate(samples):
        if s.label == 1:
            first_of_type.setdefault(s.defect_type, i)
    chosen = list(first_of_type.values())[: max(n - 1, 1)]
    normals = [i for i, s in enumerate(samples) if s.label == 0]
    extra = [i for i, s in enumerate(samples) if s.label == 1 and i not in chosen]
    while len(chosen) < n - (1 if normals else 0) and extra:
        chosen.append(extra.pop(0))
    if normals and len(chosen) < n:
        chosen.append(normals[0])
    return chosen[:n]


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_benchmark(cfg: BenchmarkConfig, log: Callable[[str], None] = print) -> dict:
    """Run the benchmark described by ``cfg``; returns the ``results.json`` content."""
    from tqdm.auto import tqdm

    from tabad import metrics
    from tabad.backbones import build_backbone
    from tabad.datasets.categories import category_kind
    from tabad.datasets.loader import load_split
    from tabad.datasets.readers import read_category
    from tabad.datasets.transforms import Geometry
    from tabad.methods import create_method, method_names
    from tabad.provenance import environment
    from tabad.report import heatmap_panel, markdown_report, write_csv

    unknown = [m for m in cfg.methods if m not in method_names()]
    if unknown:
        raise TabadError(f"unknown method(s) {unknown}; available: {', '.join(method_names())}")
    out = Path(cfg.out)
    pairs_dir = out / "pairs"
    pairs_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    targets = list_targets(cfg)
    # Load every weights source up front: a bad path fails in seconds, not after an hour.
    backbones = {}
    for source in cfg.weights:
        bb = build_backbone(cfg.backbone, source, seed=cfg.seed, allow_download=cfg.allow_download,
                            memory_format=cfg.memory_format).to(device)
        if bb.info.label in {b.info.label for b in backbones.values()}:
            raise TabadError(f"two weights sources share the label {bb.info.label!r}; rename one of the files")
        backbones[source] = bb

    results: list[dict] = []
    datasets_info: dict[str, dict] = {}
    total = len(targets) * len(cfg.methods) * len(cfg.weights)
    bar = tqdm(total=total, desc="benchmark", unit="pair", disable=not cfg.progress)
    for target in targets:
        category = target.name
        data = read_category(target.root, target.category, layout=target.layout, skip_bad=cfg.skip_bad)
        if not data.test:
            raise TabadError(f"{category}: no test images to score (layout {data.layout!r}; a 'folders' "
                             "collection of normal images is for `tabad pretrain`, not for the benchmark)")
        kind = category_kind(target.root, target.category)
        datasets_info[category] = {
            "dataset": target.dataset, "root": str(target.root.resolve()), "category": target.category,
            "layout": data.layout, "kind": kind, "n_train": len(data.train), "n_test": len(data.test),
            "n_test_anomalous": data.n_test_anomalous, "has_masks": data.has_masks,
            "skipped": [[str(p), why] for p, why in data.skipped],
        }
        splits: dict = {}  # geometry -> (train, test), decoded lazily: a fully resumed category needs no pixels

        def decoded(geometry, need_train=True):
            if geometry not in splits or (need_train and splits[geometry][0] is None):
                t0 = time.perf_counter()
                train = load_split(data.train, geometry, progress=cfg.progress, desc=f"{category} train") \
                    if need_train else None
                test = splits[geometry][1] if geometry in splits else \
                    load_split(data.test, geometry, progress=cfg.progress, desc=f"{category} test")
                splits[geometry] = (train, test)
                datasets_info[category].setdefault("load_seconds", 0.0)
                datasets_info[category]["load_seconds"] += round(time.perf_counter() - t0, 3)
            return splits[geometry]

        panel_idx = select_panel_indices(data.test, cfg.n_panels)
        for method in cfg.methods:
            geometry = method_geometry(cfg, method)
            panel_maps, panel_titles, panel_ranges = [], [], []
            for source, bb in backbones.items():
                name = _pair_name(category, method, bb.info.label)
                key = _pair_key(cfg, target, method, bb.info.sha256, len(data.train), len(data.test), panel_idx)
                pair_json, pair_npz = pairs_dir / f"{name}.json", pairs_dir / f"{name}.panel.npz"
                stored = _load_pair(pair_json, pair_npz, key) if cfg.resume else None
                if stored is not None:
                    result, pmaps = stored
                    bar.set_postfix_str(f"{category}/{bb.info.label} (reused)")
                else:
                    bar.set_postfix_str(f"{category}/{method}/{bb.info.label}")
                    train, test = decoded(geometry)
                    checkpoint = pairs_dir / f"{name}.train.pt"
                    result, pmaps, preds = _run_pair(cfg, method, bb, train, test, data, kind, panel_idx, device,
                                                     create_method, metrics, checkpoint, key)
                    result.update(category=category, dataset=target.dataset)
                    result["key"] = key
                    save_npz(pair_npz, maps=pmaps)
                    if cfg.save_predictions:
                        save_npz(out / "predictions" / f"{name}.npz", **preds)
                    atomic_write_json(pair_json, result)
                    checkpoint.unlink(missing_ok=True)  # the finished pair supersedes its training state
                results.append(result)
                panel_maps.append(pmaps)
                panel_titles.append(bb.info.label)
                panel_ranges.append((result["map_min"], result["map_max"]))
                bar.update()
            if panel_idx:
                test = decoded(geometry, need_train=False)[1]
                imgs = test.images[panel_idx].permute(0, 2, 3, 1).numpy()
                masks = test.masks[panel_idx].numpy()
                rows = [f"{data.test[i].defect_type}/{data.test[i].image_path.name}" for i in panel_idx]
                heatmap_panel(out / "panels" / f"{category.replace('/', '__')}__{method}.png", imgs, panel_maps,
                              [f"{method} / {t}" for t in panel_titles], masks, rows, panel_ranges)
    bar.close()

    provenance = {
        "environment": environment(),
        "data_root": ", ".join(str(r.resolve()) for r, _ in dataset_roots(cfg)),
        "data_roots": [str(r.resolve()) for r, _ in dataset_roots(cfg)],
        "categories": datasets_info,
        "methods": {m: method_options(cfg, m) for m in cfg.methods},
        "method_configs": {r["method"]: r["config"] for r in results},
        "weights": [bb.info.to_dict() for bb in backbones.values()],
        "backbone": cfg.backbone,
        "seed": cfg.seed,
        "resize": cfg.resize,
        "crop": cfg.crop,
        "geometry": cfg.geometry,
        "method_geometry": {m: {"resize": method_geometry(cfg, m).resize, "crop": method_geometry(cfg, m).crop}
                            for m in cfg.methods},
        "image_size": list(Geometry(cfg.resize, cfg.crop).output_size),
        "layout": cfg.layout,
        "text_encoder": None,  # the text encoder is dropped after pre-training; see each weights' trained_on
        "device": str(device),
        "memory_format": cfg.memory_format,
    }
    report = {"provenance": provenance, "results": results}
    atomic_write_json(out / "results.json", report)
    write_csv(out / "results.csv", results)
    atomic_write_text(out / "results.md", markdown_report(results, provenance, title=cfg.title))
    return report


def save_npz(path: Path, **arrays) -> Path:
    """Compressed npz, written atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    return atomic_write(path, write)


def _load_pair(pair_json: Path, pair_npz: Path, key: str):
    if not (pair_json.is_file() and pair_npz.is_file()):
        return None
    try:
        result = json.loads(pair_json.read_text())
        if result.get("key") != key:
            return None
        with np.load(pair_npz) as z:
            return result, z["maps"]
    except (OSError, ValueError, KeyError):
        return None  # a damaged resume file is recomputed, never trusted


def method_options(cfg: BenchmarkConfig, method: str) -> dict:
    """The options a method runs with: ``--config``/``--set`` values, then ``--epochs`` for trainable ones."""
    from dataclasses import fields

    from tabad.methods import config_class

    opts = dict(cfg.method_options.get(method, {}))
    if cfg.epochs is not None and "epochs" in {f.name for f in fields(config_class(method))}:
        opts["epochs"] = cfg.epochs
    return opts


def _run_pair(cfg, method_name, bb, train, test, data, kind, panel_idx, device, create_method, metrics,
              checkpoint: Path, key: str):
    import torch

    torch.manual_seed(cfg.seed)
    model = create_method(method_name, bb, method_options(cfg, method_name)).to(device)
    batch = getattr(model.config, "batch_size", 32)
    normalise = getattr(model, "input_normalisation", True)

    t0 = time.perf_counter()
    train_log = None
    if hasattr(model, "train_epoch"):
        # Training-based method: resumable from its per-epoch checkpoint.
        model.fit(train.batches(batch, device, normalise=normalise), checkpoint=checkpoint, key=key,
                  progress=cfg.progress, seed=cfg.seed)
        train_log = getattr(model, "train_log", None)
    else:
        model.fit(train.batches(batch, device, normalise=normalise))
    fit_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    scores, maps = [], []
    for x in test.batches(batch, device, normalise=normalise):
        s, m = model.predict(x)
        scores.append(s.float().cpu())
        maps.append(m.float().cpu())
    predict_seconds = time.perf_counter() - t0
    scores_np = torch.cat(scores).numpy()
    maps_np = torch.cat(maps).numpy()

    masks = test.masks.numpy() if data.has_masks else None
    values = metrics.evaluate(test.labels, scores_np, masks, maps_np if masks is not None else None)
    result = {
        "category": data.category, "kind": kind, "method": method_name, "weights": bb.info.label,
        **{k: (None if v is None else float(v)) for k, v in values.items()},
        "n_train": len(train), "n_test": len(test), "n_test_anomalous": int(test.labels.sum()),
        "fit_seconds": round(fit_seconds, 4),
        "predict_ms_per_image": round(1000 * predict_seconds / max(len(test), 1), 3),
        "weights_sha256": bb.info.sha256, "backbone": cfg.backbone, "seed": cfg.seed,
        "image_size": list(maps_np.shape[1:]), "layout": data.layout,
        "map_min": float(maps_np.min()), "map_max": float(maps_np.max()),
        "config": _config_dict(model.config),
    }
    if train_log:
        result["train_log"] = train_log
    if hasattr(model, "summary"):  # e.g. PatchCore's memory-bank size
        result["model"] = model.summary()
    preds = {"scores": scores_np, "maps": maps_np, "labels": test.labels,
             "masks": test.masks.numpy(), "files": np.array([str(s.image_path) for s in data.test])}
    return result, maps_np[panel_idx].astype(np.float16), preds


def _config_dict(config) -> dict:
    d = asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
