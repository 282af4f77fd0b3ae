"""Does a threshold set at a target false-positive rate on held-out good parts keep its promise on new parts?

For each category: ``tabad fit`` (defaults unless flags say otherwise) on the
train split, which holds out a seeded share of the good training images and
sets the image threshold at ``--fpr`` on them; then ``tabad predict`` on the
test split. Reported per seed: the measured false-positive rate on the test
set's good images with its exact (Clopper-Pearson) 95 % binomial confidence
interval, and the recall on its anomalous images. The test split is used only
to measure, never to choose anything.

    .venv/bin/python benchmarks/calibration.py --data ../shared/data/mvtec3d/tire --fpr 0.05 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact two-sided binomial confidence interval of k successes in n trials."""
    from scipy.stats import beta

    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def run(category: Path, seed: int, args, work: Path) -> dict:
    from tabad.datasets.readers import read_category
    from tabad.inspection.fit import FitConfig, fit_model
    from tabad.inspection.pipeline import load_inspection

    data = read_category(category, layout=args.layout, check_files=False)
    model_path = work / f"{category.name}_{args.method}_{seed}.tabad"
    t0 = time.perf_counter()
    if not model_path.is_file():  # a finished fit is reused: the script resumes after an interrupt
        fit_model(FitConfig(data=category, out=model_path, method=args.method, backbone=args.backbone,
                            weights=args.weights, fpr=args.fpr, seed=seed, layout=args.layout, progress=False),
                  log=lambda m: print(f"  {m}", file=sys.stderr))
    model = load_inspection(model_path)
    fit_s = model.header["training"]["fit_seconds"]
    held_out = np.array([p.score for p in model.predict(model.header["training"]["calibration_files"])])
    t0 = time.perf_counter()
    preds = model.predict([s.image_path for s in data.test], batch_size=8)
    predict_s = time.perf_counter() - t0
    labels = np.array([s.label for s in data.test])
    flagged = np.array([p.verdict == "anomalous" for p in preds])
    n_good, n_bad = int((labels == 0).sum()), int((labels == 1).sum())
    fp, tp = int(flagged[labels == 0].sum()), int(flagged[labels == 1].sum())
    c = model.calibration.image
    return {
        "category": category.name, "seed": seed, "threshold": c.value, "n_calibration": c.n,
        "calibration_fpr": c.achieved, "n_test_good": n_good, "false_positives": fp,
        "test_fpr": fp / n_good, "test_fpr_ci95": clopper_pearson(fp, n_good),
        "n_test_anomalous": n_bad, "recall": tp / n_bad if n_bad else None,
        "held_out_good_median": float(np.median(held_out)),
        "test_good_median": float(np.median([p.score for p, y in zip(preds, labels) if y == 0])),
        "test_anomalous_median": float(np.median([p.score for p, y in zip(preds, labels) if y == 1])),
        "fit_seconds": round(fit_s, 1), "predict_ms_per_image": round(1000 * predict_s / len(preds), 1),
        "model_file": str(model_path), "weights_sha256": model.header["backbone"]["weights"]["sha256"],
    }


def report(rows: list[dict], args, provenance: dict) -> str:
    lines = [
        "# Calibration: threshold at a target false-positive rate on held-out good parts",
        "",
        f"`{provenance['command']}`",
        "",
        f"Model: `tabad fit --method {args.method} --backbone {args.backbone} --weights {args.weights} "
        f"--fpr {args.fpr}` (20 % of the good training images held out to set the threshold; the image is "
        "anomalous when its score is above it). The test split only measures.",
        "",
        "| category | seed | held-out good | threshold | FPR on held-out | test good | false positives | "
        "test FPR [95 % CI] | test anomalous | recall | median score: held-out good / test good / test anomalous |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["test_fpr_ci95"]
        rec = "–" if r["recall"] is None else f"{r['recall']:.3f}"
        lines.append(f"| {r['category']} | {r['seed']} | {r['n_calibration']} | {r['threshold']:.4g} | "
                     f"{r['calibration_fpr']:.3f} | {r['n_test_good']} | {r['false_positives']} | "
                     f"{r['test_fpr']:.3f} [{lo:.3f}, {hi:.3f}] | {r['n_test_anomalous']} | {rec} | "
                     f"{r['held_out_good_median']:.2f} / {r['test_good_median']:.2f} / {r['test_anomalous_median']:.2f} |")
    fp = sum(r["false_positives"] for r in rows)
    n = sum(r["n_test_good"] for r in rows)
    lo, hi = clopper_pearson(fp, n)
    lines += ["", f"Pooled over the rows: {fp} false positives in {n} good test images, FPR {fp / n:.3f} "
                  f"[{lo:.3f}, {hi:.3f}] for a target of {args.fpr}.", "",
              "How to read it: with k held-out good images the threshold is an order statistic of their scores, "
              "so the rate on new good parts has its own spread around the target (the fewer held-out images, "
              "the wider); the interval is the exact binomial interval of the test count alone. The medians show "
              "whether the held-out good parts look like the test set's good parts: when test good parts score "
              "higher than held-out training parts (a shift between the training and test acquisitions), no "
              "threshold chosen on training-time parts keeps its rate, and the measured FPR says so.", "",
              "## Provenance", "", "```json", json.dumps(provenance, indent=2), "```", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, nargs="+", default=[ROOT.parent / "shared/data/mvtec3d/tire"])
    p.add_argument("--layout", default="auto")
    p.add_argument("--method", default="patchcore")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--fpr", type=float, default=0.05)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--work", type=Path, default=ROOT / "benchmarks/.work/calibration")
    p.add_argument("--report", type=Path, default=ROOT / "benchmarks/reports/calibration_tire")
    args = p.parse_args()
    from tabad.files import atomic_write_json, atomic_write_text
    from tabad.provenance import environment

    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for category in args.data:
        for seed in (int(s) for s in args.seeds.split(",")):
            print(f"{category.name} seed {seed}", file=sys.stderr)
            rows.append(run(category, seed, args, args.work))
    provenance = {"environment": environment(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
                  "data": [str(d.resolve()) for d in args.data], "method": args.method, "backbone": args.backbone,
                  "weights": args.weights, "fpr": args.fpr}
    atomic_write_json(args.report.with_suffix(".json"), {"provenance": provenance, "rows": rows})
    atomic_write_text(args.report.with_suffix(".md"), report(rows, args, provenance))
    print(args.report.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
