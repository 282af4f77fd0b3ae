"""Run anomalib 2.7.0's PatchCore on one category the way a user would, and dump raw predictions.

The anomalib half of ``benchmarks/patchcore_vs_anomalib.py``; run it with anomalib's own
interpreter (``.anomalib-venv/bin/python``). Data handling (``Folder`` datamodule, mask
pairing check) is shared with ``anomalib_padim_runner.py``.

* ``Patchcore(backbone="resnet18", layers=["layer2", "layer3"], pre_trained=False,
  coreset_sampling_ratio=R, num_neighbors=9)``; ``--weights`` (a torchvision-keyed
  resnet18 state dict) is loaded into the timm feature extractor (only ``layer4.*`` /
  ``fc.*`` may be unexpected).
* Transform ``Resize((S, S))`` -> ``CenterCrop(C)`` -> ImageNet ``Normalize``.
* Timings: ``Engine.fit`` in total, and inside it the feature-collection epoch and the
  coreset selection (``subsample_embedding``) separately; ``Engine.test``.

Writes ``predictions.npz`` (raw ``scores``/``maps`` of the torch model, before the
PostProcessor; ``labels``, ``masks``, ``image_paths``) and ``anomalib.json``.
"""

from __future__ import annotations

import time

_T_PROCESS0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
from pathlib import Path  # noqa: E402

