"""PatchCore: tabad vs anomalib 2.7.0, same weights, same data, same coreset ratio, side by side.

    .venv/bin/python benchmarks/patchcore_vs_anomalib.py [--repeats 3] [--coreset-ratio 0.1]

For each dataset (default: ``../shared/data`` tire and hazelnut toy) both libraries run as
separate processes, one after the other, with 2 threads each and ``MALLOC_MMAP_THRESHOLD_``
fixed (``benchmarks/harness/``):

* tabad: ``tabad benchmark --method patchcore`` (fit = feature extraction + coreset);
* anomalib: ``benchmarks/anomalib_patchcore_runner.py`` in ``.anomalib-venv`` (Engine.fit
  feature-collection epoch + ``subsample_embedding``).

Both use the same random ResNet18 state dict (sha256 recorded), layer2+layer3, Resize
256 -> CenterCrop 224, coreset ratio 0.1, 9 neighbours for the Eq. 7 reweighting, σ = 4.
Both outputs are scored by ``tabad.metrics`` on the same GT masks. Coresets differ by
construction (different random projections: anomalib's sparse JL projection to ~300 dims vs
tabad's seeded dense 128-d one), so small metric differences are expected; ``--coreset-seeds``,
``--tabad-anomalib-sampler`` and ``--shared-bank`` separate the sampler from the rest.

Writes ``benchmarks/reports/patchcore_vs_anomalib.{md,json}``; ``--render-only`` rewrites the
``.md`` from the ``.json``.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from harness import sidebyside as sbs
from harness.report import fmt, stack_lines, table, write_report

PARITY_TOL = 0.02  # issue 5 acceptance: image and pixel AUROC within 0.02
EQUAL_ACCURACY_TOL = 0.01  # "at equal accuracy" for the speed claim
SPEED_TARGET = 5.0  # fit at least 5x faster
PARITY_METRICS = ("image_auroc", "pixel_auroc")
RUNNER = "anomalib_patchcore_runner.py"
ANOMALIB_PHASES = ("fit_seconds", "feature_collection_seconds", "coreset_seconds", "test_seconds")


# ----------------------------------------------------------------------------- runs
def _tabad(args, target, weights, out: Path, *, save: bool, extra: list[str] = (), note: str = "") -> dict:
    return sbs.run_tabad(args, target, "patchcore", weights.path, out, resize=args.resize, crop=args.crop, save=save,
                         extra=["--set", f"patchcore.coreset_ratio={args.coreset_ratio}", *extra], malloc=True,
                         note=note)


def _anomalib(args, target, weights, out: Path, *, seed: int = 0, extra: list[str] = (), note: str = "") -> dict:
    return sbs.run_anomalib(args, RUNNER, target, weights.path, out,
                            ["--coreset-ratio", str(args.coreset_ratio), "--resize", str(args.resize), "--crop",
                             str(args.crop), *extra], seed=seed, malloc=True, note=note)


def run_timed(args, target: sbs.Target, weights: sbs.Weights) -> dict:
    """The timed runs of one set (``--repeats`` pairs); every set's run before any untimed one."""
    cat_work = args.work / target.name
    return sbs.repeat_pairs(
        args.repeats,
        lambda rep: _tabad(args, target, weights, cat_work / f"tabad_r{rep}", save=rep == 0,
                           note=f" ({rep + 1}/{args.repeats})"),
        lambda rep: _anomalib(args, target, weights, cat_work / f"anomalib_r{rep}", note=f" ({rep + 1}/{args.repeats})"))


