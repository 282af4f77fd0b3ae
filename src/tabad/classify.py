"""``tabad classify``: defect classification with a linear probe and a fine-tuned backbone.

The TAB paper's Table 3 protocol on MixedWM38 wafer maps (supplementary
§3.2): the data are split 8:2 into training and test sets; for every weights
source a ResNet is

* **linear probe** (``linear-probe``, "Freeze ✓"): frozen backbone in
  ``eval()`` mode, features = global-average-pooled ``layer4`` (512-d for
  ResNet18), a trainable ``Linear`` on top;
* **fine-tuned** (``fine-tune``): the whole backbone and the ``Linear``
  trained together (BatchNorm in training mode).

Data:

* a MixedWM38-format ``.npz`` (or a folder with ``Wafer_Map_Datasets.npz``):
  *multi-label* over the 8 basic patterns — ``BCEWithLogits`` loss, a pattern
  is predicted when its sigmoid > 0.5; accuracy is the exact-match (subset)
  accuracy over all 8 patterns (a normal wafer is right only when nothing is
  predicted), precision / recall / F1 are macro averages over the 8 patterns
  (sklearn's ``average="macro"``, ``zero_division=0``), plus per-pattern
  values;
* a class-folder root (``ROOT/<class>/*.png``, ImageFolder-like):
  *single-label* over the classes — cross-entropy, argmax; accuracy and macro
  precision / recall / F1 over the classes present in the test labels or the
  predictions (sklearn's default), plus per-class values.

Wafer maps become grey images (0 no die, 127 normal, 255 defective;
:func:`tabad.datasets.wafers.wafer_to_image`), by default at their own size
(one pixel per die: 52 x 52 for MixedWM38), or resized with nearest neighbour
to ``image_size``; class-folder images are resized (bilinear) to
``image_size`` x ``image_size`` (default 64). Both are normalised with the
ImageNet mean and std, as for every tabad backbone. The paper does not state
its input size (methods.md §7 suggests nearest-neighbour upsampling to 224,
``--image-size 224``, a GPU setting); the native size keeps a CPU run to
minutes, and on the procedural maps it scored as well as 64 px on a
validation split.

Split: stratified by class (by label row for wafers), ``test_fraction`` of
each class (at least one map of every class with two or more) goes to the
test split, drawn with ``seed``; the sha256 of the index lists is recorded.
No model selection happens on the test split: the model after the last epoch
is evaluated. To choose epochs or learning rates without looking at the test
split, ``evaluate="validation"`` (``--validation``) carves a validation split
out of the training portion the same way and reports on it instead; the test
split is then never used.

Training defaults (the paper gives none; chosen on such a validation split of
the procedural wafer data, ``tabad make-wafers --seed 0``, with random
weights): Adam, batch 32, learning rate decayed to 0 with a per-batch cosine
schedule; the linear probe runs 100 epochs at lr 1e-2 (better than 1e-3 on
validation) on cached features standardised with the training split's mean
and std (an affine map the linear layer could absorb; it only conditions the
optimisation); fine-tuning runs 12 epochs at lr 1e-3 (2e-3 and batch 16 did
no better; more epochs help a little but cost CPU minutes).
``augment`` (default on) applies a random one of the 8 flips / 90° rotations
to every training image — label-preserving for wafer maps; the linear probe
sees the same augmentation through cached features of all 8 views. Turn it
off for class folders whose classes depend on orientation.

Output folder::

    results.json   {"provenance": {...}, "results": [...]}: per (weights, mode)
                   accuracy, precision, recall, f1, per-class values, training log
    results.csv    one row per (weights, mode)
    per_class.csv  one row per (weights, mode, class)
    results.md     Table-3-style table and a per-class F1 table
    pairs/         <weights>__<mode>.json (+ .pred.npz test logits) per finished
                   result: the resume state (:class:`tabad.store.ResultStore`);
                   a fine-tune in progress keeps a
                   per-epoch <weights>__fine-tune.train.pt, so an interrupted
                   run continues where it stopped and ends with the same numbers.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tabad import tables
from tabad.errors import ConfigError, DataError, TabadError
from tabad.files import atomic_write_torch
from tabad.store import ResultStore, run_key, write_csv

MODES = ("linear-probe", "fine-tune")
#: input side for class-folder images when no image size is given
DEFAULT_FOLDER_IMAGE_SIZE = 64
MODE_TITLES = {"linear-probe": "linear probe", "fine-tune": "fine-tune"}


@dataclass
class ClassifyConfig:
    data: Path
    out: Path
    weights: list[str] = field(default_factory=lambda: ["random"])
    modes: list[str] = field(default_factory=lambda: list(MODES))
    backbone: str = "resnet18"
    seed: int = 0
    #: side of the square network input; None: wafer maps keep their size (one pixel per die,
    #: 52 for MixedWM38), class-folder images become 64 x 64.
    image_size: int | None = None
    test_fraction: float = 0.2
    #: ``"test"`` (default) or ``"validation"``: evaluate on a split of the training portion.
    evaluate: str = "test"
    #: stratified subsample of the data before splitting (None: all); for quick CPU runs on the real set.
    max_samples: int | None = None
    epochs: int = 12  # fine-tune
    probe_epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-3  # fine-tune
    probe_lr: float = 1e-2
    weight_decay: float = 0.0
    #: ``cosine`` (lr decays to 0 over the run, stepped per batch) or ``constant``.
    schedule: str = "cosine"
    augment: bool = True
    allow_download: bool = False
    resume: bool = True
    progress: bool = True
    device: str = "auto"
    title: str = "tabad classify"


# ----------------------------------------------------------------------------
# metrics (pure functions)


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 from counts; 0 where undefined (sklearn's zero_division=0)."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    p = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    r = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
    f = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)
    return p, r, f


def _per_class(names: Sequence[str], p, r, f, support) -> dict:
    return {str(n): {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
            for i, n in enumerate(names)}


def multilabel_metrics(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str] | None = None) -> dict:
    """Exact-match accuracy and macro precision / recall / F1 of 0/1 matrices ``(N, K)``.

    Equal to sklearn's ``accuracy_score`` and ``precision_recall_fscore_support(
    average="macro", zero_division=0)`` on multi-label indicator matrices.
    """
    yt, yp = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    if yt.shape != yp.shape or yt.ndim != 2:
        raise ValueError(f"y_true and y_pred must be (N, K) of equal shape, got {yt.shape} and {yp.shape}")
    names = list(names) if names is not None else [str(k) for k in range(yt.shape[1])]
    tp = (yt & yp).sum(0)
    fp = (~yt & yp).sum(0)
    fn = (yt & ~yp).sum(0)
    p, r, f = _prf(tp, fp, fn)
    return {
        "accuracy": float((yt == yp).all(1).mean()) if len(yt) else float("nan"),
        "precision": float(p.mean()), "recall": float(r.mean()), "f1": float(f.mean()),
        "label_accuracy": float((yt == yp).mean()) if len(yt) else float("nan"),
        "per_class": _per_class(names, p, r, f, yt.sum(0)),
    }


def multiclass_metrics(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str] | None = None) -> dict:
    """Accuracy and macro precision / recall / F1 of integer labels ``(N,)``.

    The macro average runs over the classes that occur in ``y_true`` or
    ``y_pred`` (sklearn's default ``labels=None``), with ``zero_division=0``;
    ``per_class`` lists every class of ``names``.
    """
    yt, yp = np.asarray(y_true).astype(np.int64).ravel(), np.asarray(y_pred).astype(np.int64).ravel()
    if yt.shape != yp.shape:
        raise ValueError(f"y_true and y_pred differ in length: {yt.shape} vs {yp.shape}")
    k = max(len(names) if names is not None else 0, int(yt.max(initial=-1)) + 1, int(yp.max(initial=-1)) + 1)
    names = list(names) if names is not None else [str(i) for i in range(k)]
    tp = np.bincount(yt[yt == yp], minlength=k)
    n_true, n_pred = np.bincount(yt, minlength=k), np.bincount(yp, minlength=k)
    p, r, f = _prf(tp, n_pred - tp, n_true - tp)
    present = (n_true + n_pred) > 0
    mean = (lambda a: float(a[present].mean())) if present.any() else (lambda a: float("nan"))
    return {
        "accuracy": float((yt == yp).mean()) if len(yt) else float("nan"),
        "precision": mean(p), "recall": mean(r), "f1": mean(f),
        "per_class": _per_class(names, p, r, f, n_true),
    }


# ----------------------------------------------------------------------------
# data


@dataclass
class ClassifyData:
    """Everything the runs need about the data, independent of the weights."""

    task: str  # "multilabel" or "multiclass"
    class_names: list[str]  # output units: the 8 patterns, or the folder classes
    targets: np.ndarray  # (N, K) uint8 multi-hot, or (N,) int64
    groups: list[str]  # stratification key per sample
    path: Path
    sha256: str
    kind: str  # "wafer-npz" or "class-folders"
    maps: np.ndarray | None = None  # wafers: uint8 (N, H, W)
    pixels: np.ndarray | None = None  # class folders: uint8 (N, 3, S, S)
    files: list[str] | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def images(self, idx: np.ndarray, size: int) -> np.ndarray:
        """uint8 ``(B, 3, size, size)`` of the samples ``idx``."""
        if self.maps is not None:
            from tabad.datasets.wafers import wafer_to_image

            return wafer_to_image(self.maps[idx], size)
        return self.pixels[idx]

    def input_size(self, requested: int | None) -> int:
        """The network input side: ``requested``, else the maps' own size / the folder images' size."""
        if requested:
            return int(requested)
        return int(self.maps.shape[-1]) if self.maps is not None else int(self.pixels.shape[-1])


def _is_wafer_source(path: Path) -> bool:
    from tabad.datasets.wafers import DEFAULT_FILE_NAME

    return path.is_file() or (path.is_dir() and (path / DEFAULT_FILE_NAME).is_file())


def load_classify_data(path: str | Path, image_size: int | None = None) -> ClassifyData:
    """A wafer ``.npz`` (or folder with ``Wafer_Map_Datasets.npz``), or a class-folder root."""
    from tabad.files import sha256_file

    path = Path(path)
    if not path.exists():
        raise DataError(path, "data not found (expected a wafer .npz, a folder with Wafer_Map_Datasets.npz, "
                              "or a folder of class folders)")
    if _is_wafer_source(path):
        from tabad.datasets.wafers import PATTERNS, class_names, read_wafer_npz

        wd = read_wafer_npz(path)
        return ClassifyData("multilabel", list(PATTERNS), wd.labels, class_names(wd.labels), wd.path,
                            sha256_file(wd.path), "wafer-npz", maps=wd.maps)
    return _load_class_folders(path, image_size or DEFAULT_FOLDER_IMAGE_SIZE)


def _load_class_folders(root: Path, size: int) -> ClassifyData:
    from PIL import Image

    from tabad.datasets.images import is_image_file, load_image
    from tabad.files import sha256_file

    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                     and any(is_image_file(f) for f in d.iterdir()))
    if len(classes) < 2:
        raise DataError(root, f"expected a wafer .npz or a folder of at least 2 class folders of images "
                              f"(ROOT/<class>/*.png); found {len(classes)} class folder(s) with images")
    files, targets = [], []
    for c, name in enumerate(classes):
        members = sorted(f for f in (root / name).iterdir() if f.is_file() and is_image_file(f))
        files += members
        targets += [c] * len(members)
    pixels = np.zeros((len(files), 3, size, size), dtype=np.uint8)
    h = hashlib.sha256()
    for i, f in enumerate(files):
        img = load_image(f).resize((size, size), Image.BILINEAR)
        pixels[i] = np.asarray(img).transpose(2, 0, 1)
        h.update(f"{f.relative_to(root).as_posix()}\0{sha256_file(f)}\n".encode())
    targets_np = np.asarray(targets, dtype=np.int64)
    return ClassifyData("multiclass", classes, targets_np, [classes[t] for t in targets], root, h.hexdigest(),
                        "class-folders", pixels=pixels, files=[str(f.relative_to(root)) for f in files])


def stratified_split(groups: Sequence[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep, held_out) sorted index arrays; ``fraction`` of every group is held out.

    Each group with two or more members gives at least one sample to each side;
    a group of one stays on the ``keep`` side. Groups are visited in sorted
    order with one ``numpy`` generator seeded by ``seed``, so the split depends
    only on the group labels, ``fraction`` and ``seed``.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"split fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    keep, out = [], []
    for g in sorted(members):
        idx = np.asarray(members[g])
        perm = rng.permutation(idx)
        n_out = 0 if len(idx) < 2 else min(max(int(round(fraction * len(idx))), 1), len(idx) - 1)
        out += perm[:n_out].tolist()
        keep += perm[n_out:].tolist()
    return np.sort(np.asarray(keep, dtype=np.int64)), np.sort(np.asarray(out, dtype=np.int64))


def split_hash(train_idx: np.ndarray, test_idx: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(b"train:" + np.asarray(train_idx, dtype="<i8").tobytes())
    h.update(b"test:" + np.asarray(test_idx, dtype="<i8").tobytes())
    return h.hexdigest()


def make_splits(data: ClassifyData, cfg: ClassifyConfig) -> dict:
    """Indices (into ``data``) of the training and evaluation samples, and the split's record."""
    n_all = len(data)
    pool = np.arange(n_all)
    if cfg.max_samples is not None and cfg.max_samples < n_all:
        if cfg.max_samples < 2:
            raise ConfigError(f"max_samples must be >= 2, got {cfg.max_samples}")
        _, pool = stratified_split(data.groups, cfg.max_samples / n_all, cfg.seed + 7919)
    groups = [data.groups[i] for i in pool]
    tr, te = stratified_split(groups, cfg.test_fraction, cfg.seed)
    train_idx, test_idx = pool[tr], pool[te]
    record = {"test_fraction": cfg.test_fraction, "n_pool": int(len(pool)), "n_train": int(len(train_idx)),
              "n_test": int(len(test_idx)), "hash": split_hash(train_idx, test_idx), "evaluate": cfg.evaluate}
    if cfg.evaluate == "validation":
        # a validation split from the training portion; the test split is not used at all
        tr2, va = stratified_split([data.groups[i] for i in train_idx], cfg.test_fraction, cfg.seed + 1)
        train_idx, eval_idx = train_idx[tr2], train_idx[va]
        record.update(n_train=int(len(train_idx)), n_validation=int(len(eval_idx)),
                      validation_hash=split_hash(train_idx, eval_idx))
    elif cfg.evaluate == "test":
        eval_idx = test_idx
    else:
        raise ConfigError(f"evaluate must be 'test' or 'validation', got {cfg.evaluate!r}")
    if len(train_idx) == 0 or len(eval_idx) == 0:
        raise DataError(data.path, f"too few samples ({n_all}) for a training and an evaluation split")
    return {"train": train_idx, "eval": eval_idx, "record": record}


# ----------------------------------------------------------------------------
# training


def _step(loss, opt, sched) -> float:
    """One optimiser step (and per-batch schedule step); the batch loss."""
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return loss.detach().item()


def _to_input(images_uint8: np.ndarray, device, normalisation):
    import torch

    from tabad.datasets.transforms import normalize

    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).to(device)
    return normalize(x, normalisation.mean, normalisation.std)


