"""Run anomalib 2.7.0's PatchCore on one category the way a user would, and dump raw predictions.

The anomalib half of ``benchmarks/patchcore_vs_anomalib.py``; run it with anomalib's own
interpreter (``.anomalib-venv/bin/python``). Data, transform, weights loading, raw-output
capture and outputs come from ``harness/anomalib_side.py``; specific to PatchCore:

* ``Patchcore(backbone="resnet18", layers=["layer2", "layer3"], pre_trained=False,
  coreset_sampling_ratio=R, num_neighbors=9)``.
* Timings: ``Engine.fit`` in total, and inside it the feature-collection epoch and the
  coreset selection (``subsample_embedding``) separately; ``Engine.test``.
* ``--memory-bank``: a given (N, D) bank (the driver passes tabad's) replaces anomalib's own
  coreset, so both libraries score against the same rows.
"""

from __future__ import annotations

import time

from harness.anomalib_side import (folder_datamodule, import_stack, load_backbone, make_engine, prepare, RawOutputs,
                                   record_test_batches, rss_mb, runner_parser, save_predictions, seed_and_threads,
                                   stage_timer, transform, write_result)


def main(argv: list[str] | None = None) -> int:
    p = runner_parser(__doc__, batch_size=32)
    p.add_argument("--coreset-ratio", type=float, default=0.1)
    p.add_argument("--resize", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--memory-bank", default=None,
                   help="a (N, D) float tensor (.pt) used as the memory bank in place of anomalib's own coreset "
                        "(the driver passes tabad's): both libraries then score against the same rows")
    args = p.parse_args(argv)
    out, data_root = prepare(args)

    import_seconds = import_stack("anomalib.models")
    import resource

    import torch
    from anomalib.models import Patchcore
    from anomalib.pre_processing import PreProcessor

    seed_and_threads(args)
    _, datamodule, pairing = folder_datamodule(data_root / args.category, args.category, args.layout,
                                               args.batch_size, args.seed)
    model = Patchcore(backbone="resnet18", layers=["layer2", "layer3"], pre_trained=False,
                      coreset_sampling_ratio=args.coreset_ratio, num_neighbors=9,
                      pre_processor=PreProcessor(transform=transform(args.resize, args.crop)), visualizer=False)
    load_backbone(model.model.feature_extractor.feature_extractor, args.weights)
    raw = RawOutputs(model.model)

    bank = torch.load(args.memory_bank, map_location="cpu", weights_only=True) if args.memory_bank else None
    coreset: dict[str, float] = {}
    _orig = model.model.subsample_embedding

    def _timed_subsample(*a, **k):
        store = model.model.embedding_store
        print(f"[rss] before coreset {rss_mb():.0f} MB; bank input {[tuple(e.shape) for e in store[:2]]} "
              f"dtype {store[0].dtype if store else None}", flush=True)
        coreset["start"] = t = time.perf_counter()
        if bank is None:
            _orig(*a, **k)
        else:  # the given bank; anomalib's own embeddings must have its width
            if bank.shape[1] != store[0].shape[1]:
                raise SystemExit(f"--memory-bank has {bank.shape[1]} columns, anomalib's embeddings {store[0].shape[1]}")
            store.clear()
            model.model.memory_bank = bank.to(torch.float32)
        print(f"[rss] after coreset {rss_mb():.0f} MB", flush=True)
        coreset.setdefault("seconds", time.perf_counter() - t)

    model.model.subsample_embedding = _timed_subsample
    timer, tests = stage_timer(log_rss=True), record_test_batches(data_root)
    engine = make_engine(out, [timer, tests])

    t = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - t
    peak_after_fit_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    raw.clear()

    t = time.perf_counter()
    engine.test(model=model, datamodule=datamodule, verbose=False)
    test_seconds = time.perf_counter() - t

    scores, maps = raw.arrays()
    labels, masks, paths = tests.arrays()
    n_test = len(datamodule.test_data)
    # image scores are Eq. 7 reweighted nearest-neighbour distances, not the map's maximum
    save_predictions(out, scores=scores, maps=maps, labels=labels, masks=masks, image_paths=paths, n_test=n_test,
                     size=(args.crop, args.crop), score_is_map_max=False)

    # anomalib runs the coreset inside the fit epoch's end hooks: features = epoch start -> coreset start
    collect = coreset.get("start", timer.first("train_epoch_end", float("nan"))) - timer.last("train_epoch_start")
    result = {
        "library": "anomalib", "category": args.category, "layout": args.layout, "mask_pairing": pairing,
        "n_train": len(datamodule.train_data), "n_test": n_test,
        "memory_bank": list(model.model.memory_bank.shape), "coreset_ratio": args.coreset_ratio,
        "shared_memory_bank": bank is not None,
        "timings": {"import_seconds": import_seconds, "engine_fit_seconds": fit_seconds,
                    "feature_collection_seconds": collect, "coreset_seconds": coreset.get("seconds"),
                    "fit_seconds": (collect or 0.0) + coreset.get("seconds", 0.0), "test_seconds": test_seconds,
                    "predict_ms_per_image": 1000.0 * test_seconds / n_test,
                    "model_forward_ms_per_image": 1000.0 * raw.forward_seconds / n_test},
        "peak_rss_mb_after_fit": peak_after_fit_mb,
    }
    write_result(out, args, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
