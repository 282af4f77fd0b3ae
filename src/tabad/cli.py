"""The ``tabad`` command: a thin layer over the library.

Each sub-command imports what it needs when it runs, so ``tabad --help``
answers without loading torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
examples:
  tabad demo                                   # offline end-to-end run on generated data
  tabad make-data data/procedural --seed 0     # write the procedural MVTec-layout dataset
  tabad benchmark --data ../shared/data/mvtec3d --method padim \\
      --weights random,imagenet,runs/tab/backbone.pt --out runs/bench

weights sources: random | random:SEED | imagenet | PATH to a torchvision state dict (e.g. a TAB checkpoint)
"""


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _parse_sets(items: list[str] | None) -> dict[str, dict]:
    """``method.key=value`` (YAML-parsed value) -> {method: {key: value}}."""
    import yaml

    out: dict[str, dict] = {}
    for item in items or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise SystemExit(f"error: --set expects METHOD.KEY=VALUE, got {item!r}")
        lhs, rhs = item.split("=", 1)
        method, key = lhs.split(".", 1)
        value = yaml.safe_load(rhs)
        out.setdefault(method, {})[key] = tuple(value) if isinstance(value, list) else value
    return out


def _load_config_file(path: str | None) -> dict[str, dict]:
    """A YAML file ``{method: {key: value}}`` of method hyperparameters."""
    if not path:
        return {}
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise SystemExit(f"error: {path}: expected a mapping of method name -> options")
    return {m: {k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()} for m, opts in data.items()}


def _add_benchmark(sub) -> None:
    p = sub.add_parser(
        "benchmark",
        help="score methods × weights sources on every category of a dataset",
        description="Fit each method on each category's normal training images with each weights source, "
                    "score the test set, and write results.json/.csv/.md and heat-map panels to --out.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""\
layouts (auto-detected, or force with --layout):
  mvtec       <cat>/train/good, <cat>/test/<defect>, <cat>/ground_truth/<defect>/<stem>_mask.png
  mvtec3d     <cat>/train/good/rgb, <cat>/test/<defect>/rgb, masks in <cat>/test/<defect>/gt
  mvtec-stem  like mvtec, but masks named <stem>.png (hazelnut toy and others)

--data may be a folder of categories or one category folder.
A rerun with the same --out reuses finished pairs (use --no-resume to recompute).
""",
    )
    p.add_argument("--data", required=True, type=Path, help="dataset root")
    p.add_argument("--categories", type=_csv, default=None, help="comma-separated subset (default: all)")
    p.add_argument("--method", type=_csv, default=["padim"], help="comma-separated methods (default: padim)")
    p.add_argument("--weights", type=_csv, default=["random"],
                   help="comma-separated weights sources: random, random:SEED, imagenet, or a state-dict path")
    p.add_argument("--backbone", default="resnet18", choices=["resnet18", "wide_resnet50_2"])
    p.add_argument("--seed", type=int, default=0, help="seed for random weights and method randomness")
    p.add_argument("--resize", type=int, default=256, help="resize images to S×S (default 256)")
    p.add_argument("--crop", type=int, default=224, help="then centre-crop to C×C (default 224)")
    p.add_argument("--layout", default="auto", choices=["auto", "mvtec", "mvtec3d", "mvtec-stem"])
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable images and bad masks with a warning listing each file, instead of stopping")
    p.add_argument("--panels", type=int, default=4, help="test images per category in the heat-map panels")
    p.add_argument("--config", help="YAML file of method options: {padim: {n_features: all}}")
    p.add_argument("--set", action="append", metavar="METHOD.KEY=VALUE",
                   help="override one method option, e.g. --set padim.n_features=all (repeatable)")
    p.add_argument("--save-predictions", action="store_true", help="also write every score and map to predictions/")
    p.add_argument("--allow-download", action="store_true", help="let torchvision download missing ImageNet weights")
    p.add_argument("--no-resume", action="store_true", help="recompute pairs already finished in --out")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.set_defaults(func=cmd_benchmark)


def cmd_benchmark(args) -> int:
    from tabad.benchmark import BenchmarkConfig, run_benchmark

    options = _load_config_file(args.config)
    for method, opts in _parse_sets(args.set).items():
        options.setdefault(method, {}).update(opts)
    cfg = BenchmarkConfig(
        data=args.data, out=args.out, methods=args.method, weights=args.weights, categories=args.categories,
        backbone=args.backbone, seed=args.seed, resize=args.resize, crop=args.crop, layout=args.layout,
        skip_bad=args.skip_bad, n_panels=args.panels, save_predictions=args.save_predictions,
        method_options=options, allow_download=args.allow_download, resume=not args.no_resume, device=args.device,
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
        help="offline end-to-end run: make data, benchmark PaDiM with two weights sources, report",
        description="Generates the procedural dataset (or reuses it), benchmarks PaDiM with two weights sources "
                    "and prints the table. Needs no network and no downloaded weights.",
    )
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="where data and report go (default demo_out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny dataset, for a smoke test in seconds")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from tabad.demo import run_demo

    run_demo(args.out, seed=args.seed, quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    import tabad

    parser = argparse.ArgumentParser(
        prog="tabad",
        description="Industrial visual anomaly detection with Text-Align Anomaly Backbones (TAB): "
                    "datasets, backbone weights, PaDiM, exact metrics and paper-style reports.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"tabad {tabad.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(sub)
    _add_make_data(sub)
    _add_benchmark(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from tabad.errors import TabadError

    try:
        return int(args.func(args) or 0)
    except TabadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; rerun the same command to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
