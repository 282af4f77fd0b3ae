"""Train and test anomalib 2.7.0's ReverseDistillation on one category; dump raw predictions.

The anomalib half of ``benchmarks/rd4ad_vs_anomalib.py``; run it with anomalib's own
interpreter (``.anomalib-venv/bin/python``). Data, transform, teacher loading, raw-output
capture and outputs come from ``harness/anomalib_side.py``; specific to RD4AD:

* ``ReverseDistillation(backbone="resnet18", layers=[layer1..3], anomaly_map_mode="add",
  pre_trained=False)`` with ``PreProcessor(Resize((size, size)) → ImageNet Normalize)``;
  ``--weights`` is the teacher.
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
  ``Engine.test``. ``anomalib.json`` also holds the per-step and per-epoch training loss.
"""

from __future__ import annotations

import time

from harness.anomalib_side import (evaluator_metrics, folder_datamodule, import_stack, load_backbone, make_engine,
                                   prepare, RawOutputs, record_test_batches, runner_parser, save_predictions,
                                   seed_and_threads, stage_timer, transform, write_result)


def main(argv: list[str] | None = None) -> int:
    p = runner_parser(__doc__, batch_size=16)
    p.add_argument("--init", default=None, help="anomalib-keyed initial bottleneck/decoder weights (.pt)")
    p.add_argument("--order", default=None, help="JSON: training batches per epoch (file names)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--betas", default="0.5,0.999")
    p.add_argument("--input-decode", choices=["anomalib", "div255"], default="anomalib",
                   help="anomalib: its own read_image (uint8 * (1/255), torchvision's to_dtype); div255: uint8 / 255 "
                        "(torchvision's ToTensor, the official RD4AD code and tabad): the same input bits as tabad")
    args = p.parse_args(argv)
    out, data_root = prepare(args)
    cat_root = data_root / args.category
    betas = tuple(float(b) for b in args.betas.split(","))

    import_seconds = import_stack("anomalib.models")
    import json
    import os
    from pathlib import Path

    import numpy as np
    import torch
    from anomalib.metrics import Evaluator
    from anomalib.models import ReverseDistillation
    from anomalib.pre_processing import PreProcessor
    from lightning.pytorch import Callback
    from torch.utils.data import DataLoader

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
    seed_and_threads(args)

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
    pre = transform(args.size)
    model = ReverseDistillation(backbone="resnet18", layers=("layer1", "layer2", "layer3"),
                                anomaly_map_mode="add", pre_trained=False,
                                pre_processor=PreProcessor(transform=pre),
                                evaluator=Evaluator(test_metrics=evaluator_metrics()), visualizer=False)
    rd = model.model
    teacher = load_backbone(rd.encoder.feature_extractor, args.weights, what="teacher weights")

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
    raw = RawOutputs(rd)

    class TrainRecorder(Callback):
        """The training batches seen (file names) and their losses."""

        def __init__(self) -> None:
            self.seen: list[list[list[str]]] = []
            self.losses: list[list[float]] = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.seen.append([])
            self.losses.append([])

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen[-1].append([os.path.relpath(p, cat_root) for p in batch.image_path])

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses[-1].append(float(outputs["loss"]))

    train, timer, tests = TrainRecorder(), stage_timer(), record_test_batches(data_root)
    engine = make_engine(out, [train, timer, tests], max_epochs=args.epochs,
                         check_val_every_n_epoch=max(args.epochs, 1))

    t = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - t
    if planned is not None and train.seen != planned:
        raise SystemExit("training did not see the planned batches")
    raw.clear()

    t = time.perf_counter()
    test_out = engine.test(model=model, datamodule=datamodule, verbose=False)
    test_seconds = time.perf_counter() - t
    own = {k: float(v) for k, v in (test_out[0] if test_out else {}).items()}

    if len(raw) != len(tests):
        raise SystemExit(f"captured {len(raw)} raw batches but {len(tests)} test batches")
    scores, maps = raw.arrays()
    labels, masks, paths = tests.arrays()
    save_predictions(out, scores=scores, maps=maps, labels=labels, masks=masks, image_paths=paths, n_test=n_test,
                     size=(args.size, args.size))

    result = {
        "library": "anomalib", "category": args.category, "layout": args.layout, "mask_pairing": pairing,
        "n_train": n_train, "n_test": n_test, "n_test_abnormal": int(labels.sum()),
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "betas": list(betas),
        "same_order": planned is not None, "train_batches_per_epoch": [len(e) for e in train.seen],
        "train_loss_per_epoch": [float(np.mean(x)) for x in train.losses if x],
        "train_loss_per_step": train.losses,
        "teacher_unexpected_keys": teacher["unexpected_keys"],
        "init": init_info, "transform": repr(pre), "input_decode": args.input_decode,
        "metrics_anomalib_evaluator": own,
        "timings": {"import_seconds": import_seconds, "fit_seconds": fit_seconds,
                    "fit_validation_pass_seconds": timer.validation_seconds(), "test_seconds": test_seconds,
                    "predict_ms_per_image": 1000.0 * test_seconds / n_test,
                    "model_forward_ms_per_image": 1000.0 * raw.forward_seconds / n_test},
    }
    write_result(out, args, result, {"evaluator": own, "loss": result["train_loss_per_epoch"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
