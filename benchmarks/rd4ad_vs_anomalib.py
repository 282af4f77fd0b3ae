"""RD4AD side by side: tabad against anomalib 2.7.0's ReverseDistillation.

Same data, same teacher weights file, same initial OCBE/student weights, same batches in
the same order, same schedule (N epochs, batch 16, Adam lr 0.005 betas (0.5, 0.999)),
256×256 inputs (no crop, the paper's setting).

Run with tabad's interpreter (``.venv/bin/python``); anomalib runs in its own environment
through ``benchmarks/anomalib_rd4ad_runner.py``. Shares its helpers with
``padim_vs_anomalib.py`` (imported). Per category:

1. ONE teacher weights file for both (``torch.manual_seed(0);
   torchvision.models.resnet18().state_dict()``, the PaDiM benchmark's file).
2. tabad's initial OCBE + student (``torch.manual_seed(seed)`` then
   ``create_method("rd4ad", ...)``: exactly what ``tabad benchmark`` does before ``fit``)
   are mapped onto anomalib's ``bottleneck``/``decoder`` keys (:func:`anomalib_state`)
   and loaded by the runner, which checks every tensor.
3. The training batches of every epoch, taken from tabad's own
   ``Batches.epoch(epoch, seed, drop_last=True)`` on tabad's training list, are written
   as file names; the runner makes anomalib's training ``DataLoader`` yield exactly those
   batches and checks that it did (``--no-same-order``: anomalib shuffles itself).
4. ``python -m tabad benchmark --method rd4ad --epochs N --resize 256 --crop 256 ...``
   and the runner as subprocesses, one after the other, never in parallel; whole-process
   wall time and peak RSS from ``os.wait4``.
5. Both libraries' raw predictions scored by ``tabad.metrics.evaluate``; per-image score
   Spearman, per-epoch training losses side by side; ``benchmarks/reports/
   rd4ad_vs_anomalib.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import sys
from pathlib import Path

from padim_vs_anomalib import (DEFAULT_SETS, HERE, METRICS, REPO, ANOMALIB_KEYS, child_env, compare_predictions,
                               cpu_model, dataset_recipe, fmt, make_weights, median, mem_total_gb, path_key, rel,
                               run_child, score_with_tabad, sha256_file, tabad_cli_available)

PARITY_TOL = 0.02
PARITY_METRICS = ("image_auroc", "pixel_auroc")

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
    info = {"file": path.name, "file_sha256": sha256_file(path),
            "tabad_state_sha256": state_dict_sha256(model.state_dict()),
            "recipe": f"torch.manual_seed({seed}); create_method('rd4ad', resnet18 backbone)",
            "n_tensors": {k: len(v) for k, v in state.items()},
            "n_parameters": {"ocbe": sum(p.numel() for p in model.ocbe.parameters()),
                             "student": sum(p.numel() for p in model.student.parameters())}}
    return path, info


def make_order(root: Path, category: str, layout: str, epochs: int, batch_size: int, seed: int, out: Path) -> Path:
    """The training batches of every epoch, as tabad's ``Batches.epoch`` draws them (file names)."""
    import torch

    from tabad.datasets.loader import Batches
    from tabad.datasets.readers import read_category

    data = read_category(root, category, layout=layout, check_files=False)
    cat_root = Path(root) / category
    files = [os.path.relpath(s.image_path, cat_root) for s in data.train]
    # Batches of the indices themselves: the exact code path tabad trains with.
    idx = Batches(torch.arange(len(files), dtype=torch.float64).view(-1, 1, 1, 1) * 255.0, batch_size,
                  normalise=False)
    plan = [[[files[int(round(float(i)))] for i in b.flatten()] for b in idx.epoch(e, seed=seed, drop_last=True)]
            for e in range(epochs)]
    out.write_text(json.dumps({"files": files, "batch_size": batch_size, "seed": seed, "epochs": plan}))
    return out


