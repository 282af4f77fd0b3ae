"""Train and test anomalib 2.7.0's ReverseDistillation on one category; dump raw predictions.

The anomalib half of ``benchmarks/rd4ad_vs_anomalib.py``; run it with anomalib's own
interpreter (``.anomalib-venv/bin/python``). It shares the data plumbing of
``anomalib_padim_runner.py`` (``folder_datamodule``: imported, not copied).

What it does
------------
* ``Folder`` datamodule (``val_split_mode="same_as_test"``, ``test_split_mode="from_dir"``,
  ``num_workers=0``), mask pairing verified sample by sample.
* ``ReverseDistillation(backbone="resnet18", layers=[layer1..3], anomaly_map_mode="add",
  pre_trained=False)`` with ``PreProcessor(Resize((size, size)) → ImageNet Normalize)``.
* Teacher: ``--weights`` (a torchvision resnet18 state dict) loaded into
  ``model.model.encoder.feature_extractor`` (nothing missing, only ``layer4.*``/``fc.*``
  unexpected).
* ``--init`` (optional): ``{"bottleneck": ..., "decoder": ...}`` state dicts in anomalib's
  keys (tabad's initial OCBE/student, mapped by the driver) loaded into
  ``model.model.bottleneck`` (only the unused ``conv4``/``bn4`` may be missing) and
  ``model.model.decoder`` (strict).
* Optimiser: Adam over decoder + bottleneck, lr ``--lr``, betas ``--betas`` (anomalib's
  default is (0.5, 0.99); the driver passes the paper's (0.5, 0.999)).
* ``--order`` (optional): a JSON file with the training batches of every epoch, as file
  names relative to the category root; the training ``DataLoader`` then yields exactly
  those batches (a batch sampler) and the runner checks, batch by batch, that training
  saw them. Without it anomalib shuffles with its own ``DataLoader(shuffle=True)``.
* ``--input-decode div255`` (optional): images decoded as ``uint8 / 255`` (torchvision's
  ``ToTensor``, the official code, tabad) in place of anomalib's ``uint8 * (1/255)``; with
  tabad's ``--memory-format contiguous`` both then compute the same bits.
* ``Engine(max_epochs=E, check_val_every_n_epoch=E)``: one validation pass, after the
  last epoch (anomalib's PostProcessor learns its normalisation there), then
  ``Engine.test``.

Outputs in ``--out``: ``predictions.npz`` (raw ``ReverseDistillationModel`` outputs, i.e.
before the PostProcessor: ``scores``, ``maps``; ``labels``, ``masks``, ``image_paths``
relative to ``--data``) and ``anomalib.json`` (Evaluator metrics, per-epoch mean training
loss, timings, versions).
"""

from __future__ import annotations

import time

_T_PROCESS0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
from pathlib import Path  # noqa: E402

