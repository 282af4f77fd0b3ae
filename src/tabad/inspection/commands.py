"""The inspection sub-commands of ``tabad``: fit, predict (and export, serve).

Argument parsing only; each command imports the library when it runs, so
``tabad --help`` stays instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _size(value: str):
    from tabad.config import parse_size

    return parse_size(value)  # S, (H, W) or "none"


def add_commands(sub) -> None:
    add_fit(sub)
    add_predict(sub)


# --------------------------------------------------------------------------- fit


def add_fit(sub) -> None:
    from tabad.inspection.defaults import DEFAULT_BACKBONE, DEFAULT_METHOD, DEFAULT_WEIGHTS

    p = sub.add_parser(
        "fit",
        help="train on images of good parts and write one model file with calibrated thresholds",
        description="Fit an anomaly-detection model on good parts only. A seeded share of the images is held "
                    "out; the thresholds are set on it so that about --fpr of good parts are flagged "
                    "(no defective images needed). The model file holds the method, its backbone, the input "
                    "geometry and the thresholds; use it with `tabad predict`, `tabad export`, `tabad serve`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"""\
defaults: --method {DEFAULT_METHOD} --backbone {DEFAULT_BACKBONE} --weights {DEFAULT_WEIGHTS} (ImageNet weights
that ship with tabad: no download), the method's paper geometry (PatchCore: resize 256, crop 224),
20 % of the images held out, --fpr 0.01.

thresholds:
  image   a part is anomalous when its score is above the threshold; the threshold is the smallest
          value that flags at most --fpr of the held-out good parts (with 20 held-out images and
          --fpr 0.01 that is the highest good score: hold out more images for finer rates)
  pixel   defect masks use a pixel threshold chosen the same way on each held-out image's highest
          map value (so at most --fpr of good parts show any defect pixel), or at --pixel-fpr over
          all held-out pixels
  labelled validation: --validation CATEGORY (its test split, good and defective images) chooses
          the image threshold by --threshold f1 (F1-max) or --threshold recall --recall 0.95
scores are reported raw and normalised: normalised 0.5 is the threshold, 0 the lowest good score.

examples:
  tabad make-data data --categories gear --seed 0
  tabad fit --data data/gear --out gear.tabad
  tabad fit --data photos/good/ --method padim --backbone resnet18 --weights random --out m.tabad
""",
    )
    p.add_argument("--data", required=True, type=Path,
                   help="a folder of good images (searched recursively) or a category folder in any supported "
                        "layout (its train split is used)")
    p.add_argument("--out", required=True, type=Path, help="model file to write, e.g. model.tabad")
    p.add_argument("--method", default=DEFAULT_METHOD, help=f"default {DEFAULT_METHOD}")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"default {DEFAULT_BACKBONE}")
    p.add_argument("--weights", default=DEFAULT_WEIGHTS,
                   help=f"random, random:SEED, imagenet or a state-dict path (default {DEFAULT_WEIGHTS})")
    p.add_argument("--fpr", type=float, default=0.01, help="target false-positive rate on good parts (default 0.01)")
    p.add_argument("--pixel-fpr", type=float, default=None, help="per-pixel target rate for the mask threshold")
    p.add_argument("--calibration-share", type=float, default=0.2,
                   help="share of the good images held out to set the thresholds (default 0.2)")
    p.add_argument("--validation", type=Path, default=None,
                   help="labelled category whose test split sets the image threshold (--threshold f1|recall)")
    p.add_argument("--threshold", choices=["f1", "recall"], default="f1", help="rule with --validation")
    p.add_argument("--recall", type=float, default=None, help="target recall with --threshold recall")
    p.add_argument("--resize", type=_size, default=None, help="S or HxW (default: the method's paper geometry)")
    p.add_argument("--crop", type=_size, default=None, help="C, HxW or none (default: the paper geometry)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="method option, e.g. --set coreset_ratio=0.01 (repeatable)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs of a method that trains")
    p.add_argument("--layout", default="auto", help="dataset layout of --data (default auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-bad", action="store_true", help="leave unreadable images out (listed in the model file)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=cmd_fit)


def cmd_fit(args) -> int:
    from tabad.config import parse_options
    from tabad.inspection.fit import FitConfig, fit_model

    options = parse_options(args.set)
    if args.epochs is not None:
        options["epochs"] = args.epochs
    cfg = FitConfig(data=args.data, out=args.out, method=args.method, backbone=args.backbone, weights=args.weights,
                    method_options=options, resize=None if args.resize == "none" else args.resize,
                    crop="paper" if args.crop is None else (None if args.crop == "none" else args.crop),
                    calibration_share=args.calibration_share, fpr=args.fpr, pixel_fpr=args.pixel_fpr,
                    validation=args.validation, threshold=args.threshold, recall=args.recall, layout=args.layout,
                    seed=args.seed, skip_bad=args.skip_bad, device=args.device)
    fit_model(cfg)
    return 0


# --------------------------------------------------------------------------- predict


def add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="score new images with a fitted model: verdicts, heat maps, defect masks",
        description="Score images (files or folders, searched recursively; any size: they are resized as in "
                    "training) with a model file from `tabad fit`, or an ONNX file from `tabad export`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""\
writes to --out:
  predictions.csv / predictions.jsonl   path, score, normalised_score (0.5 = threshold), verdict,
                                        defect_area_px, defect_area_pct
  overlays/<name>.png                   image | heat map | defect contour
  masks/<name>.png                      binary defect mask
a rerun with the same --out keeps what was written and scores only the rest.

examples:
  tabad predict gear.tabad data/gear/test --out runs/gear_predictions
  tabad predict gear.onnx new_parts/ --out runs/onnx_predictions
""",
    )
    p.add_argument("model", type=Path, help="model file (.tabad from `tabad fit`, or .onnx from `tabad export`)")
    p.add_argument("images", nargs="+", type=Path, help="image files and/or folders")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable files and list them, instead of stopping")
    p.add_argument("--no-overlays", action="store_true", help="do not write overlay PNGs")
    p.add_argument("--no-masks", action="store_true", help="do not write mask PNGs")
    p.add_argument("--no-resume", action="store_true", help="score every image again")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    from tabad.inspection.predict import PredictConfig, run_predict

    cfg = PredictConfig(model=args.model, inputs=args.images, out=args.out, batch_size=args.batch_size,
                        skip_bad=args.skip_bad, overlays=not args.no_overlays, masks=not args.no_masks,
                        device=args.device, resume=not args.no_resume)
    run_predict(cfg)
    return 0
