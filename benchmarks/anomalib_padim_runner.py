"""Run anomalib 2.7.0's PaDiM on one category, the way a user would, and dump predictions.

The anomalib half of ``benchmarks/padim_vs_anomalib.py``; run it with anomalib's own interpreter
(``.anomalib-venv/bin/python``), never tabad's. Data, transform, weights loading, raw-output
capture and outputs come from ``harness/anomalib_side.py``; specific to PaDiM:

* ``Padim(backbone="resnet18", layers=["layer1", "layer2", "layer3"], pre_trained=False,
  n_features=100)``; the ``idx`` buffer is overwritten with the indices of ``--idx``.
* Pre-processor ``Resize((resize, resize))`` -> ``CenterCrop(crop)`` -> ImageNet ``Normalize``.
* The Gaussian fit (``PadimModel.fit``) and the validation pass inside ``Engine.fit`` are timed.
* ``predictions.npz`` also holds ``scores_post`` / ``maps_post``: the values after anomalib's
  PostProcessor (min-max and threshold normalisation, clamped to [0, 1]), which anomalib's own
  Evaluator sees, and ``mask_paths``.
* ``anomalib.json`` also holds anomalib's metric classes applied to the raw values min-max scaled
  (no clamping) and to the raw values themselves (torchmetrics' sigmoid pitfall), and the
  PostProcessor's statistics and clamp counts.
"""

from __future__ import annotations

import time

from harness.anomalib_side import (evaluator_metrics, folder_datamodule, import_stack, load_backbone, make_engine,
                                   prepare, RawOutputs, record_test_batches, runner_parser, save_predictions,
                                   seed_and_threads, stage_timer, transform, write_result)


