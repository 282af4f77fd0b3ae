"""``tabad demo``: the whole pipeline on the embedded default data, offline.

1. write (or reuse) the procedural MVTec-layout dataset;
2. TAB pre-training from a seeded random initialisation, with the offline
   text encoder (MiniLM) and NSA anomalies, on a small CPU budget;
3. benchmark PaDiM on every category with the random initialisation and
   with the TAB weights grown from it — the difference is what pre-training
   added;
4. draw the t-SNE of test features per weights source and the image-text
   similarity matrix of the TAB backbone; print the paper-style table and
   where the report is.

Every step reuses finished work, so a second run (or one after Ctrl-C) only
does what is missing.
"""

from __future__ import annotations

import time
from pathlib import Path

#: The demo's pre-training budget: about 4 minutes on 2 CPU cores. Chosen
#: from the pre-training loss and alignment accuracy on the procedural
#: *training* images (benchmarks/pretrain_compare.py), never from test sets.
DEMO_PRETRAIN = dict(epochs=4, batch_size=32, optimizer="sgd", lr=0.01, momentum=0.9, warmup_steps=5,
                     resize=128, crop=112)


def run_demo(out: Path, seed: int = 0, quick: bool = False) -> dict:
    from tabad.benchmark import BenchmarkConfig, run_benchmark
    from tabad.datasets.procedural import make_dataset
    from tabad.pretrain.trainer import PretrainConfig, pretrain

    t0 = time.perf_counter()
    out = Path(out)
    data = out / ("data_quick" if quick else "data")
    sizes = dict(n_train=8, n_test_good=3, n_test_per_defect=2) if quick else {}
    print(f"[1/4] procedural dataset -> {data}")
    make_dataset(data, seed=seed, **sizes)

    init = f"random:{seed}"
    tab_dir = out / ("tab_quick" if quick else "tab")
    budget = dict(DEMO_PRETRAIN, epochs=1) if quick else DEMO_PRETRAIN
    print(f"[2/4] TAB pre-training from {init} with the offline text encoder -> {tab_dir}")
    weights = tab_dir / "backbone.pt"
    if not weights.exists():
        cfg = PretrainConfig(data=[str(data)], out=str(tab_dir), init=init, text_encoder="minilm", seed=seed,
                             workers=1, **budget)
        pretrain(cfg, resume=True)

    report_dir = out / ("report_quick" if quick else "report")
    print(f"[3/4] benchmark: PaDiM (ResNet18) with {init} vs TAB ({weights})")
    cfg = BenchmarkConfig(data=data, out=report_dir, methods=["padim"], weights=[init, str(weights)], seed=seed,
                          title="tabad demo: PaDiM on the procedural dataset, random init vs TAB")
    report = run_benchmark(cfg)
    print("[4/4] results and figures\n")
    from tabad.figures import similarity_figure, tsne_figure

    figures = [tsne_figure(report_dir), similarity_figure(tab_dir, data, out_path=report_dir / "figures" / "similarity.png")]
    print((report_dir / "results.md").read_text())
    print(f"report: {report_dir / 'results.md'}  panels: {report_dir / 'panels'}  "
          f"figures: {', '.join(str(f) for f in figures)}  ({time.perf_counter() - t0:.0f} s)")
    return report
