"""PaDiM side by side: tabad against anomalib 2.7.0, same weights, same channels, same data.

Run with tabad's interpreter (``.venv/bin/python``); anomalib runs in its own environment
(``.anomalib-venv``, see ``benchmarks/README.md``) through ``benchmarks/anomalib_padim_runner.py``.
The shared machinery (inputs, child processes, timing, scoring, report files) is
``benchmarks/harness/``. Specific to PaDiM: the channel subset
``random.seed(1024); random.sample(range(448), 100)`` given to both libraries (checked to equal
tabad's default), anomalib's Gaussian-fit and validation-pass timings, and the report's notes on
where anomalib's PaDiM differs from the reference. Writes
``benchmarks/reports/padim_vs_anomalib.md`` and ``.json``; ``--render-only`` rewrites the ``.md``
from the ``.json``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from harness import sidebyside as sbs
from harness.report import (accuracy_table, command_lines, data_lines, fmt, generated_line, load_range, METRICS,
                            stack_lines, table, write_report)

PARITY_TOL = 0.01
SPEED_TARGET = 0.5
PARITY_METRICS = ("image_auroc", "pixel_auroc", "aupro")
ANOMALIB_PHASES = ("import_seconds", "fit_seconds", "fit_gaussian_seconds", "fit_validation_pass_seconds",
                   "test_seconds", "predict_ms_per_image", "model_forward_ms_per_image")
IDX_RECIPE = "random.seed(1024); random.sample(range(448), 100)"


# ----------------------------------------------------------------------------- inputs
def make_idx(work: Path) -> tuple[Path, list[int]]:
    random.seed(1024)
    idx = random.sample(range(448), 100)
    path = work / "padim_idx_seed1024.json"
    path.write_text(json.dumps(idx))
    return path, idx


def tabad_default_idx() -> list[int] | None:
    try:
        from tabad.methods.padim import select_channels
    except Exception:  # noqa: BLE001 - tabad not importable: nothing to cross-check
        return None
    return list(select_channels(448, None, "resnet18", 1024))


# ----------------------------------------------------------------------------- one set
def run_category(args, target: sbs.Target, weights: sbs.Weights, idx_path: Path, do_tabad: bool) -> tuple[dict, dict]:
    cat_work = args.work / target.name

    def tabad(rep: int) -> dict:
        return sbs.run_tabad(args, target, "padim", weights.path, cat_work / f"tabad_r{rep}", resize=args.resize,
                             crop=args.crop, save=rep == 0, note=f" ({rep + 1}/{args.repeats})")

    def anomalib(rep: int) -> dict:
        return sbs.run_anomalib(args, "anomalib_padim_runner.py", target, weights.path, cat_work / f"anomalib_r{rep}",
                                ["--idx", str(idx_path), "--resize", str(args.resize), "--crop", str(args.crop)],
                                note=f" ({rep + 1}/{args.repeats})")

    runs = sbs.repeat_pairs(args.repeats, tabad if do_tabad else None, anomalib)
    entry: dict = {"category": target.category, "data": sbs.rel(target.root), "layout": target.layout,
                   "commands": {side: rs[-1]["command"] if rs else None for side, rs in
                                (("tabad", runs["tabad"]), ("anomalib", runs["anomalib"]))}}

    # ---------------- metrics (first run's predictions; repeats only refine timings)
    a0 = runs["anomalib"][0]["result"]
    ap = sbs.anomalib_predictions(runs["anomalib"][0]["out"])
    entry["anomalib"] = {
        "metrics_tabad_code": sbs.score(ap),
        "metrics_anomalib_evaluator": sbs.evaluator_metrics(a0),
        "metrics_anomalib_code_on_raw_minmax": sbs.evaluator_metrics(a0, "metrics_anomalib_on_raw_minmax"),
        "n_train": a0["n_train"], "n_test": a0["n_test"], "mask_pairing": a0["mask_pairing"],
        "postprocessor_clamping": {k: v for k, v in a0["postprocessor"].items() if "clamped" in k or k == "n_pixels"},
        # repeat-to-repeat determinism of anomalib's metrics
        "evaluator_metrics_all_repeats": [r["result"]["metrics_anomalib_evaluator"] for r in runs["anomalib"]],
    }
    timing = {"anomalib": sbs.timing_summary(runs["anomalib"], ANOMALIB_PHASES)}
    if do_tabad:
        t0 = runs["tabad"][0]
        entry["tabad"] = {"metrics_results_json": {k: t0["result"].get(k) for k in METRICS},
                          "n_train": t0["result"].get("n_train"), "n_test": t0["result"].get("n_test"),
                          "weights_label": t0["result"].get("weights"), "config": t0["result"].get("config")}
        tp = sbs.tabad_predictions(t0["out"], target.category, required=False)
        if tp is not None:
            pair = sbs.score_pair(ap, tp, PARITY_METRICS, PARITY_TOL)
            entry["tabad"].update(predictions_file=tp["_file"], metrics_tabad_code=pair["tabad"])
            entry["agreement"] = pair["agreement"]
        t_metrics = entry["tabad"].get("metrics_tabad_code") or entry["tabad"]["metrics_results_json"]
        entry["diff"] = sbs.diff(t_metrics, entry["anomalib"]["metrics_tabad_code"])
        entry["parity_ok"] = sbs.within(entry["diff"], PARITY_METRICS, PARITY_TOL)
        if tp is not None and "diff_same_masks" in pair:  # the GT masks differ: also compare on tabad's masks
            entry["diff_same_masks"], entry["parity_ok_same_masks"] = pair["diff_same_masks"], pair["parity_ok_same_masks"]
        timing["tabad"] = sbs.timing_summary(runs["tabad"])
        timing.update(sbs.ratios(timing))
        timing["speed_ok"] = timing["wall_ratio_tabad_over_anomalib"] <= SPEED_TARGET
    entry["timing"] = timing
    entry["runs"] = sbs.slim_runs(runs)
    return entry, runs


# ----------------------------------------------------------------------------- report
def render(report: dict) -> str:
    prov = report["provenance"]
    label = lambda e: e["category"]  # noqa: E731
    L = ["# PaDiM: tabad vs anomalib 2.7.0", "", generated_line("padim_vs_anomalib.py", prov), ""]
    L.append("Same backbone weights file for both (torchvision `resnet18()` random init after "
             "`torch.manual_seed(0)`, sha256 `%s`; no ImageNet weights offline, so absolute numbers are "
             "sanity checks only), same 100 channels (`%s`), same "
             "transform (Resize((%d,%d)) → CenterCrop(%d) → ImageNet normalisation). Both libraries' raw "
             "predictions are scored by the same code, `tabad.metrics.evaluate`. Targets: |Δ| ≤ %.2f for image "
             "AUROC, pixel AUROC and AUPRO; whole-process wall time tabad/anomalib ≤ %.1f."
             % (prov["weights"]["sha256"], IDX_RECIPE, prov["resize"], prov["resize"], prov["crop"], PARITY_TOL,
                SPEED_TARGET))
    L += ["", "## Accuracy (scored by `tabad.metrics`)", ""]
    L += accuracy_table(report["categories"], label, PARITY_METRICS, PARITY_TOL, "anomalib maps on tabad's GT masks")
    L.append("")
    if any("tabad" in e for e in report["categories"]):
        L.append("Each library is scored against its own ground-truth masks. Where the two libraries' masks differ "
                 "(see 'GT-mask pixels differing' below), the column 'anomalib maps on tabad's GT masks' scores "
                 "anomalib's maps against tabad's masks, which separates the model from the mask resizing.")
        L.append("")
    L += ["## Speed and memory (whole process, incl. imports and data loading)", ""]
    rows = []
    for e in report["categories"]:
        ta, tt, tm = e["timing"]["anomalib"], e["timing"].get("tabad", {}), e["timing"]
        ratio = tm.get("wall_ratio_tabad_over_anomalib")
        rows.append([
            label(e), f"{e['anomalib']['n_train']} / {e['anomalib']['n_test']}", fmt(tt.get("wall_seconds"), 1),
            fmt(ta["wall_seconds"], 1),
            f"{fmt(ratio, 2)}{'' if ratio is None or ratio <= SPEED_TARGET else ' ✗'} "
            f"({fmt(tm.get('wall_ratio_of_minimums'), 2)})",
            f"{fmt(tt.get('cpu_seconds'), 1)} / {fmt(ta['cpu_seconds'], 1)} "
            f"({fmt(tm.get('cpu_ratio_tabad_over_anomalib'), 2)})",
            fmt(tt.get("fit_seconds"), 2),
            f"{fmt(ta['fit_seconds'], 1)} ({fmt(ta['fit_gaussian_seconds'], 1)} / "
            f"{fmt(ta['fit_validation_pass_seconds'], 1)})",
            fmt(tt.get("predict_ms_per_image"), 0),
            f"{fmt(ta['predict_ms_per_image'], 0)} ({fmt(ta['model_forward_ms_per_image'], 0)})",
            fmt(tt.get("peak_rss_mb"), 0), fmt(ta["peak_rss_mb"], 0)])
    L += table(["category", "n train / test", "tabad wall s", "anomalib wall s",
                "ratio tabad/anomalib (ratio of minimum walls)", "CPU s (user+sys) tabad / anomalib (ratio)",
                "tabad fit s", "anomalib fit s (Gaussian / +val pass)", "tabad predict ms/img",
                "anomalib test ms/img (model fwd)", "tabad peak RSS MB", "anomalib peak RSS MB"], rows)
    L.append("")
    loads = load_range(report["categories"])
    if loads:
        L.append(f"1-minute load average of the machine around the runs: {loads[0]:.1f}–{loads[1]:.1f} on "
                 f"{prov['machine']['nproc']} CPUs. Above the CPU count other processes were competing: wall times "
                 f"(and, through cache and memory-bandwidth contention, CPU times too) are inflated, by up to 5× "
                 f"seen on this machine, so compare the two libraries only within a category and prefer the ratio "
                 f"of minimum wall times when the load was high.")
        L.append("")
    L.append("anomalib's *fit* is `Engine.fit`: feature extraction of the training set, the per-position Gaussian "
             "(`fit_gaussian`) and, because `val_split_mode=same_as_test`, a validation pass over the test set that "
             "learns its thresholds and min-max statistics (`+val pass`, which includes the Gaussian fit: the "
             "memory-bank fit runs at validation start). *test* is `Engine.test` (pre-processing, model, "
             "post-processing and metrics) per image; *model fwd* is `PadimModel.forward` alone.")
    L.append("")
    agreed = [e for e in report["categories"] if (e.get("agreement") or {}).get("aligned")]
    if agreed:
        L += ["## Per-image agreement (aligned by file name)", ""]
        L += table(["category", "image-score Spearman", "median rel. score diff", "max rel. score diff",
                    "median per-image map Pearson", "min map Pearson", "GT-mask pixels differing"],
                   [[label(e), fmt(g["image_score_spearman"]), fmt(g["image_score_rel_diff_median"], 5),
                     fmt(g["image_score_rel_diff_max"], 5), fmt(g["map_pearson_median"]), fmt(g["map_pearson_min"]),
                     f"{g['gt_mask_pixels_differing']} / {g['gt_mask_pixels_total']}"]
                    for e in agreed for g in [e["agreement"]]])
        L.append("")
    L += ["## How anomalib is run, and where its PaDiM differs from the reference", ""]
    L += [f"- {line}" for line in report["anomalib_notes"]]
    L += ["", "## Provenance", "",
          f"- weights: `{prov['weights']['file']}` sha256 `{prov['weights']['sha256']}`; "
          f"channel indices (first 10): {prov['idx'][:10]}"]
    L += data_lines(prov)
    L += stack_lines(prov, " (full freeze: `benchmarks/reports/anomalib-env.txt`)")
    L += command_lines(report["categories"], label)
    return "\n".join(L) + "\n\n"


ANOMALIB_NOTES = [
    "`Engine(accelerator='cpu', devices=1)` + `Folder(normal_dir, abnormal_dir=[per defect], normal_test_dir, "
    "mask_dir=[per defect], val_split_mode='same_as_test', test_split_mode='from_dir', num_workers=0, batch 32)`; "
    "`Padim(backbone='resnet18', layers=['layer1','layer2','layer3'], pre_trained=False, n_features=100, "
    "visualizer=False)`; `Engine.fit` then `Engine.test`; `seed_everything(0)`; 2 torch threads.",
    "Weights: `model.model.feature_extractor.feature_extractor.load_state_dict(sd, strict=False)` (timm "
    "`features_only` ResNet18); the runner asserts that nothing is missing and that only `layer4.*`/`fc.*` are "
    "unexpected. Channels: the runner overwrites the `idx` buffer of `PadimModel` (by default anomalib draws it "
    "with `torch.randperm(448)[:100]`). Channel order does not matter (Mahalanobis is permutation-invariant).",
    "Transform: `PreProcessor(transform=v2.Compose([Resize((256,256), antialias=True), CenterCrop(224), "
    "Normalize(ImageNet)]))`. anomalib applies it to `(image, gt_mask)` per batch and also copies the `Resize` into "
    "the datasets (before collation), so each image is resized once; masks are `tv_tensors.Mask`, so they get the "
    "same geometry with NEAREST. Images are resized as float tensors (torch antialiased bilinear); tabad resizes "
    "uint8 PIL images (PIL antialiased bilinear, rounded to uint8): tiny input differences (per-image score "
    "differences of ~0.1 %).",
    "GT masks: anomalib binarises `> 0` and resizes with torchvision's NEAREST, i.e. `F.interpolate(mode="
    "'nearest')`, which picks source pixel floor(i·scale) instead of the pixel under the output pixel's centre "
    "(floor((i+0.5)·scale), as PIL NEAREST, torch 'nearest-exact' and the bilinear image resize do). With a "
    "non-integer scale (tire: 341×256 (H×W) → 256×256) anomalib's masks are shifted by up to one output pixel "
    "against the image (a tire 'cut' mask: 30 of 126 foreground pixels differ, centroid moved 0.94 px). tabad's "
    "masks (PIL NEAREST) stay aligned. The effect is largest on AUPRO (per-region overlap of small regions).",
    "Folder mask pairing: it sorts all image and mask paths and assigns masks to anomalous images by position, "
    "then only checks that the mask stem *contains* the image stem. With several defect folders whose files share "
    "names (MVTec 3D-AD: `000.png` in every defect) a missing mask would silently shift pairs while still passing "
    "that check, so the runner verifies every pair (same defect folder, same stem) and aborts otherwise.",
    "Scores saved = raw `PadimModel.forward` output (before the PostProcessor). Its post-processing is "
    "`((x − threshold)/(max − min) + 0.5).clamp(0, 1)` with min/max/threshold learned on the validation set (= the "
    "test set here): monotone but the clamp creates ties at 0 and 1; the count of clamped values is in the JSON. "
    "anomalib's own Evaluator (column 'anomalib's own Evaluator') computes on these post-processed values.",
    "Pitfall seen: anomalib's AUROC/F1Max metric classes fed raw PaDiM distances (a user who disables "
    "normalisation) go through torchmetrics' input formatting, which applies a sigmoid to values outside [0, 1]; "
    "distances above ~17 all become 1.0 in float32, so the metrics are wrong (hazelnut: image AUROC 0.917 instead "
    "of 1.000). AUPRO is unaffected. The JSON keeps anomalib's metric code applied to min-max scaled raw values too.",
    "Differences from methods.md §1: Gaussian blur σ=4 with a 33×33 kernel (`2·int(4σ+0.5)+1`, same taps as "
    "scipy truncate=4) but torch `reflect` padding, i.e. (d c b | a b c d), while scipy's `reflect` repeats the edge "
    "pixel (d c b a | a b c d) — different values within 16 px of the border; covariance gets +0.01·I and then "
    "another +1e-5·I before inversion (float32 `torch.linalg.inv`); coarse layers are upsampled with "
    "`F.interpolate(mode='nearest')` (= replicate, as the reference); Mahalanobis map upsampled bilinearly "
    "(align_corners=False) to the input size; image score = max of the smoothed map; the Gaussian is fitted by "
    "a Python loop over the 3136 positions (slow on CPU) from all training embeddings held in memory.",
]


def main(argv: list[str] | None = None) -> int:
    p = sbs.parser(__doc__, "padim_vs_anomalib")
    p.add_argument("--resize", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    args = sbs.parse(p, argv)
    if args.render_only:
        return sbs.rerender(args, render)

    sbs.ensure_tabad_importable()
    do_tabad = args.only == "both"
    sbs.check_interpreters(args, do_tabad)
    args.work.mkdir(parents=True, exist_ok=True)
    weights = sbs.write_weights(args.work)
    idx_path, idx = make_idx(args.work)
    t_idx = tabad_default_idx()
    if do_tabad and t_idx is not None and t_idx != idx:
        raise SystemExit(f"tabad's default PaDiM channel subset differs from {IDX_RECIPE}")

    targets = sbs.targets(args)
    done = [run_category(args, t, weights, idx_path, do_tabad) for t in targets]
    entries = [e for e, _ in done]
    prov = sbs.provenance("padim_vs_anomalib", argv, args, weights, targets, done[0][1])
    prov.update({"idx": idx, "idx_recipe": IDX_RECIPE, "tabad_default_idx_equal": None if t_idx is None else t_idx == idx,
                 "resize": args.resize, "crop": args.crop})
    report = {"benchmark": "padim_vs_anomalib",
              "targets": {"parity_abs_diff_max": PARITY_TOL, "wall_ratio_max": SPEED_TARGET},
              "provenance": prov, "anomalib_notes": ANOMALIB_NOTES, "categories": entries}
    _, md = write_report(report, args.report, render)
    print(f"wrote {sbs.rel(md)} and .json")
    for e in entries:
        if "timing" in e and "tabad" in e["timing"]:
            print(f"{e['category']}: parity {'OK' if e.get('parity_ok') else 'FAIL'} {e.get('diff')}; "
                  f"wall ratio {e['timing']['wall_ratio_tabad_over_anomalib']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