def dihedral(x, k: int):
    """The ``k``-th (0..7) of the 8 flips / 90° rotations of a batch ``(B, C, H, W)``; 0 is the identity."""
    import torch

    x = torch.rot90(x, k % 4, dims=(2, 3)) if k % 4 else x
    return torch.flip(x, dims=(3,)) if k >= 4 else x


def _augment(x, views: np.ndarray):
    import torch

    out = torch.empty_like(x)
    for k in np.unique(views):
        sel = torch.from_numpy(np.flatnonzero(views == k))
        out[sel] = dihedral(x[sel], int(k))
    return out


def _loss_fn(task: str):
    import torch.nn.functional as F

    if task == "multilabel":
        return lambda logits, y: F.binary_cross_entropy_with_logits(logits, y.float())
    return lambda logits, y: F.cross_entropy(logits, y.long())


def _predict(task: str, logits: np.ndarray) -> np.ndarray:
    return (logits > 0).astype(np.uint8) if task == "multilabel" else logits.argmax(1)


def _batches(n: int, batch_size: int, rng: np.random.Generator | None, min_last: int = 1):
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        if len(idx) < min_last and i > 0:
            break
        yield idx


def _features(model, data: ClassifyData, idx: np.ndarray, cfg: ClassifyConfig, device, size: int, view: int = 0,
              desc: str = "features"):
    """Pooled layer4 features ``(len(idx), D)`` of a frozen model (``fc`` = identity)."""
    import torch

    from tabad.progress import progress

    out = []
    with torch.no_grad():
        for b in progress(list(_batches(len(idx), max(cfg.batch_size, 64), None)), desc=desc, unit="batch",
                          leave=False, disable=not cfg.progress):
            x = _to_input(data.images(idx[b], size), device, model.normalisation)
            out.append(model(dihedral(x, view)).float().cpu())
    return torch.cat(out)