def run_set(args, target: sbs.Target, runs: dict, weights: sbs.Weights) -> dict:
    """The untimed runs of one set (coreset seeds, sampler, shared bank) and its report entry."""
    cat_work = args.work / target.name
    # Accuracy under other coreset seeds (tabad: projection + start points; anomalib: seed_everything,
    # its random start): how far the sampler alone moves each library. Not timed.
    for seed in range(1, args.coreset_seeds):
        _tabad(args, target, weights, cat_work / f"tabad_seed{seed}", save=True,
               extra=["--set", f"patchcore.seed={seed}"], note=f" coreset seed {seed}")
        _anomalib(args, target, weights, cat_work / f"anomalib_seed{seed}", seed=seed, note=f" coreset seed {seed}")
    # tabad with anomalib's sampler algorithm (sparse JL projection, one random start in the bank),
    # drawn from tabad's generator: the same algorithm as anomalib, other random numbers. Not timed.
    for seed in range(args.coreset_seeds if args.tabad_anomalib_sampler else 0):
        _tabad(args, target, weights, cat_work / f"tabad_sampler_anomalib_seed{seed}", save=True,
               extra=["--set", "patchcore.sampler=anomalib", "--set", f"patchcore.seed={seed}"],
               note=f" sampler=anomalib, coreset seed {seed}")

    def pair(t_dir: Path, a_dir: Path) -> dict:
        p = sbs.score_pair(sbs.anomalib_predictions(a_dir), sbs.tabad_predictions(t_dir, target.category))
        return {k: p[k] for k in ("tabad", "anomalib", "anomalib_on_tabad_masks", "agreement")}

    shared = None
    if args.shared_bank:
        # tabad's seed-0 memory bank given to anomalib too: only feature extraction and scoring differ.
        bank = tabad_memory_bank(target, weights.path, args, cat_work / "tabad_bank.pt")
        a_dir = cat_work / "anomalib_shared_bank"
        bank_run = _anomalib(args, target, weights, a_dir, extra=["--memory-bank", str(bank)],
                             note=" with tabad's memory bank")
        shared = pair(cat_work / "tabad_r0", a_dir)
        g = shared.pop("agreement")
        shared["diff"] = sbs.diff(shared["tabad"], shared["anomalib_on_tabad_masks"])
        shared["agreement"] = {k: g.get(k) for k in ("image_score_spearman", "image_score_rel_diff_max",
                                                     "map_pearson_min", "map_rel_maxabs_diff_median")}
        shared["bank_shape"] = bank_run["result"]["memory_bank"]
    seeds = []
    for seed in range(args.coreset_seeds):
        suffix = "r0" if seed == 0 else f"seed{seed}"
        entry = {"seed": seed, **pair(cat_work / f"tabad_{suffix}", cat_work / f"anomalib_{suffix}")}
        if args.tabad_anomalib_sampler:
            entry["tabad_sampler_anomalib"] = sbs.score(sbs.tabad_predictions(
                cat_work / f"tabad_sampler_anomalib_seed{seed}", target.category))
        seeds.append(entry)
    m_t, m_a, same_masks, agreement = (seeds[0][k] for k in ("tabad", "anomalib", "anomalib_on_tabad_masks",
                                                              "agreement"))
    diff = sbs.diff(m_t, same_masks)
    spread = seed_spread(seeds)

    timing = {"tabad": sbs.timing_summary(runs["tabad"]),
              "anomalib": sbs.timing_summary(runs["anomalib"], ANOMALIB_PHASES)}
    timing["fit_speedup"] = timing["anomalib"]["fit_seconds"] / timing["tabad"]["fit_seconds"]
    timing["wall_speedup"] = timing["anomalib"]["wall_seconds"] / timing["tabad"]["wall_seconds"]
    multi = len(seeds) > 1
    return {
        "category": target.category, "data": sbs.rel(target.root), "layout": target.layout, "repeats": args.repeats,
        "memory_bank": {"tabad": runs["tabad"][0]["result"].get("model", {}).get("memory_bank"),
                        "anomalib": runs["anomalib"][0]["result"]["memory_bank"]},
        "metrics": {"tabad": m_t, "anomalib": m_a, "anomalib_on_tabad_masks": same_masks},
        "diff": diff, "agreement": agreement, "timing": timing,
        "coreset_seeds": [{k: v for k, v in e.items() if k != "agreement"} for e in seeds], "seed_spread": spread,
        "shared_bank": shared,
        "shared_bank_parity_ok": sbs.within(shared["diff"], PARITY_METRICS, PARITY_TOL) if shared else None,
        "mean_parity_ok": (all(spread[k]["mean_diff"] <= PARITY_TOL for k in PARITY_METRICS) if multi else None),
        "sampler_matched_mean_parity_ok": (all(spread[k]["sampler_matched_mean_diff"] <= PARITY_TOL
                                               for k in PARITY_METRICS)
                                           if multi and args.tabad_anomalib_sampler else None),
        "parity_ok": sbs.within(diff, PARITY_METRICS, PARITY_TOL),
        "equal_accuracy": sbs.within(diff, PARITY_METRICS, EQUAL_ACCURACY_TOL),
        "speed_ok": timing["fit_speedup"] >= SPEED_TARGET,
        "commands": {"tabad": runs["tabad"][-1]["command"], "anomalib": runs["anomalib"][-1]["command"]},
        "runs": sbs.slim_runs(runs),
    }