def make_resized_copy(root: Path, category: str, layout: str, size: int, out_root: Path) -> Path:
    """The category as tabad decodes it (S×S uint8, masks nearest), written as lossless PNGs (MVTec layout).

    Both libraries then read the same pixels and masks: resizing an S×S image to S×S is the
    identity in PIL and in torchvision, so only the models differ.
    """
    import numpy as np
    from PIL import Image

    from tabad.datasets.loader import load_split
    from tabad.datasets.readers import read_category
    from tabad.datasets.transforms import Geometry

    data = read_category(root, category, layout=layout)
    cat_out = out_root / category
    shutil.rmtree(cat_out, ignore_errors=True)
    for split, samples in (("train", data.train), ("test", data.test)):
        loaded = load_split(samples, Geometry(size, size))
        for i, s in enumerate(samples):
            img_dir = cat_out / split / s.defect_type
            img_dir.mkdir(parents=True, exist_ok=True)
            stem = Path(s.image_path).stem
            Image.fromarray(loaded.images[i].permute(1, 2, 0).numpy()).save(img_dir / f"{stem}.png")
            if split == "test" and s.label == 1:
                gt_dir = cat_out / "ground_truth" / s.defect_type
                gt_dir.mkdir(parents=True, exist_ok=True)
                mask = loaded.masks[i].numpy().astype(np.uint8) * 255
                Image.fromarray(mask).save(gt_dir / f"{stem}_mask.png")
    return out_root


def first_step_loss(root: Path, category: str, layout: str, weights: Path, args) -> float:
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

    data = read_category(root, category, layout=layout)
    train = load_split(data.train, Geometry(args.size, args.size))
    x = next(train.batches(args.batch_size).epoch(0, seed=args.seed, drop_last=True))
    # before seeding: building it draws random numbers
    backbone = build_backbone("resnet18", str(weights),
                              memory_format="contiguous" if args.aligned else "channels_last")
    torch.manual_seed(args.seed)
    model = create_method("rd4ad", backbone)
    model.ocbe.train()
    model.student.train()
    with torch.no_grad():
        return float(distillation_loss(*model(x)))