def _n_batches(n: int, batch_size: int, min_last: int = 1) -> int:
    return sum(1 for _ in _batches(n, batch_size, None, min_last))


def _scheduler(opt, cfg: ClassifyConfig, total_steps: int):
    import math

    import torch

    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    total = max(int(total_steps), 1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total)))


def _epoch_rng(cfg: ClassifyConfig, mode: str, epoch: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, MODES.index(mode), epoch])


def _run_linear_probe(model, data: ClassifyData, split: dict, cfg: ClassifyConfig, device, desc: str,
                      size: int) -> dict:
    import torch

    from tabad.progress import progress

    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tr, ev = split["train"], split["eval"]
    t0 = time.perf_counter()
    n_views = 8 if cfg.augment else 1
    train_feats = torch.stack([_features(model, data, tr, cfg, device, size, v, f"{desc}: features view {v + 1}/{n_views}")
                               for v in range(n_views)])  # (V, N, D)
    eval_feats = _features(model, data, ev, cfg, device, size, 0, f"{desc}: eval features")
    mean = train_feats.reshape(-1, train_feats.shape[-1]).mean(0)
    std = train_feats.reshape(-1, train_feats.shape[-1]).std(0)
    # a floor keeps dimensions that are (almost) constant on the training split from blowing up
    std = std.clamp_min(max(1e-2 * float(std.mean()), 1e-6))
    train_feats, eval_feats = (train_feats - mean) / std, (eval_feats - mean) / std
    feature_seconds = time.perf_counter() - t0

    torch.manual_seed(cfg.seed)
    head = torch.nn.Linear(train_feats.shape[-1], len(data.class_names))
    opt = torch.optim.Adam(head.parameters(), lr=cfg.probe_lr, weight_decay=cfg.weight_decay)
    sched = _scheduler(opt, cfg, cfg.probe_epochs * _n_batches(len(split["train"]), cfg.batch_size))
    loss_fn = _loss_fn(data.task)
    y_train = torch.from_numpy(np.asarray(data.targets[tr]))
    log = []
    bar = progress(range(cfg.probe_epochs), desc=desc, unit="epoch", disable=not cfg.progress)
    for epoch in bar:
        rng = _epoch_rng(cfg, "linear-probe", epoch)
        views = rng.integers(0, n_views, len(tr))
        total, count = 0.0, 0
        for b in _batches(len(tr), cfg.batch_size, rng):
            x = train_feats[torch.from_numpy(views[b]), torch.from_numpy(b)]
            total += _step(loss_fn(head(x), y_train[b]), opt, sched) * len(b)
            count += len(b)
        log.append({"epoch": epoch + 1, "loss": round(total / count, 6)})
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    with torch.no_grad():
        logits = head(eval_feats).numpy()
    return {"logits": logits, "train_log": log, "train_seconds": time.perf_counter() - t0,
            "feature_seconds": round(feature_seconds, 3), "epochs": cfg.probe_epochs, "lr": cfg.probe_lr}


