"""``tabad fit``: train on good parts, calibrate thresholds on held-out good parts, write one model file.

1. The normal images: a plain folder (searched recursively) or the ``train``
   split of a category in any supported layout.
2. A seeded share (``calibration_share``, default 20 %) is held out; the
   method is fitted on the rest.
3. The held-out images are scored through the same
   :class:`~tabad.inspection.pipeline.InspectionModel` a deployed model runs,
   and the thresholds are chosen on them (:mod:`tabad.inspection.thresholds`):
   the image threshold at the target false-positive rate ``fpr``; the pixel
   threshold the same way, on each held-out image's highest map value, so
   that at most ``fpr`` of good parts show any defect pixel (or, with
   ``pixel_fpr``, at that rate over all held-out pixels).
4. With a labelled ``validation`` category (its test split: good and
   defective images) the image threshold is chosen there instead, by F1-max
   or a target recall; test images are never used otherwise.

The model file (:func:`~tabad.inspection.pipeline.save_inspection`) records
the thresholds, how they were chosen, and the training data.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tabad.errors import ConfigError, DataError, TabadError

from tabad.inspection.defaults import (DEFAULT_BACKBONE, DEFAULT_CALIBRATION_SHARE, DEFAULT_FPR, DEFAULT_METHOD,
                                      DEFAULT_WEIGHTS)


@dataclass
class FitConfig:
    data: Path
    out: Path
    method: str = DEFAULT_METHOD
    backbone: str = DEFAULT_BACKBONE
    weights: str = DEFAULT_WEIGHTS
    method_options: dict = field(default_factory=dict)
    #: None: the method's paper geometry.
    resize: int | tuple[int, int] | None = None
    crop: int | tuple[int, int] | None | str = "paper"
    calibration_share: float = DEFAULT_CALIBRATION_SHARE
    fpr: float = DEFAULT_FPR
    #: per-pixel target FPR for the mask threshold; None: the image-level rule (see the module docstring).
    pixel_fpr: float | None = None
    #: a labelled category whose test split chooses the image threshold.
    validation: Path | None = None
    #: with ``validation``: "f1" or "recall".
    threshold: str = "f1"
    recall: float | None = None
    layout: str = "auto"
    seed: int = 0
    skip_bad: bool = False
    device: str = "auto"
    progress: bool = True
    batch_size: int = 16


def normal_images(path: Path, layout: str = "auto", skip_bad: bool = False) -> tuple[list[Path], str]:
    """The normal training images under ``path`` and a description of where they came from."""
    from tabad.datasets.listing import is_image_file, natural_key
    from tabad.datasets.readers import detect_layout, read_category

    path = Path(path)
    if not path.is_dir():
        raise DataError(path, "not a folder (give a folder of good images, or a dataset category)")
    try:
        found = detect_layout(path) if layout == "auto" else layout
    except DataError:
        found = None
    if found is not None and found != "folders":
        data = read_category(path, layout=found, skip_bad=skip_bad, check_files=False)
        return [s.image_path for s in data.train], f"train split of a {found} category"
    files = sorted((p for p in path.rglob("*") if p.is_file() and is_image_file(p)),
                   key=lambda p: natural_key(str(p.relative_to(path))))
    if not files:
        raise DataError(path, "no images found (searched recursively)")
    return files, "folder of images"


def split_calibration(n: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, calibration indices): a seeded share held out, at least 1 each side."""
    if not 0.0 < share < 1.0:
        raise ConfigError(f"calibration_share={share} must be in (0, 1)")
    n_cal = int(round(share * n))
    if n < 3 or n_cal < 1 or n - n_cal < 2:
        raise ConfigError(f"{n} images are too few to train and to hold out {share:.0%} for calibration "
                          "(need at least 3)")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_cal:]), np.sort(order[:n_cal])


def _decode(paths: list[Path], model, skip_bad: bool, progress: bool, desc: str):
    """Preprocessed model inputs (N, 3, h, w) of ``paths``, and the paths actually used."""
    import torch

    from tabad.datasets.images import load_image
    from tabad.progress import progress as bar

    xs, used, skipped = [], [], []
    for p in bar(paths, desc=desc, unit="img", disable=not progress):
        try:
            arr = np.array(load_image(p))
        except DataError as exc:
            if not skip_bad:
                raise DataError(p, f"{exc.problem} (pass skip_bad=True to leave such files out)",
                                option="skip_bad") from None
            skipped.append((str(p), exc.problem))
            continue
        with torch.no_grad():
            xs.append(model.preprocess(torch.from_numpy(arr).unsqueeze(0).to(model.thresholds.device)))
        used.append(p)
    if not xs:
        raise TabadError(f"{desc}: no readable images")
    return torch.cat(xs), used, skipped


