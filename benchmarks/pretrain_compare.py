"""TAB pre-training under a fixed CPU budget, compared with PaDiM.

Runs (each resumable: rerun the same command to continue):

* ``included``: pre-train on the training images of every evaluation category
  (procedural data + ../shared/data), the paper's main setting (Tables 1-3);
* ``excluded``: pre-train on the procedural data only and evaluate on
  ../shared/data (cross-dataset, Table 4), and pre-train on half of the
  procedural categories and evaluate on the other half;
* Table 5: TAB vs the ``classification`` baseline (same data, same budget);
* Table 7: normal-text-only alignment;
* Table 8: prompt variants one-class … idpa;
* Table 6: synthetic anomaly methods NSA / CutPaste / Perlin / Mask;

each evaluated with PaDiM (ResNet18, layers 1-3, d = 100) against the initial
weights. Writes ``benchmarks/reports/pretrain_compare.{md,json}`` with the
throughput of pre-training (images/s, synthetic samples/s).

Hyperparameters are fixed before any evaluation: SGD with momentum 0.9, lr
0.01 with 5 warm-up steps, batch 32, 128 → 112 px, chosen by the
pre-training loss / alignment accuracy on the procedural *training* images
(a 1-epoch check of lr ∈ {1e-3, 1e-2, 1e-1}); no test set was looked at.

Usage::

    python benchmarks/pretrain_compare.py --work runs/pretrain_compare [--epochs 4] [--only included,table5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tabad.backbones import weights_label
from tabad.benchmark import BenchmarkConfig, run_benchmark
from tabad.datasets.procedural import OBJECTS, TEXTURES, make_dataset
from tabad.files import atomic_write_json, atomic_write_text
from tabad.pretrain.trainer import PretrainConfig, pretrain

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"


def budget(args) -> dict:
    return dict(epochs=args.epochs, batch_size=32, optimizer="sgd", lr=0.01, momentum=0.9, warmup_steps=5,
                resize=128, crop=112, seed=args.seed, workers=1, text_encoder=args.text_encoder,
                init=f"random:{args.seed}")


def train(work: Path, name: str, data: list[str], args, categories=None, **overrides) -> tuple[str, dict]:
    out = work / "pretrain" / name
    if not (out / "backbone.pt").exists():
        cfg = PretrainConfig(data=data, out=str(out), categories=categories, **{**budget(args), **overrides})
        pretrain(cfg, resume=True)
    side = json.loads((out / "backbone.json").read_text())
    return str(out / "backbone.pt"), side


def evaluate(work: Path, name: str, data: Path, weights: list[str], args, categories=None,
             method: str = "padim") -> list[dict]:
    """``method`` on ``data``; one output folder per dataset and method, so the initial weights are scored once."""
    out = work / "eval" / (name if method == "padim" else f"{name}__{method}")
    cfg = BenchmarkConfig(data=data, out=out, methods=[method], weights=weights,
                          categories=categories, seed=args.seed, n_panels=3, progress=False)
    return run_benchmark(cfg)["results"]


def synthetic_throughput(root: Path, n: int = 200, seed: int = 0) -> dict[str, float]:
    """Samples/s of each generator alone, one process, 224 px images of the procedural set."""
    import numpy as np

    from tabad.anomalies import GENERATORS
    from tabad.anomalies.preview import load_normal_images

    images = [im for ims in load_normal_images(root, max_per_class=8).values() for im in ims]
    out = {}
    for name, fn in GENERATORS.items():
        rng = np.random.default_rng(seed)
        t0 = time.perf_counter()
        for i in range(n):
            fn(images[i % len(images)], [images[(i + 1) % len(images)]], rng)
        out[name] = n / (time.perf_counter() - t0)
    return out


def mean(rows: list[dict], weights_label: str, key: str) -> float | None:
    vals = [r[key] for r in rows if r["weights"] == weights_label and r[key] is not None]
    return sum(vals) / len(vals) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("runs/pretrain_compare"))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-encoder", default="minilm")
    ap.add_argument("--only", default=None, help="comma-separated subset of: included,excluded,table5,table6,table7,table8,joint,patchcore "
                         "(patchcore: PatchCore with the included TAB and classification weights)")
    ap.add_argument("--report", type=Path, default=HERE / "reports" / "pretrain_compare")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    want = lambda part: only is None or part in only  # noqa: E731

    work = args.work
    proc = work / "procedural"
    make_dataset(proc, seed=args.seed)
    shared_roots = [p for p in (SHARED / "mvtec3d", SHARED / "hazelnut_toy") if p.is_dir()]
    init = f"random:{args.seed}"
    init_label = init.replace(":", "-")
    rows: list[dict] = []
    throughput: dict[str, dict] = {}
    # Rows of earlier invocations (e.g. --only patchcore after the main run) are kept.
    previous = args.report.with_suffix(".json")
    if previous.is_file():
        old = json.loads(previous.read_text())
        rows.extend(old.get("rows", []))
        throughput.update(old.get("throughput", {}))

    def record(setting: str, variant: str, side: dict, results: list[dict], tab_label: str,
               method: str = "padim") -> None:
        rows[:] = [r for r in rows if (r["setting"], r["variant"], r.get("method", "padim")) != (setting, variant, method)]
        fm = side["final_metrics"] or {}
        throughput[variant] = {"images_per_s": fm.get("images_per_s"), "samples_per_s": fm.get("samples_per_s"),
                               "seconds_per_epoch": fm.get("seconds")}
        for key in ("image_auroc", "pixel_auroc", "aupro"):
            rows.append({"setting": setting, "variant": variant, "method": method, "metric": key,
                         "init": mean(results, init_label, key), "pretrained": mean(results, tab_label, key),
                         "categories": sorted({r["category"] for r in results}),
                         "final_train_loss": fm.get("loss"), "final_acc_normal": fm.get("acc_normal"),
                         "final_acc_abnormal": fm.get("acc_abnormal"), "weights_sha256": side["sha256"]})

    all_data = [str(proc)] + [str(p) for p in shared_roots]
    t_start = time.perf_counter()
    synth = synthetic_throughput(proc)

    def write_report(final: bool) -> None:
        from tabad.provenance import environment

        report = {"provenance": {"environment": environment(), "budget": budget(args), "work": str(work),
                                 "shared_data": [str(p) for p in shared_roots],
                                 "seconds": time.perf_counter() - t_start, "complete": final},
                  "rows": rows, "throughput": throughput, "synthetic_samples_per_s_224px": synth}
        atomic_write_json(args.report.with_suffix(".json"), report)
        atomic_write_text(args.report.with_suffix(".md"), to_markdown(report))
        if final:
            print(to_markdown(report))

    seen, held = TEXTURES[:2] + OBJECTS[:2], TEXTURES[2:] + OBJECTS[2:]
    # (setting, variant, pre-training roots, pre-training categories, evaluation, overrides);
    # evaluation "all" = procedural + shared data, "shared" = shared data only, "held" = held-out half.
    jobs = [("included", "tab (NSA, idpa)", all_data, None, "all", {}),
            ("table5", "classification", all_data, None, "all", {"loss": "classification"}),
            ("excluded", "procedural -> shared data", [str(proc)], None, "shared", {}),
            ("excluded", f"procedural {'+'.join(seen)} -> {'+'.join(held)}", [str(proc)], seen, "held", {}),
            ("table7", "normal text only", all_data, None, "all", {"loss": "normal-only"})]
    jobs += [("table8", f"prompts {v}", all_data, None, "all", {"prompts": v})
             for v in ("one-class", "two-class", "state-ensemble", "clip-template")]
    jobs += [("joint", "joint 2C contrast", all_data, None, "all", {"loss": "joint"})]
    jobs += [("table6", f"synthetic {g}", all_data, None, "all", {"synthetic": g}) for g in ("cutpaste", "perlin", "mask")]
    names = {"procedural -> shared data": "cross_procedural_only", jobs[3][1]: "cross_half"}
    for setting, variant, roots, cats, scope, overrides in jobs:
        if not want(setting) and not (setting == "included" and only):
            continue
        name = names.get(variant) or variant.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
        path, side = train(work, name, roots, args, categories=cats, **overrides)
        results = []
        if scope == "all":
            results += evaluate(work, "procedural", proc, [init, path], args)
        if scope == "held":
            results += evaluate(work, "procedural", proc, [init, path], args, categories=held)
        if scope in ("all", "shared"):
            for root in shared_roots:
                results += evaluate(work, root.name, root, [init, path], args)
        record(setting, variant, side, results, weights_label(path))
        write_report(final=False)

    if only and "patchcore" in only:
        # PatchCore with the main TAB weights and the classification baseline (procedural + hazelnut).
        for setting, variant, name in (("patchcore", "tab (NSA, idpa)", "tab_NSA_idpa"),
                                       ("patchcore", "classification", "classification")):
            path, side = train(work, name, all_data, args, **({"loss": "classification"} if name == "classification" else {}))
            results = evaluate(work, "procedural", proc, [init, path], args, method="patchcore")
            for root in shared_roots:
                if root.name == "hazelnut_toy":
                    results += evaluate(work, root.name, root, [init, path], args, method="patchcore")
            record(setting, variant, side, results, weights_label(path), method="patchcore")
            write_report(final=False)

    write_report(final=True)


def _f(v):
    return "–" if v is None else f"{100 * v:.2f}"


def to_markdown(report: dict) -> str:
    b = report["provenance"]["budget"]
    env = report["provenance"]["environment"]
    lines = ["# TAB pre-training vs initial weights, PaDiM (ResNet18)", "",
             "" if report["provenance"].get("complete") else "**Partial report: the run is still going.**", "",
             f"Budget per pre-training run: {b['epochs']} epochs, batch {b['batch_size']}, SGD lr {b['lr']} "
             f"(momentum {b['momentum']}, {b['warmup_steps']} warm-up steps, cosine), {b['resize']}→{b['crop']} px, "
             f"init `{b['init']}`, text encoder `{b['text_encoder']}`, seed {b['seed']}. "
             f"tabad {env['tabad_version']} ({env['git_commit']}), torch {env['torch']}, "
             f"{env['cpu_count']} CPU cores, {env['date']}.", "",
             "Each row: mean over the evaluated categories (PaDiM fitted per category), initial weights vs the "
             "pre-trained ones. Values in %.", "",
             "| setting | variant | method | metric | init | pre-trained | Δ | final loss | acc n / a |",
             "|---|---|---|---|---:|---:|---:|---:|---|"]
    for r in report["rows"]:
        d = None if r["init"] is None or r["pretrained"] is None else r["pretrained"] - r["init"]
        acc = f"{r['final_acc_normal']:.2f} / {r['final_acc_abnormal']:.2f}" if r["final_acc_normal"] is not None else ""
        lines.append(f"| {r['setting']} | {r['variant']} | {r.get('method', 'padim')} | {r['metric']} | "
                     f"{_f(r['init'])} | {_f(r['pretrained'])} | "
                     f"{'–' if d is None else f'{100 * d:+.2f}'} | {r['final_train_loss']:.3f} | {acc} |")
    lines += ["", "## Pre-training throughput (2 CPU cores)", "", "| run | images/s | synthetic samples/s | s/epoch |",
              "|---|---:|---:|---:|"]
    for k, v in report["throughput"].items():
        lines.append(f"| {k} | {v['images_per_s']:.1f} | {v['samples_per_s']:.1f} | {v['seconds_per_epoch']:.0f} |")
    lines += ["", "Synthetic anomaly generators alone (one process, 224 px): " + ", ".join(
        f"{k} {v:.0f}/s" for k, v in report["synthetic_samples_per_s_224px"].items()) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