def _run_fine_tune(model, data: ClassifyData, split: dict, cfg: ClassifyConfig, device, desc: str,
                   checkpoint: Path, key: str, size: int) -> dict:
    import torch

    from tabad.progress import progress

    torch.manual_seed(cfg.seed)
    head = torch.nn.Linear(model.dim, len(data.class_names))
    net = torch.nn.Sequential(model, head).to(device)
    for p in net.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = _scheduler(opt, cfg, cfg.epochs * _n_batches(len(split["train"]), cfg.batch_size, min_last=2))
    loss_fn = _loss_fn(data.task)
    tr, ev = split["train"], split["eval"]
    y_train = torch.from_numpy(np.asarray(data.targets[tr]))
    log: list[dict] = []
    start, seconds = 0, 0.0
    if cfg.resume and checkpoint.is_file():
        try:
            state = torch.load(checkpoint, map_location=device, weights_only=True)
            if state.get("key") == key:
                net.load_state_dict(state["net"])
                opt.load_state_dict(state["optimizer"])
                sched.load_state_dict(state["scheduler"])
                start, log, seconds = state["epoch"], state["log"], state["seconds"]
        except Exception:  # a damaged checkpoint is recomputed, never trusted
            start, log, seconds = 0, [], 0.0
    t0 = time.perf_counter() - seconds
    bar = progress(range(start, cfg.epochs), desc=desc, unit="epoch", initial=start, total=cfg.epochs,
                   disable=not cfg.progress)
    for epoch in bar:
        net.train()
        rng = _epoch_rng(cfg, "fine-tune", epoch)
        total, count = 0.0, 0
        # BatchNorm in training mode cannot take a final batch of one sample
        for b in _batches(len(tr), cfg.batch_size, rng, min_last=2):
            x = _to_input(data.images(tr[b], size), device, model.normalisation)
            if cfg.augment:
                x = _augment(x, rng.integers(0, 8, len(b)))
            total += _step(loss_fn(net(x), y_train[b].to(device)), opt, sched) * len(b)
            count += len(b)
        log.append({"epoch": epoch + 1, "loss": round(total / count, 6)})
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
        state = {"key": key, "epoch": epoch + 1, "net": net.state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "log": log,
                 "seconds": time.perf_counter() - t0}
        atomic_write_torch(checkpoint, state)
    net.eval()
    logits = []
    with torch.no_grad():
        for b in _batches(len(ev), max(cfg.batch_size, 64), None):
            logits.append(net(_to_input(data.images(ev[b], size), device, model.normalisation)).float().cpu())
    return {"logits": torch.cat(logits).numpy(), "train_log": log, "train_seconds": time.perf_counter() - t0,
            "epochs": cfg.epochs, "lr": cfg.lr}