from anomalib_padim_runner import IMAGENET_MEAN, IMAGENET_STD, LAYOUTS, folder_datamodule  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="MVTec-like root holding <category>/")
    p.add_argument("--category", required=True)
    p.add_argument("--layout", choices=LAYOUTS, default="mvtec")
    p.add_argument("--weights", required=True, help="torchvision-keyed resnet18 state dict (.pt): the teacher")
    p.add_argument("--init", default=None, help="anomalib-keyed initial bottleneck/decoder weights (.pt)")
    p.add_argument("--order", default=None, help="JSON: training batches per epoch (file names)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--betas", default="0.5,0.999")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-decode", choices=["anomalib", "div255"], default="anomalib",
                   help="anomalib: its own read_image (uint8 * (1/255), torchvision's to_dtype); div255: uint8 / 255 "
                        "(torchvision's ToTensor, the official RD4AD code and tabad): the same input bits as tabad")
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_root = Path(args.data)
    cat_root = data_root / args.category
    betas = tuple(float(b) for b in args.betas.split(","))

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    t0 = time.perf_counter()
    import numpy as np
    import torch
    from lightning.pytorch import Callback, seed_everything
    from torch.utils.data import DataLoader
    from torchvision.transforms import v2

    import anomalib
    from anomalib.engine import Engine
    from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Max
    from anomalib.models import ReverseDistillation
    from anomalib.pre_processing import PreProcessor

    import_seconds = time.perf_counter() - t0
    if args.input_decode == "div255":
        # x * (1/255) and x / 255 differ in the last bit for some values; Adam turns that into drift.
        import anomalib.data.datasets.base.image as base_image
        from PIL import Image
        from torchvision import tv_tensors
        from torchvision.transforms.v2.functional import to_image

        def read_image_div255(path, as_tensor: bool = False):
            if not as_tensor:
                raise SystemExit("--input-decode div255 only replaces the tensor decode")
            return tv_tensors.Image(to_image(Image.open(path).convert("RGB")).to(torch.float32).div(255))

        base_image.read_image = read_image_div255
    torch.set_num_threads(args.threads)
    seed_everything(args.seed, workers=True)

    # ---------------------------------------------------------------- data
    _, datamodule, pairing = folder_datamodule(cat_root, args.category, args.layout, args.batch_size, args.seed)
    train_paths = [os.path.relpath(p, cat_root) for p in datamodule.train_data.samples.image_path]
    n_train, n_test = len(train_paths), len(datamodule.test_data)

    planned: list[list[list[str]]] | None = None
    if args.order:
        plan = json.loads(Path(args.order).read_text())
        planned = plan["epochs"]
        if len(planned) != args.epochs:
            raise SystemExit(f"--order has {len(planned)} epochs, --epochs is {args.epochs}")
        index = {p: i for i, p in enumerate(train_paths)}
        missing = sorted({f for ep in planned for b in ep for f in b} - set(index))
        if missing or set(plan["files"]) != set(index):
            raise SystemExit(f"--order does not list anomalib's training files (e.g. {missing[:3]})")

        class PlannedBatches:
            """The planned batches of one epoch per ``iter()`` (Lightning iterates once per epoch)."""

            def __init__(self) -> None:
                self.epoch = 0

            def __iter__(self):
                batches = planned[min(self.epoch, len(planned) - 1)]
                self.epoch += 1
                for b in batches:
                    yield [index[f] for f in b]

            def __len__(self) -> int:
                return len(planned[min(self.epoch, len(planned) - 1)])

        sampler = PlannedBatches()
        collate = datamodule.train_data.collate_fn
        datamodule.train_dataloader = lambda: DataLoader(datamodule.train_data, batch_sampler=sampler,
                                                         num_workers=0, collate_fn=collate)

    # ---------------------------------------------------------------- model
    transform = v2.Compose([v2.Resize((args.size, args.size), antialias=True),
                            v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])
    evaluator = Evaluator(test_metrics=[
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False, fpr_limit=0.3),
        F1Max(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Max(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
    ])
    model = ReverseDistillation(backbone="resnet18", layers=("layer1", "layer2", "layer3"),
                                anomaly_map_mode="add", pre_trained=False,
                                pre_processor=PreProcessor(transform=transform), evaluator=evaluator,
                                visualizer=False)
    rd = model.model

    teacher = torch.load(args.weights, map_location="cpu", weights_only=True)
    fx = rd.encoder.feature_extractor
    res = fx.load_state_dict(teacher, strict=False)
    stray = [k for k in res.unexpected_keys if not k.startswith(("layer4.", "fc."))]
    if res.missing_keys or stray:
        raise SystemExit(f"teacher weights do not fit: missing={res.missing_keys} unexpected={stray}")
    assert torch.equal(fx.state_dict()["layer3.1.bn2.running_var"], teacher["layer3.1.bn2.running_var"])

    init_info = None
    if args.init:
        init = torch.load(args.init, map_location="cpu", weights_only=True)
        r = rd.bottleneck.load_state_dict(init["bottleneck"], strict=False)
        if r.unexpected_keys or any(not k.startswith(("conv4.", "bn4.")) for k in r.missing_keys):
            raise SystemExit(f"--init bottleneck does not fit: missing={r.missing_keys} unexpected={r.unexpected_keys}")
        rd.decoder.load_state_dict(init["decoder"], strict=True)
        for name, sd in (("bottleneck", rd.bottleneck.state_dict()), ("decoder", rd.decoder.state_dict())):
            assert all(torch.equal(sd[k], v) for k, v in init[name].items()), name
        init_info = {"bottleneck_tensors": len(init["bottleneck"]), "decoder_tensors": len(init["decoder"]),
                     "bottleneck_left_at_anomalib_init": sorted(r.missing_keys)}

    def configure_optimizers():
        params = list(rd.decoder.parameters()) + list(rd.bottleneck.parameters())
        return torch.optim.Adam(params, lr=args.lr, betas=betas)

    model.configure_optimizers = configure_optimizers

    # raw outputs of the torch model (before the PostProcessor)
    raw: list[tuple[torch.Tensor, torch.Tensor]] = []
    fwd = {"t": 0.0, "seconds": 0.0}

    def _pre(module, inputs):
        fwd["t"] = time.perf_counter()

    def _post(module, inputs, output):
        if not module.training:
            fwd["seconds"] += time.perf_counter() - fwd["t"]
            raw.append((output.pred_score.detach().float().reshape(-1).cpu(),
                        output.anomaly_map.detach().float().reshape(len(output.pred_score), *output.anomaly_map.shape[-2:]).cpu()))

    rd.register_forward_pre_hook(_pre)
    rd.register_forward_hook(_post)

    class Recorder(Callback):
        """Training batches seen and their losses; test labels, masks and file names."""

        def __init__(self) -> None:
            self.seen: list[list[list[str]]] = []
            self.losses: list[list[float]] = []
            self.test: list[dict] = []
            self.t: dict[str, float] = {}

        def on_train_epoch_start(self, trainer, pl_module):
            self.seen.append([])
            self.losses.append([])

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen[-1].append([os.path.relpath(p, cat_root) for p in batch.image_path])

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses[-1].append(float(outputs["loss"]))

        def on_validation_start(self, trainer, pl_module):
            self.t["validation_start"] = time.perf_counter()

        def on_validation_end(self, trainer, pl_module):
            self.t["validation_end"] = time.perf_counter()

        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            b = len(batch.gt_label)
            self.test.append({"labels": batch.gt_label.detach().cpu().reshape(-1),
                              "masks": batch.gt_mask.detach().cpu().reshape(b, *batch.gt_mask.shape[-2:]),
                              "paths": [os.path.relpath(p, data_root) for p in batch.image_path]})

    rec = Recorder()
    engine = Engine(default_root_dir=out / "engine", accelerator="cpu", devices=1, callbacks=[rec],
                    enable_progress_bar=False, deterministic=False, max_epochs=args.epochs,
                    check_val_every_n_epoch=max(args.epochs, 1))

    t = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - t
    if planned is not None and rec.seen != planned:
        raise SystemExit("training did not see the planned batches")
    raw.clear()
    fwd["seconds"] = 0.0

    t = time.perf_counter()
    test_out = engine.test(model=model, datamodule=datamodule, verbose=False)
    test_seconds = time.perf_counter() - t
    own = {k: float(v) for k, v in (test_out[0] if test_out else {}).items()}

    if len(raw) != len(rec.test):
        raise SystemExit(f"captured {len(raw)} raw batches but {len(rec.test)} test batches")
    scores = torch.cat([s for s, _ in raw]).numpy()
    maps = torch.cat([m for _, m in raw]).numpy()
    labels = torch.cat([r["labels"] for r in rec.test]).numpy().astype(np.int64)
    masks = (torch.cat([r["masks"] for r in rec.test]).numpy() > 0).astype(np.uint8)
    paths = [p for r in rec.test for p in r["paths"]]
    assert len(scores) == n_test and maps.shape[1:] == (args.size, args.size) == masks.shape[1:]
    assert np.allclose(scores, maps.reshape(len(maps), -1).max(1), rtol=1e-6, atol=1e-6)
    assert not masks[labels == 0].any(), "a normal test image has a non-empty mask"
    np.savez_compressed(out / "predictions.npz", scores=scores.astype(np.float32), maps=maps.astype(np.float32),
                        labels=labels, masks=masks, image_paths=np.array(paths))

    t_val = rec.t.get("validation_end", 0.0) - rec.t.get("validation_start", 0.0) if rec.t else None
    result = {
        "library": "anomalib", "category": args.category, "layout": args.layout, "mask_pairing": pairing,
        "n_train": n_train, "n_test": n_test, "n_test_abnormal": int(labels.sum()),
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "betas": list(betas),
        "same_order": planned is not None, "train_batches_per_epoch": [len(e) for e in rec.seen],
        "train_loss_per_epoch": [float(np.mean(x)) for x in rec.losses if x],
        "train_loss_per_step": rec.losses,
        "teacher_unexpected_keys": sorted({k.split(".")[0] for k in res.unexpected_keys}),
        "init": init_info, "transform": repr(transform), "input_decode": args.input_decode,
        "metrics_anomalib_evaluator": own,
        "timings": {"import_seconds": import_seconds, "fit_seconds": fit_seconds,
                    "fit_validation_pass_seconds": t_val, "test_seconds": test_seconds,
                    "predict_ms_per_image": 1000.0 * test_seconds / n_test,
                    "model_forward_ms_per_image": 1000.0 * fwd["seconds"] / n_test,
                    "process_seconds_in_script": time.perf_counter() - _T_PROCESS0},
        "peak_rss_mb_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "versions": {"python": platform.python_version(), "anomalib": anomalib.__version__,
                     "torch": torch.__version__, "torchvision": __import__("torchvision").__version__,
                     "lightning": __import__("lightning").__version__, "timm": __import__("timm").__version__,
                     "numpy": np.__version__},
        "torch_threads": torch.get_num_threads(), "seed": args.seed,
    }
    (out / "anomalib.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({"category": args.category, "evaluator": own, "loss": result["train_loss_per_epoch"],
                      **result["timings"]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