def _score(model, x, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    import torch

    scores, maps = [], []
    with torch.no_grad():
        for lo in range(0, len(x), batch_size):
            s, m = model.method(x[lo : lo + batch_size])[:2]
            scores.append(s.float().cpu())
            maps.append(m.float().cpu())
    return torch.cat(scores).numpy(), torch.cat(maps).numpy()


def geometry_of(cfg: FitConfig):
    from tabad.datasets.transforms import Geometry
    from tabad.methods import config_class

    paper = config_class(cfg.method).paper_geometry
    resize = paper.resize if cfg.resize is None else cfg.resize
    crop = paper.crop if cfg.crop == "paper" else cfg.crop
    return Geometry(resize, crop)


def fit_model(cfg: FitConfig, log: Callable[[str], None] = print) -> Path:
    """Run ``tabad fit``; returns the model file."""
    import torch

    from tabad.backbones import build_backbone
    from tabad.device import resolve_device
    from tabad.inspection.pipeline import Calibration, InspectionModel, save_inspection
    from tabad.inspection.thresholds import Threshold, calibrate, threshold_at_fpr
    from tabad.methods import create_method
    from tabad.methods.base import FitContext
    from tabad.store import run_key
    from tabad.datasets.loader import Batches

    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    paths, source = normal_images(cfg.data, cfg.layout, cfg.skip_bad)
    train_idx, cal_idx = split_calibration(len(paths), cfg.calibration_share, cfg.seed)
    log(f"data: {len(paths)} good images ({source}); {len(train_idx)} to train, {len(cal_idx)} held out for "
        f"calibration (seed {cfg.seed})")

    torch.manual_seed(cfg.seed)
    bb = build_backbone(cfg.backbone, cfg.weights, seed=cfg.seed).to(device)
    method = create_method(cfg.method, bb, cfg.method_options).to(device)
    geometry = geometry_of(cfg)
    model = InspectionModel(method, geometry).to(device)
    x_train, train_used, skipped = _decode([paths[i] for i in train_idx], model, cfg.skip_bad, cfg.progress,
                                           "train images")
    x_cal, cal_used, skipped_cal = _decode([paths[i] for i in cal_idx], model, cfg.skip_bad, cfg.progress,
                                           "calibration images")
    skipped += skipped_cal

    key = run_key(data=[str(p) for p in train_used], method=cfg.method, options=cfg.method_options,
                  weights=bb.info.sha256, seed=cfg.seed, geometry=repr(geometry))
    checkpoint = Path(str(cfg.out) + ".train.pt") if method.trains else None
    t0 = time.perf_counter()
    method.fit(Batches(x_train, method.batch_size, device), FitContext(seed=cfg.seed, checkpoint=checkpoint,
                                                                      key=key, progress=cfg.progress))
    method.eval()
    fit_seconds = time.perf_counter() - t0
    log(f"fitted {cfg.method} on {len(train_used)} images in {fit_seconds:.1f} s")

    scores, maps = _score(model, x_cal, cfg.batch_size)
    image = calibrate(scores, cfg.fpr)
    if cfg.pixel_fpr is None:
        pixel = calibrate(maps.reshape(len(maps), -1).max(axis=1), cfg.fpr)
    else:
        flat = maps.ravel()
        t = threshold_at_fpr(flat, cfg.pixel_fpr)
        pixel = Threshold(t, "fpr", float(flat.min()), cfg.pixel_fpr, int(flat.size), float(np.mean(flat > t)))
    validation = None
    if cfg.validation is not None:
        image, validation = _validate(cfg, model, image)
    model.set_calibration(Calibration(image, pixel))
    log(f"image threshold {image.value:.6g} ({_rule_text(image)}); pixel threshold {pixel.value:.6g} "
        f"({_rule_text(pixel)})")

    training = {
        "data": str(Path(cfg.data).resolve()), "source": source, "n_images": len(paths),
        "n_train": len(train_used), "n_calibration": len(cal_used), "calibration_share": cfg.calibration_share,
        "calibration_files": [str(p) for p in cal_used], "skipped": skipped, "seed": cfg.seed,
        "method_options": cfg.method_options, "weights_source": cfg.weights,
        "fit_seconds": round(fit_seconds, 3), "train_log": method.train_log,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "validation": validation,
    }
    path = save_inspection(model, cfg.out, extra={"training": training})
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    log(f"model: {path} ({time.perf_counter() - t_start:.1f} s in all)")
    return path


def _rule_text(t) -> str:
    if t.rule == "fpr":
        return f"false-positive rate ≤ {t.target:g} on {t.n} held-out good values, achieved {t.achieved:.4f}"
    if t.rule == "recall":
        return f"recall ≥ {t.target:g} on the labelled validation set, achieved {t.achieved:.4f}"
    return f"F1-max on the labelled validation set, recall {t.achieved:.4f}"


def _validate(cfg: FitConfig, model, image_fpr):
    """The image threshold from a labelled validation category (F1-max or target recall)."""
    from tabad.datasets.readers import read_category
    from tabad.inspection.thresholds import calibrate_labelled

    data = read_category(cfg.validation, layout="auto", skip_bad=cfg.skip_bad)
    labels = np.array([s.label for s in data.test])
    if labels.sum() == 0:
        raise ConfigError(f"{cfg.validation}: the validation test split has no anomalous images; "
                          "the false-positive-rate rule needs none (leave out the validation set)")
    # read_category has already checked every file (skip_bad drops the bad ones there).
    x, _, _ = _decode([s.image_path for s in data.test], model, False, cfg.progress, "validation images")
    scores, _ = _score(model, x, cfg.batch_size)
    t = calibrate_labelled(scores, labels, cfg.threshold, cfg.recall)
    return t, {"data": str(Path(cfg.validation).resolve()), "n": int(labels.size),
               "n_anomalous": int(labels.sum()), "rule": cfg.threshold, "fpr_threshold": image_fpr.to_dict()}