# ----------------------------------------------------------------------------
# the run


def result_key(cfg: ClassifyConfig, data: ClassifyData, weights_sha: str, mode: str, split_record: dict,
               size: int) -> str:
    """Everything that changes one (weights, mode) result; a stored result is reused only if this matches."""
    from tabad.version import __version__

    return run_key(
        data_sha256=data.sha256, weights_sha256=weights_sha, mode=mode, backbone=cfg.backbone,
        seed=cfg.seed, image_size=size, split=split_record, batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay, augment=cfg.augment, schedule=cfg.schedule, version=__version__,
        **({"epochs": cfg.epochs, "lr": cfg.lr} if mode == "fine-tune"
           else {"epochs": cfg.probe_epochs, "lr": cfg.probe_lr}),
    )


def _check(cfg: ClassifyConfig) -> None:
    bad = [m for m in cfg.modes if m not in MODES]
    if bad or not cfg.modes:
        raise ConfigError(f"unknown mode(s) {bad}; choose from {', '.join(MODES)}")
    if not cfg.weights:
        raise ConfigError("no weights sources given")
    for name in ("epochs", "probe_epochs", "batch_size"):
        if int(getattr(cfg, name)) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.schedule not in ("cosine", "constant"):
        raise ConfigError(f"schedule must be 'cosine' or 'constant', got {cfg.schedule!r}")
    if cfg.image_size is not None and cfg.image_size < 32:
        raise ConfigError(f"image_size must be >= 32 (a ResNet reduces by 32), got {cfg.image_size}")


