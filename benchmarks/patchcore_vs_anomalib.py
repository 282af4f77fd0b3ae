"""PatchCore: tabad vs anomalib 2.7.0, same weights, same data, same coreset ratio, side by side.

    .venv/bin/python benchmarks/patchcore_vs_anomalib.py [--repeats 3] [--coreset-ratio 0.1]

For each dataset (default: ``../shared/data`` tire and hazelnut toy) both libraries run as
separate processes, one after the other, with 2 threads each:

* tabad: ``tabad benchmark --method patchcore`` (fit = feature extraction + coreset);
* anomalib: ``benchmarks/anomalib_patchcore_runner.py`` in ``.anomalib-venv`` (Engine.fit
  feature-collection epoch + ``subsample_embedding``).

Both use the same random ResNet18 state dict (sha256 recorded), layer2+layer3, Resize
256 -> CenterCrop 224, coreset ratio 0.1, 9 neighbours for the Eq. 7 reweighting, σ = 4.
Both outputs are scored by ``tabad.metrics`` on the same GT masks. Coresets differ by
construction (different random projections: anomalib's sparse JL projection to ~300 dims vs
tabad's seeded dense 128-d one), so small metric differences are expected.

Writes ``benchmarks/reports/patchcore_vs_anomalib.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from padim_vs_anomalib import (REPO, HERE, DEFAULT_SETS, METRICS, child_env, compare_predictions, cpu_model, median,
                               dataset_recipe, mem_total_gb, rel, run_child, score_with_tabad, sha256_file)

PARITY_TOL = 0.02  # issue 5 acceptance: image and pixel AUROC within 0.02
EQUAL_ACCURACY_TOL = 0.01  # "at equal accuracy" for the speed claim
SPEED_TARGET = 5.0  # fit at least 5x faster


#: glibc's dynamic mmap threshold lets the 20-200 MB temporaries of the greedy coreset loop
#: (one ``features - centre`` per step in anomalib) land on the heap, which then fragments:
#: anomalib's process grew past 9.6 GB a third of the way through hazelnut's coreset. A fixed
#: threshold keeps such blocks mmapped (returned on free). Set for both processes alike.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4194304"}


def env(threads: int, with_src: bool) -> dict:
    return {**child_env(threads, with_src), **MALLOC_ENV}


def make_weights(work: Path) -> Path:
    import torch
    import torchvision

    path = work / "resnet18_random_seed0.pt"
    if not path.is_file():
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def run_timed(args, root: Path, category: str, layout: str, weights: Path, work: Path) -> dict:
    """The timed runs of one set (``--repeats`` pairs); every set's run before any untimed one."""
    cat_work = work / f"{root.name}__{category}"
    runs = {"tabad": [], "anomalib": []}
    for rep in range(args.repeats):
        t_out = cat_work / f"tabad_r{rep}"
        shutil.rmtree(t_out, ignore_errors=True)
        t_cmd = [args.tabad_python, "-m", "tabad", "benchmark", "--data", str(root), "--categories", category,
                 "--method", "patchcore", "--weights", str(weights), "--layout", layout, "--resize", "256",
                 "--crop", "224", "--set", f"patchcore.coreset_ratio={args.coreset_ratio}", "--device", "cpu",
                 "--panels", "0", "--no-resume", "--out", str(t_out)] + (["--save-predictions"] if rep == 0 else [])
        print(f"[{category}] tabad {rep + 1}/{args.repeats}", flush=True)
        proc = run_child(t_cmd, env(args.threads, True), cat_work / f"tabad_r{rep}.log", REPO)
        row = json.loads((t_out / "results.json").read_text())["results"][0]
        runs["tabad"].append({"process": proc, "result": row})
        print(f"  {proc['wall_seconds']:.1f} s, fit {row['fit_seconds']:.1f} s, {proc['peak_rss_mb']:.0f} MB", flush=True)

        a_out = cat_work / f"anomalib_r{rep}"
        shutil.rmtree(a_out, ignore_errors=True)
        a_cmd = [args.anomalib_python, str(HERE / "anomalib_patchcore_runner.py"), "--data", str(root),
                 "--category", category, "--layout", layout, "--weights", str(weights), "--coreset-ratio",
                 str(args.coreset_ratio), "--threads", str(args.threads), "--out", str(a_out)]
        print(f"[{category}] anomalib {rep + 1}/{args.repeats}", flush=True)
        proc = run_child(a_cmd, env(args.threads, False), cat_work / f"anomalib_r{rep}.log", HERE)
        aj = json.loads((a_out / "anomalib.json").read_text())
        shutil.rmtree(a_out / "engine", ignore_errors=True)
        runs["anomalib"].append({"process": proc, "result": aj})
        print(f"  {proc['wall_seconds']:.1f} s, fit {aj['timings']['fit_seconds']:.1f} s, "
              f"{proc['peak_rss_mb']:.0f} MB", flush=True)
    return {"root": root, "category": category, "layout": layout, "cat_work": cat_work, "runs": runs,
            "t_cmd": t_cmd, "a_cmd": a_cmd}


