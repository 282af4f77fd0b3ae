"""``tabad benchmark``: every (category, method, weights) pair, scored and reported.

Output folder::

    results.json   {"provenance": {...}, "results": [...]}
    results.csv    one row per pair
    results.md     paper-style tables (per category, texture/object/overall averages)
    panels/        <category>__<method>.png: image | heat map per weights | ground truth
    pairs/         one JSON (+ panel maps .npz) per finished pair: the resume state
                   (:class:`tabad.store.ResultStore`). A rerun reuses a pair whose
                   settings and weights hash are unchanged, so an interrupted run
                   loses no finished work.
    predictions/   <pair>.npz: scores, maps, labels, masks per pair, on request

Each split of a category is decoded once and shared by every weights source
and method; each weights source is loaded once and shared by every category.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tabad.errors import TabadError
from tabad.store import ResultStore, run_key, save_npz


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
    #: "shared": every method sees resize/crop; "paper": each method the paper_geometry of its config class.
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


def method_geometry(cfg: "BenchmarkConfig", method: str):
    """The input geometry of ``method`` in this run: the run's, or with ``geometry="paper"`` the one its
    config class declares (``paper_geometry``, e.g. SimpleNet's official 329 -> 288)."""
    from tabad.datasets.transforms import Geometry
    from tabad.methods import config_class

    if cfg.geometry not in ("shared", "paper"):
        raise TabadError(f"geometry={cfg.geometry!r}; choose 'shared' or 'paper'")
    if cfg.geometry == "paper":
        return config_class(method).paper_geometry
    return Geometry(cfg.resize, cfg.crop)


#: The panel maps stored with each pair (float16, the selected test images only).
PANEL_SUFFIX = ".panel.npz"


#: The weights column of a method that has its own network instead of a backbone.
OWN_WEIGHTS = "own"


def weights_of(backbone) -> tuple[str, str]:
    """(table label, sha256) of a pair's weights; a method without a backbone has :data:`OWN_WEIGHTS`."""
    if backbone is None:
        return OWN_WEIGHTS, ""
    return backbone.info.label, backbone.info.sha256


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


def pair_key(cfg: BenchmarkConfig, target: Target, method: str, weights_sha: str, n_train: int, n_test: int,
             panel_idx: list[int]) -> str:
    """Everything that changes a pair's numbers; a stored pair is reused only if this matches."""
    from tabad.version import __version__

    return run_key(
        data=str(target.root.resolve()), category=target.category, method=method,
        options=method_options(cfg, method), weights_sha256=weights_sha, backbone=cfg.backbone,
        seed=cfg.seed, geometry=repr(method_geometry(cfg, method)), layout=target.layout, n_train=n_train,
        n_test=n_test, panels=panel_idx, version=__version__,
    )


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


def run_benchmark(cfg: BenchmarkConfig, log: Callable[[str], None] = print) -> dict:
    """Run the benchmark described by ``cfg``; returns the ``results.json`` content."""
    from tabad import metrics
    from tabad.backbones import build_backbone
    from tabad.datasets.categories import category_kind
    from tabad.datasets.loader import load_split
    from tabad.datasets.readers import read_category
    from tabad.datasets.transforms import Geometry
    from tabad.device import resolve_device
    from tabad.methods import create_method, method_class, method_names
    from tabad.provenance import environment
    from tabad.panels import heatmap_panel
    from tabad.progress import progress
    from tabad.report import CSV_COLUMNS, markdown_report

    unknown = [m for m in cfg.methods if m not in method_names()]
    if unknown:
        raise TabadError(f"unknown method(s) {unknown}; available: {', '.join(method_names())}")
    out = Path(cfg.out)
    store = ResultStore(out, resume=cfg.resume)
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
    total = len(targets) * sum(len(cfg.weights) if method_class(m).uses_backbone else 1 for m in cfg.methods)
    bar = progress(total=total, desc="benchmark", unit="pair", disable=not cfg.progress)
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
            # A method with its own network (uses_backbone=False) runs once per category, not per weights source.
            sources = backbones.values() if method_class(method).uses_backbone else [None]
            for bb in sources:
                label, sha = weights_of(bb)
                name = _pair_name(category, method, label)
                key = pair_key(cfg, target, method, sha, len(data.train), len(data.test), panel_idx)
                result = store.load(name, key)
                stored_maps = store.load_arrays(name, key, PANEL_SUFFIX) if result is not None else None
                if stored_maps is not None and "maps" in stored_maps:
                    pmaps = stored_maps["maps"]
                    bar.set_postfix_str(f"{category}/{label} (reused)")
                else:
                    bar.set_postfix_str(f"{category}/{method}/{label}")
                    train, test = decoded(geometry)
                    checkpoint = store.checkpoint(name)
                    result, pmaps, preds = _run_pair(cfg, method, bb, train, test, data, kind, panel_idx, device,
                                                     create_method, metrics, checkpoint, key)
                    result.update(category=category, dataset=target.dataset)
                    result["key"] = key
                    if cfg.save_predictions:
                        save_npz(out / "predictions" / f"{name}.npz", **preds)
                    store.save(name, result, {"maps": pmaps}, suffix=PANEL_SUFFIX)
                    store.drop_checkpoint(name)  # the finished pair supersedes its training state
                results.append(result)
                panel_maps.append(pmaps)
                panel_titles.append(label)
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
    return store.write(results, provenance, markdown_report(results, provenance, title=cfg.title), CSV_COLUMNS)


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

    from tabad.methods.base import FitContext

    torch.manual_seed(cfg.seed)
    model = create_method(method_name, bb, method_options(cfg, method_name)).to(device)
    batch, normalisation = model.batch_size, model.normalisation

    t0 = time.perf_counter()
    # A training method resumes from its per-epoch checkpoint; the others never write one.
    context = FitContext(seed=cfg.seed, checkpoint=checkpoint if model.trains else None, key=key,
                         progress=cfg.progress)
    model.fit(train.batches(batch, device, normalise=normalisation), context)
    train_log = model.train_log
    fit_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    scores, maps = [], []
    for x in test.batches(batch, device, normalise=normalisation):
        with torch.no_grad():
            s, m = model(x)
        scores.append(s.float().cpu())
        maps.append(m.float().cpu())
    predict_seconds = time.perf_counter() - t0
    scores_np = torch.cat(scores).numpy()
    maps_np = torch.cat(maps).numpy()

    masks = test.masks.numpy() if data.has_masks else None
    values = metrics.evaluate(test.labels, scores_np, masks, maps_np if masks is not None else None)
    result = {
        "category": data.category, "kind": kind, "method": method_name, "weights": weights_of(bb)[0],
        **{k: (None if v is None else float(v)) for k, v in values.items()},
        "n_train": len(train), "n_test": len(test), "n_test_anomalous": int(test.labels.sum()),
        "fit_seconds": round(fit_seconds, 4),
        "predict_ms_per_image": round(1000 * predict_seconds / max(len(test), 1), 3),
        "weights_sha256": weights_of(bb)[1], "backbone": cfg.backbone if bb is not None else None, "seed": cfg.seed,
        "image_size": list(maps_np.shape[1:]), "layout": data.layout,
        "map_min": float(maps_np.min()), "map_max": float(maps_np.max()),
        "config": _config_dict(model.config),
    }
    if train_log:
        result["train_log"] = train_log
    summary = model.summary()  # e.g. PatchCore's memory-bank size
    if summary:
        result["model"] = summary
    preds = {"scores": scores_np, "maps": maps_np, "labels": test.labels,
             "masks": test.masks.numpy(), "files": np.array([str(s.image_path) for s in data.test])}
    return result, maps_np[panel_idx].astype(np.float16), preds


def _config_dict(config) -> dict:
    d = asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
