"""The TAB pre-training loop (supplementary Algorithm 1).

Per step: a shuffled batch of normal images of mixed classes and their
synthetic anomalies goes through the visual encoder in one forward pass (so
BatchNorm sees both, see :class:`PretrainConfig`), is scored against the
frozen class text features, and the backbone, head and logit scale are
stepped. The learning rate follows a cosine schedule stepped once per
*iteration* over the whole run (the authors' code stepped an iteration-length
schedule once per epoch).

Output folder::

    backbone.pt     the product of pre-training: a plain state dict in the
                    backbone family's public key layout, loading with strict=True
                    into torchvision.models.<arch>() (ResNets) or timm's
                    tf_<arch> (EfficientNets, e.g. tf_efficientnet_lite0), and as
                    a weights source (--weights PATH, load_weights(arch, PATH)).
                    Its ImageNet classifier keys (fc.* / classifier.*) are the
                    initial weights' unchanged: the classifier is not on the
                    feature path, is frozen, and is saved only so that the file
                    loads strictly into the family's own network.
    backbone.json   provenance sidecar: family, arch, input normalisation,
                    bn_stats, frozen stages, CKA monitor set, warnings, config
    state.pt        full training state after the last finished epoch (resume)
    metrics.csv     one row per epoch: loss, training alignment accuracy
                    (acc_normal / acc_abnormal), lr, scale, throughput, and on
                    the held-out monitor images heldout_acc_normal /
                    heldout_acc_abnormal, cka_layer2 / cka_layer3 and cka_warning
    train.log       the run's log lines (a resumed run appends)
    text_features.pt  the frozen (C, D) normal/abnormal prototypes used
    head.pt         projection head + logit scale (for the similarity-matrix figure)

Backbones: any family of :mod:`tabad.backbones` (``arch``). Inputs are
normalised with the family's statistics (``family.normalisation(arch)``:
ImageNet mean/std for ResNets, 0.5/0.5 for EfficientNet-Lite).

What trains (:mod:`tabad.pretrain.freeze`): ``bn_stats`` (``auto`` → ``train``
from random weights, ``frozen`` from pre-trained ones; the default lives in
``DEFAULT_BN_STATS``) and ``freeze_stages`` (-1: nothing; N: the stem and the
first N stages).

Feature damage (:mod:`tabad.pretrain.cka`): a seeded ``cka_holdout`` fraction of
the images (at least 1, at most ``cka_max_images``; 0 turns it off) is held out
of training (:func:`~tabad.pretrain.data.monitor_split`). After every epoch,
rank 0 computes on them the plain linear CKA of the layer2/layer3 patch
features against the *initial* backbone's, and the alignment accuracy of the
held-out images and their (fixed) synthetic anomalies. From pre-trained
initial weights, a CKA below ``cka_warn`` (0.8) logs one warning line naming
the epoch, layer and value, recorded in metrics.csv and backbone.json.

Multi-GPU / multi-process: launch with ``torchrun --nproc_per_node K -m tabad
pretrain ...``; DDP is set up from the environment (gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tabad.errors import TabadError
from tabad.files import atomic_write_json, atomic_write_text, atomic_write_torch, sha256_file
from tabad.pretrain.cka import GRID as CKA_GRID
from tabad.pretrain.cka import LAYERS as CKA_LAYERS
from tabad.pretrain.cka import cka_warning


@dataclass
class PretrainConfig:
    """Everything a run depends on. Defaults are the paper's (supplementary §1.1)."""

    data: list[str]
    out: str
    categories: list[str] | None = None
    layout: str = "auto"
    arch: str = "resnet18"
    #: initial backbone weights: imagenet (paper) | random | random:SEED | PATH
    init: str = "imagenet"
    text_encoder: str = "auto"  # clip | minilm | auto (clip when its weights are present)
    text_weights: str | None = None
    prompts: str = "idpa"  # Table 8 variants: one-class, two-class, state-ensemble, clip-template, idpa
    class_names: dict[str, str] = field(default_factory=dict)  # folder -> readable name overrides
    loss: str = "tab"  # tab | joint | normal-only | classification
    head: str = "mlp"
    synthetic: str = "nsa"
    synthetic_options: dict = field(default_factory=dict)
    epochs: int = 200
    batch_size: int = 512
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | constant (per-iteration)
    warmup_steps: int = 0
    init_scale: float = 1 / 0.07
    learn_scale: bool = True
    resize: int = 256
    crop: int = 224
    seed: int = 0
    workers: int = 1
    device: str = "auto"
    amp: bool = True  # CUDA only
    allow_download: bool = False
    cache_dir: str | None = None
    progress: bool = True
    #: BatchNorm running statistics: auto | train | frozen (tabad.pretrain.freeze; auto resolves by init)
    bn_stats: str = "auto"
    #: -1: nothing frozen; N >= 0: the stem and the first N stages of the backbone (tabad.pretrain.freeze)
    freeze_stages: int = -1
    #: fraction of the images held out of training to monitor the features (0: no monitoring)
    cka_holdout: float = 0.1
    #: at most this many monitor images
    cka_max_images: int = 64
    #: warn when a layer's linear CKA to the initial backbone falls below this (tabad.pretrain.cka)
    cka_warn: float = 0.8

    # Settings a resumed run must share with the run it continues.
    RESUME_KEYS = ("data", "categories", "arch", "init", "text_encoder", "prompts", "loss", "head", "synthetic",
                   "synthetic_options", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
                   "schedule", "warmup_steps", "init_scale", "learn_scale", "resize", "crop", "seed",
                   "bn_stats", "freeze_stages", "cka_holdout", "cka_max_images")

    def to_dict(self) -> dict:
        return asdict(self)


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch generators (data workers get theirs from :func:`_worker_init`)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    # Samples draw from per-item generators; this only pins anything else a generator might touch.
    info = torch.utils.data.get_worker_info()
    seed_everything((info.seed if info else worker_id) % 2**32)