def seed_spread(seeds: list[dict]) -> dict:
    """Per metric: mean ± population std and range over the coreset seeds per library, and |Δ| of the means."""
    spread = {}
    for k in sbs.METRICS:
        tv = [e["tabad"][k] for e in seeds if e["tabad"][k] is not None]
        av = [e["anomalib_on_tabad_masks"][k] for e in seeds if e["anomalib_on_tabad_masks"][k] is not None]
        if not (tv and av):
            continue
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
    return spread


def tabad_memory_bank(target: sbs.Target, weights: Path, args, out: Path) -> Path:
    """tabad's PatchCore memory bank for ``tabad benchmark``'s seed 0, fitted in-process the way it fits it."""
    import torch

    from tabad.backbones import build_backbone
    from tabad.datasets.loader import load_split
    from tabad.datasets.readers import read_category
    from tabad.datasets.transforms import Geometry
    from tabad.methods import create_method

    train = load_split(read_category(target.root, target.category, layout=target.layout).train,
                       Geometry(args.resize, args.crop))
    bb = build_backbone("resnet18", str(weights))
    torch.manual_seed(0)
    model = create_method("patchcore", bb, {"coreset_ratio": args.coreset_ratio})
    # as `tabad benchmark` feeds it: the model's batch size and input normalisation, seed 0
    model.fit(train.batches(model.batch_size, normalise=model.normalisation))
    torch.save(model.memory_bank.detach().cpu().contiguous(), out)
    return out


