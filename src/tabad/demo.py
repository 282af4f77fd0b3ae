"""``tabad demo``: the whole pipeline on the embedded default data, offline.

1. write (or reuse) the procedural MVTec-layout dataset;
2. benchmark PaDiM on every category with two weights sources;
3. print the paper-style table and where the report is.

Weights sources: seeded random initialisation, and ImageNet when its file
is already in the torch hub cache; without it, a second random seed shows
how much a PaDiM number moves with the weights alone — the yardstick any
pre-trained backbone has to clear.
"""

from __future__ import annotations

import time
from pathlib import Path


def demo_weights(seed: int) -> list[str]:
    from tabad.backbones import imagenet_weights_file

    path, _ = imagenet_weights_file("resnet18")
    return [f"random:{seed}", "imagenet" if path.is_file() else f"random:{seed + 1}"]


def run_demo(out: Path, seed: int = 0, quick: bool = False) -> dict:
    from tabad.benchmark import BenchmarkConfig, run_benchmark
    from tabad.datasets.procedural import make_dataset

    t0 = time.perf_counter()
    out = Path(out)
    data = out / ("data_quick" if quick else "data")
    sizes = dict(n_train=8, n_test_good=3, n_test_per_defect=2) if quick else {}
    print(f"[1/3] procedural dataset -> {data}")
    make_dataset(data, seed=seed, **sizes)
    weights = demo_weights(seed)
    report_dir = out / ("report_quick" if quick else "report")
    print(f"[2/3] benchmark: PaDiM (ResNet18) x weights {', '.join(weights)}")
    cfg = BenchmarkConfig(data=data, out=report_dir, methods=["padim"], weights=weights, seed=seed,
                          title="tabad demo: PaDiM on the procedural dataset")
    report = run_benchmark(cfg)
    print("[3/3] results\n")
    print((report_dir / "results.md").read_text())
    print(f"report: {report_dir / 'results.md'}  panels: {report_dir / 'panels'}  "
          f"({time.perf_counter() - t0:.0f} s)")
    return report
