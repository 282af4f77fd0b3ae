"""RD4AD side by side: tabad against anomalib 2.7.0's ReverseDistillation.

Same data, same teacher weights file, same initial OCBE/student weights, same batches in
the same order, same schedule (N epochs, batch 16, Adam lr 0.005 betas (0.5, 0.999)),
256×256 inputs (no crop, the paper's setting).

Run with tabad's interpreter (``.venv/bin/python``); anomalib runs in its own environment
through ``benchmarks/anomalib_rd4ad_runner.py``. The shared machinery (inputs, child
processes, timing, scoring, report files) is ``benchmarks/harness/``. Specific to RD4AD:

1. tabad's initial OCBE + student (``torch.manual_seed(seed)`` then
   ``create_method("rd4ad", ...)``: exactly what ``tabad benchmark`` does before ``fit``)
   are mapped onto anomalib's ``bottleneck``/``decoder`` keys (:func:`anomalib_state`)
   and loaded by the runner, which checks every tensor.
2. The training batches of every epoch, as tabad's ``Batches.epoch`` draws them
   (``sidebyside.training_order``), are given to the runner, which makes anomalib's training
   ``DataLoader`` yield exactly those batches (``--no-same-order``: anomalib shuffles itself).
3. ``--inputs resized``: both libraries read tabad's 256×256 decode of the files as lossless
   PNGs (``sidebyside.resized_copy``); ``raw``: each resizes the originals itself.
4. By default the run is *aligned* (tabad ``--memory-format contiguous --set
   rd4ad.blur_padding=reflect``, anomalib ``--input-decode div255``: the same bits), and a
   second tabad run with its own defaults is compared against the same anomalib run.
5. Per-image score Spearman, per-epoch training losses and the first-batch loss side by side,
   image AUROC with border-free maxima; ``benchmarks/reports/rd4ad_vs_anomalib.md`` and
   ``.json``; ``--render-only`` rewrites the ``.md`` from the ``.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness import sidebyside as sbs
from harness.report import (accuracy_table, command_lines, data_lines, fmt, generated_line, load_range, METRICS,
                            stack_lines, table, write_report)

PARITY_TOL = 0.02
PARITY_METRICS = ("image_auroc", "pixel_auroc")
RUNNER = "anomalib_rd4ad_runner.py"
ANOMALIB_PHASES = ("import_seconds", "fit_seconds", "fit_validation_pass_seconds", "predict_ms_per_image")

#: ``--aligned``: the settings under which both libraries compute the same bits on a CPU thread.
#: tabad: torch's default tensor layout (anomalib's) and anomalib's blur border; anomalib: the
#: uint8 / 255 decode of torchvision's ToTensor (tabad's and the official code's).
ALIGNED_TABAD = ["--memory-format", "contiguous", "--set", "rd4ad.blur_padding=reflect"]
ALIGNED_ANOMALIB = ["--input-decode", "div255"]

#: tabad OCBE key prefix -> anomalib OCBE (``model.model.bottleneck``) key prefix
OCBE_KEYS = {"fuse1.0.": "conv1.", "fuse1.1.": "bn1.", "fuse1.3.": "conv2.", "fuse1.4.": "bn2.",
             "fuse2.0.": "conv3.", "fuse2.1.": "bn3.", "oce.": "bn_layer."}
#: tabad student key prefix -> anomalib decoder (``model.model.decoder``) key prefix
STUDENT_KEYS = {f"stages.{i}.": f"layer{i + 1}." for i in range(3)}


# ----------------------------------------------------------------------------- inputs
def _rename(sd: dict, table: dict) -> dict:
    out = {}
    for k, v in sd.items():
        prefix = next((p for p in table if k.startswith(p)), None)
        if prefix is None:
            raise KeyError(f"no anomalib name for {k}")
        out[table[prefix] + k[len(prefix):]] = v
    return out


def anomalib_state(model) -> dict:
    """tabad's OCBE/student state dicts under anomalib's bottleneck/decoder keys.

    Inside a block both use torchvision's names (conv1, bn1, …, ``downsample`` in the
    OCE, ``upsample`` in the student), so only the prefixes change.
    """
    return {"bottleneck": _rename(model.ocbe.state_dict(), OCBE_KEYS),
            "decoder": _rename(model.student.state_dict(), STUDENT_KEYS)}


def make_init(weights: Path, work: Path, seed: int) -> tuple[Path, dict]:
    """tabad's initial OCBE/student, as ``tabad benchmark`` builds it, in anomalib's keys."""
    import torch

    from tabad.backbones import build_backbone, state_dict_sha256
    from tabad.methods import create_method

    bb = build_backbone("resnet18", str(weights))

    def build():
        torch.manual_seed(seed)
        return create_method("rd4ad", bb)

    model, again = build(), build()
    same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    if not same:
        raise SystemExit("tabad's RD4AD initialisation is not reproducible from the seed")
    state = anomalib_state(model)
    path = work / f"rd4ad_init_seed{seed}_anomalib_keys.pt"
    torch.save(state, path)
    info = {"file": path.name, "file_sha256": sbs.sha256_file(path),
            # the trainable parts only (the model's state dict also holds the frozen teacher)
            "tabad_state_sha256": state_dict_sha256({f"{part}.{k}": v for part in ("ocbe", "student")
                                                     for k, v in getattr(model, part).state_dict().items()}),
            "recipe": f"torch.manual_seed({seed}); create_method('rd4ad', resnet18 backbone)",
            "n_tensors": {k: len(v) for k, v in state.items()},
            "n_parameters": {"ocbe": sum(p.numel() for p in model.ocbe.parameters()),
                             "student": sum(p.numel() for p in model.student.parameters())}}
    return path, info


def first_step_loss(target: sbs.Target, weights: Path, args) -> float:
    """tabad's loss on its first training batch from its initial weights (no step taken).

    Equal to anomalib's first logged step loss when both start from the same weights, see
    the same pixels and compute the same teacher, OCBE, student and loss.
    """
    import torch

    from tabad.backbones import build_backbone
    from tabad.datasets.loader import load_split
    from tabad.datasets.readers import read_category
    from tabad.datasets.transforms import Geometry
    from tabad.methods import create_method
    from tabad.methods.rd4ad import distillation_loss

    data = read_category(target.root, target.category, layout=target.layout)
    train = load_split(data.train, Geometry(args.size, args.size))
    x = next(train.batches(args.batch_size).epoch(0, seed=args.seed, drop_last=True))
    # before seeding: building it draws random numbers
    backbone = build_backbone("resnet18", str(weights),
                              memory_format="contiguous" if args.aligned else "channels_last")
    torch.manual_seed(args.seed)
    model = create_method("rd4ad", backbone)
    model.ocbe.train()
    model.student.train()
    with torch.no_grad():  # what a training step computes before its backward pass
        return float(distillation_loss(*model.features(x), model.config.loss))


BORDER = 16  # the blur's radius (σ=4, truncate 4): where the two libraries' paddings differ


def border_free_auroc(a: dict, t: dict, margin: int = BORDER) -> dict:
    """Image AUROC of both libraries with the score taken as the map's maximum away from the border.

    tabad pads the σ=4 blur as scipy does (edge repeated, as the official code), anomalib as torch
    'reflect'; the maps differ only within ``margin`` pixels of the border. When the maxima sit at
    the border (common with a random teacher) that alone reorders near-tied image scores.
    """
    import numpy as np
    from sklearn.metrics import roc_auc_score

    pos = {k: i for i, k in enumerate(sbs.path_key(p) for p in t["files"])}
    order = np.array([pos[sbs.path_key(p)] for p in a["image_paths"]])
    inner = (slice(None), slice(margin, -margin), slice(margin, -margin))
    tm, am = t["maps"][order], a["maps"]
    h, w = tm.shape[1:]
    near = np.zeros((h, w), dtype=bool)
    near[:margin], near[-margin:], near[:, :margin], near[:, -margin:] = True, True, True, True
    flat_t = tm.reshape(len(tm), -1).argmax(1)
    out = {"margin": margin,
           "tabad": float(roc_auc_score(a["labels"], tm[inner].reshape(len(tm), -1).max(1))),
           "anomalib": float(roc_auc_score(a["labels"], am[inner].reshape(len(am), -1).max(1))),
           "share_of_tabad_maxima_near_border": float(near.reshape(-1)[flat_t].mean()),
           "max_abs_map_diff_interior": float(np.abs(tm[inner] - am[inner]).max()),
           "max_abs_map_diff_border": float(np.abs(tm - am)[:, near].max())}
    out["diff"] = abs(out["tabad"] - out["anomalib"])
    return out


# ----------------------------------------------------------------------------- one set
def run_tabad(args, target: sbs.Target, weights: Path, out: Path, threads: int, save: bool,
              extra: list[str] | None = None) -> dict:
    return sbs.run_tabad(args, target, "rd4ad", weights, out, seed=args.seed, resize=args.size, crop=args.size,
                         save=save, extra=["--epochs", str(args.epochs), *(extra or [])], threads=threads,
                         note=f" ({threads} thread(s))")


def run_category(args, target: sbs.Target, weights: sbs.Weights, init: Path, inputs: str = "raw") -> tuple[dict, dict]:
    cat_work = args.work / f"{target.name}__{inputs}"
    if inputs == "resized":  # the same pixels for both libraries
        target = sbs.resized_copy(target, args.size, cat_work / "data")
    cat_work.mkdir(parents=True, exist_ok=True)
    order = (sbs.training_order(target, args.epochs, args.batch_size, args.seed, cat_work / "train_order.json")
             if args.same_order else None)
    a_args = ["--init", str(init), "--epochs", str(args.epochs), "--size", str(args.size), "--batch-size",
              str(args.batch_size), "--lr", str(args.lr), "--betas", args.betas]
    a_args += (["--order", str(order)] if order is not None else []) + (ALIGNED_ANOMALIB if args.aligned else [])
    runs = sbs.repeat_pairs(
        args.repeats,
        (lambda rep: run_tabad(args, target, weights.path, cat_work / f"tabad_r{rep}", args.threads, rep == 0,
                               ALIGNED_TABAD if args.aligned else None)) if args.only == "both" else None,
        lambda rep: sbs.run_anomalib(args, RUNNER, target, weights.path, cat_work / f"anomalib_r{rep}", a_args,
                                     seed=args.seed))
    entry: dict = {"category": target.category, "inputs": inputs, "data": sbs.rel(target.root),
                   "layout": target.layout, "work": sbs.rel(cat_work),
                   "commands": {side: runs[side][-1]["command"] for side in ("tabad", "anomalib") if runs[side]}}

    # ---------------- metrics (first run's predictions; repeats only refine timings)
    a0 = runs["anomalib"][0]["result"]
    ap = sbs.anomalib_predictions(runs["anomalib"][0]["out"])
    a_metrics = sbs.score(ap)
    entry["anomalib"] = {
        "metrics_tabad_code": a_metrics, "metrics_anomalib_evaluator": sbs.evaluator_metrics(a0),
        "train_loss_per_epoch": a0["train_loss_per_epoch"], "train_batches_per_epoch": a0["train_batches_per_epoch"],
        "first_step_loss": a0["train_loss_per_step"][0][0] if a0["train_loss_per_step"] else None,
        "n_train": a0["n_train"], "n_test": a0["n_test"], "init": a0["init"], "same_order": a0["same_order"],
        "betas": a0["betas"],
    }
    timing = {"anomalib": sbs.timing_summary(runs["anomalib"], ANOMALIB_PHASES)}
    if runs["tabad"]:
        t0 = runs["tabad"][0]
        tp = sbs.tabad_predictions(t0["out"], target.category)
        pair = sbs.score_pair(ap, tp, PARITY_METRICS, PARITY_TOL)
        t_metrics = pair["tabad"]
        entry["tabad"] = {"metrics_tabad_code": t_metrics, "config": t0["result"].get("config"),
                          "n_train": t0["result"].get("n_train"), "n_test": t0["result"].get("n_test"),
                          "train_loss_per_epoch": [e["loss"] for e in t0["result"].get("train_log", [])],
                          "first_step_loss": first_step_loss(target, weights.path, args)}
        entry["agreement"] = pair["agreement"]
        entry["border_free"] = border_free_auroc(ap, tp)
        entry["diff"] = pair["diff"]
        tl, al = entry["tabad"]["train_loss_per_epoch"], entry["anomalib"]["train_loss_per_epoch"]
        entry["loss_rel_diff_max"] = (max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(tl, al))
                                      if tl and len(tl) == len(al) else None)
        entry["parity_ok"] = pair["parity_ok"]
        if "diff_same_masks" in pair:
            entry["diff_same_masks"] = pair["diff_same_masks"]
        variants = []
        if args.aligned and args.defaults_run:
            # tabad as users run it (channels_last, the official scipy border) against the same anomalib run.
            variants.append(("defaults", args.threads, None))
        if args.control_threads:
            # Noise floor: tabad against itself with another thread count (only float rounding differs).
            variants.append(("control", args.control_threads, ALIGNED_TABAD if args.aligned else None))
        for name, threads, extra in variants:
            run = run_tabad(args, target, weights.path, cat_work / f"tabad_{name}", threads, True, extra)
            entry["commands"][f"tabad_{name}"] = run["command"]
            cp = sbs.tabad_predictions(run["out"], target.category)
            c_metrics = sbs.score(cp)
            entry[name] = {"threads": threads, "options": extra or [], "metrics_tabad_code": c_metrics,
                           "diff_vs_tabad": sbs.diff(t_metrics, c_metrics),
                           "diff_vs_anomalib": sbs.diff(c_metrics, a_metrics),
                           "train_loss_per_epoch": [e["loss"] for e in run["result"].get("train_log", [])],
                           "image_score_spearman_vs_tabad":
                               sbs.compare_predictions(sbs.as_anomalib(cp), tp)["image_score_spearman"],
                           "image_score_spearman_vs_anomalib": sbs.compare_predictions(ap, cp)["image_score_spearman"],
                           "wall_seconds": run["process"]["wall_seconds"], "peak_rss_mb": run["process"]["peak_rss_mb"],
                           **run["phases"]}
        timing["tabad"] = sbs.timing_summary(runs["tabad"])
        timing.update(sbs.ratios(timing))
    entry["timing"] = timing
    entry["runs"] = sbs.slim_runs(runs)
    return entry, runs


# ----------------------------------------------------------------------------- report
INTENDED_DIFFERENCES = [
    "Optimiser betas: anomalib 2.7.0's `configure_optimizers` uses Adam betas (0.5, 0.99); the paper and the "
    "official code use (0.5, 0.999), tabad's default. The runner replaces `configure_optimizers` with Adam over "
    "decoder + bottleneck at `--betas` (default 0.5,0.999) so both train with the same optimiser.",
    "Batches: tabad drops an epoch's final short batch (`drop_last`); anomalib's `DataLoader(shuffle=True)` keeps "
    "it. With the same-order plan anomalib trains on exactly tabad's batches (the final short batch is dropped for "
    "both); the runner checks batch by batch that it did.",
    "Validation: anomalib runs one validation pass over the test set after the last epoch "
    "(`check_val_every_n_epoch=epochs`; its PostProcessor learns min/max/thresholds there, used only by its own "
    "Evaluator column), and Lightning saves a checkpoint; tabad has no validation. Both count in the wall times.",
    "OCBE: anomalib builds the official code's unused `conv4`/`bn4` (1×1 conv, 0.5 M parameters for ResNet18); tabad "
    "does not. They are left at anomalib's own initialisation and never influence an output or the loss.",
    "Inputs, 'raw' rows: each library reads the original files; tabad resizes uint8 PIL images (antialiased "
    "bilinear, rounded to uint8) to 256×256, anomalib resizes float tensors (torchvision v2 `Resize((256,256), "
    "antialias=True)`): tiny input differences. 'resized' rows: both read tabad's 256×256 decode of the same files "
    "(lossless PNG copies, masks included; resizing 256×256 to 256×256 is the identity in both), so the pixels and "
    "masks are identical and only the two implementations differ.",
    "Map smoothing: tabad's default blur is scipy-equivalent (σ=4, 33 taps, scipy 'reflect' = edge-repeating "
    "padding), as the official code (`scipy.ndimage.gaussian_filter`); anomalib's `GaussianBlur2d` uses the same "
    "taps with torch 'reflect' padding (no edge repeat), so values within 16 px of the border differ. The aligned "
    "run sets tabad's `rd4ad.blur_padding=reflect` (anomalib's border); the defaults run keeps the official one.",
    "Input decode: anomalib converts uint8 to float as `x * (1/255)` (torchvision v2 `to_dtype`), tabad as "
    "`x / 255` (torchvision's `ToTensor`, the official code); about one value in three differs in its last bit. "
    "The aligned run gives anomalib's runner `--input-decode div255` (its `read_image` replaced by the `/ 255` "
    "decode, nothing else); the defaults run compares against that same anomalib run.",
    "GT masks ('raw' rows): anomalib resizes masks with torchvision NEAREST (`F.interpolate(mode='nearest')`), tabad with PIL "
    "NEAREST; with a non-integer scale (tire) the masks differ by up to one pixel (see the padim report). The column "
    "'anomalib maps on tabad's masks' scores anomalib's maps against tabad's masks.",
    "Teacher: both run the same ResNet18 state dict in eval mode without gradients (anomalib: timm "
    "`features_only` ResNet18, `encoder.eval()` in every forward; tabad: torchvision ResNet18). Float32 on the "
    "CPU for both (tabad's bfloat16 teacher autocast is CUDA-only).",
    "Scores: the raw `ReverseDistillationModel` outputs (before anomalib's PostProcessor normalisation) are "
    "compared; both maps are the sum of the three 1 − cos maps, bilinearly upsampled with align_corners=True, "
    "blurred with σ=4, image score = max of the map.",
    "Tensor layout: tabad runs its backbone, and so the OCBE and student that consume its features, in "
    "channels_last by default (oneDNN's fast CPU kernels); anomalib in torch's default contiguous layout. The "
    "kernels add in another order, so the features differ by float rounding, and Adam, whose first steps move "
    "every weight by about ±lr whatever the gradient's size, grows that into weight drift over the epochs. The "
    "aligned run sets tabad's `--memory-format contiguous`: with the same input bits every convolution then runs "
    "the same kernel on the same data.",
]


def _label(e: dict) -> str:
    return f"{e['category']} ({e['inputs']})"


def _section(L: list[str], title: str, text: str) -> None:
    L.extend([f"## {title}", "", text, ""])


def _losses(xs) -> str:
    return ", ".join(f"{x:.4f}" for x in xs)


def render(report: dict) -> str:
    prov = report["provenance"]
    cats = report["categories"]
    L = ["# RD4AD: tabad vs anomalib 2.7.0 (ReverseDistillation)", "",
         generated_line("rd4ad_vs_anomalib.py", prov, "thread(s)"), ""]
    L.append(f"ResNet18 teacher from one weights file for both (random init after `torch.manual_seed(0)`, sha256 "
             f"`{prov['weights']['sha256']}`; no ImageNet weights offline, so the absolute numbers are sanity checks "
             f"only). Identical initial OCBE/student weights (tabad's, mapped onto anomalib's keys: "
             f"{'loaded and checked tensor by tensor' if prov['init_loaded'] else 'NOT loaded'}). "
             f"{'The same training batches in the same order' if prov['same_order'] else 'Each library shuffles itself'}. "
             f"{prov['epochs']} epoch(s), batch {prov['batch_size']}, Adam lr {prov['lr']} betas ({prov['betas']}), "
             f"{prov['size']}×{prov['size']} inputs (no crop), seed {prov['seed']}. Both libraries' raw predictions "
             f"are scored by `tabad.metrics.evaluate`. Target: |Δ| ≤ {PARITY_TOL} for image and pixel AUROC.")
    L.append("")
    if prov.get("aligned"):
        o = prov["aligned_options"]
        L.append(f"**Aligned run**: tabad `{' '.join(o['tabad'])}`, anomalib's runner `{' '.join(o['anomalib'])}` "
                 "(torch's default tensor layout, anomalib's blur border, the `uint8 / 255` decode; see 'Intended "
                 "differences'): both libraries then compute the same bits in training. "
                 + ("A second tabad run with its own defaults is compared against the same anomalib run."
                    if prov.get("defaults_run") else ""))
        L.append("")
    has_tabad = any("tabad" in e for e in cats)
    if has_tabad:
        L += ["**Summary.**", ""]
        L += [_summary_line(e, prov) for e in cats if "diff" in e]
        L.append("")
    L += ["## Accuracy (scored by `tabad.metrics`)", ""]
    L += accuracy_table(cats, _label, PARITY_METRICS, PARITY_TOL)
    L += ["", "anomalib's own Evaluator scores its PostProcessor's outputs: normalised with the threshold and "
          "min/max learned in its validation pass and clipped to [0, 1], so scores tied at a clip bound can move its "
          "AUROC away from the raw outputs' (both other columns score the raw outputs).", ""]
    if not prov.get("aligned") and any("border_free" in e for e in cats):
        L.append(f"Image AUROC with the score taken as the map's maximum at least {BORDER} px from the border, where "
                 "the two libraries' blur paddings do not reach (see 'Map smoothing' below):")
        L.append("")
        L += table(["category", "tabad", "anomalib", "\\|Δ\\|", "tabad maxima within the border band",
                    "max \\|map Δ\\| interior / border band"],
                   [[_label(e), fmt(b["tabad"]), fmt(b["anomalib"]), fmt(b["diff"]),
                     f"{b['share_of_tabad_maxima_near_border']:.0%}",
                     f"{b['max_abs_map_diff_interior']:.2e} / {b['max_abs_map_diff_border']:.2e}"]
                    for e in cats if e.get("border_free") for b in [e["border_free"]]])
        L.append("")
    defaults = [e for e in cats if "defaults" in e]
    if defaults:
        _section(L, "tabad with its defaults against the same anomalib run",
                 "tabad as users run it: channels_last tensors (oneDNN's fast CPU kernels) and the official "
                 "code's edge-repeating blur border. Against the aligned run above only float rounding (another "
                 "kernel order) and the border band differ; Adam turns the rounding into weight drift over the "
                 "epochs, so this is the spread any two correct implementations show, not a difference in the "
                 "method.")
        L += table(["category", "metric", "tabad defaults", "anomalib", "\\|Δ\\|", "\\|Δ\\| vs aligned tabad"],
                   [[_label(e), k, fmt(v["metrics_tabad_code"].get(k)),
                     fmt(e["anomalib"]["metrics_tabad_code"].get(k)), fmt(v["diff_vs_anomalib"].get(k)),
                     fmt(v["diff_vs_tabad"].get(k))] for e in defaults for v in [e["defaults"]] for k in METRICS])
        L.append("")
        L += table(["category", "image-score Spearman vs anomalib", "mean loss per epoch", "wall s", "fit s",
                    "predict ms/img", "peak RSS MB"],
                   [[_label(e), fmt(v["image_score_spearman_vs_anomalib"]), _losses(v["train_loss_per_epoch"]),
                     fmt(v["wall_seconds"], 1), fmt(v["fit_seconds"], 1), fmt(v["predict_ms_per_image"], 0),
                     fmt(v["peak_rss_mb"], 0)] for e in defaults for v in [e["defaults"]]])
        L.append("")
    if has_tabad:
        L += ["## Per-image agreement and training loss", "",
              "Loss on the first training batch before any step (tabad computed in-process, anomalib's first "
              "logged step): equal values mean the same initial weights, the same pixels, the same teacher and "
              "the same loss. Mean training loss per epoch follows.", ""]
        L += table(["category", "image-score Spearman", "median per-image map Pearson", "min map Pearson",
                    "GT-mask pixels differing", "first-batch loss tabad / anomalib", "mean loss per epoch, tabad",
                    "anomalib"],
                   [[_label(e), fmt(g["image_score_spearman"]), fmt(g["map_pearson_median"]), fmt(g["map_pearson_min"]),
                     f"{g['gt_mask_pixels_differing']} / {g['gt_mask_pixels_total']}",
                     f"{fmt(e['tabad']['first_step_loss'], 6)} / {fmt(e['anomalib']['first_step_loss'], 6)}",
                     _losses(e["tabad"]["train_loss_per_epoch"]), _losses(e["anomalib"]["train_loss_per_epoch"])]
                    for e in cats for g in [e.get("agreement") or {}] if g.get("aligned")])
        L.append("")
    controls = [e for e in cats if "control" in e]
    if controls:
        _section(L, "Noise floor: tabad against itself with another thread count",
                 "The same tabad run with a different number of threads changes nothing but the order of float "
                 "additions. Adam's first steps move every weight by about ±lr whatever the gradient's size, so "
                 "rounding-level differences grow over the epochs; the spread below is what any two "
                 "implementations of the same computation can be expected to differ by.")
        L += table(["category", "threads", "\\|Δ\\| image AUROC", "\\|Δ\\| pixel AUROC", "\\|Δ\\| AUPRO",
                    "image-score Spearman", "mean loss per epoch"],
                   [[_label(e), f"{prov['threads']} vs {c['threads']}", fmt(d["image_auroc"]), fmt(d["pixel_auroc"]),
                     fmt(d["aupro"]), fmt(c["image_score_spearman_vs_tabad"]), _losses(c["train_loss_per_epoch"])]
                    for e in controls for c in [e["control"]] for d in [c["diff_vs_tabad"]]])
        L.append("")
    L += ["## Speed and memory (whole process, incl. imports, data loading, training and testing)", ""]
    rows = []
    for e in cats:
        ta, tt = e["timing"]["anomalib"], e["timing"].get("tabad", {})
        rows.append([_label(e), f"{e['anomalib']['n_train']} / {e['anomalib']['n_test']}",
                     fmt(tt.get("wall_seconds"), 1), fmt(ta["wall_seconds"], 1),
                     fmt(e["timing"].get("wall_ratio_tabad_over_anomalib"), 2),
                     f"{fmt(tt.get('cpu_seconds'), 1)} / {fmt(ta['cpu_seconds'], 1)}", fmt(tt.get("fit_seconds"), 1),
                     f"{fmt(ta['fit_seconds'], 1)} ({fmt(ta['fit_validation_pass_seconds'], 1)})",
                     fmt(tt.get("predict_ms_per_image"), 0), fmt(ta["predict_ms_per_image"], 0),
                     fmt(tt.get("peak_rss_mb"), 0), fmt(ta["peak_rss_mb"], 0)])
    L += table(["category", "n train / test", "tabad wall s", "anomalib wall s", "ratio", "CPU s tabad / anomalib",
                "tabad fit s", "anomalib fit s (val pass)", "tabad predict ms/img", "anomalib test ms/img",
                "tabad peak RSS MB", "anomalib peak RSS MB"], rows)
    L.append("")
    loads = load_range(cats)
    if loads:
        L.append(f"1-minute load average around the runs: {loads[0]:.1f}–{loads[1]:.1f} on "
                 f"{prov['machine']['nproc']} CPUs. Above the CPU count other processes competed and wall times are "
                 f"inflated; compare the libraries within a category only, and rerun on an idle machine "
                 f"(`--repeats 3`) for timings worth quoting.")
        L.append("")
    L += ["## Intended differences between the two runs", ""]
    L += [f"- {line}" for line in report["intended_differences"]]
    L += ["", "## Provenance", "",
          f"- teacher weights: `{prov['weights']['file']}` sha256 `{prov['weights']['sha256']}` "
          f"({prov['weights']['recipe']})",
          f"- initial OCBE/student: {json.dumps(prov['init'])}",
          f"- key mapping tabad → anomalib: OCBE {json.dumps(OCBE_KEYS)}; student {json.dumps(STUDENT_KEYS)}"]
    L += data_lines(prov) + stack_lines(prov) + command_lines(cats, _label)
    return "\n".join(L) + "\n\n"


def _summary_line(e: dict, prov: dict) -> str:
    d, c, b = e["diff"], e.get("control", {}).get("diff_vs_tabad"), e.get("border_free")
    g = e.get("agreement") or {}
    parts = [f"|Δ| image AUROC {fmt(d['image_auroc'])}, pixel AUROC {fmt(d['pixel_auroc'])}, "
             f"AUPRO {fmt(d['aupro'])} ({'within' if e['parity_ok'] else 'NOT within'} {PARITY_TOL})"]
    if g.get("aligned") and b:
        parts.append(f"largest relative image-score difference {g['image_score_rel_diff_max']:.1e}, "
                     f"largest map difference {max(b['max_abs_map_diff_interior'], b['max_abs_map_diff_border']):.1e}")
    if e.get("loss_rel_diff_max") is not None:
        parts.append(f"per-epoch training loss relative difference {e['loss_rel_diff_max']:.1e}")
    dd = e.get("defaults", {}).get("diff_vs_anomalib")
    if dd:
        parts.append(f"tabad with its defaults (channels_last, official border): |Δ| image "
                     f"{fmt(dd['image_auroc'])}, pixel {fmt(dd['pixel_auroc'])}")
    if c:
        parts.append(f"tabad against itself at another thread count: {fmt(c['image_auroc'])}, "
                     f"{fmt(c['pixel_auroc'])}")
    if b and not prov.get("aligned"):
        parts.append(f"image AUROC with border-free maxima: |Δ| {fmt(b['diff'])}")
    parts.append(f"first-batch loss {fmt(e['tabad']['first_step_loss'], 6)} vs "
                 f"{fmt(e['anomalib']['first_step_loss'], 6)}")
    return f"- {_label(e)}: " + "; ".join(parts) + "."


def main(argv: list[str] | None = None) -> int:
    p = sbs.parser(__doc__, "rd4ad_vs_anomalib")
    p.add_argument("--epochs", type=int, default=1, help="training epochs for both libraries (paper: 200)")
    p.add_argument("--size", type=int, default=256, help="inputs resized to SIZE×SIZE, no crop (paper: 256)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--betas", default="0.5,0.999", help="Adam betas for anomalib (tabad's default: 0.5,0.999)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inputs", choices=["raw", "resized", "both"], default="both",
                   help="raw: each library reads and resizes the original files itself; resized: both read "
                        "tabad's S×S decode of them (identical pixels and masks); both (default)")
    p.add_argument("--control-threads", type=int, default=None,
                   help="also run tabad with this many threads (default: 2, or 1 when --threads is not 1): a "
                        "noise floor, since only float rounding differs; 0: no control run")
    p.add_argument("--no-aligned", dest="aligned", action="store_false",
                   help="compare the libraries' own defaults directly (by default both run aligned: tabad "
                        f"{' '.join(ALIGNED_TABAD)}, anomalib {' '.join(ALIGNED_ANOMALIB)}, i.e. the same bits)")
    p.add_argument("--no-defaults-run", dest="defaults_run", action="store_false",
                   help="with the aligned comparison, skip the extra tabad run with its own defaults")
    p.add_argument("--no-same-order", dest="same_order", action="store_false",
                   help="let anomalib shuffle its own training batches")
    args = sbs.parse(p, argv)
    if args.render_only:
        return sbs.rerender(args, render)
    if args.control_threads is None:  # aligned: the defaults run already shows what rounding does
        args.control_threads = 0 if args.aligned else (2 if args.threads == 1 else 1)
    sbs.ensure_tabad_importable()
    from tabad.methods.rd4ad import Rd4adConfig

    defaults = Rd4adConfig()
    if (args.batch_size, args.lr, args.betas) != (defaults.batch_size, defaults.lr,
                                                  ",".join(str(b) for b in defaults.betas)):
        raise SystemExit("--batch-size/--lr/--betas must equal tabad's RD4AD defaults (the CLI run uses those)")
    sbs.check_interpreters(args, args.only == "both")
    args.work.mkdir(parents=True, exist_ok=True)
    weights = sbs.write_weights(args.work)
    init, init_info = make_init(weights.path, args.work, args.seed)
    targets = sbs.targets(args)
    modes = ["raw", "resized"] if args.inputs == "both" else [args.inputs]
    done = [run_category(args, t, weights, init, inputs) for t in targets for inputs in modes]
    entries = [e for e, _ in done]
    prov = sbs.provenance("rd4ad_vs_anomalib", argv, args, weights, targets, done[0][1], seed=args.seed)
    prov.update({
        "init": init_info, "init_loaded": all(e["anomalib"]["init"] is not None for e in entries),
        "same_order": args.same_order, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "betas": args.betas, "size": args.size, "inputs": modes, "control_threads": args.control_threads,
        "aligned": args.aligned,
        "aligned_options": {"tabad": ALIGNED_TABAD, "anomalib": ALIGNED_ANOMALIB} if args.aligned else None,
        "defaults_run": args.aligned and args.defaults_run})
    report = {"benchmark": "rd4ad_vs_anomalib",
              "targets": {"parity_abs_diff_max": PARITY_TOL, "parity_metrics": list(PARITY_METRICS)},
              "provenance": prov, "intended_differences": INTENDED_DIFFERENCES, "categories": entries}
    _, md = write_report(report, args.report, render)
    print(f"wrote {sbs.rel(md)} and .json")
    for e in entries:
        if "diff" in e:
            print(f"{_label(e)}: parity {'OK' if e['parity_ok'] else 'FAIL'} "
                  f"{ {k: round(v, 4) for k, v in e['diff'].items() if v is not None} }; "
                  f"wall ratio {e['timing']['wall_ratio_tabad_over_anomalib']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