def _se_of_difference(a: list[float], b: list[float]) -> float | None:
    """Standard error of mean(a) − mean(b) for independent samples (sample variances)."""
    if len(a) < 2 or len(b) < 2:
        return None
    return (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5


# ----------------------------------------------------------------------------- report
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


def render(report: dict) -> str:
    R = "---:"
    lines = ["# PatchCore: tabad vs anomalib 2.7.0", "",
             f"Generated by `benchmarks/patchcore_vs_anomalib.py` on {report['date']}; {report['machine']}. "
             f"Weights: random ResNet18 (`{report['weights']['file']}`, sha256 `{report['weights']['sha256'][:16]}…`), "
             f"layer2+layer3, {report.get('resize', 256)} → {report['image_size'][0]}, coreset ratio "
             f"{report['coreset_ratio']}, {report['threads']} threads per process, the two processes run one after "
             f"the other; medians of {report['repeats']} runs.", "",
             "Both libraries' raw scores and maps are scored by `tabad.metrics` on the same ground-truth masks "
             "(tabad's; anomalib's mask resize differs by about one pixel, see the PaDiM report).", "",
             "Both processes run with `MALLOC_MMAP_THRESHOLD_=4194304`: without it anomalib's coreset loop "
             "fragments glibc's heap (its process passed 9.6 GB RSS a third of the way through the hazelnut "
             "coreset and had to be killed; with it, 1.1 GB).", "",
             *_summary(report["sets"]),
             "## Accuracy", ""]
    lines += table(["data", "metric", "tabad", "anomalib", "abs. diff"],
                   [[e["category"], k, fmt(e["metrics"]["tabad"][k]), fmt(e["metrics"]["anomalib_on_tabad_masks"][k]),
                     fmt(e["diff"][k])] for e in report["sets"] for k in ("image_auroc", "pixel_auroc", "aupro")],
                   ["---", "---", R, R, R])
    shared = [e for e in report["sets"] if e.get("shared_bank")]
    if shared:
        lines += ["", "### With the same memory bank", "",
                  "anomalib given tabad's memory bank (`anomalib_patchcore_runner.py --memory-bank`: tabad's "
                  "seed-0 coreset, fitted in-process as `tabad benchmark` fits it, replaces anomalib's own "
                  "coreset; nothing else changes). Only feature extraction and scoring then differ:", ""]
        lines += table(["data", "metric", "tabad", "anomalib (tabad's bank)", "abs. diff"],
                       [[e["category"], k, fmt(sb["tabad"][k]), fmt(sb["anomalib_on_tabad_masks"][k]),
                         fmt(sb["diff"][k])]
                        for e in shared for sb in [e["shared_bank"]] for k in ("image_auroc", "pixel_auroc", "aupro")],
                       ["---", "---", R, R, R])
        lines.append("")
        for e in shared:
            g = e["shared_bank"]["agreement"]
            lines.append(f"- {e['category']}: image-score Spearman {fmt(g.get('image_score_spearman'))}, largest "
                         f"relative image-score difference {g.get('image_score_rel_diff_max', 0):.1e}, lowest "
                         f"per-image map Pearson {fmt(g.get('map_pearson_min'))}.")
    multi = [e for e in report["sets"] if len(e.get("coreset_seeds", [])) > 1]
    if multi:
        lines += _seed_section(multi)
    lines += ["", "## Speed and memory", "",
              "fit = feature extraction of the training images + coreset selection.", ""]
    rows = []
    for e in report["sets"]:
        t, a = e["timing"]["tabad"], e["timing"]["anomalib"]
        rows.append([e["category"], f"{e['memory_bank']['tabad']} / {e['memory_bank']['anomalib']}",
                     fmt(t["fit_seconds"], 1), f"{fmt(a['fit_seconds'], 1)} [{fmt(a['feature_collection_seconds'], 1)} "
                     f"+ {fmt(a['coreset_seconds'], 1)}]", f"**{e['timing']['fit_speedup']:.1f}×**",
                     fmt(t["wall_seconds"], 1), fmt(a["wall_seconds"], 1), fmt(t["peak_rss_mb"], 0),
                     fmt(a["peak_rss_mb"], 0)])
    lines += table(["data", "bank (tabad / anomalib)", "tabad fit (s)", "anomalib fit (s) [features + coreset]",
                    "fit speed-up", "tabad wall (s)", "anomalib wall (s)", "tabad peak RSS (MB)",
                    "anomalib peak RSS (MB)"], rows, ["---", "---"] + [R] * 7)
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
    lines += ["", "## Why the coresets differ", "", *WHY_CORESETS_DIFFER, "", "## Commands", ""]
    for e in report["sets"]:
        lines += [f"- {e['category']} tabad: `{e['commands']['tabad']}`",
                  f"- {e['category']} anomalib: `{e['commands']['anomalib']}`"]
    for root, recipe in (report.get("data_recipes") or {}).items():
        lines.append(f"- `{root}` is procedural, regenerated by {recipe}")
    if report.get("provenance"):
        lines += stack_lines(report["provenance"], " (full freeze: `benchmarks/reports/anomalib-env.txt`)")
    return "\n".join(lines) + "\n"


def _seed_section(multi: list[dict]) -> list[str]:
    n = len(multi[0]["coreset_seeds"])
    matched = any("tabad_sampler_anomalib_mean" in sp for e in multi for sp in e["seed_spread"].values())

    def cell(sp, side):
        lo, hi = sp[f"{side}_range"]
        return f"{fmt(sp[f'{side}_mean'])} ± {fmt(sp[f'{side}_std'])} [{fmt(lo)}, {fmt(hi)}]"

    def delta(sp, key):
        se = sp.get(f"{key}_se")
        return fmt(sp[key]) + (f" ± {fmt(se)}" if se is not None else "")

    lines = ["", f"### Across {n} coreset seeds", "",
             "The two coreset samplers draw different random subsets (see 'Why the coresets differ'). Each "
             f"library below runs with seeds 0–{n - 1} (tabad `--set patchcore.seed=S`: projection and start "
             "points; anomalib `seed_everything(S)`: its projection and start point); everything else is "
             "identical."
             + (" The middle column is tabad with `--set patchcore.sampler=anomalib`: anomalib's sampler "
                "algorithm (sparse JL projection, ε = 0.9; one random start, kept in the bank) drawn from "
                "tabad's generator, so the same algorithm with other random numbers." if matched else "")
             + " Mean ± population std over the seeds, [min, max]; |Δ| of the means ± its standard error "
             "(sample variances):", ""]
    rows = []
    for e in multi:
        for k in ("image_auroc", "pixel_auroc", "aupro"):
            sp = e["seed_spread"].get(k)
            if sp and matched:
                rows.append([e["category"], k, cell(sp, "tabad"), cell(sp, "tabad_sampler_anomalib"),
                             cell(sp, "anomalib"), delta(sp, "mean_diff"), delta(sp, "sampler_matched_mean_diff")])
            elif sp:
                rows.append([e["category"], k, cell(sp, "tabad"), cell(sp, "anomalib"), delta(sp, "mean_diff")])
    if matched:
        return lines + table(["data", "metric", "tabad (official sampler)", "tabad (sampler=anomalib)", "anomalib",
                              "\\|Δ\\| official vs anomalib", "\\|Δ\\| same sampler"], rows,
                             ["---"] * 5 + ["---:"] * 2)
    return lines + table(["data", "metric", "tabad", "anomalib", "\\|Δ\\| of the means"], rows, ["---"] * 4 + ["---:"])


WHY_CORESETS_DIFFER = [
    "- anomalib projects with its own `SparseRandomProjection(eps=0.9)` (very sparse ±1 entries, "
    "Johnson-Lindenstrauss dimension ⌊4 ln N / 0.162⌋, about 270–300 for these sizes; column draws from "
    "numpy's global generator, signs from torch's) and starts from one random point, which becomes the "
    "first bank row; tabad's default follows the official code: a seeded dense 128-d projection and the "
    "mean distance to 10 random start points, which are not kept. Both then run the same greedy k-center "
    "update, so memory banks have the same size but not the same rows. tabad's `sampler=anomalib` "
    "implements anomalib's algorithm (its loop gives anomalib's indices exactly for the same projected "
    "points and start; tested against a literal reference), with tabad's own seeded generator.",
    "- Image scores: both reweight with paper Eq. 7 over 9 neighbours; patch scores are Euclidean.",
]


def main(argv: list[str] | None = None) -> int:
    p = sbs.parser(__doc__, "patchcore_vs_anomalib", only=False)
    p.add_argument("--coreset-ratio", type=float, default=0.1)
    p.add_argument("--resize", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--shared-bank", action="store_true",
                   help="also run anomalib with tabad's memory bank (isolates the coreset sampler)")
    p.add_argument("--coreset-seeds", type=int, default=1,
                   help="also score both libraries with coreset seeds 1..N-1 (accuracy only): the samplers' spread")
    p.add_argument("--tabad-anomalib-sampler", action="store_true",
                   help="also run tabad with --set patchcore.sampler=anomalib for each coreset seed (accuracy only): "
                        "the same sampler algorithm in both libraries")
    args = sbs.parse(p, argv)
    if args.render_only:
        return sbs.rerender(args, render)

    sbs.ensure_tabad_importable()
    sbs.check_interpreters(args, True)
    args.work.mkdir(parents=True, exist_ok=True)
    weights = sbs.write_weights(args.work)
    targets = sbs.targets(args)
    timed = [run_timed(args, t, weights) for t in targets]  # every timed run before any untimed one
    sets = [run_set(args, t, runs, weights) for t, runs in zip(targets, timed)]
    prov = sbs.provenance("patchcore_vs_anomalib", argv, args, weights, targets, timed[0], malloc=True)
    m = prov["machine"]
    report = {"date": prov["date"], "machine": f"{m['cpu_model']}, {m['mem_total_gb']} GB",
              "tabad_version": (prov["tabad_stack"] or {}).get("tabad_version"), "weights": weights.record(),
              "data_root": prov["data_root"], "seed": 0, "image_size": [args.crop, args.crop], "resize": args.resize,
              "coreset_ratio": args.coreset_ratio, "threads": args.threads, "repeats": args.repeats, "sets": sets,
              "data_recipes": prov["data_recipes"], "provenance": prov}
    _, md = write_report(report, args.report, render)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