def lr_factor(step: int, total: int, schedule: str, warmup: int) -> float:
    """Multiplier of the base LR at iteration ``step`` (0-based) of ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))
    raise ValueError(f"unknown schedule {schedule!r}")


class Trainer:
    def __init__(self, cfg: PretrainConfig, log: Callable[[str], None] = print):
        from dataclasses import replace

        from tabad.pretrain.freeze import resolve_bn_stats

        # "auto" is resolved once: the value that runs is the one a resume is checked against and recorded.
        self.cfg = replace(cfg, bn_stats=resolve_bn_stats(cfg.bn_stats, cfg.init))
        if not 0 <= cfg.cka_holdout < 1:
            raise TabadError(f"cka_holdout={cfg.cka_holdout}: a fraction of the images in [0, 1)")
        self.rank, self.world, self.local_rank = _dist_env()
        self._user_log = log if self.rank == 0 else (lambda *_: None)
        self.out = Path(cfg.out)
        self._init_sha256: str | None = None
        self._check_cka = False

    def log(self, msg: str) -> None:
        """The caller's log, and (rank 0) OUT/train.log."""
        self._user_log(msg)
        if self.rank == 0 and self.out.is_dir():
            with open(self.out / "train.log", "a", encoding="utf-8") as f:
                f.write(msg + "\n")

    # ------------------------------------------------------------------ set-up
    def _device(self) -> torch.device:
        if self.cfg.device == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda", self.local_rank)
            return torch.device("cpu")
        return torch.device(self.cfg.device)

    def _init_distributed(self, device: torch.device) -> None:
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend)

    def _text(self, class_folders: list[str]):
        from tabad.text.encoders import get_text_encoder
        from tabad.text.features import class_text_features
        from tabad.text.prompts import readable_class_name

        names = [readable_class_name(f, self.cfg.class_names) for f in class_folders]
        if self.cfg.loss == "classification":
            return None, names
        # Rank 0 encodes and fills the cache; the others then read it.
        if self.world > 1 and self.rank != 0:
            torch.distributed.barrier()
        encoder = get_text_encoder(self.cfg.text_encoder, text_weights=self.cfg.text_weights)
        feats = class_text_features(encoder, names, variant=self.cfg.prompts, cache_dir=self.cfg.cache_dir)
        if self.world > 1 and self.rank == 0:
            torch.distributed.barrier()
        return feats, names

    # ------------------------------------------------------------------- run
    def run(self) -> Path:
        cfg = self.cfg
        from tabad.backbones import family_of, load_weights
        from tabad.datasets.transforms import Geometry, normalize
        from tabad.pretrain.data import EpochSampler, SyntheticPairs, load_pretrain_images, monitor_split
        from tabad.pretrain.freeze import init_kind
        from tabad.pretrain.loss import tab_loss
        from tabad.pretrain.model import TABModel

        device = self._device()
        self._init_distributed(device)
        seed_everything(cfg.seed)
        state_path = self.out / "state.pt"
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)

        images = load_pretrain_images(cfg.data, cfg.categories, Geometry(cfg.resize, cfg.crop), cfg.layout,
                                      progress=cfg.progress and self.rank == 0)
        if len(images) < 2:
            raise TabadError("pre-training needs at least 2 images")
        # Normal images set aside to monitor the features, never trained on (unless too few images).
        split = monitor_split(images, cfg.cka_holdout, cfg.cka_max_images, cfg.seed)
        monitor_images = images.subset(split.monitor)
        if len(split.train) < len(images):
            images = images.subset(split.train)
        feats, names = self._text(images.class_folders)
        family = family_of(cfg.arch)
        norm = family.normalisation(cfg.arch)  # the statistics the family's weights were trained with
        backbone, init_info = load_weights(cfg.arch, cfg.init, seed=cfg.seed, allow_download=cfg.allow_download)
        text_dim = feats.normal.shape[1] if feats is not None else 1
        model = TABModel(backbone, text_dim, len(names), loss=cfg.loss, head=cfg.head, init_scale=cfg.init_scale,
                         learn_scale=cfg.learn_scale and cfg.loss != "classification",
                         family=family, bn_stats=cfg.bn_stats, freeze_stages=cfg.freeze_stages).to(device)
        # channels_last lets oneDNN / cuDNN pick their fast kernels: ~2x on CPU for EfficientNet-Lite's
        # depthwise convolutions (fwd+bwd), as the benchmark's feature extractor already does.
        model = model.to(memory_format=torch.channels_last)
        self._init_sha256 = init_info.sha256
        self._family, self._norm, self._split, self._monitor_files = family, norm, split, monitor_images.files
        # The initial backbone's features, before any training (or resumed state) touches the model.
        monitor = self._monitor_set(model, monitor_images, family, norm, device) \
            if len(monitor_images) and self.rank == 0 else None
        check_cka = self._check_cka = monitor is not None and init_kind(cfg.init) == "pretrained"
        advice = "consider " + ", ".join((["--bn-stats frozen"] if cfg.bn_stats == "train" else [])
                                         + ["--freeze-stages N" if cfg.freeze_stages < 0 else "more frozen stages",
                                            "a lower --lr or fewer epochs"])
        t_n = feats.normal.to(device) if feats is not None else None
        t_a = feats.abnormal.to(device) if feats is not None else None

        params = [p for p in model.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            raise TabadError(f"unknown optimizer {cfg.optimizer!r}; use sgd or adamw")

        per_rank_batch = max(1, cfg.batch_size // self.world)
        sampler = EpochSampler(len(images), cfg.seed, rank=self.rank, world=self.world)
        steps_per_epoch = math.ceil(len(sampler) / per_rank_batch)
        total_steps = steps_per_epoch * cfg.epochs
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, total_steps, cfg.schedule, cfg.warmup_steps))
        scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")

        start_epoch, history = 0, []
        if state_path.exists():
            start_epoch, history = self._resume(state_path, model, opt, sched, scaler)
        net = model
        if self.world > 1:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)

        generator = None if cfg.loss == "normal-only" else cfg.synthetic
        dataset = SyntheticPairs(images, generator, cfg.synthetic_options, cfg.seed)
        if self.rank == 0 and feats is not None:
            atomic_write_torch(self.out / "text_features.pt",
                               {"normal": feats.normal, "abnormal": feats.abnormal, "class_names": names,
                                "class_folders": images.class_folders, "encoder": feats.encoder_identity,
                                "variant": feats.variant})
        self.log(f"pre-training {cfg.arch} from {init_info.label} on {len(images)} images of {len(names)} classes, "
                 f"{cfg.epochs} epochs × {steps_per_epoch} steps, batch {cfg.batch_size}, loss {cfg.loss}, "
                 f"text {feats.encoder_identity if feats is not None else 'none'} ({cfg.prompts}), "
                 f"synthetic {generator}, device {device}" + (f", {self.world} processes" if self.world > 1 else ""))
        self.log(f"{family.name} inputs normalised with mean {list(norm.mean)} std {list(norm.std)}; batchnorm "
                 f"statistics {cfg.bn_stats}; frozen: {', '.join(model.frozen_names) or 'nothing'}"
                 + ("" if not len(monitor_images) else
                    f"; CKA monitor on {len(monitor_images)} "
                    + ("training image(s) (too few to hold out)" if split.monitor_trained_on else "held-out image(s)")
                    + ("" if check_cka else " (recorded, not checked: random initial weights)")))
        if start_epoch:
            self.log(f"resuming after epoch {start_epoch} from {state_path}")

        from tabad.progress import progress

        for epoch in range(start_epoch, cfg.epochs):
            sampler.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=per_rank_batch, sampler=sampler, num_workers=cfg.workers,
                worker_init_fn=_worker_init if cfg.workers else None, drop_last=False,
                persistent_workers=False, pin_memory=device.type == "cuda")
            net.train()
            sums = {"loss": 0.0, "loss_normal": 0.0, "loss_abnormal": 0.0, "acc_normal": 0.0, "acc_abnormal": 0.0}
            n_img, t0 = 0, time.perf_counter()
            bar = progress(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                           disable=not (cfg.progress and self.rank == 0), leave=False)
            for normal, abnormal, labels in bar:
                labels = labels.to(device)
                b = normal.shape[0]
                x = normal if generator is None else torch.cat([normal, abnormal])
                x = normalize(x.to(device, non_blocking=True), norm.mean, norm.std)
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, enabled=cfg.amp and device.type == "cuda"):
                    out = net(x)
                out_n, out_a = (out, None) if generator is None else (out[:b], out[b:])
                res = tab_loss(out_n.float(), None if out_a is None else out_a.float(), labels, cfg.loss,
                               t_n, t_a, model.scale)
                opt.zero_grad(set_to_none=True)
                scaler.scale(res.loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                for k in sums:
                    v = res.loss.item() if k == "loss" else getattr(res, k)
                    sums[k] += (0.0 if math.isnan(v) else v) * b
                n_img += b
                rate = n_img * (1 if generator is None else 2) / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{res.loss.item():.3f}", acc_n=f"{res.acc_normal:.2f}",
                                acc_a=f"{res.acc_abnormal:.2f}", img_s=f"{rate:.1f}")
            bar.close()
            seconds = time.perf_counter() - t0
            row = {"epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch, "lr": opt.param_groups[0]["lr"],
                   **{k: v / max(n_img, 1) for k, v in sums.items()}, "scale": model.scale.item(),
                   "images_per_s": n_img * (1 if generator is None else 2) * self.world / seconds,
                   "samples_per_s": n_img * self.world / seconds, "seconds": seconds}
            row.update(self._monitor_eval(model, monitor, family, norm, device, generator, t_n, t_a))
            warning = cka_warning(epoch + 1, {k: row[f"cka_{k}"] for k in CKA_LAYERS}, cfg.cka_warn,
                                  advice) if check_cka else None
            row["cka_warning"] = warning or ""
            history.append(row)
            self.log(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f} acc normal {row['acc_normal']:.3f} "
                     f"abnormal {row['acc_abnormal']:.3f} scale {row['scale']:.2f} "
                     f"{row['images_per_s']:.1f} img/s"
                     + ("" if monitor is None else
                        f"; held-out acc normal {_fmt(row['heldout_acc_normal'])} abnormal "
                        f"{_fmt(row['heldout_acc_abnormal'])}, CKA to initial layer2 {_fmt(row['cka_layer2'])} "
                        f"layer3 {_fmt(row['cka_layer3'])}"))
            if warning:
                self.log(warning)
            if self.rank == 0:
                self._save_state(state_path, model, opt, sched, scaler, epoch + 1, history)
        if self.rank == 0:
            self._export(model, init_info, feats, names, images, history)
        if self.world > 1:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
        return self.out / "backbone.pt"

    # ------------------------------------------------------------- monitor
    def _monitor_set(self, model, images, family, norm, device) -> dict:
        """Held-out images, their fixed synthetic anomalies, and the initial backbone's patch features."""
        from tabad.pretrain.cka import patch_features
        from tabad.pretrain.data import SyntheticPairs

        generator = None if self.cfg.loss == "normal-only" else self.cfg.synthetic
        pairs = SyntheticPairs(images, generator, self.cfg.synthetic_options, self.cfg.seed)
        items = [pairs[i] for i in range(len(pairs))]  # keys 0..n-1: epoch 0's anomalies, the same every epoch
        was_training = model.training
        model.eval()
        try:
            reference = patch_features(family, model.backbone, torch.stack([n for n, _, _ in items]), norm.mean,
                                       norm.std, device)
        finally:
            model.train(was_training)
        return {"normal": torch.stack([n for n, _, _ in items]), "abnormal": torch.stack([a for _, a, _ in items]),
                "labels": torch.tensor([c for _, _, c in items]), "reference": reference}

    def _monitor_eval(self, model, monitor, family, norm, device, generator, t_n, t_a) -> dict:
        """Held-out alignment accuracy and CKA to the initial backbone (eval mode; no state, no random numbers)."""
        from tabad.datasets.transforms import normalize
        from tabad.pretrain.cka import cka_to_reference, patch_features
        from tabad.pretrain.loss import tab_loss

        out = {"heldout_acc_normal": None, "heldout_acc_abnormal": None, **{f"cka_{k}": None for k in CKA_LAYERS}}
        if monitor is None:
            return out
        model.eval()
        try:
            with torch.no_grad():
                current = patch_features(family, model.backbone, monitor["normal"], norm.mean, norm.std, device)

                def encode(images):
                    return torch.cat([model(normalize(images[i : i + 32].to(device), norm.mean, norm.std)).float()
                                      for i in range(0, len(images), 32)])

                res = tab_loss(encode(monitor["normal"]), None if generator is None else encode(monitor["abnormal"]),
                               monitor["labels"].to(device), self.cfg.loss, t_n, t_a, model.scale)
        finally:
            model.train()
        for k, v in cka_to_reference(monitor["reference"], current).items():
            out[f"cka_{k}"] = v
        out["heldout_acc_normal"] = None if math.isnan(res.acc_normal) else res.acc_normal
        out["heldout_acc_abnormal"] = None if math.isnan(res.acc_abnormal) else res.acc_abnormal
        return out

    # --------------------------------------------------------------- state
    def _save_state(self, path, model, opt, sched, scaler, epoch, history) -> None:
        # tensors and plain values only: _resume reads it with weights_only=True
        state = {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                 "torch_rng": torch.get_rng_state(), "history": history, "init_sha256": self._init_sha256,
                 "config": {k: self.cfg.to_dict()[k] for k in PretrainConfig.RESUME_KEYS}}
        atomic_write_torch(path, state)
        self._write_metrics(history)

    def _resume(self, path, model, opt, sched, scaler):
        try:
            with warnings.catch_warnings():
                # torch warns about the serialisation protocol of foreign files it then refuses anyway
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            # torch's own message advises turning safe loading off, which must never be done with this file
            raise TabadError(f"{path}: not a readable training state (truncated, damaged, or holding more than "
                             f"tensors and plain values: {type(exc).__name__}); delete it to start over") from exc
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            raise TabadError(f"{path}: not a tabad pre-training state; delete it to start over")
        want = {k: self.cfg.to_dict()[k] for k in PretrainConfig.RESUME_KEYS}
        diff = {k: (state["config"].get(k), v) for k, v in want.items() if state["config"].get(k) != v}
        if diff:
            lines = "\n".join(f"  {k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise TabadError(f"{path}: the run in {self.out} was started with other settings:\n{lines}\n"
                             "Resume with the same settings, or choose another output folder.")
        if state.get("init_sha256") and self._init_sha256 and state["init_sha256"] != self._init_sha256:
            raise TabadError(f"{path}: the run in {self.out} started from other initial weights "
                             f"(sha256 {state['init_sha256'][:16]}…, now {self._init_sha256[:16]}… for "
                             f"--init {self.cfg.init}); restore them, or choose another output folder")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        return state["epoch"], state["history"]

    def _write_metrics(self, history: list[dict]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
        atomic_write_text(self.out / "metrics.csv", buf.getvalue())

    def _export(self, model, init_info, feats, names, images, history) -> None:
        from tabad.version import __version__
        from tabad.provenance import environment

        backbone_sd = {k: v.detach().cpu().contiguous() for k, v in model.backbone.state_dict().items()}
        path = self.out / "backbone.pt"
        atomic_write_torch(path, backbone_sd)  # bytes depend on the tensors only: the sha256 is a content hash
        sidecar = {
            "kind": "tab-backbone",
            "arch": self.cfg.arch,
            "sha256": sha256_file(path),
            "tabad_version": __version__,
            "text_encoder": None if feats is None else feats.encoder_identity,
            "prompts": self.cfg.prompts,
            "prompts_hash": None if feats is None else feats.prompts_hash,
            "loss": self.cfg.loss,
            "synthetic": None if self.cfg.loss == "normal-only" else self.cfg.synthetic,
            "init": init_info.to_dict(),
            "family": self._family.name,
            "layout": self._family.layout,
            "normalisation": self._norm.to_dict(),
            "bn_stats": self.cfg.bn_stats,
            "freeze_stages": self.cfg.freeze_stages,
            "frozen": list(model.frozen_names),
            "classifier": "the initial weights' ImageNet classifier, frozen and unchanged: kept only so that "
                          "backbone.pt loads strictly into the family's network",
            "monitor": {"metric": "plain linear CKA of centred features (tabad.pretrain.cka)",
                        "layers": list(CKA_LAYERS), "grid": CKA_GRID,
                        "n_images": len(self._split.monitor),
                        "held_out": bool(len(self._split.monitor)) and not self._split.monitor_trained_on,
                        "files": list(self._monitor_files),
                        "checked": self._check_cka,
                        "warn_level": self.cfg.cka_warn},
            "warnings": [row["cka_warning"] for row in history if row.get("cka_warning")],
            "data_roots": images.roots,
            "categories": images.class_folders,
            "class_names": names,
            "n_images": len(images),
            "epochs": self.cfg.epochs,
            "seed": self.cfg.seed,
            "final_metrics": history[-1] if history else None,
            "config": self.cfg.to_dict(),
            "environment": environment(),
        }
        atomic_write_json(self.out / "backbone.json", sidecar)
        # The head and logit scale are not part of the product, but the image-text
        # similarity figure (supplementary Fig. 4) needs them.
        atomic_write_torch(self.out / "head.pt",
                           {"head": {k: v.detach().cpu() for k, v in model.head.state_dict().items()},
                            "head_kind": self.cfg.head, "loss": self.cfg.loss,
                            "log_scale": model.log_scale.detach().cpu(),
                            "class_folders": images.class_folders, "class_names": names})
        self.log(f"backbone weights: {path} (sha256 {sidecar['sha256'][:16]}…), provenance: {path.with_suffix('.json')}")


def pretrain(cfg: PretrainConfig, resume: bool = False, log: Callable[[str], None] = print) -> Path:
    """Run pre-training; refuses to overwrite an existing run unless ``resume``."""
    state = Path(cfg.out) / "state.pt"
    if state.exists() and not resume:
        raise TabadError(f"{cfg.out} already holds a run ({state}); pass resume=True to continue it, "
                         "or choose another output folder", option="resume")
    return Trainer(cfg, log).run()