def run_tabad(args, root: Path, category: str, layout: str, weights: Path, out: Path, threads: int,
              save: bool, extra: list[str] | None = None) -> tuple[dict, dict, dict, str]:
    """``python -m tabad benchmark --method rd4ad`` as a child: (process, result row, provenance, command)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [args.tabad_python, "-m", "tabad", "benchmark", "--data", str(root), "--categories", category,
           "--method", "rd4ad", "--weights", str(weights), "--seed", str(args.seed), "--layout", layout,
           "--resize", str(args.size), "--crop", str(args.size), "--epochs", str(args.epochs),
           "--device", "cpu", "--panels", "0", "--no-resume", "--out", str(out)] + (["--save-predictions"] if save else [])
    cmd += list(extra or [])
    proc = run_child(cmd, child_env(threads, True), out.with_suffix(".log"), REPO)
    res = json.loads((out / "results.json").read_text())
    row = next(r for r in res["results"] if r["category"] == category and r["method"] == "rd4ad")
    print(f"[{category}] tabad ({threads} thread(s)): {proc['wall_seconds']:.1f} s, {proc['peak_rss_mb']:.0f} MB, "
          f"img AUROC {row.get('image_auroc')}", flush=True)
    return proc, row, res.get("provenance", {}), "PYTHONPATH=src OMP_NUM_THREADS=%d %s" % (threads, _shown(cmd))


def _predictions(folder: Path, category: str) -> dict:
    import numpy as np

    return dict(np.load(next((folder / "predictions").glob(f"{category}__*.npz"))))


def _diff(a: dict, b: dict) -> dict:
    return {k: None if a.get(k) is None or b.get(k) is None else abs(a[k] - b[k]) for k in METRICS}


BORDER = 16  # the blur's radius (σ=4, truncate 4): where the two libraries' paddings differ


def border_free_auroc(a: dict, t: dict, margin: int = BORDER) -> dict:
    """Image AUROC of both libraries with the score taken as the map's maximum away from the border.

    tabad pads the σ=4 blur as scipy does (edge repeated, as the official code), anomalib as torch
    'reflect'; the maps differ only within ``margin`` pixels of the border. When the maxima sit at
    the border (common with a random teacher) that alone reorders near-tied image scores.
    """
    import numpy as np
    from sklearn.metrics import roc_auc_score

    pos = {k: i for i, k in enumerate(path_key(p) for p in t["files"])}
    order = np.array([pos[path_key(p)] for p in a["image_paths"]])
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


# ----------------------------------------------------------------------------- main work
def run_category(args, root: Path, category: str, layout: str, weights: Path, init: Path, work: Path,
                 inputs: str = "raw") -> dict:
    import numpy as np

    cat_work = work / f"{root.name}__{category}__{inputs}"
    if inputs == "resized":  # the same pixels for both libraries (see make_resized_copy)
        root = make_resized_copy(root, category, layout, args.size, cat_work / "data")
        layout = "mvtec"
    entry: dict = {"category": category, "inputs": inputs, "data": rel(root), "layout": layout,
                   "work": rel(cat_work), "runs": {"anomalib": [], "tabad": []}, "commands": {}}
    cat_work.mkdir(parents=True, exist_ok=True)
    order = None
    if args.same_order:
        order = make_order(root, category, layout, args.epochs, args.batch_size, args.seed,
                           cat_work / "train_order.json")
    for rep in range(args.repeats):
        if args.only == "both":
            proc, row, prov, entry["commands"]["tabad"] = run_tabad(
                args, root, category, layout, weights, cat_work / f"tabad_r{rep}", args.threads, rep == 0,
                ALIGNED_TABAD if args.aligned else None)
            entry["runs"]["tabad"].append({"process": proc, "result": row, "provenance": prov})
        a_out = cat_work / f"anomalib_r{rep}"
        shutil.rmtree(a_out, ignore_errors=True)
        a_cmd = [args.anomalib_python, str(HERE / "anomalib_rd4ad_runner.py"), "--data", str(root), "--category",
                 category, "--layout", layout, "--weights", str(weights), "--init", str(init), "--epochs",
                 str(args.epochs), "--size", str(args.size), "--batch-size", str(args.batch_size), "--lr",
                 str(args.lr), "--betas", args.betas, "--threads", str(args.threads), "--seed", str(args.seed),
                 "--out", str(a_out)] + (["--order", str(order)] if order is not None else [])
        a_cmd += ALIGNED_ANOMALIB if args.aligned else []
        entry["commands"]["anomalib"] = "OMP_NUM_THREADS=%d %s" % (args.threads, _shown(a_cmd))
        proc = run_child(a_cmd, child_env(args.threads, False), cat_work / f"anomalib_r{rep}.log", REPO)
        aj = json.loads((a_out / "anomalib.json").read_text())
        shutil.rmtree(a_out / "engine", ignore_errors=True)  # its checkpoint
        entry["runs"]["anomalib"].append({"process": proc, "result": aj})
        print(f"[{category}] anomalib: {proc['wall_seconds']:.1f} s, {proc['peak_rss_mb']:.0f} MB, "
              f"img AUROC {aj['metrics_anomalib_evaluator'].get('image_AUROC')}", flush=True)

    # ---------------- metrics (first run's predictions; repeats only refine timings)
    a0 = entry["runs"]["anomalib"][0]["result"]
    ap = dict(np.load(cat_work / "anomalib_r0" / "predictions.npz"))
    entry["anomalib"] = {
        "metrics_tabad_code": score_with_tabad(ap["labels"], ap["scores"], ap["masks"], ap["maps"]),
        "metrics_anomalib_evaluator": {k: a0["metrics_anomalib_evaluator"].get(v) for k, v in ANOMALIB_KEYS.items()},
        "train_loss_per_epoch": a0["train_loss_per_epoch"], "train_batches_per_epoch": a0["train_batches_per_epoch"],
        "first_step_loss": a0["train_loss_per_step"][0][0] if a0["train_loss_per_step"] else None,
        "n_train": a0["n_train"], "n_test": a0["n_test"], "init": a0["init"], "same_order": a0["same_order"],
        "betas": a0["betas"],
    }
    if entry["runs"]["tabad"]:
        t0 = entry["runs"]["tabad"][0]["result"]
        tp = _predictions(cat_work / "tabad_r0", category)
        t_metrics = score_with_tabad(tp["labels"], tp["scores"], tp["masks"], tp["maps"])
        entry["tabad"] = {"metrics_tabad_code": t_metrics, "config": t0.get("config"),
                          "n_train": t0.get("n_train"), "n_test": t0.get("n_test"),
                          "train_loss_per_epoch": [e["loss"] for e in t0.get("train_log", [])],
                          "first_step_loss": first_step_loss(root, category, layout, weights, args)}
        entry["agreement"] = compare_predictions(ap, tp)
        entry["border_free"] = border_free_auroc(ap, tp)
        entry["diff"] = _diff(t_metrics, entry["anomalib"]["metrics_tabad_code"])
        tl, al = entry["tabad"]["train_loss_per_epoch"], entry["anomalib"]["train_loss_per_epoch"]
        entry["loss_rel_diff_max"] = (max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(tl, al))
                                      if tl and len(tl) == len(al) else None)
        entry["parity_ok"] = all(entry["diff"][k] is not None and entry["diff"][k] <= PARITY_TOL
                                 for k in PARITY_METRICS)
        same = entry["agreement"].get("anomalib_maps_on_tabad_masks")
        if same is not None:
            entry["diff_same_masks"] = _diff(t_metrics, same)
        variants = []
        if args.aligned and args.defaults_run:
            # tabad as users run it (channels_last, the official scipy border) against the same anomalib run.
            variants.append(("defaults", args.threads, None))
        if args.control_threads:
            # Noise floor: tabad against itself with another thread count (only float rounding differs).
            variants.append(("control", args.control_threads, ALIGNED_TABAD if args.aligned else None))
        for name, threads, extra in variants:
            folder = cat_work / f"tabad_{name}"
            proc, row, _, entry["commands"][f"tabad_{name}"] = run_tabad(
                args, root, category, layout, weights, folder, threads, True, extra)
            cp = _predictions(folder, category)
            c_metrics = score_with_tabad(cp["labels"], cp["scores"], cp["masks"], cp["maps"])
            as_a = {"image_paths": cp["files"], "scores": cp["scores"], "maps": cp["maps"], "masks": cp["masks"],
                    "labels": cp["labels"]}
            entry[name] = {"threads": threads, "options": extra or [], "metrics_tabad_code": c_metrics,
                           "diff_vs_tabad": _diff(t_metrics, c_metrics),
                           "diff_vs_anomalib": _diff(c_metrics, entry["anomalib"]["metrics_tabad_code"]),
                           "train_loss_per_epoch": [e["loss"] for e in row.get("train_log", [])],
                           "image_score_spearman_vs_tabad": compare_predictions(as_a, tp)["image_score_spearman"],
                           "image_score_spearman_vs_anomalib": compare_predictions(ap, cp)["image_score_spearman"],
                           "wall_seconds": proc["wall_seconds"], "peak_rss_mb": proc["peak_rss_mb"],
                           "fit_seconds": row.get("fit_seconds"),
                           "predict_ms_per_image": row.get("predict_ms_per_image")}

    # ---------------- timings (median over repeats)
    def tim(side, getter):
        return median([getter(r) for r in entry["runs"][side]])

    timing = {"anomalib": {
        "wall_seconds": tim("anomalib", lambda r: r["process"]["wall_seconds"]),
        "cpu_seconds": tim("anomalib", lambda r: r["process"]["cpu_seconds"]),
        "peak_rss_mb": tim("anomalib", lambda r: r["process"]["peak_rss_mb"]),
        "import_seconds": tim("anomalib", lambda r: r["result"]["timings"]["import_seconds"]),
        "fit_seconds": tim("anomalib", lambda r: r["result"]["timings"]["fit_seconds"]),
        "fit_validation_pass_seconds": tim("anomalib", lambda r: r["result"]["timings"]["fit_validation_pass_seconds"]),
        "predict_ms_per_image": tim("anomalib", lambda r: r["result"]["timings"]["predict_ms_per_image"]),
    }}
    if entry["runs"]["tabad"]:
        timing["tabad"] = {
            "wall_seconds": tim("tabad", lambda r: r["process"]["wall_seconds"]),
            "cpu_seconds": tim("tabad", lambda r: r["process"]["cpu_seconds"]),
            "peak_rss_mb": tim("tabad", lambda r: r["process"]["peak_rss_mb"]),
            "fit_seconds": tim("tabad", lambda r: r["result"].get("fit_seconds")),
            "predict_ms_per_image": tim("tabad", lambda r: r["result"].get("predict_ms_per_image")),
        }
        timing["wall_ratio_tabad_over_anomalib"] = timing["tabad"]["wall_seconds"] / timing["anomalib"]["wall_seconds"]
        timing["cpu_ratio_tabad_over_anomalib"] = timing["tabad"]["cpu_seconds"] / timing["anomalib"]["cpu_seconds"]
    entry["timing"] = timing
    return entry


def _shown(cmd: list[str]) -> str:
    return shlex.join([rel(c) if os.path.isabs(c) else c for c in cmd])


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


def write_markdown(report: dict, path: Path) -> None:
    prov = report["provenance"]
    L = ["# RD4AD: tabad vs anomalib 2.7.0 (ReverseDistillation)", ""]
    L.append(f"Generated by `benchmarks/rd4ad_vs_anomalib.py` on {prov['date']} ({prov['machine']['cpu_model']}, "
             f"{prov['machine']['nproc']} CPUs, {prov['machine']['mem_total_gb']} GB RAM; {prov['threads']} thread(s) "
             f"per library, runs sequential; timings are the median of {prov['repeats']} run(s)).")
    L.append("")
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
    has_tabad = any("tabad" in e for e in report["categories"])
    if has_tabad:
        L.append("**Summary.**")
        L.append("")
        for e in report["categories"]:
            if "diff" not in e:
                continue
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
            L.append(f"- {_label(e)}: " + "; ".join(parts) + ".")
        L.append("")
    L.append("## Accuracy (scored by `tabad.metrics`)")
    L.append("")
    L.append("| category | metric | tabad | anomalib | \\|Δ\\| | anomalib maps on tabad's masks (\\|Δ\\|) "
             "| anomalib's own Evaluator |")
    L.append("|---|---|---|---|---|---|---|")
    for e in report["categories"]:
        for k in METRICS:
            a = e["anomalib"]["metrics_tabad_code"].get(k)
            own = e["anomalib"]["metrics_anomalib_evaluator"].get(k)
            if "tabad" not in e:
                L.append(f"| {_label(e)} | {k} | – | {fmt(a)} | – | – | {fmt(own)} |")
                continue
            t, d = e["tabad"]["metrics_tabad_code"].get(k), e["diff"].get(k)
            flag = " ✗" if k in PARITY_METRICS and d is not None and d > PARITY_TOL else ""
            same = e["agreement"].get("anomalib_maps_on_tabad_masks")
            same_txt = "same masks" if same is None else f"{fmt(same.get(k))} ({fmt(e['diff_same_masks'].get(k))})"
            L.append(f"| {_label(e)} | {k} | {fmt(t)} | {fmt(a)} | {fmt(d)}{flag} | {same_txt} | {fmt(own)} |")
    L.append("")
    L.append("anomalib's own Evaluator scores its PostProcessor's outputs: normalised with the threshold and min/max "
             "learned in its validation pass and clipped to [0, 1], so scores tied at a clip bound can move its "
             "AUROC away from the raw outputs' (both other columns score the raw outputs).")
    L.append("")
    if not prov.get("aligned") and any("border_free" in e for e in report["categories"]):
        L.append(f"Image AUROC with the score taken as the map's maximum at least {BORDER} px from the border, where "
                 "the two libraries' blur paddings do not reach (see 'Map smoothing' below):")
        L.append("")
        L.append("| category | tabad | anomalib | \\|Δ\\| | tabad maxima within the border band | max \\|map Δ\\| "
                 "interior / border band |")
        L.append("|---|---|---|---|---|---|")
        for e in report["categories"]:
            b = e.get("border_free")
            if b:
                L.append(f"| {_label(e)} | {fmt(b['tabad'])} | {fmt(b['anomalib'])} | {fmt(b['diff'])} | "
                         f"{b['share_of_tabad_maxima_near_border']:.0%} | {b['max_abs_map_diff_interior']:.2e} / "
                         f"{b['max_abs_map_diff_border']:.2e} |")
        L.append("")
    defaults = [e for e in report["categories"] if "defaults" in e]
    if defaults:
        _section(L, "tabad with its defaults against the same anomalib run",
                 "tabad as users run it: channels_last tensors (oneDNN's fast CPU kernels) and the official "
                 "code's edge-repeating blur border. Against the aligned run above only float rounding (another "
                 "kernel order) and the border band differ; Adam turns the rounding into weight drift over the "
                 "epochs, so this is the spread any two correct implementations show, not a difference in the "
                 "method.")
        L.append("| category | metric | tabad defaults | anomalib | \\|Δ\\| | \\|Δ\\| vs aligned tabad |")
        L.append("|---|---|---|---|---|---|")
        for e in defaults:
            v = e["defaults"]
            for k in METRICS:
                L.append(f"| {_label(e)} | {k} | {fmt(v['metrics_tabad_code'].get(k))} | "
                         f"{fmt(e['anomalib']['metrics_tabad_code'].get(k))} | {fmt(v['diff_vs_anomalib'].get(k))} | "
                         f"{fmt(v['diff_vs_tabad'].get(k))} |")
        L.append("")
        L.append("| category | image-score Spearman vs anomalib | mean loss per epoch | wall s | fit s | "
                 "predict ms/img | peak RSS MB |")
        L.append("|---|---|---|---|---|---|---|")
        for e in defaults:
            v = e["defaults"]
            L.append(f"| {_label(e)} | {fmt(v['image_score_spearman_vs_anomalib'])} | "
                     f"{', '.join(f'{x:.4f}' for x in v['train_loss_per_epoch'])} | {fmt(v['wall_seconds'], 1)} | "
                     f"{fmt(v['fit_seconds'], 1)} | {fmt(v['predict_ms_per_image'], 0)} | "
                     f"{fmt(v['peak_rss_mb'], 0)} |")
        L.append("")
    if has_tabad:
        L.append("## Per-image agreement and training loss")
        L.append("")
        L.append("Loss on the first training batch before any step (tabad computed in-process, anomalib's first "
                 "logged step): equal values mean the same initial weights, the same pixels, the same teacher and "
                 "the same loss. Mean training loss per epoch follows.")
        L.append("")
        L.append("| category | image-score Spearman | median per-image map Pearson | min map Pearson | "
                 "GT-mask pixels differing | first-batch loss tabad / anomalib | mean loss per epoch, tabad | "
                 "anomalib |")
        L.append("|---|---|---|---|---|---|---|---|")
        for e in report["categories"]:
            g = e.get("agreement") or {}
            if not g.get("aligned"):
                continue
            tl = ", ".join(f"{x:.4f}" for x in e["tabad"]["train_loss_per_epoch"])
            al = ", ".join(f"{x:.4f}" for x in e["anomalib"]["train_loss_per_epoch"])
            L.append(f"| {_label(e)} | {fmt(g['image_score_spearman'])} | {fmt(g['map_pearson_median'])} | "
                     f"{fmt(g['map_pearson_min'])} | {g['gt_mask_pixels_differing']} / {g['gt_mask_pixels_total']} | "
                     f"{fmt(e['tabad']['first_step_loss'], 6)} / {fmt(e['anomalib']['first_step_loss'], 6)} | "
                     f"{tl} | {al} |")
        L.append("")
    controls = [e for e in report["categories"] if "control" in e]
    if controls:
        _section(L, "Noise floor: tabad against itself with another thread count",
                 "The same tabad run with a different number of threads changes nothing but the order of float "
                 "additions. Adam's first steps move every weight by about ±lr whatever the gradient's size, so "
                 "rounding-level differences grow over the epochs; the spread below is what any two "
                 "implementations of the same computation can be expected to differ by.")
        L.append("| category | threads | \\|Δ\\| image AUROC | \\|Δ\\| pixel AUROC | \\|Δ\\| AUPRO | image-score Spearman "
                 "| mean loss per epoch |")
        L.append("|---|---|---|---|---|---|---|")
        for e in controls:
            c = e["control"]
            d = c["diff_vs_tabad"]
            L.append(f"| {_label(e)} | {prov['threads']} vs {c['threads']} | {fmt(d['image_auroc'])} | "
                     f"{fmt(d['pixel_auroc'])} | {fmt(d['aupro'])} | {fmt(c['image_score_spearman_vs_tabad'])} | "
                     f"{', '.join(f'{x:.4f}' for x in c['train_loss_per_epoch'])} |")
        L.append("")
    L.append("## Speed and memory (whole process, incl. imports, data loading, training and testing)")
    L.append("")
    L.append("| category | n train / test | tabad wall s | anomalib wall s | ratio | CPU s tabad / anomalib | "
             "tabad fit s | anomalib fit s (val pass) | tabad predict ms/img | anomalib test ms/img | "
             "tabad peak RSS MB | anomalib peak RSS MB |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for e in report["categories"]:
        ta, tt = e["timing"]["anomalib"], e["timing"].get("tabad", {})
        L.append(f"| {_label(e)} | {e['anomalib']['n_train']} / {e['anomalib']['n_test']} | "
                 f"{fmt(tt.get('wall_seconds'), 1)} | {fmt(ta['wall_seconds'], 1)} | "
                 f"{fmt(e['timing'].get('wall_ratio_tabad_over_anomalib'), 2)} | {fmt(tt.get('cpu_seconds'), 1)} / "
                 f"{fmt(ta['cpu_seconds'], 1)} | {fmt(tt.get('fit_seconds'), 1)} | {fmt(ta['fit_seconds'], 1)} "
                 f"({fmt(ta['fit_validation_pass_seconds'], 1)}) | {fmt(tt.get('predict_ms_per_image'), 0)} | "
                 f"{fmt(ta['predict_ms_per_image'], 0)} | {fmt(tt.get('peak_rss_mb'), 0)} | "
                 f"{fmt(ta['peak_rss_mb'], 0)} |")
    L.append("")
    loads = [r["process"].get(k) for e in report["categories"] for runs in e["runs"].values() for r in runs
             for k in ("loadavg1_before", "loadavg1_after")]
    loads = [x for x in loads if x is not None]
    if loads:
        L.append(f"1-minute load average around the runs: {min(loads):.1f}–{max(loads):.1f} on "
                 f"{prov['machine']['nproc']} CPUs. Above the CPU count other processes competed and wall times are "
                 f"inflated; compare the libraries within a category only, and rerun on an idle machine "
                 f"(`--repeats 3`) for timings worth quoting.")
        L.append("")
    L.append("## Intended differences between the two runs")
    L.append("")
    L.extend(f"- {line}" for line in report["intended_differences"])
    L.append("")
    L.append("## Provenance")
    L.append("")
    L.append(f"- teacher weights: `{prov['weights']['file']}` sha256 `{prov['weights']['sha256']}` "
             f"({prov['weights']['recipe']})")
    L.append(f"- initial OCBE/student: {json.dumps(prov['init'])}")
    L.append(f"- key mapping tabad → anomalib: OCBE {json.dumps(OCBE_KEYS)}; student {json.dumps(STUDENT_KEYS)}")
    L.append(f"- data root: `{prov['data_root']}`; sets: {prov['sets']}")
    for root, recipe in (prov.get("data_recipes") or {}).items():
        L.append(f"- `{root}` is procedural, regenerated by {recipe}")
    L.append(f"- tabad stack: {json.dumps(prov.get('tabad_stack'))}")
    L.append(f"- anomalib stack: {json.dumps(prov.get('anomalib_stack'))}")
    L.append(f"- machine: {json.dumps(prov['machine'])}")
    L.append(f"- driver command: `{prov['command']}`")
    for e in report["categories"]:
        for side, cmd in e["commands"].items():
            L.append(f"- {_label(e)} / {side}: `{cmd}`")
    L.append("")
    path.write_text("\n".join(L) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(REPO / ".." / "shared" / "data"),
                   help="folder holding the default sets (default: ../shared/data relative to the repo)")
    p.add_argument("--sets", default=",".join(DEFAULT_SETS),
                   help="comma-separated <folder under --data>/<category>/<layout> (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=1, help="training epochs for both libraries (paper: 200)")
    p.add_argument("--repeats", type=int, default=1, help="runs per side (timings: median; metrics: first run)")
    p.add_argument("--threads", type=int, default=2)
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
    p.add_argument("--only", choices=["both", "anomalib"], default="both")
    p.add_argument("--anomalib-python", default=str(REPO / ".anomalib-venv" / "bin" / "python"))
    p.add_argument("--tabad-python", default=sys.executable)
    p.add_argument("--work", default=str(HERE / ".work" / "rd4ad_vs_anomalib"))
    p.add_argument("--report", default=str(HERE / "reports" / "rd4ad_vs_anomalib"),
                   help="report path without extension (.md and .json are written)")
    p.add_argument("--render-only", action="store_true",
                   help="rewrite the .md (and the notes in the .json) from an existing report .json; runs nothing")
    args = p.parse_args(argv)

    if args.render_only:
        out = Path(args.report)
        report = json.loads(out.with_suffix(".json").read_text())
        report["intended_differences"] = INTENDED_DIFFERENCES
        prov = report["provenance"]
        roots = {REPO / s.split(" (")[0].rsplit("/", 1)[0] for s in prov["sets"]}
        prov["data_recipes"] = {rel(r): dataset_recipe(r) for r in roots if dataset_recipe(r)}
        for e in report["categories"]:
            if "tabad" in e and "border_free" not in e:  # a report of an older version: from its predictions
                import numpy as np

                cat_work = REPO / e.get("work", str(Path(e["data"]).parent))
                e["border_free"] = border_free_auroc(dict(np.load(cat_work / "anomalib_r0" / "predictions.npz")),
                                                     _predictions(cat_work / "tabad_r0", e["category"]))
        out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        write_markdown(report, out.with_suffix(".md"))
        print(f"wrote {rel(out.with_suffix('.md'))}")
        return 0
    if args.control_threads is None:  # aligned: the defaults run already shows what rounding does
        args.control_threads = 0 if args.aligned else (2 if args.threads == 1 else 1)
    if str(REPO / "src") not in sys.path:
        sys.path.insert(0, str(REPO / "src"))
    from tabad.methods.rd4ad import Rd4adConfig

    defaults = Rd4adConfig()
    if (args.batch_size, args.lr, args.betas) != (defaults.batch_size, defaults.lr,
                                                  ",".join(str(b) for b in defaults.betas)):
        raise SystemExit("--batch-size/--lr/--betas must equal tabad's RD4AD defaults (the CLI run uses those)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not Path(args.anomalib_python).exists():
        raise SystemExit(f"anomalib interpreter not found: {args.anomalib_python} (see benchmarks/README.md)")
    if args.only == "both" and not tabad_cli_available(args.tabad_python):
        raise SystemExit("`python -m tabad benchmark` is not available; use --only anomalib")

    weights = make_weights(work)
    init, init_info = make_init(weights, work, args.seed)

    targets = []
    for s in [s.strip() for s in args.sets.split(",") if s.strip()]:
        folder, category, layout = s.rsplit("/", 2)
        root = Path(args.data) / folder
        if not (root / category).is_dir():
            print(f"skipping {s}: {rel(root / category)} not found", file=sys.stderr)
            continue
        targets.append((root, category, layout))
    if not targets:
        raise SystemExit("no data found")
    modes = ["raw", "resized"] if args.inputs == "both" else [args.inputs]
    entries = [run_category(args, root, category, layout, weights, init, work, inputs)
               for root, category, layout in targets for inputs in modes]

    tabad_stack = None
    if entries[0]["runs"]["tabad"]:
        env = entries[0]["runs"]["tabad"][0]["provenance"].get("environment", {})
        tabad_stack = {k: env.get(k) for k in ("tabad_version", "git_commit", "python", "torch", "torchvision", "numpy")}
    shown_argv = [rel(a) if os.path.isabs(a) else a for a in (argv if argv is not None else sys.argv[1:])]
    report = {
        "benchmark": "rd4ad_vs_anomalib",
        "targets": {"parity_abs_diff_max": PARITY_TOL, "parity_metrics": list(PARITY_METRICS)},
        "provenance": {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "weights": {"file": weights.name, "sha256": sha256_file(weights),
                        "recipe": "torch.manual_seed(0); torchvision.models.resnet18().state_dict()"},
            "init": init_info,
            "init_loaded": all(e["anomalib"]["init"] is not None for e in entries),
            "same_order": args.same_order, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
            "betas": args.betas, "size": args.size, "seed": args.seed, "threads": args.threads,
            "repeats": args.repeats, "inputs": modes, "control_threads": args.control_threads, "aligned": args.aligned,
            "aligned_options": {"tabad": ALIGNED_TABAD, "anomalib": ALIGNED_ANOMALIB} if args.aligned else None,
            "defaults_run": args.aligned and args.defaults_run, "data_root": rel(args.data), "sets": [f"{rel(r)}/{c} ({l})" for r, c, l in targets],
            "data_recipes": {rel(r): dataset_recipe(r) for r in {r for r, _, _ in targets} if dataset_recipe(r)},
            "tabad_stack": tabad_stack,
            "anomalib_stack": entries[0]["runs"]["anomalib"][0]["result"]["versions"],
            "machine": {"nproc": os.cpu_count(), "cpu_model": cpu_model(), "mem_total_gb": mem_total_gb(),
                        "platform": platform.platform()},
            "command": "python benchmarks/rd4ad_vs_anomalib.py " + shlex.join(shown_argv),
        },
        "intended_differences": INTENDED_DIFFERENCES,
        "categories": [{k: v for k, v in e.items() if k != "runs"} | {
            "runs": {side: [{"process": r["process"],
                             **({"timings": r["result"]["timings"]} if side == "anomalib" else
                                {"fit_seconds": r["result"].get("fit_seconds"),
                                 "predict_ms_per_image": r["result"].get("predict_ms_per_image")})}
                            for r in runs] for side, runs in e["runs"].items()}} for e in entries],
    }
    out = Path(args.report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, out.with_suffix(".md"))
    print(f"wrote {rel(out.with_suffix('.md'))} and .json")
    for e in entries:
        if "diff" in e:
            print(f"{_label(e)}: parity {'OK' if e['parity_ok'] else 'FAIL'} "
                  f"{ {k: round(v, 4) for k, v in e['diff'].items() if v is not None} }; "
                  f"wall ratio {e['timing']['wall_ratio_tabad_over_anomalib']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