def main(argv: list[str] | None = None) -> int:
    p = runner_parser(__doc__, batch_size=32)
    p.add_argument("--idx", required=True, help="JSON file: list of channel indices (of 448)")
    p.add_argument("--resize", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    args = p.parse_args(argv)
    out, data_root = prepare(args)

    import_seconds = import_stack("anomalib.models")
    import json
    import os
    from pathlib import Path

    import numpy as np
    import torch
    from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Max
    from anomalib.models import Padim
    from anomalib.pre_processing import PreProcessor

    seed_and_threads(args)

    # ---------------------------------------------------------------- data
    dirs, datamodule, pairing = folder_datamodule(data_root / args.category, args.category, args.layout,
                                                  args.batch_size, args.seed)
    n_train, n_test = len(datamodule.train_data), len(datamodule.test_data)
    print(f"[anomalib] {args.category}: train {n_train}, test {n_test}, pairing {pairing}", flush=True)

    # ---------------------------------------------------------------- model
    class RecordingEvaluator(Evaluator):
        """Evaluator that also keeps every test batch after post-processing.

        The Evaluator is one of the model's callbacks, registered after the PreProcessor and the
        PostProcessor, so in ``on_test_batch_end`` it sees the post-processed (normalised) values:
        the ones anomalib's metrics are computed on.
        """

        def __init__(self, *a, **k) -> None:
            super().__init__(*a, **k)
            self.records: list[tuple] = []

        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
            n = len(batch.pred_score)
            self.records.append((batch.pred_score.detach().cpu().float().reshape(-1),
                                 batch.anomaly_map.detach().cpu().float().reshape(n, *batch.anomaly_map.shape[-2:]),
                                 list(batch.mask_path) if batch.mask_path is not None else [""] * n))

    pre = transform(args.resize, args.crop)
    evaluator = RecordingEvaluator(test_metrics=evaluator_metrics())
    model = Padim(backbone="resnet18", layers=["layer1", "layer2", "layer3"], pre_trained=False, n_features=100,
                  pre_processor=PreProcessor(transform=pre), evaluator=evaluator, visualizer=False)
    weights = load_backbone(model.model.feature_extractor.feature_extractor, args.weights)

    # channel subset
    idx = json.loads(Path(args.idx).read_text())
    idx_t = torch.tensor(idx, dtype=model.model.idx.dtype)
    n_orig = model.model.n_features_original
    if idx_t.numel() != model.model.n_features or int(idx_t.max()) >= n_orig or len(set(idx)) != len(idx):
        raise SystemExit(f"--idx must be {model.model.n_features} distinct indices < {n_orig}")
    model.model.idx.copy_(idx_t)
    assert model.model.idx.tolist() == idx

    raw = RawOutputs(model.model)
    gaussian_fit_seconds: list[float] = []
    _orig_fit = model.model.fit

    def _timed_fit():
        t = time.perf_counter()
        _orig_fit()
        gaussian_fit_seconds.append(time.perf_counter() - t)

    model.model.fit = _timed_fit
    timer, tests = stage_timer(), record_test_batches(data_root)
    engine = make_engine(out, [timer, tests])

    # ---------------------------------------------------------------- fit, test
    t = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - t
    n_val_batches = len(raw)
    raw.clear()

    evaluator.records.clear()
    t = time.perf_counter()
    test_out = engine.test(model=model, datamodule=datamodule, verbose=False)
    test_seconds = time.perf_counter() - t
    own = {k: float(v) for k, v in (test_out[0] if test_out else {}).items()}

    # ---------------------------------------------------------------- collect
    rec = evaluator.records
    if not len(rec) == len(raw) == len(tests):
        raise SystemExit(f"captured {len(raw)} raw batches, {len(rec)} post-processed, {len(tests)} test batches")
    scores, maps = raw.arrays()
    scores_post = torch.cat([r[0] for r in rec]).numpy()
    maps_post = torch.cat([r[1] for r in rec]).numpy()
    labels, masks, image_paths = tests.arrays()
    mask_paths = [os.path.relpath(p, data_root) if p and str(p) not in ("None", "nan") else ""
                  for r in rec for p in r[2]]
    # the post-processed values are the PostProcessor's normalisation of the raw ones
    pp = model.post_processor
    renorm = pp._normalize(torch.from_numpy(scores), pp.image_min, pp.image_max, pp.image_threshold).numpy()
    assert np.allclose(renorm, scores_post, atol=1e-5), "post-processed scores are not the normalised raw ones"
    save_predictions(out, scores=scores, maps=maps, labels=labels, masks=masks, image_paths=image_paths,
                     n_test=n_test, size=(args.crop, args.crop), scores_post=scores_post.astype(np.float32),
                     maps_post=maps_post.astype(np.float32), mask_paths=np.array(mask_paths))
    n_abnormal_empty_mask = int(sum(1 for i in range(len(labels)) if labels[i] and not masks[i].any()))

    # anomalib's metric classes applied outside the Engine, to separate metric code from
    # post-processing effects:
    #  * "minmax": raw values min-max scaled over the test set (monotone, no clamping, in
    #    [0, 1]), i.e. anomalib's metric code on an order-preserving copy of the raw values;
    #  * "raw": the raw values themselves. torchmetrics' binary ROC/PR-curve input checks
    #    apply a sigmoid to predictions outside [0, 1], which saturates to 1.0 in float32
    #    for PaDiM distances (tens): ties, hence wrong AUROC/F1-max. AUPRO has no such
    #    step. Kept only to document this pitfall (a user who disables normalisation).
    class _B:  # minimal batch: the metrics read fields by name
        def __init__(self, **kw):
            self.__dict__.update(kw)

    def _anomalib_metrics(s_img: np.ndarray, s_px: np.ndarray) -> dict:
        b = _B(pred_score=torch.from_numpy(np.ascontiguousarray(s_img)), gt_label=torch.from_numpy(labels),
               anomaly_map=torch.from_numpy(np.ascontiguousarray(s_px)), gt_mask=torch.from_numpy(masks))
        res = {}
        for name, metric in [
            ("image_AUROC", AUROC(fields=["pred_score", "gt_label"], prefix="image_")),
            ("pixel_AUROC", AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_")),
            ("pixel_AUPRO", AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", fpr_limit=0.3)),
            ("image_F1Max", F1Max(fields=["pred_score", "gt_label"], prefix="image_")),
            ("pixel_F1Max", F1Max(fields=["anomaly_map", "gt_mask"], prefix="pixel_")),
        ]:
            metric.update(b)
            res[name] = float(metric.compute())
        return res

    def _minmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        lo, hi = float(x.min()), float(x.max())
        return ((x - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)

    on_minmax = _anomalib_metrics(_minmax(scores), _minmax(maps))
    on_raw = _anomalib_metrics(scores, maps)

    result = {
        "library": "anomalib", "category": args.category, "layout": args.layout, "data": str(args.data),
        "folder_dirs": dirs, "mask_pairing": pairing, "n_train": n_train, "n_test": n_test,
        "n_test_abnormal": int(labels.sum()), "n_test_abnormal_empty_mask_after_crop": n_abnormal_empty_mask,
        "weights": Path(args.weights).name, "weights_loaded_tensors": weights["loaded_tensors"],
        "weights_unexpected_keys": weights["unexpected_keys"], "idx_first5": idx[:5], "transform": repr(pre),
        "metrics_anomalib_evaluator": own,
        "metrics_anomalib_on_raw_minmax": on_minmax,
        "metrics_anomalib_on_raw_unscaled_sigmoid_pitfall": on_raw,
        "postprocessor": {
            **{k: float(getattr(pp, k)) for k in ("image_threshold", "pixel_threshold", "image_min", "image_max",
                                                   "pixel_min", "pixel_max")},
            # ties created by the PostProcessor's clamp to [0, 1]
            "image_scores_clamped_to_0": int((scores_post <= 0).sum()),
            "image_scores_clamped_to_1": int((scores_post >= 1).sum()),
            "pixels_clamped_to_0": int((maps_post <= 0).sum()),
            "pixels_clamped_to_1": int((maps_post >= 1).sum()),
            "n_pixels": int(maps_post.size),
        },
        "timings": {
            "import_seconds": import_seconds,
            "fit_seconds": fit_seconds,
            "fit_gaussian_seconds": gaussian_fit_seconds[0] if gaussian_fit_seconds else None,
            "fit_validation_pass_seconds": timer.validation_seconds(),
            "fit_validation_batches": n_val_batches,
            "test_seconds": test_seconds,
            "predict_ms_per_image": 1000.0 * test_seconds / n_test,
            "model_forward_ms_per_image": 1000.0 * raw.forward_seconds / n_test,
        },
    }
    write_result(out, args, result, {"evaluator": own, "minmax": on_minmax})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
