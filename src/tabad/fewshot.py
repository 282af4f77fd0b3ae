"""The few-shot protocol of RegAD (methods.md §4, "Protocol"): leave one category out.

For every weights source and every target category c:

1. the registration model is trained on the train/good images of all *other*
   categories (never c), checkpointed per epoch under ``out/train/`` so an
   interrupted run resumes;
2. for each K in ``shots`` and each round r < ``rounds``, K support images are
   drawn from c's train/good with a generator seeded by (seed, K, r), the
   normal model is fitted on them (:meth:`RegAD.fit_support`, which leaves the
   trained network untouched, so one trained model serves every K and round)
   and c's test set is scored;
3. image AUROC, pixel AUROC, AUPRO and F1-max (:func:`tabad.metrics.evaluate`)
   are averaged over the rounds (mean ± std, numpy's population std).

The official code trains one model per (target, K) with K supports per
training query; by default one model per target is trained here, with the
config's ``shots`` (4) supports per query, and shared by every K.
``train_per_shot=True`` trains one per K with K supports, as the official code.

Output folder::

    results.json   {"provenance": {...}, "results": [...]}: one result per
                   (category, weights, K) with per-round metrics and the
                   support indices of every round
    results.csv    one row per (category, weights, K): mean and std per metric
    results.md     per metric: one row per category, texture / object / overall
                   averages, one column group per weights source with one column per K
    pairs/         one JSON per finished (category, weights, K): the resume state
                   (:class:`tabad.store.ResultStore`)
    train/         training checkpoints of unfinished targets
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np

from tabad import tables
from tabad.errors import ConfigError, TabadError
from tabad.store import ResultStore, run_key

METHOD = "regad"
#: The metrics of :func:`tabad.metrics.evaluate`, in table order.
METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro", "image_f1max", "pixel_f1max")


@dataclass
class FewShotConfig:
    data: Path
    out: Path
    #: target categories (default: every category under ``data``).
    categories: list[str] | None = None
    shots: list[int] = field(default_factory=lambda: [2, 4, 8])
    rounds: int = 10
    #: training epochs of the registration model (None: RegADConfig.epochs, 50).
    epochs: int | None = None
    #: training seed and seed of the support draws (official: 668).
    seed: int = 668
    #: Resize(224) of the official code on square images = resize 224, crop 224.
    resize: int = 224
    crop: int | None = 224
    weights: list[str] = field(default_factory=lambda: ["random"])
    backbone: str = "resnet18"
    #: RegADConfig overrides, e.g. {"input_normalisation": True}.
    method_options: dict = field(default_factory=dict)
    #: one registration model per K trained with K supports per query (official) instead of one per target.
    train_per_shot: bool = False
    layout: str = "auto"
    skip_bad: bool = False
    allow_download: bool = False
    resume: bool = True
    progress: bool = True
    device: str = "auto"
    title: str = "tabad few-shot benchmark (RegAD)"


def support_indices(n: int, k: int, seed: int, round_: int) -> list[int]:
    """The K support images of one round: a generator seeded by (seed, K, round)."""
    import torch

    if not 0 < k <= n:
        raise ConfigError(f"cannot draw {k} support images from {n} training images")
    state = np.random.SeedSequence([int(seed), int(k), int(round_)]).generate_state(2)
    g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    return torch.randperm(n, generator=g)[:k].tolist()


def regad_config(cfg: FewShotConfig, train_shots: int | None = None):
    """The RegADConfig of a run: its overrides, ``epochs``, the image size, and the training K."""
    from tabad.methods.regad import RegADConfig

    opts = dict(cfg.method_options)
    known = {f.name for f in fields(RegADConfig)}
    bad = sorted(set(opts) - known)
    if bad:
        raise ConfigError(f"regad has no option(s) {bad}; options: {sorted(known)}")
    if cfg.epochs is not None:
        opts["epochs"] = cfg.epochs
    opts["image_size"] = cfg.crop if cfg.crop is not None else cfg.resize
    if train_shots is not None:
        opts["shots"] = train_shots
    return replace(RegADConfig(), **opts)


def run_fewshot(cfg: FewShotConfig, log: Callable[[str], None] = print) -> dict:
    """Run the leave-one-category-out few-shot protocol of ``cfg``; returns the ``results.json`` content."""
    import torch

    from tabad.version import __version__
    from tabad import metrics
    from tabad.backbones import build_backbone
    from tabad.datasets.categories import category_kind
    from tabad.datasets.loader import load_split
    from tabad.datasets.readers import list_categories, read_category
    from tabad.datasets.transforms import Geometry
    from tabad.device import resolve_device
    from tabad.methods.regad import RegAD
    from tabad.progress import progress
    from tabad.provenance import environment

    out = Path(cfg.out)
    store = ResultStore(out, resume=cfg.resume, checkpoints="train")
    device = resolve_device(cfg.device)
    geometry = Geometry(cfg.resize, cfg.crop)
    shots = sorted({int(k) for k in cfg.shots})
    if not shots or shots[0] < 1 or cfg.rounds < 1:
        raise ConfigError(f"shots must be positive and rounds >= 1 (got shots {cfg.shots}, rounds {cfg.rounds})")
    all_categories = list_categories(cfg.data, cfg.layout)
    targets = list(cfg.categories or all_categories)
    unknown = sorted(set(targets) - set(all_categories))
    if unknown:
        raise TabadError(f"unknown target categories {unknown}; categories under {cfg.data}: {all_categories}")
    if len(all_categories) < 2:
        raise TabadError("the leave-one-category-out protocol needs at least 2 categories; "
                         f"{cfg.data} holds {all_categories}")
    shared_config = regad_config(cfg)
    train_ks = shots if cfg.train_per_shot else [shared_config.shots]

    backbones = {}
    for source in cfg.weights:
        bb = build_backbone(cfg.backbone, source, seed=cfg.seed, allow_download=cfg.allow_download)
        if bb.info.label in {b.info.label for b in backbones.values()}:
            raise TabadError(f"two weights sources share the label {bb.info.label!r}; rename one of the files")
        backbones[source] = bb

    data = {c: read_category(cfg.data, c, layout=cfg.layout, skip_bad=cfg.skip_bad) for c in all_categories}
    for c in targets:
        if not data[c].test:
            raise TabadError(f"{c}: no test images to score (layout {data[c].layout!r})")
    kinds = {c: category_kind(cfg.data, c) for c in all_categories}
    train_splits: dict = {}  # decoded on first need: a fully resumed run decodes nothing

    def train_split(c):
        if c not in train_splits:
            train_splits[c] = load_split(data[c].train, geometry, progress=cfg.progress, desc=f"{c} train")
        return train_splits[c]

    supports = {c: {k: [support_indices(len(data[c].train), k, cfg.seed, r) for r in range(cfg.rounds)]
                    for k in shots} for c in targets}
    version = __version__
    results: list[dict] = []
    bar = progress(total=len(backbones) * len(targets) * len(shots) * cfg.rounds, desc="few-shot", unit="round",
                   disable=not cfg.progress)
    for bb in backbones.values():
        label = bb.info.label
        for target in targets:
            others = [c for c in all_categories if c != target]
            base_key = {
                "data": str(Path(cfg.data).resolve()), "target": target, "weights_sha256": bb.info.sha256,
                "backbone": cfg.backbone, "seed": cfg.seed, "resize": cfg.resize, "crop": cfg.crop,
                "layout": cfg.layout, "train": {c: len(data[c].train) for c in others}, "version": version,
            }
            pending, stored = [], {}
            for k in shots:
                train_k = k if cfg.train_per_shot else shared_config.shots
                key = run_key(**base_key, config=asdict(regad_config(cfg, train_k)), shots=k, rounds=cfg.rounds,
                              supports=supports[target][k], n_test=len(data[target].test))
                name = f"{target}__{METHOD}__{label}__{k}shot"
                result = store.load(name, key)
                if result is None:
                    pending.append((k, key, name))
                else:
                    stored[k] = result
                    bar.update(cfg.rounds)
            models: dict[int, tuple] = {}  # training K -> (model, seconds, log, checkpoint)
            test = None
            for k, key, name in pending:
                train_k = k if cfg.train_per_shot else shared_config.shots
                if train_k not in models:
                    train_sets = {c: train_split(c).images for c in others}
                    assert target not in train_sets, "leave-one-out: the target must never be trained on"
                    checkpoint = store.checkpoint(f"{target}__{METHOD}__{label}__train{train_k}", suffix=".pt")
                    bar.set_postfix_str(f"{label}/{target}: training on {len(others)} other categories")
                    torch.manual_seed(cfg.seed)
                    model = RegAD(bb, regad_config(cfg, train_k)).to(device)
                    t0 = time.perf_counter()
                    model.fit_registration(train_sets, checkpoint=checkpoint, progress=cfg.progress, seed=cfg.seed,
                                           key=run_key(**base_key, config=asdict(model.config)))
                    models[train_k] = (model, time.perf_counter() - t0, model.train_log, checkpoint)
                model, train_seconds, train_log, _ = models[train_k]
                if test is None:
                    test = load_split(data[target].test, geometry, progress=cfg.progress, desc=f"{target} test")
                pool = train_split(target)
                rounds = []
                for r, idx in enumerate(supports[target][k]):
                    bar.set_postfix_str(f"{label}/{target}: {k}-shot round {r + 1}")
                    rounds.append(_run_round(model, pool.images[idx], test, data[target].has_masks, metrics,
                                             device))
                    rounds[-1]["support_indices"] = idx
                    bar.update()
                result = _result_row(target, kinds[target], label, bb.info.sha256, k, train_k, rounds, test,
                                     others, data, train_seconds, train_log, model.config, cfg)
                result["key"] = key
                store.save(name, result)
                stored[k] = result
                log(f"{label} {target} {k}-shot: " + ", ".join(
                    f"{m} {tables.percent_pm(result[m], result[f'{m}_std'])}" for m in METRIC_KEYS[:3]))
            for _, _, _, checkpoint in models.values():
                checkpoint.unlink(missing_ok=True)  # the finished results supersede the training state
            results += [stored[k] for k in shots]
    bar.close()

    provenance = {
        "environment": environment(),
        "protocol": "leave-one-category-out few-shot (RegAD, methods.md §4): the registration model of a "
                    "target is trained on the train/good images of every other category; K support images "
                    "per round from the target's train/good, drawn with a generator seeded by (seed, K, round)",
        "data_root": str(Path(cfg.data).resolve()),
        "categories": {c: {"layout": data[c].layout, "kind": kinds[c], "n_train": len(data[c].train),
                           "n_test": len(data[c].test), "n_test_anomalous": data[c].n_test_anomalous,
                           "has_masks": data[c].has_masks, "skipped": [[str(p), why] for p, why in data[c].skipped]}
                       for c in all_categories},
        "targets": targets,
        "method": METHOD,
        "method_config": asdict(shared_config),
        "method_options": cfg.method_options,
        "weights": [bb.info.to_dict() for bb in backbones.values()],
        "backbone": cfg.backbone,
        "seed": cfg.seed,
        "resize": cfg.resize,
        "crop": cfg.crop,
        "image_size": list(geometry.output_size),
        "epochs": shared_config.epochs,
        "rounds": cfg.rounds,
        "shots": shots,
        "train_per_shot": cfg.train_per_shot,
        "train_shots": train_ks,
        "input_normalisation": shared_config.input_normalisation,
        "support_indices": {c: {str(k): v for k, v in per_k.items()} for c, per_k in supports.items()},
        "layout": cfg.layout,
        "device": str(device),
    }
    return store.write(results, provenance, markdown_report(results, provenance, cfg.title), CSV_COLUMNS)


def _run_round(model, support, test, has_masks: bool, metrics, device) -> dict:
    import torch

    t0 = time.perf_counter()
    model.fit_support(support)
    fit_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores, maps = [], []
    for x in test.batches(model.config.batch_size, device, normalise=model.input_normalisation):
        s, m = model.predict(x)
        scores.append(s.float().cpu())
        maps.append(m.float().cpu())
    predict_seconds = time.perf_counter() - t0
    maps_np = torch.cat(maps).numpy()
    masks = test.masks.numpy() if has_masks else None
    values = metrics.evaluate(test.labels, torch.cat(scores).numpy(), masks, maps_np if has_masks else None)
    return {**{k: (None if v is None else float(v)) for k, v in values.items()},
            "support_fit_seconds": round(fit_seconds, 4),
            "predict_ms_per_image": round(1000 * predict_seconds / max(len(test), 1), 3)}


def _result_row(target, kind, label, sha, k, train_k, rounds, test, others, data, train_seconds, train_log,
                config, cfg) -> dict:
    row = {"category": target, "kind": kind, "method": METHOD, "weights": label, "shots": k, "rounds": len(rounds)}
    for m in METRIC_KEYS:
        row[m], row[f"{m}_std"] = tables.mean_std([r[m] for r in rounds])
    row.update({
        "train_shots": train_k, "train_categories": others,
        "n_train_registration": sum(len(data[c].train) for c in others),
        "n_support_pool": len(data[target].train), "n_test": len(test),
        "n_test_anomalous": int(test.labels.sum()),
        "train_seconds": round(train_seconds, 3),
        "support_fit_seconds": round(float(np.mean([r["support_fit_seconds"] for r in rounds])), 4),
        "predict_ms_per_image": round(float(np.mean([r["predict_ms_per_image"] for r in rounds])), 3),
        "weights_sha256": sha, "backbone": cfg.backbone, "seed": cfg.seed,
        "support_files": [[data[target].train[i].image_path.name for i in r["support_indices"]] for r in rounds],
        "per_round": rounds, "train_log": train_log, "config": asdict(config),
    })
    return row


# --------------------------------------------------------------------------- reports

CSV_COLUMNS = ["category", "kind", "method", "weights", "shots", "rounds",
               *[c for m in METRIC_KEYS for c in (m, f"{m}_std")],
               "train_shots", "n_train_registration", "n_support_pool", "n_test", "n_test_anomalous",
               "train_seconds", "support_fit_seconds", "predict_ms_per_image", "weights_sha256"]


def fewshot_table(results: list[dict], metric: str) -> str:
    """Categories × (weights, K) of ``metric``, mean ± std over rounds, with kind averages.

    An average row averages the categories round by round (round r of every
    category) and gives the mean ± std of those averages over the rounds.
    """
    cols = list(dict.fromkeys((r["weights"], r["shots"]) for r in results))
    rows = {(r["category"], r["weights"], r["shots"]): r for r in results}
    cats, groups = tables.average_groups({r["category"]: r.get("kind", "other") for r in results})
    multi = len({w for w, _ in cols}) > 1
    head = [f"{w} {k}-shot" if multi else f"{k}-shot" for w, k in cols]

    def cell(c: str, j: int) -> str:
        r = rows.get((c, *cols[j]))
        return tables.DASH if r is None else tables.percent_pm(r[metric], r[f"{metric}_std"])

    def average(members, j: int) -> str:
        per_round = [[x[metric] for x in rows[(c, *cols[j])]["per_round"]] for c in members if (c, *cols[j]) in rows]
        n_rounds = min((len(v) for v in per_round), default=0)
        averages = [tables.mean_std([v[i] for v in per_round])[0] for i in range(n_rounds)]
        return tables.percent_pm(*tables.mean_std(averages))

    return tables.category_table(head, cats, groups, cell, average)


def markdown_report(results: list[dict], provenance: dict, title: str) -> str:
    norm = "ImageNet mean/std" if provenance.get("input_normalisation") else "[0, 1], no ImageNet normalisation (official)"
    parts = tables.heading(title) + [
        f"{tables.environment_text(provenance)} "
        f"Data: `{provenance.get('data_root')}`; backbone {provenance.get('backbone')}; seed {provenance.get('seed')}; "
        f"images resized to {provenance.get('resize')} and centre-cropped to {provenance.get('crop')}; inputs {norm}.",
        "",
        f"Protocol: {provenance.get('protocol')}. RegAD trained {provenance.get('epochs')} epochs per target "
        f"with {', '.join(map(str, provenance.get('train_shots', [])))} supports per query"
        f"{' (one model per K)' if provenance.get('train_per_shot') else ' (one model per target, shared by every K)'}; "
        f"{provenance.get('rounds')} rounds per K; values are mean ± std over the rounds (percentages).",
        "",
    ]
    parts += tables.weights_block(provenance.get("weights", []))
    parts += tables.metric_sections(results, METRIC_KEYS, lambda m: fewshot_table(results, m))
    parts += ["", "## Timing", "",
              "| Category | weights | K | train (s) | support fit (s) | predict (ms/img) | n_train (others) | n_test |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    parts += [f"| {r['category']} | {r['weights']} | {r['shots']} | {r['train_seconds']:.1f} | "
              f"{r['support_fit_seconds']:.2f} | {r['predict_ms_per_image']:.1f} | {r['n_train_registration']} | "
              f"{r['n_test']} |" for r in results]
    return tables.document(parts)