def run_classify(cfg: ClassifyConfig, log: Callable[[str], None] = print) -> dict:
    """Run the classification described by ``cfg``; returns the ``results.json`` content."""
    import copy

    from tabad.backbones import family_of, load_weights
    from tabad.backbones.base import PooledNetwork
    from tabad.provenance import environment

    _check(cfg)
    out = Path(cfg.out)
    store = ResultStore(out, resume=cfg.resume)
    from tabad.device import resolve_device

    device = resolve_device(cfg.device)
    data = load_classify_data(cfg.data, cfg.image_size)
    split = make_splits(data, cfg)
    size = data.input_size(cfg.image_size)
    if size < 32:
        raise ConfigError(f"the maps are {size} x {size}; a ResNet needs at least 32 x 32: pass a larger "
                          "input size, e.g. image_size=64", option={"image_size": 64})

    # load every weights source up front: a bad path fails in seconds, not after an hour
    models, infos = {}, {}
    for source in cfg.weights:
        model, info = load_weights(cfg.backbone, source, seed=cfg.seed, allow_download=cfg.allow_download)
        if info.label in {i.label for i in infos.values()}:
            raise TabadError(f"two weights sources share the label {info.label!r}; rename one of the files")
        # The wrapped network returns the pooled last-stage features (ResNet: layer4).
        models[source], infos[source] = PooledNetwork(family_of(cfg.backbone), model, cfg.backbone), info

    names = data.class_names
    ev = split["eval"]
    y_eval = np.asarray(data.targets[ev])
    results = []
    for source in cfg.weights:
        info = infos[source]
        for mode in cfg.modes:
            name = f"{info.label}__{mode}"
            key = result_key(cfg, data, info.sha256, mode, split["record"], size)
            stored = store.load(name, key)
            if stored is not None:
                log(f"{info.label} / {MODE_TITLES[mode]}: reused {store.path(name)}")
                results.append(stored)
                continue
            model = copy.deepcopy(models[source]).to(device)
            desc = f"{info.label} {MODE_TITLES[mode]}"
            if mode == "linear-probe":
                run = _run_linear_probe(model, data, split, cfg, device, desc, size)
            else:
                run = _run_fine_tune(model, data, split, cfg, device, desc, store.checkpoint(name), key, size)
            pred = _predict(data.task, run["logits"])
            values = (multilabel_metrics if data.task == "multilabel" else multiclass_metrics)(y_eval, pred, names)
            result = {
                "weights": info.label, "source": source, "mode": mode, "frozen": mode == "linear-probe",
                "accuracy": values["accuracy"], "precision": values["precision"], "recall": values["recall"],
                "f1": values["f1"], **({"label_accuracy": values["label_accuracy"]} if "label_accuracy" in values
                                       else {}),
                "per_class": values["per_class"], "evaluated_on": cfg.evaluate,
                "n_train": int(len(split["train"])), "n_eval": int(len(ev)), "epochs": run["epochs"],
                "lr": run["lr"], "train_seconds": round(run["train_seconds"], 3),
                "final_train_loss": run["train_log"][-1]["loss"] if run["train_log"] else None,
                "weights_sha256": info.sha256, "backbone": cfg.backbone, "seed": cfg.seed,
                "image_size": size, "split_hash": split["record"]["hash"],
                "train_log": run["train_log"], "key": key,
            }
            if "feature_seconds" in run:
                result["feature_seconds"] = run["feature_seconds"]
            store.save(name, result, {"index": ev, "logits": run["logits"], "targets": y_eval}, suffix=".pred.npz")
            store.drop_checkpoint(name)  # the finished result supersedes it
            log(f"{info.label} / {MODE_TITLES[mode]}: accuracy {result['accuracy']:.3f}, F1 {result['f1']:.3f}")
            results.append(result)
            del model

    counts: dict[str, int] = {}
    for g in data.groups:
        counts[g] = counts.get(g, 0) + 1
    provenance = {
        "environment": environment(),
        "data": {"path": str(Path(data.path).resolve()), "sha256": data.sha256, "kind": data.kind, "task": data.task,
                 "n": len(data), "outputs": names, "classes": counts},
        "weights": [infos[s].to_dict() for s in cfg.weights],
        "backbone": cfg.backbone,
        "seed": cfg.seed,
        "image_size": size,
        "input": _input_description(data, size),
        "split": split["record"],
        "config": _config_dict(cfg),
        "device": str(device),
    }
    write_csv(out / "per_class.csv", per_class_rows(results), PER_CLASS_COLUMNS)
    return store.write(results, provenance, markdown_report(results, provenance, cfg.title), CSV_COLUMNS)