from anomalib_padim_runner import IMAGENET_MEAN, IMAGENET_STD, LAYOUTS, folder_datamodule  # noqa: E402


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--layout", choices=LAYOUTS, default="mvtec")
    p.add_argument("--weights", required=True)
    p.add_argument("--coreset-ratio", type=float, default=0.1)
    p.add_argument("--resize", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-bank", default=None,
                   help="a (N, D) float tensor (.pt) used as the memory bank in place of anomalib's own coreset "
                        "(the driver passes tabad's): both libraries then score against the same rows")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_root = Path(args.data)

    t0 = time.perf_counter()
    import numpy as np
    import torch
    from lightning.pytorch import Callback, seed_everything
    from torchvision.transforms import v2

    import anomalib
    from anomalib.engine import Engine
    from anomalib.models import Patchcore
    from anomalib.pre_processing import PreProcessor

    import_seconds = time.perf_counter() - t0
    torch.set_num_threads(args.threads)
    seed_everything(args.seed, workers=True)

    _, datamodule, pairing = folder_datamodule(data_root / args.category, args.category, args.layout,
                                               args.batch_size, args.seed)

    transform = v2.Compose([v2.Resize((args.resize, args.resize), antialias=True), v2.CenterCrop(args.crop),
                            v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])
    model = Patchcore(backbone="resnet18", layers=["layer2", "layer3"], pre_trained=False,
                      coreset_sampling_ratio=args.coreset_ratio, num_neighbors=9,
                      pre_processor=PreProcessor(transform=transform), visualizer=False)
    state = torch.load(args.weights, map_location="cpu", weights_only=True)
    fx = model.model.feature_extractor.feature_extractor
    res = fx.load_state_dict(state, strict=False)
    bad = [k for k in res.unexpected_keys if not k.startswith(("layer4.", "fc."))]
    if res.missing_keys or bad:
        raise SystemExit(f"weights do not fit: missing={res.missing_keys} unexpected={bad}")
    assert torch.equal(fx.state_dict()["conv1.weight"], state["conv1.weight"])

    # raw outputs of the torch model in eval mode (the test pass)
    raw: list[dict] = []

    def _hook(module, inputs, output):
        if not module.training and hasattr(output, "anomaly_map"):
            raw.append({"scores": output.pred_score.detach().float().reshape(-1),
                        "maps": output.anomaly_map.detach().float().reshape(len(output.pred_score),
                                                                            *output.anomaly_map.shape[-2:])})

    model.model.register_forward_hook(_hook)
    coreset_seconds: list[float] = []
    _orig = model.model.subsample_embedding

    marks: dict = {}

    bank = torch.load(args.memory_bank, map_location="cpu", weights_only=True) if args.memory_bank else None

    def _timed_subsample(*a, **k):
        store = model.model.embedding_store
        print(f"[rss] before coreset {_rss_mb():.0f} MB; bank input {[tuple(e.shape) for e in store[:2]]} "
              f"dtype {store[0].dtype if store else None}", flush=True)
        t = time.perf_counter()
        marks["coreset_start"] = t
        if bank is None:
            _orig(*a, **k)
        else:  # the given bank; anomalib's own embeddings must have its width
            if bank.shape[1] != store[0].shape[1]:
                raise SystemExit(f"--memory-bank has {bank.shape[1]} columns, anomalib's embeddings {store[0].shape[1]}")
            store.clear()
            model.model.memory_bank = bank.to(torch.float32)
        print(f"[rss] after coreset {_rss_mb():.0f} MB", flush=True)
        coreset_seconds.append(time.perf_counter() - t)

    model.model.subsample_embedding = _timed_subsample

    class StageTimer(Callback):
        def __init__(self):
            self.t: dict[str, float] = {}

        def on_train_epoch_start(self, trainer, pl_module):
            self.t["epoch_start"] = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.t.setdefault("epoch_end", time.perf_counter())

        def on_validation_start(self, trainer, pl_module):
            print(f"[rss] validation start {_rss_mb():.0f} MB", flush=True)
            self.t.setdefault("validation_start", time.perf_counter())

        def on_validation_end(self, trainer, pl_module):
            self.t["validation_end"] = time.perf_counter()

    records: list[dict] = []

    class Recorder(Callback):  # labels, masks and paths of the test batches, in order
        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            records.append({"labels": batch.gt_label.detach().reshape(-1),
                            "masks": batch.gt_mask.detach().reshape(len(batch.gt_label), *batch.gt_mask.shape[-2:]),
                            "image_paths": list(batch.image_path)})

    timer = StageTimer()
    engine = Engine(default_root_dir=out / "engine", accelerator="cpu", devices=1, callbacks=[timer, Recorder()],
                    enable_progress_bar=False, deterministic=False)
    t = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - t
    peak_after_fit_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    raw.clear()

    t = time.perf_counter()
    engine.test(model=model, datamodule=datamodule, verbose=False)
    test_seconds = time.perf_counter() - t

    scores = torch.cat([r["scores"] for r in raw]).numpy()
    maps = torch.cat([r["maps"] for r in raw]).numpy()
    labels = torch.cat([r["labels"] for r in records]).numpy().astype(np.int64)
    masks = (torch.cat([r["masks"] for r in records]).numpy() > 0).astype(np.uint8)
    paths = [os.path.relpath(p, data_root) for r in records for p in r["image_paths"]]
    assert len(scores) == len(labels) == len(paths), (len(scores), len(labels), len(paths))
    np.savez_compressed(out / "predictions.npz", scores=scores.astype(np.float32), maps=maps.astype(np.float32),
                        labels=labels, masks=masks, image_paths=np.array(paths))

    tt = timer.t
    # anomalib runs the coreset inside the fit epoch's end hooks: features = epoch start -> coreset start
    collect = marks.pop("coreset_start", tt.get("epoch_end", float("nan"))) - tt["epoch_start"]
    result = {
        "library": "anomalib", "version": anomalib.__version__, "torch": torch.__version__,
        "category": args.category, "layout": args.layout, "mask_pairing": pairing,
        "n_train": len(datamodule.train_data), "n_test": len(datamodule.test_data),
        "memory_bank": list(model.model.memory_bank.shape), "coreset_ratio": args.coreset_ratio,
        "timings": {"import_seconds": import_seconds, "engine_fit_seconds": fit_seconds,
                    "feature_collection_seconds": collect,
                    "coreset_seconds": coreset_seconds[0] if coreset_seconds else None,
                    "fit_seconds": (collect or 0.0) + (coreset_seconds[0] if coreset_seconds else 0.0),
                    "test_seconds": test_seconds,
                    "process_seconds_in_script": time.perf_counter() - _T_PROCESS0},
        "peak_rss_mb_after_fit": peak_after_fit_mb,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "threads": torch.get_num_threads(), "seed": args.seed,
    }
    (out / "anomalib.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result["timings"]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