def run_set(args, timed: dict, weights: Path) -> dict:
    """The untimed runs of one set (coreset seeds, sampler, shared bank) and its report entry."""
    root, category, layout, cat_work, runs, t_cmd, a_cmd = (timed[k] for k in (
        "root", "category", "layout", "cat_work", "runs", "t_cmd", "a_cmd"))
    # Accuracy under other coreset seeds (tabad: projection + start points; anomalib: seed_everything,
    # its random start): how far the sampler alone moves each library. Not timed.
    for seed in range(1, args.coreset_seeds):
        t_out, a_out = cat_work / f"tabad_seed{seed}", cat_work / f"anomalib_seed{seed}"
        shutil.rmtree(t_out, ignore_errors=True)
        shutil.rmtree(a_out, ignore_errors=True)
        print(f"[{category}] coreset seed {seed}", flush=True)
        run_child(t_cmd[:t_cmd.index("--out")] + ["--set", f"patchcore.seed={seed}", "--out", str(t_out),
                                                  "--save-predictions"],
                  env(args.threads, True), cat_work / f"tabad_seed{seed}.log", REPO)
        run_child(a_cmd[:a_cmd.index("--out")] + ["--seed", str(seed), "--out", str(a_out)],
                  env(args.threads, False), cat_work / f"anomalib_seed{seed}.log", HERE)
        shutil.rmtree(a_out / "engine", ignore_errors=True)
    # tabad with anomalib's sampler algorithm (sparse JL projection, one random start in the bank),
    # drawn from tabad's generator: the same algorithm as anomalib, other random numbers. Not timed.
    for seed in range(args.coreset_seeds if args.tabad_anomalib_sampler else 0):
        t_out = cat_work / f"tabad_sampler_anomalib_seed{seed}"
        shutil.rmtree(t_out, ignore_errors=True)
        print(f"[{category}] tabad sampler=anomalib, coreset seed {seed}", flush=True)
        run_child(t_cmd[:t_cmd.index("--out")] + ["--set", "patchcore.sampler=anomalib", "--set",
                                                  f"patchcore.seed={seed}", "--out", str(t_out), "--save-predictions"],
                  env(args.threads, True), cat_work / f"tabad_sampler_anomalib_seed{seed}.log", REPO)
    shared = None
    if args.shared_bank:
        # tabad's seed-0 memory bank given to anomalib too: only feature extraction and scoring differ.
        bank = tabad_memory_bank(root, category, layout, weights, args.coreset_ratio, cat_work / "tabad_bank.pt")
        t_dir, a_dir = cat_work / "tabad_r0", cat_work / "anomalib_shared_bank"
        shutil.rmtree(a_dir, ignore_errors=True)
        print(f"[{category}] anomalib with tabad's memory bank", flush=True)
        run_child(a_cmd[:a_cmd.index("--out")] + ["--memory-bank", str(bank), "--out", str(a_dir)],
                  env(args.threads, False), cat_work / "anomalib_shared_bank.log", HERE)
        shutil.rmtree(a_dir / "engine", ignore_errors=True)
        shared = _score_pair(t_dir, a_dir)
        shared["diff"] = {k: None if shared["tabad"][k] is None or shared["anomalib_on_tabad_masks"][k] is None
                          else abs(shared["tabad"][k] - shared["anomalib_on_tabad_masks"][k]) for k in METRICS}
        g = shared.pop("agreement")
        shared["agreement"] = {k: g.get(k) for k in ("image_score_spearman", "image_score_rel_diff_max",
                                                     "map_pearson_min", "map_rel_maxabs_diff_median")}
        shared["bank_shape"] = json.loads((a_dir / "anomalib.json").read_text())["memory_bank"]
    seeds = []
    for seed in range(args.coreset_seeds):
        t_dir, a_dir = (cat_work / "tabad_r0", cat_work / "anomalib_r0") if seed == 0 else \
            (cat_work / f"tabad_seed{seed}", cat_work / f"anomalib_seed{seed}")
        entry = {"seed": seed, **_score_pair(t_dir, a_dir)}
        if args.tabad_anomalib_sampler:
            entry["tabad_sampler_anomalib"] = _score_tabad(cat_work / f"tabad_sampler_anomalib_seed{seed}")
        seeds.append(entry)
    m_t, m_a, same_masks, agreement = (seeds[0][k] for k in ("tabad", "anomalib", "anomalib_on_tabad_masks",
                                                              "agreement"))
    diff = {k: None if m_t[k] is None or same_masks[k] is None else abs(m_t[k] - same_masks[k]) for k in METRICS}
    spread = {}
    for k in METRICS:
        tv = [e["tabad"][k] for e in seeds if e["tabad"][k] is not None]
        av = [e["anomalib_on_tabad_masks"][k] for e in seeds if e["anomalib_on_tabad_masks"][k] is not None]
        if tv and av:
            spread[k] = {"tabad_mean": statistics.fmean(tv), "tabad_std": statistics.pstdev(tv),
                         "tabad_range": [min(tv), max(tv)], "anomalib_mean": statistics.fmean(av),
                         "anomalib_std": statistics.pstdev(av), "anomalib_range": [min(av), max(av)],
                         "mean_diff": abs(statistics.fmean(tv) - statistics.fmean(av)),
                         "mean_diff_se": _se_of_difference(tv, av)}
            sv = [e["tabad_sampler_anomalib"][k] for e in seeds
                  if e.get("tabad_sampler_anomalib") and e["tabad_sampler_anomalib"][k] is not None]
            if sv:
                spread[k].update({"tabad_sampler_anomalib_mean": statistics.fmean(sv),
                                  "tabad_sampler_anomalib_std": statistics.pstdev(sv),
                                  "tabad_sampler_anomalib_range": [min(sv), max(sv)],
                                  "sampler_matched_mean_diff": abs(statistics.fmean(sv) - statistics.fmean(av)),
                                  "sampler_matched_mean_diff_se": _se_of_difference(sv, av)})

    def med(side, f):
        return median([f(r) for r in runs[side]])

    timing = {
        "tabad": {"wall_seconds": med("tabad", lambda r: r["process"]["wall_seconds"]),
                  "fit_seconds": med("tabad", lambda r: r["result"]["fit_seconds"]),
                  "predict_ms_per_image": med("tabad", lambda r: r["result"]["predict_ms_per_image"]),
                  "peak_rss_mb": med("tabad", lambda r: r["process"]["peak_rss_mb"])},
        "anomalib": {"wall_seconds": med("anomalib", lambda r: r["process"]["wall_seconds"]),
                     "fit_seconds": med("anomalib", lambda r: r["result"]["timings"]["fit_seconds"]),
                     "feature_collection_seconds": med("anomalib",
                                                       lambda r: r["result"]["timings"]["feature_collection_seconds"]),
                     "coreset_seconds": med("anomalib", lambda r: r["result"]["timings"]["coreset_seconds"]),
                     "test_seconds": med("anomalib", lambda r: r["result"]["timings"]["test_seconds"]),
                     "peak_rss_mb": med("anomalib", lambda r: r["process"]["peak_rss_mb"])},
    }
    timing["fit_speedup"] = timing["anomalib"]["fit_seconds"] / timing["tabad"]["fit_seconds"]
    timing["wall_speedup"] = timing["anomalib"]["wall_seconds"] / timing["tabad"]["wall_seconds"]
    return {
        "category": category, "data": rel(root), "layout": layout, "repeats": args.repeats,
        "memory_bank": {"tabad": runs["tabad"][0]["result"].get("model", {}).get("memory_bank"),
                        "anomalib": runs["anomalib"][0]["result"]["memory_bank"]},
        "metrics": {"tabad": m_t, "anomalib": m_a, "anomalib_on_tabad_masks": same_masks},
        "diff": diff, "agreement": agreement, "timing": timing,
        "coreset_seeds": [{k: v for k, v in e.items() if k != "agreement"} for e in seeds], "seed_spread": spread,
        "shared_bank": shared,
        "shared_bank_parity_ok": (all(shared["diff"][k] <= PARITY_TOL for k in ("image_auroc", "pixel_auroc"))
                                  if shared else None),
        "mean_parity_ok": (all(spread[k]["mean_diff"] <= PARITY_TOL for k in ("image_auroc", "pixel_auroc"))
                           if len(seeds) > 1 else None),
        "sampler_matched_mean_parity_ok": (all(spread[k]["sampler_matched_mean_diff"] <= PARITY_TOL
                                               for k in ("image_auroc", "pixel_auroc"))
                                           if len(seeds) > 1 and args.tabad_anomalib_sampler else None),
        "parity_ok": all(diff[k] is not None and diff[k] <= PARITY_TOL for k in ("image_auroc", "pixel_auroc")),
        "equal_accuracy": all(diff[k] is not None and diff[k] <= EQUAL_ACCURACY_TOL
                              for k in ("image_auroc", "pixel_auroc")),
        "speed_ok": timing["fit_speedup"] >= SPEED_TARGET,
        "commands": {"tabad": " ".join(rel(c) if c.startswith("/") else c for c in t_cmd),
                     "anomalib": " ".join(rel(c) if c.startswith("/") else c for c in a_cmd)},
    }


