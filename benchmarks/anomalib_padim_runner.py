"""Run anomalib 2.7.0's PaDiM on one category, the way a user would, and dump predictions.

This script is the anomalib half of ``benchmarks/padim_vs_anomalib.py``. It must be run
with the interpreter of anomalib's own environment (``.anomalib-venv/bin/python``), not
with tabad's: the two stacks are kept apart on purpose.

What it does
------------
* Builds a ``Folder`` datamodule (``val_split_mode="same_as_test"``,
  ``test_split_mode="from_dir"``, ``num_workers=0``, batch 32) for one category of an
  MVTec-like root, in one of three layouts:

  ``mvtec``       images ``<cat>/train/good``, ``<cat>/test/<defect>``;
                  masks ``<cat>/ground_truth/<defect>/<stem>_mask.png``
  ``mvtec3d``     images ``<cat>/train/good/rgb``, ``<cat>/test/<defect>/rgb``;
                  masks ``<cat>/test/<defect>/gt/<same name>``
  ``mvtec-stem``  as ``mvtec`` but masks are ``<cat>/ground_truth/<defect>/<stem>.png``

  and checks, sample by sample, that ``Folder`` paired every anomalous image with the
  mask of the same defect folder and the same stem (``Folder`` pairs by sorted order and
  only checks that the mask stem *contains* the image stem).
* ``Padim(backbone="resnet18", layers=["layer1", "layer2", "layer3"], pre_trained=False,
  n_features=100)``; loads ``--weights`` (torchvision-keyed resnet18 state dict) into
  ``model.model.feature_extractor.feature_extractor`` (``strict=False``; only
  ``layer4.*``/``fc.*`` may be unexpected, nothing may be missing) and overwrites the
  ``idx`` buffer with the indices of ``--idx``.
* Pre-processor transform: ``Resize((resize, resize))`` -> ``CenterCrop(crop)`` ->
  ImageNet ``Normalize`` (torchvision v2; masks get the same geometry, NEAREST).
* Evaluator: image AUROC, pixel AUROC, pixel AUPRO (``fpr_limit=0.3``), image and pixel
  F1-max. No visualizer (it would write one PNG per test image).
* ``Engine.fit`` then ``Engine.test``.

Outputs (in ``--out``)
----------------------
``predictions.npz``
    ``scores`` (N,) and ``maps`` (N, crop, crop): the RAW PaDiM outputs, i.e. the
    output of ``PadimModel.forward`` (Mahalanobis distance, bilinear upsampling,
    Gaussian blur; image score = max of the map) *before* anomalib's PostProcessor.
    ``scores_post`` / ``maps_post``: the same after anomalib's PostProcessor (min-max and
    threshold normalisation, clamped to [0, 1]): these are what anomalib's own Evaluator
    sees. ``labels`` (N,), ``masks`` (N, crop, crop) uint8 0/1, ``image_paths``
    (relative to ``--data``), ``mask_paths``.
``anomalib.json``
    anomalib's own metric values (as the Evaluator reports them, i.e. on the
    post-processed values) and anomalib's metric classes applied to the raw values,
    timings and versions.
"""

from __future__ import annotations

import time

