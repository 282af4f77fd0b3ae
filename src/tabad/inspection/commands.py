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
    add_export(sub)
    add_serve(sub)


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


# --------------------------------------------------------------------------- export


def add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a fitted model as one ONNX file: uint8 images in, verdicts, maps and masks out",
        description="Export a model file from `tabad fit` to ONNX. The graph holds everything from the camera "
                    "image to the verdict: resize (bilinear, antialiased) and crop, normalisation, the method "
                    "(PatchCore's memory bank included), map smoothing and the thresholds. The model file's "
                    "header (method, config, backbone weights sha256, geometry, thresholds, the source file's "
                    "sha256) is stored as JSON in the ONNX metadata under the key 'tabad'.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""\
graph:
  input   images  uint8 (N, H, W, 3) RGB; any N, H and W (one size per batch)
  outputs score (N,) float32, normalised_score (N,) float32 (0.5 = threshold), label (N,) int64
          (1 = anomalous), anomaly_map (N, h, w) float32, mask (N, h, w) uint8; (h, w) = the model's input size
exportable: padim, patchcore, rd4ad, simplenet (models with thresholds, i.e. from `tabad fit`).
Every export is checked: ONNX Runtime and PyTorch are run on synthetic images and must agree to float rounding.

examples:
  tabad export gear.tabad --out gear.onnx
  tabad predict gear.onnx new_parts/ --out runs/onnx_predictions
""",
    )
    p.add_argument("model", type=Path, help="model file from `tabad fit`")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format (default onnx)")
    p.add_argument("--out", required=True, type=Path, help="file to write, e.g. model.onnx")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from tabad.inspection.export import export_onnx

    export_onnx(args.model, args.out, check=not args.no_check)
    return 0


# --------------------------------------------------------------------------- serve


def add_serve(sub) -> None:
    from tabad.inspection.defaults import (SERVE_HOST, SERVE_MAX_BATCH, SERVE_MAX_MEGAPIXELS, SERVE_MAX_QUEUE,
                                           SERVE_MAX_UPLOAD_MB, SERVE_PORT)

    p = sub.add_parser(
        "serve",
        help="serve a fitted model over HTTP: POST /predict, a web page to upload images, /health, /metadata",
        description="Serve a model file from `tabad fit` (or an ONNX file from `tabad export`) over HTTP. "
                    f"Listens on {SERVE_HOST} (this machine only) unless --host says otherwise. One inference "
                    "runs at a time in a worker thread; concurrent requests wait in a queue and images that "
                    "wait together are scored as one batch. Needs the serve extra: pip install 'tabad[serve]'.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""\
endpoints:
  POST /predict          one image: multipart field "file", or the raw body with Content-Type image/*
                         -> JSON: score, normalised_score (0.5 = threshold), verdict (anomalous|normal),
                            defect_area_px, defect_area_pct, threshold, pixel_threshold, input_size,
                            image_size, filename, model_sha256, elapsed_ms
       ?overlay=true     adds overlay_png: base64 PNG of image | heat map | defect contour
  GET  /health           {"status": "ok", "queued": ..., "served": ..., "failed": ...}
  GET  /metadata         method, backbone, weights sha256, thresholds, training date, input size, versions
  GET  /                 a web page (offline: no external assets) to upload an image and see the overlay
  GET  /?example=1       the page showing the result on --example IMAGE (scored at start-up; JSON: /example)
errors (JSON {"detail": "..."}): 400 corrupt image or malformed form; 413 upload over --max-upload-mb
  or image over --max-megapixels; 415 not an image / unsupported Content-Type; 422 no file;
  503 queue full (retry after 1 s).

examples:
  tabad serve gear.tabad --port 8000
  curl -F file=@data/gear/test/good/000.png http://127.0.0.1:8000/predict
  curl --data-binary @part.png -H 'Content-Type: image/png' 'http://127.0.0.1:8000/predict?overlay=true'
  curl -s -F file=@part.png 'http://127.0.0.1:8000/predict?overlay=true' \\
      | python -c "import sys,json,base64; open('overlay.png','wb').write(base64.b64decode(json.load(sys.stdin)['overlay_png']))"
  curl http://127.0.0.1:8000/metadata
  tabad serve gear.onnx --example data/gear/test/good/000.png    # then open http://127.0.0.1:8000/?example=1
  tabad serve gear.tabad --host 0.0.0.0 --port 8080               # reachable from other machines (no auth!)
""",
    )
    p.add_argument("model", type=Path, help="model file (.tabad from `tabad fit`, or .onnx from `tabad export`)")
    p.add_argument("--host", default=SERVE_HOST,
                   help=f"address to listen on (default {SERVE_HOST}: this machine only; 0.0.0.0: all interfaces)")
    p.add_argument("--port", type=int, default=SERVE_PORT, help=f"default {SERVE_PORT}; 0 picks a free port")
    p.add_argument("--max-upload-mb", type=float, default=SERVE_MAX_UPLOAD_MB,
                   help=f"larger uploads are refused with 413 (default {SERVE_MAX_UPLOAD_MB:g})")
    p.add_argument("--max-megapixels", type=float, default=SERVE_MAX_MEGAPIXELS,
                   help=f"larger images are refused with 413 before decoding (default {SERVE_MAX_MEGAPIXELS:g})")
    p.add_argument("--max-queue", type=int, default=SERVE_MAX_QUEUE,
                   help=f"images waiting or being scored before new requests get 503 (default {SERVE_MAX_QUEUE})")
    p.add_argument("--max-batch", type=int, default=SERVE_MAX_BATCH,
                   help=f"most waiting images scored together (default {SERVE_MAX_BATCH}; 1: one at a time)")
    p.add_argument("--example", type=Path, default=None,
                   help="an image scored at start-up and shown by GET /?example=1")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for inference (default: torch's)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--no-access-log", action="store_true", help="do not log each request")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from tabad.inspection.serve import ServeConfig, serve

    cfg = ServeConfig(model=args.model, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
                      max_megapixels=args.max_megapixels, max_queue=args.max_queue, max_batch=args.max_batch,
                      example=args.example, threads=args.threads, device=args.device,
                      access_log=not args.no_access_log)
    serve(cfg, log=lambda line: print(line, flush=True))
    return 0