def _input_description(data: ClassifyData, size: int) -> str:
    if data.maps is None:
        how = f"RGB, bilinear resize to {size}x{size}"
    else:
        h, w = data.maps.shape[-2:]
        how = ("wafer maps as grey levels 0 -> 0, 1 -> 127, 2 -> 255 on 3 channels, "
               + ("one pixel per die" if (h, w) == (size, size) else
                  f"nearest-neighbour resize from {h}x{w} to {size}x{size}"))
    return how + "; ImageNet mean/std normalisation"


def _config_dict(cfg: ClassifyConfig) -> dict:
    d = asdict(cfg)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


# ----------------------------------------------------------------------------
# reports

CSV_COLUMNS = ["weights", "mode", "frozen", "accuracy", "precision", "recall", "f1", "evaluated_on", "n_train",
               "n_eval", "epochs", "lr", "train_seconds", "final_train_loss", "image_size", "seed", "split_hash",
               "weights_sha256"]
PER_CLASS_COLUMNS = ["weights", "mode", "class", "precision", "recall", "f1", "support"]


def per_class_rows(results: Sequence[dict]) -> list[dict]:
    """The rows of ``per_class.csv``: one per (weights, mode, class)."""
    return [{"weights": r["weights"], "mode": r["mode"], "class": c, **v}
            for r in results for c, v in r["per_class"].items()]


