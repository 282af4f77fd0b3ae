"""``tabad demo``: TAB pre-training from ImageNet EfficientNet-Lite0, offline, on the procedural data.

1. write (or reuse) the procedural MVTec-layout dataset (8 categories);
2. TAB pre-training of EfficientNet-Lite0 from its ImageNet weights (they ship
   with tabad), with the offline text encoder (MiniLM) and NSA anomalies, on
   the training images of 6 categories: stone_tile (a texture) and pcb (an
   object) are **held out** of pre-training (:data:`HELD_OUT`);
3. benchmark PaDiM and PatchCore (:data:`DEMO_METHODS`) on all 8 categories
   with the ImageNet weights and with TAB(ImageNet) — the difference is what
   pre-training added;
4. print the table with the held-out categories marked and averaged apart
   from the seen ones, and draw the image-text similarity matrix.

The recipe (:data:`DEMO_PRETRAIN`) is the one chosen on validation data by
``benchmarks/pretrain_imagenet.py`` (see its report); the budget is what fits
in about 10 minutes on 2 CPU cores. Every step reuses finished work, so a
second run (or one after Ctrl-C) only does what is missing.
"""

from __future__ import annotations

import time
from pathlib import Path

#: Procedural categories never pre-trained on: one texture, one object.
HELD_OUT = ("stone_tile", "pcb")

#: The demo's pre-training recipe: the winner of benchmarks/pretrain_imagenet.py's validation grid
#: (benchmarks/reports/pretrain_imagenet.md; chosen on held-out training images with Perlin anomalies, never on
#: test sets): SGD lr 1e-4, 3 epochs, BatchNorm statistics frozen at ImageNet's, nothing frozen, tab loss, NSA,
#: at the study's CPU budget of 128 -> 112 px. Its validation margin over ImageNet was small (0.25 points, one
#: seed), and the recipes that moved the weights least ranked highest.
DEMO_PRETRAIN = dict(arch="efficientnet_lite0", init="imagenet", text_encoder="minilm", synthetic="nsa", loss="tab",
                     epochs=3, batch_size=32, optimizer="sgd", lr=1e-4, momentum=0.9, bn_stats="frozen",
                     freeze_stages=-1, resize=128, crop=112, cka_holdout=0.1, cka_max_images=16)

#: Methods benchmarked.
DEMO_METHODS = ("padim", "patchcore")
#: Benchmark geometry: the pre-training's 128 -> 112 px (the study's evaluation size; 256 -> 224 is the papers' and
#: does not fit the demo's 10 minutes on 2 CPU cores).
DEMO_GEOMETRY = dict(resize=128, crop=112)

METRICS = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"))


def demo_table(results: list[dict], held_out=HELD_OUT, tab_label: str = "tab") -> str:
    """Markdown: per category and method, ImageNet vs TAB(ImageNet); seen / held-out / overall averages."""
    methods = list(dict.fromkeys(r["method"] for r in results))
    cats = list(dict.fromkeys(r["category"] for r in results))
    by = {(r["category"], r["method"], r["weights"]): r for r in results}
    cols = [(m, k, n) for m in methods for k, n in METRICS]
    head = "| category | pre-training |" + "".join(f" {m} {n} ImageNet | TAB | Δ |" for m, _, n in cols)
    lines = [head, "|---|---|" + "---:|---:|---:|" * len(cols)]

    def cells(group: list[str]) -> str:
        out = ""
        for m, k, _ in cols:
            a = [by[(c, m, "imagenet")][k] for c in group if (c, m, "imagenet") in by]
            t = [by[(c, m, tab_label)][k] for c in group if (c, m, tab_label) in by]
            a, t = [v for v in a if v is not None], [v for v in t if v is not None]
            if not a or not t:
                out += " – | – | – |"
                continue
            ma, mt = 100 * sum(a) / len(a), 100 * sum(t) / len(t)
            out += f" {ma:.2f} | {mt:.2f} | {mt - ma:+.2f} |"
        return out

    for c in cats:
        lines.append(f"| {c} | {'**held out**' if c in held_out else 'seen'} |" + cells([c]))
    seen = [c for c in cats if c not in held_out]
    held = [c for c in cats if c in held_out]
    if seen:
        lines.append(f"| **Seen Avg.** ({len(seen)}) | seen |" + cells(seen))
    if held:
        lines.append(f"| **Held-out Avg.** ({len(held)}) | held out |" + cells(held))
    lines.append(f"| **Overall Avg.** ({len(cats)}) | |" + cells(cats))
    return "\n".join(lines)