_T_PROCESS0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
LAYOUTS = ("mvtec", "mvtec3d", "mvtec-stem")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="MVTec-like root holding <category>/")
    p.add_argument("--category", required=True)
    p.add_argument("--layout", choices=LAYOUTS, default="mvtec")
    p.add_argument("--weights", required=True, help="torchvision-keyed resnet18 state dict (.pt)")
    p.add_argument("--idx", required=True, help="JSON file: list of channel indices (of 448)")
    p.add_argument("--resize", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    return p.parse_args(argv)


def folder_dirs(cat_root: Path, layout: str) -> dict:
    """Folder arguments (paths relative to the category root) for one layout."""
    test_root = cat_root / "test"
    defects = sorted(d.name for d in test_root.iterdir() if d.is_dir() and d.name != "good")
    if not defects:
        raise SystemExit(f"no defect folders under {test_root}")
    if layout == "mvtec3d":
        return {
            "normal_dir": "train/good/rgb",
            "abnormal_dir": [f"test/{d}/rgb" for d in defects],
            "normal_test_dir": "test/good/rgb",
            "mask_dir": [f"test/{d}/gt" for d in defects],
            "defects": defects,
        }
    return {
        "normal_dir": "train/good",
        "abnormal_dir": [f"test/{d}" for d in defects],
        "normal_test_dir": "test/good",
        "mask_dir": [f"ground_truth/{d}" for d in defects],
        "defects": defects,
    }


def expected_mask(image_path: Path, layout: str) -> tuple[str, str]:
    """(defect folder, mask stem) that the image's mask must have."""
    if layout == "mvtec3d":  # test/<defect>/rgb/<name> -> test/<defect>/gt/<name>
        return image_path.parent.parent.name, image_path.stem
    if layout == "mvtec":  # test/<defect>/<stem>.png -> ground_truth/<defect>/<stem>_mask.png
        return image_path.parent.name, image_path.stem + "_mask"
    return image_path.parent.name, image_path.stem  # mvtec-stem


def mask_key(mask_path: Path, layout: str) -> tuple[str, str]:
    if layout == "mvtec3d":
        return mask_path.parent.parent.name, mask_path.stem
    return mask_path.parent.name, mask_path.stem


def check_pairing(samples, layout: str) -> dict:
    """Verify that Folder paired every abnormal test image with the right mask."""
    n_abnormal = n_checked = 0
    bad = []
    for row in samples.itertuples():
        if int(row.label_index) != 1:
            if row.mask_path:
                bad.append((row.image_path, row.mask_path, "normal image with a mask"))
            continue
        n_abnormal += 1
        want = expected_mask(Path(row.image_path), layout)
        got = mask_key(Path(row.mask_path), layout) if row.mask_path else None
        if got != want:
            bad.append((row.image_path, row.mask_path, f"expected {want}"))
        else:
            n_checked += 1
    if bad:
        for b in bad[:10]:
            print("MASK PAIRING ERROR:", b, file=sys.stderr)
        raise SystemExit(f"Folder paired {len(bad)} test images with the wrong mask")
    return {"n_abnormal": n_abnormal, "n_pairs_verified": n_checked}


def folder_datamodule(cat_root: Path, category: str, layout: str, batch_size: int, seed: int):
    """anomalib's ``Folder`` datamodule for one category, set up, with its mask pairing checked:
    (dirs, datamodule, pairing). Shared by every anomalib runner of the benchmarks."""
    from anomalib.data import Folder

    dirs = folder_dirs(cat_root, layout)
    datamodule = Folder(name=category, root=cat_root, normal_dir=dirs["normal_dir"],
                        abnormal_dir=dirs["abnormal_dir"], normal_test_dir=dirs["normal_test_dir"],
                        mask_dir=dirs["mask_dir"], train_batch_size=batch_size, eval_batch_size=batch_size,
                        num_workers=0, test_split_mode="from_dir", val_split_mode="same_as_test", seed=seed)
    datamodule.setup()
    return dirs, datamodule, check_pairing(datamodule.test_data.samples, layout)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_root = Path(args.data)
    cat_root = data_root / args.category

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    t0 = time.perf_counter()
    import numpy as np
    import torch
    from torchvision.transforms import v2

    import anomalib
    from anomalib.engine import Engine
    from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Max
    from anomalib.models import Padim
    from anomalib.pre_processing import PreProcessor
    from lightning.pytorch import Callback, seed_everything

    import_seconds = time.perf_counter() - t0

    torch.set_num_threads(args.threads)
    seed_everything(args.seed, workers=True)

    # ---------------------------------------------------------------- data
    dirs, datamodule, pairing = folder_datamodule(cat_root, args.category, args.layout, args.batch_size, args.seed)
    n_train = len(datamodule.train_data)
    n_test = len(datamodule.test_data)
    print(f"[anomalib] {args.category}: train {n_train}, test {n_test}, pairing {pairing}", flush=True)

    # ---------------------------------------------------------------- model
    transform = v2.Compose([
        v2.Resize((args.resize, args.resize), antialias=True),
        v2.CenterCrop(args.crop),
        v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    ])

    class RecordingEvaluator(Evaluator):
        """Evaluator that also keeps every test batch after post-processing.

        The Evaluator is one of the model's callbacks, registered after the PreProcessor
        and the PostProcessor, so in ``on_test_batch_end`` it sees the post-processed
        (normalised) values: the ones anomalib's metrics are computed on.
        """

        def __init__(self, *a, **k) -> None:
            super().__init__(*a, **k)
            self.records: list[dict] = []

        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
            self.records.append({
                "scores_post": batch.pred_score.detach().cpu().float().reshape(-1),
                "maps_post": batch.anomaly_map.detach().cpu().float().reshape(len(batch.pred_score), *batch.anomaly_map.shape[-2:]),
                "labels": batch.gt_label.detach().cpu().reshape(-1),
                "masks": batch.gt_mask.detach().cpu().reshape(len(batch.pred_score), *batch.gt_mask.shape[-2:]),
                "image_paths": list(batch.image_path),
                "mask_paths": list(batch.mask_path) if batch.mask_path is not None else [""] * len(batch.pred_score),
            })

    evaluator = RecordingEvaluator(
        test_metrics=[
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False, fpr_limit=0.3),
            F1Max(fields=["pred_score", "gt_label"], prefix="image_"),
            F1Max(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        ],
    )
    model = Padim(
        backbone="resnet18",
        layers=["layer1", "layer2", "layer3"],
        pre_trained=False,
        n_features=100,
        pre_processor=PreProcessor(transform=transform),
        evaluator=evaluator,
        visualizer=False,
    )

    # backbone weights
    state = torch.load(args.weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    fx = model.model.feature_extractor.feature_extractor
    res = fx.load_state_dict(state, strict=False)
    bad_unexpected = [k for k in res.unexpected_keys if not k.startswith(("layer4.", "fc."))]
    if res.missing_keys or bad_unexpected:
        raise SystemExit(f"weights do not fit: missing={res.missing_keys} unexpected={bad_unexpected}")
    n_loaded = sum(1 for k in state if k not in set(res.unexpected_keys))
    # sanity: a loaded tensor really is the file's tensor
    assert torch.equal(fx.state_dict()["conv1.weight"], state["conv1.weight"])

    # channel subset
    idx = json.loads(Path(args.idx).read_text())
    idx_t = torch.tensor(idx, dtype=model.model.idx.dtype)
    n_orig = model.model.n_features_original
    if idx_t.numel() != model.model.n_features or int(idx_t.max()) >= n_orig or len(set(idx)) != len(idx):
        raise SystemExit(f"--idx must be {model.model.n_features} distinct indices < {n_orig}")
    model.model.idx.copy_(idx_t)
    assert model.model.idx.tolist() == idx

    # raw outputs of the torch model (before the PostProcessor) + model-only timings
    raw: list[dict] = []
    fwd_seconds: list[float] = []
    gaussian_fit_seconds: list[float] = []
    _t_fwd = [0.0]

    def _pre_hook(module, inputs):
        _t_fwd[0] = time.perf_counter()

    def _hook(module, inputs, output):
        if not module.training and hasattr(output, "anomaly_map"):
            fwd_seconds.append(time.perf_counter() - _t_fwd[0])
            raw.append({
                "scores": output.pred_score.detach().cpu().float().reshape(-1),
                "maps": output.anomaly_map.detach().cpu().float().reshape(len(output.pred_score), *output.anomaly_map.shape[-2:]),
            })

    model.model.register_forward_pre_hook(_pre_hook)
    model.model.register_forward_hook(_hook)

    _orig_fit = model.model.fit

    def _timed_fit():
        t = time.perf_counter()
        _orig_fit()
        gaussian_fit_seconds.append(time.perf_counter() - t)

    model.model.fit = _timed_fit

    class StageTimer(Callback):
        def __init__(self) -> None:
            self.t: dict[str, float] = {}

        def on_train_epoch_start(self, trainer, pl_module):
            self.t["train_epoch_start"] = time.perf_counter()

        def on_validation_start(self, trainer, pl_module):
            self.t["validation_start"] = time.perf_counter()

        def on_validation_end(self, trainer, pl_module):
            self.t["validation_end"] = time.perf_counter()

    timer = StageTimer()
    engine = Engine(
        default_root_dir=out / "engine",
        accelerator="cpu",
        devices=1,
        callbacks=[timer],
        enable_progress_bar=False,
        deterministic=False,
    )

    # ---------------------------------------------------------------- fit
    t = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - t
    n_val_batches = len(raw)
    raw.clear()
    fwd_seconds.clear()

    # ---------------------------------------------------------------- test
    evaluator.records.clear()
    t = time.perf_counter()
    test_out = engine.test(model=model, datamodule=datamodule, verbose=False)
    test_seconds = time.perf_counter() - t

    own = {k: float(v) for k, v in (test_out[0] if test_out else {}).items()}

    # ---------------------------------------------------------------- collect
    rec = evaluator.records
    if len(rec) != len(raw):
        raise SystemExit(f"captured {len(raw)} raw batches but {len(rec)} post-processed batches")
    scores = torch.cat([r["scores"] for r in raw]).numpy()
    maps = torch.cat([r["maps"] for r in raw]).numpy()
    scores_post = torch.cat([r["scores_post"] for r in rec]).numpy()
    maps_post = torch.cat([r["maps_post"] for r in rec]).numpy()
    labels = torch.cat([r["labels"] for r in rec]).numpy().astype(np.int64)
    masks = (torch.cat([r["masks"] for r in rec]).numpy() > 0).astype(np.uint8)
    image_paths = [os.path.relpath(p, data_root) for r in rec for p in r["image_paths"]]
    mask_paths = [
        os.path.relpath(p, data_root) if p and str(p) not in ("None", "nan") else "" for r in rec for p in r["mask_paths"]
    ]
    assert scores.shape[0] == n_test == labels.shape[0], (scores.shape, n_test, labels.shape)
    assert maps.shape[1:] == (args.crop, args.crop) and masks.shape[1:] == (args.crop, args.crop)
    # image score is the max of the (raw) map
    assert np.allclose(scores, maps.reshape(len(maps), -1).max(1), rtol=1e-6, atol=1e-6)
    # the post-processed values are the PostProcessor's normalisation of the raw ones
    pp = model.post_processor
    renorm = pp._normalize(torch.from_numpy(scores), pp.image_min, pp.image_max, pp.image_threshold).numpy()
    assert np.allclose(renorm, scores_post, atol=1e-5), "post-processed scores are not the normalised raw ones"
    # normal images have empty masks; count abnormal images whose (cropped) mask is empty
    assert not masks[labels == 0].any(), "a normal test image has a non-empty mask"
    n_abnormal_empty_mask = int(sum(1 for i in range(len(labels)) if labels[i] and not masks[i].any()))

    np.savez_compressed(
        out / "predictions.npz",
        scores=scores.astype(np.float32),
        maps=maps.astype(np.float32),
        scores_post=scores_post.astype(np.float32),
        maps_post=maps_post.astype(np.float32),
        labels=labels,
        masks=masks,
        image_paths=np.array(image_paths),
        mask_paths=np.array(mask_paths),
    )

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
        b = _B(
            pred_score=torch.from_numpy(np.ascontiguousarray(s_img)),
            gt_label=torch.from_numpy(labels),
            anomaly_map=torch.from_numpy(np.ascontiguousarray(s_px)),
            gt_mask=torch.from_numpy(masks),
        )
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

    # ties created by the PostProcessor's clamp to [0, 1]
    clamp_info = {
        "image_scores_clamped_to_0": int((scores_post <= 0).sum()),
        "image_scores_clamped_to_1": int((scores_post >= 1).sum()),
        "pixels_clamped_to_0": int((maps_post <= 0).sum()),
        "pixels_clamped_to_1": int((maps_post >= 1).sum()),
        "n_pixels": int(maps_post.size),
    }

    t_val = None
    if "validation_start" in timer.t and "validation_end" in timer.t:
        t_val = timer.t["validation_end"] - timer.t["validation_start"]
    ru = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "library": "anomalib",
        "category": args.category,
        "layout": args.layout,
        "data": str(args.data),
        "folder_dirs": {k: v for k, v in dirs.items()},
        "mask_pairing": pairing,
        "n_train": n_train,
        "n_test": n_test,
        "n_test_abnormal": int(labels.sum()),
        "n_test_abnormal_empty_mask_after_crop": n_abnormal_empty_mask,
        "weights": os.path.basename(args.weights),
        "weights_loaded_tensors": n_loaded,
        "weights_unexpected_keys": sorted({k.split(".")[0] for k in res.unexpected_keys}),
        "idx_first5": idx[:5],
        "transform": repr(transform),
        "metrics_anomalib_evaluator": own,
        "metrics_anomalib_on_raw_minmax": on_minmax,
        "metrics_anomalib_on_raw_unscaled_sigmoid_pitfall": on_raw,
        "postprocessor": {
            "image_threshold": float(pp.image_threshold),
            "pixel_threshold": float(pp.pixel_threshold),
            "image_min": float(pp.image_min),
            "image_max": float(pp.image_max),
            "pixel_min": float(pp.pixel_min),
            "pixel_max": float(pp.pixel_max),
            **clamp_info,
        },
        "timings": {
            "import_seconds": import_seconds,
            "fit_seconds": fit_seconds,
            "fit_gaussian_seconds": gaussian_fit_seconds[0] if gaussian_fit_seconds else None,
            "fit_validation_pass_seconds": t_val,
            "fit_validation_batches": n_val_batches,
            "test_seconds": test_seconds,
            "predict_ms_per_image": 1000.0 * test_seconds / n_test,
            "model_forward_ms_per_image": 1000.0 * sum(fwd_seconds) / n_test,
            "process_seconds_in_script": time.perf_counter() - _T_PROCESS0,
        },
        "peak_rss_mb_self": ru.ru_maxrss / 1024.0,
        "versions": {
            "python": platform.python_version(),
            "anomalib": anomalib.__version__,
            "torch": torch.__version__,
            "torchvision": __import__("torchvision").__version__,
            "lightning": __import__("lightning").__version__,
            "timm": __import__("timm").__version__,
            "numpy": np.__version__,
        },
        "torch_threads": torch.get_num_threads(),
        "seed": args.seed,
    }
    (out / "anomalib.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({"category": args.category, "evaluator": own, "minmax": on_minmax, **result["timings"]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