def markdown_report(results: Sequence[dict], provenance: dict, title: str = "tabad classify") -> str:
    f = tables.fixed
    d = provenance.get("data", {})
    s = provenance.get("split", {})
    multilabel = d.get("task") == "multilabel"
    where = "validation split (from the training portion)" if s.get("evaluate") == "validation" else "test split"
    parts = tables.heading(title) + [
        f"{tables.environment_text(provenance)} "
        f"Data: `{d.get('path', '?')}` ({d.get('kind')}, {d.get('n')} samples, sha256 "
        f"`{str(d.get('sha256', ''))[:16]}…`); backbone {provenance.get('backbone')}; "
        f"input {provenance.get('image_size')}×{provenance.get('image_size')}; seed {provenance.get('seed')}; "
        f"{s.get('n_train')} training samples; evaluated on the {where} "
        f"({results[0]['n_eval'] if results else '?'} samples) after the last epoch; split sha256 "
        f"`{str(s.get('hash', ''))[:16]}…`.", ""]
    parts += tables.weights_block(provenance.get("weights", []))
    parts += ["",
              ("Multi-label over the 8 patterns: accuracy = exact match of all 8 labels; precision, recall, F1 = "
               "macro averages over the patterns (sigmoid > 0.5)." if multilabel else
               "Single-label: accuracy, and precision, recall, F1 macro-averaged over the classes."),
              "Linear probe: frozen backbone (Freeze ✓), trainable linear layer on pooled layer4 features; "
              "fine-tune: backbone and linear layer trained.", "",
              "| Weights | Mode | Freeze | Accuracy | Precision | Recall | F1 | epochs | lr | train (s) |",
              "|---|---|:---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        parts.append(f"| {r['weights']} | {MODE_TITLES[r['mode']]} | {'✓' if r['frozen'] else ''} | "
                     f"{f(r['accuracy'])} | {f(r['precision'])} | {f(r['recall'])} | {f(r['f1'])} | "
                     f"{r['epochs']} | {r['lr']:g} | {r['train_seconds']:.0f} |")
    if results:
        classes = list(results[0]["per_class"])
        label = "Pattern" if multilabel else "Class"
        cols = [f"{r['weights']} {MODE_TITLES[r['mode']]}" for r in results]
        parts += ["", f"## F1 per {label.lower()}", "",
                  f"| {label} | support | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
        for c in classes:
            parts.append(f"| {c} | {results[0]['per_class'][c]['support']} | "
                         + " | ".join(f(r["per_class"].get(c, {}).get("f1")) for r in results) + " |")
    return tables.document(parts)