def tabad_memory_bank(root: Path, category: str, layout: str, weights: Path, ratio: float, out: Path) -> Path:
    """tabad's PatchCore memory bank for ``tabad benchmark``'s seed 0, fitted in-process the way it fits it."""
    import torch

    from tabad.backbones import build_backbone
    from tabad.datasets.loader import load_split
    from tabad.datasets.readers import read_category
    from tabad.datasets.transforms import Geometry
    from tabad.methods import create_method

    train = load_split(read_category(root, category, layout=layout).train, Geometry(256, 224))
    bb = build_backbone("resnet18", str(weights))
    torch.manual_seed(0)
    model = create_method("patchcore", bb, {"coreset_ratio": ratio})
    model.fit(train.batches(getattr(model.config, "batch_size", 32)))
    torch.save(model.memory_bank.detach().cpu().contiguous(), out)
    return out


def _se_of_difference(a: list[float], b: list[float]) -> float | None:
    """Standard error of mean(a) − mean(b) for independent samples (sample variances)."""
    if len(a) < 2 or len(b) < 2:
        return None
    return (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5


def _tabad_predictions(t_dir: Path) -> dict:
    import numpy as np

    return dict(np.load(next((t_dir / "predictions").glob("*.npz"))))


def _score(pred: dict) -> dict:
    return score_with_tabad(pred["labels"], pred["scores"], pred["masks"], pred["maps"])


def _score_tabad(t_dir: Path) -> dict:
    return _score(_tabad_predictions(t_dir))


def _score_pair(t_dir: Path, a_dir: Path) -> dict:
    """Both libraries' predictions scored by tabad.metrics; anomalib's also on tabad's masks."""
    import numpy as np

    ap, tp = dict(np.load(a_dir / "predictions.npz")), _tabad_predictions(t_dir)
    m_a = _score(ap)
    agreement = compare_predictions(ap, tp)
    return {"tabad": _score(tp), "anomalib": m_a,
            "anomalib_on_tabad_masks": agreement.get("anomalib_maps_on_tabad_masks") or m_a, "agreement": agreement}


def _summary(sets: list[dict]) -> list[str]:
    """One line per set: the single-seed gap, the gaps of the seed means, the same-bank gap, the fit speed-up."""
    keys = ("image_auroc", "pixel_auroc")
    out = ["## Summary", ""]
    for e in sets:
        parts = [f"seed 0: |Δ| image {e['diff']['image_auroc']:.4f}, pixel {e['diff']['pixel_auroc']:.4f}"]
        sp = e.get("seed_spread") or {}
        n = len(e.get("coreset_seeds", []))
        if n > 1 and all(k in sp for k in keys):
            parts.append(f"means over {n} coreset seeds: |Δ| image {sp['image_auroc']['mean_diff']:.4f}, pixel "
                         f"{sp['pixel_auroc']['mean_diff']:.4f} (seed-to-seed std of image AUROC "
                         f"{sp['image_auroc']['tabad_std']:.3f} tabad, {sp['image_auroc']['anomalib_std']:.3f} anomalib)")
            if "sampler_matched_mean_diff" in sp["image_auroc"]:
                parts.append(f"same sampler algorithm: |Δ| image {sp['image_auroc']['sampler_matched_mean_diff']:.4f}, "
                             f"pixel {sp['pixel_auroc']['sampler_matched_mean_diff']:.4f}")
        if e.get("shared_bank"):
            d = e["shared_bank"]["diff"]
            parts.append(f"same memory bank: |Δ| image {d['image_auroc']:.4f}, pixel {d['pixel_auroc']:.4f}")
        parts.append(f"fit {e['timing']['fit_speedup']:.1f}× faster")
        out.append(f"- **{e['category']}**: " + "; ".join(parts) + ".")
    if any(len(e.get("coreset_seeds", [])) > 1 for e in sets):
        out += ["", "A single seed compares one random coreset of each sampler; the seed means and the shared "
                "bank separate the sampler's randomness from the rest of the method."]
    return out + [""]


def write_markdown(report: dict, path: Path) -> None:
    def f(x, nd=4):
        return "–" if x is None else f"{x:.{nd}f}"

    lines = ["# PatchCore: tabad vs anomalib 2.7.0", "",
             f"Generated by `benchmarks/patchcore_vs_anomalib.py` on {report['date']}; {report['machine']}. "
             f"Weights: random ResNet18 (`{report['weights']['file']}`, sha256 `{report['weights']['sha256'][:16]}…`), "
             f"layer2+layer3, 256 → 224, coreset ratio {report['coreset_ratio']}, {report['threads']} threads per "
             f"process, the two processes run one after the other; medians of {report['repeats']} runs.", "",
             "Both libraries' raw scores and maps are scored by `tabad.metrics` on the same ground-truth masks "
             "(tabad's; anomalib's mask resize differs by about one pixel, see the PaDiM report).", "",
             "Both processes run with `MALLOC_MMAP_THRESHOLD_=4194304`: without it anomalib's coreset loop "
             "fragments glibc's heap (its process passed 9.6 GB RSS a third of the way through the hazelnut "
             "coreset and had to be killed; with it, 1.1 GB).", "",
             *_summary(report["sets"]),
             "## Accuracy", "",
             "| data | metric | tabad | anomalib | abs. diff |", "|---|---|---:|---:|---:|"]
    for e in report["sets"]:
        for k in ("image_auroc", "pixel_auroc", "aupro"):
            lines.append(f"| {e['category']} | {k} | {f(e['metrics']['tabad'][k])} | "
                         f"{f(e['metrics']['anomalib_on_tabad_masks'][k])} | {f(e['diff'][k])} |")
    shared = [e for e in report["sets"] if e.get("shared_bank")]
    if shared:
        lines += ["", "### With the same memory bank", "",
                  "anomalib given tabad's memory bank (`anomalib_patchcore_runner.py --memory-bank`: tabad's "
                  "seed-0 coreset, fitted in-process as `tabad benchmark` fits it, replaces anomalib's own "
                  "coreset; nothing else changes). Only feature extraction and scoring then differ:", "",
                  "| data | metric | tabad | anomalib (tabad's bank) | abs. diff |", "|---|---|---:|---:|---:|"]
        for e in shared:
            sb = e["shared_bank"]
            for k in ("image_auroc", "pixel_auroc", "aupro"):
                lines.append(f"| {e['category']} | {k} | {f(sb['tabad'][k])} | "
                             f"{f(sb['anomalib_on_tabad_masks'][k])} | {f(sb['diff'][k])} |")
        lines.append("")
        for e in shared:
            g = e["shared_bank"]["agreement"]
            lines.append(f"- {e['category']}: image-score Spearman {f(g.get('image_score_spearman'))}, largest "
                         f"relative image-score difference {g.get('image_score_rel_diff_max', 0):.1e}, lowest "
                         f"per-image map Pearson {f(g.get('map_pearson_min'))}.")
    multi = [e for e in report["sets"] if len(e.get("coreset_seeds", [])) > 1]
    if multi:
        n = len(multi[0]["coreset_seeds"])
        matched = any("tabad_sampler_anomalib_mean" in sp for e in multi for sp in e["seed_spread"].values())

        def cell(sp, side):
            lo, hi = sp[f"{side}_range"]
            return f"{f(sp[f'{side}_mean'])} ± {f(sp[f'{side}_std'])} [{f(lo)}, {f(hi)}]"

        def delta(sp, key):
            se = sp.get(f"{key}_se")
            return f(sp[key]) + (f" ± {f(se)}" if se is not None else "")

        lines += ["", f"### Across {n} coreset seeds", "",
                  "The two coreset samplers draw different random subsets (see 'Why the coresets differ'). Each "
                  f"library below runs with seeds 0–{n - 1} (tabad `--set patchcore.seed=S`: projection and start "
                  "points; anomalib `seed_everything(S)`: its projection and start point); everything else is "
                  "identical."
                  + (" The middle column is tabad with `--set patchcore.sampler=anomalib`: anomalib's sampler "
                     "algorithm (sparse JL projection, ε = 0.9; one random start, kept in the bank) drawn from "
                     "tabad's generator, so the same algorithm with other random numbers." if matched else "")
                  + " Mean ± population std over the seeds, [min, max]; |Δ| of the means ± its standard error "
                  "(sample variances):", ""]
        if matched:
            lines += ["| data | metric | tabad (official sampler) | tabad (sampler=anomalib) | anomalib | "
                      "\|Δ\| official vs anomalib | \|Δ\| same sampler |", "|---|---|---|---|---|---:|---:|"]
        else:
            lines += ["| data | metric | tabad | anomalib | \|Δ\| of the means |", "|---|---|---|---|---:|"]
        for e in multi:
            for k in ("image_auroc", "pixel_auroc", "aupro"):
                sp = e["seed_spread"].get(k)
                if not sp:
                    continue
                if matched:
                    lines.append(f"| {e['category']} | {k} | {cell(sp, 'tabad')} | "
                                 f"{cell(sp, 'tabad_sampler_anomalib')} | {cell(sp, 'anomalib')} | "
                                 f"{delta(sp, 'mean_diff')} | {delta(sp, 'sampler_matched_mean_diff')} |")
                else:
                    lines.append(f"| {e['category']} | {k} | {cell(sp, 'tabad')} | {cell(sp, 'anomalib')} | "
                                 f"{delta(sp, 'mean_diff')} |")
    lines += ["", "## Speed and memory", "",
              "fit = feature extraction of the training images + coreset selection.", "",
              "| data | bank (tabad / anomalib) | tabad fit (s) | anomalib fit (s) [features + coreset] | fit speed-up | "
              "tabad wall (s) | anomalib wall (s) | tabad peak RSS (MB) | anomalib peak RSS (MB) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for e in report["sets"]:
        t, a = e["timing"]["tabad"], e["timing"]["anomalib"]
        lines.append(f"| {e['category']} | {e['memory_bank']['tabad']} / {e['memory_bank']['anomalib']} | "
                     f"{f(t['fit_seconds'], 1)} | {f(a['fit_seconds'], 1)} [{f(a['feature_collection_seconds'], 1)} + "
                     f"{f(a['coreset_seconds'], 1)}] | **{e['timing']['fit_speedup']:.1f}×** | "
                     f"{f(t['wall_seconds'], 1)} | {f(a['wall_seconds'], 1)} | {f(t['peak_rss_mb'], 0)} | "
                     f"{f(a['peak_rss_mb'], 0)} |")
    lines += ["", "## Verdict", ""]
    for e in report["sets"]:
        lines.append(f"- {e['category']}: image/pixel AUROC within {PARITY_TOL}: **{e['parity_ok']}**; within "
                     f"{EQUAL_ACCURACY_TOL} (equal accuracy): **{e['equal_accuracy']}**; fit ≥ {SPEED_TARGET:.0f}× "
                     f"faster: **{e['speed_ok']}** ({e['timing']['fit_speedup']:.1f}×)"
                     + (f"; means over {len(e['coreset_seeds'])} coreset seeds within {PARITY_TOL}: "
                        f"**{e['mean_parity_ok']}**" if e.get("mean_parity_ok") is not None else "")
                     + (f"; with the same sampler (tabad `sampler=anomalib`), means within {PARITY_TOL}: "
                        f"**{e['sampler_matched_mean_parity_ok']}**"
                        if e.get("sampler_matched_mean_parity_ok") is not None else "")
                     + (f"; with the same memory bank within {PARITY_TOL}: **{e['shared_bank_parity_ok']}**"
                        if e.get("shared_bank_parity_ok") is not None else "") + ".")
    lines += ["", "## Why the coresets differ", "",
              "- anomalib projects with its own `SparseRandomProjection(eps=0.9)` (very sparse ±1 entries, "
              "Johnson-Lindenstrauss dimension ⌊4 ln N / 0.162⌋, about 270–300 for these sizes; column draws from "
              "numpy's global generator, signs from torch's) and starts from one random point, which becomes the "
              "first bank row; tabad's default follows the official code: a seeded dense 128-d projection and the "
              "mean distance to 10 random start points, which are not kept. Both then run the same greedy k-center "
              "update, so memory banks have the same size but not the same rows. tabad's `sampler=anomalib` "
              "implements anomalib's algorithm (its loop gives anomalib's indices exactly for the same projected "
              "points and start; tested against a literal reference), with tabad's own seeded generator.",
              "- Image scores: both reweight with paper Eq. 7 over 9 neighbours; patch scores are Euclidean.",
              "", "## Commands", ""]
    for e in report["sets"]:
        lines += [f"- {e['category']} tabad: `{e['commands']['tabad']}`",
                  f"- {e['category']} anomalib: `{e['commands']['anomalib']}`"]
    for root, recipe in (report.get("data_recipes") or {}).items():
        lines.append(f"- `{root}` is procedural, regenerated by {recipe}")
    path.write_text("\n".join(lines) + "\n")


def _recipes(data: Path, categories: list[str], sets: str) -> dict[str, str]:
    """How to regenerate each procedural root among the evaluated sets."""
    roots = {data / spec.rsplit("/", 2)[0] for spec in sets.split(",") if spec.rsplit("/", 2)[1] in categories}
    return {rel(r): dataset_recipe(r) for r in sorted(roots) if dataset_recipe(r)}


def main(argv: list[str] | None = None) -> int:
    import datetime

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO / ".." / "shared" / "data"))
    p.add_argument("--sets", default=",".join(DEFAULT_SETS), help="comma-separated <root>/<category>/<layout>")
    p.add_argument("--coreset-ratio", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--shared-bank", action="store_true",
                   help="also run anomalib with tabad's memory bank (isolates the coreset sampler)")
    p.add_argument("--coreset-seeds", type=int, default=1,
                   help="also score both libraries with coreset seeds 1..N-1 (accuracy only): the samplers' spread")
    p.add_argument("--tabad-anomalib-sampler", action="store_true",
                   help="also run tabad with --set patchcore.sampler=anomalib for each coreset seed (accuracy only): "
                        "the same sampler algorithm in both libraries")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--anomalib-python", default=str(REPO / ".anomalib-venv" / "bin" / "python"))
    p.add_argument("--tabad-python", default=sys.executable)
    p.add_argument("--work", default=str(HERE / ".work" / "patchcore_vs_anomalib"))
    p.add_argument("--report", default=str(HERE / "reports" / "patchcore_vs_anomalib"))
    p.add_argument("--render-only", action="store_true", help="rewrite the .md from the report's .json; runs nothing")
    args = p.parse_args(argv)
    args.data, args.work = (str(Path(a).resolve()) for a in (args.data, args.work))  # children run elsewhere
    if args.render_only:
        out = Path(args.report)
        report = json.loads(out.with_suffix(".json").read_text())
        report["data_recipes"] = _recipes(Path(args.data), [e["category"] for e in report["sets"]], args.sets)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
        write_markdown(report, out.with_suffix(".md"))
        print(f"wrote {rel(out.with_suffix('.md'))}")
        return 0

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    weights = make_weights(work)
    timed = []
    for spec in args.sets.split(","):
        sub, category, layout = spec.rsplit("/", 2)
        root = Path(args.data) / sub
        if not (root / category).is_dir():
            print(f"skipping {root / category}: not found", flush=True)
            continue
        timed.append(run_timed(args, root, category, layout, weights, work))
    sets = [run_set(args, t, weights) for t in timed]
    import tabad

    report = {"date": datetime.datetime.now().isoformat(timespec="minutes"),
              "machine": f"{cpu_model()}, {mem_total_gb()} GB", "tabad_version": tabad.__version__,
              "weights": {"file": weights.name, "sha256": sha256_file(weights), "source": "torchvision resnet18, "
                          "torch.manual_seed(0)"},
              "data_root": rel(Path(args.data)), "seed": 0, "image_size": [224, 224],
              "coreset_ratio": args.coreset_ratio, "threads": args.threads, "repeats": args.repeats, "sets": sets,
              "data_recipes": _recipes(Path(args.data), [e["category"] for e in sets], args.sets)}
    out = Path(args.report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    write_markdown(report, out.with_suffix(".md"))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