def run_demo(out: Path, seed: int = 0, quick: bool = False) -> dict:
    from tabad.benchmark import BenchmarkConfig, run_benchmark
    from tabad.datasets.procedural import CATEGORIES, make_dataset
    from tabad.files import atomic_write_text
    from tabad.pretrain.trainer import PretrainConfig, pretrain

    t0 = time.perf_counter()
    out = Path(out)
    data = out / ("data_quick" if quick else "data")
    sizes = dict(n_train=8, n_test_good=3, n_test_per_defect=2, size=128) if quick else {}
    print(f"[1/4] procedural dataset -> {data}")
    make_dataset(data, seed=seed, **sizes)

    seen = [c for c in CATEGORIES if c not in HELD_OUT]
    tab_dir = out / ("tab_quick" if quick else "tab")
    budget = dict(DEMO_PRETRAIN, epochs=1, resize=64, crop=64) if quick else DEMO_PRETRAIN
    print(f"[2/4] TAB pre-training from ImageNet EfficientNet-Lite0 (MiniLM text, NSA, lr {budget['lr']}, "
          f"BatchNorm statistics {budget['bn_stats']}, {budget['epochs']} epoch(s) at {budget['crop']} px) on "
          f"{', '.join(seen)}; held out: {', '.join(HELD_OUT)} -> {tab_dir}")
    weights = tab_dir / "backbone.pt"
    if not weights.exists():
        cfg = PretrainConfig(data=[str(data)], out=str(tab_dir), categories=seen, seed=seed, workers=1, **budget)
        pretrain(cfg, resume=True)

    report_dir = out / ("report_quick" if quick else "report")
    methods = ["padim"] if quick else list(DEMO_METHODS)
    geometry = dict(resize=64, crop=64) if quick else DEMO_GEOMETRY
    print(f"[3/4] benchmark: {' and '.join(methods)} (EfficientNet-Lite0) with ImageNet vs TAB(ImageNet) "
          f"({weights}) on all {len(CATEGORIES)} categories")
    cfg = BenchmarkConfig(data=data, out=report_dir, methods=methods, weights=["imagenet", str(weights)], seed=seed,
                          backbone="efficientnet_lite0", n_panels=2, **geometry,
                          title="tabad demo: ImageNet vs TAB(ImageNet), EfficientNet-Lite0, procedural dataset")
    report = run_benchmark(cfg)
    print("[4/4] results and figures\n")
    from tabad.backbones import weights_label
    from tabad.figures import similarity_figure

    table = demo_table(report["results"], tab_label=weights_label(str(weights)))
    note = (f"Held out of pre-training: {', '.join(HELD_OUT)} (never seen by TAB); seen: the other "
            f"{len(seen)} categories (their training images were pre-trained on). Values in %.")
    atomic_write_text(report_dir / "demo_table.md", f"# tabad demo: ImageNet vs TAB(ImageNet)\n\n{note}\n\n{table}\n")
    figure = similarity_figure(tab_dir, data, out_path=report_dir / "figures" / "similarity.png")
    print(table)
    print(f"\n{note}")
    print(f"report: {report_dir / 'demo_table.md'} and {report_dir / 'results.md'}  panels: {report_dir / 'panels'}  "
          f"figure: {figure}  ({time.perf_counter() - t0:.0f} s)")
    return report
