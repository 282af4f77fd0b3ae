"""``tabad predict``: verdicts, heat maps and defect masks for new images, resumable.

Output folder::

    predictions.jsonl   one JSON record per image, appended as images finish
    predictions.csv     the same records as a table (rewritten at the end)
    overlays/<name>.png image | heat map | defect contour, at the model's input size
    masks/<name>.png    the binary defect mask (255 = defect)
    skipped.txt         files that could not be read (with ``skip_bad``)

A rerun with the same model and folder keeps every record already written and
scores only the rest (records name the model file's sha256, so a different
model never reuses them). The model is anything with ``predict(arrays)`` and
``input_size``: a fitted :class:`~tabad.inspection.pipeline.InspectionModel`
or an exported ONNX model.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from tabad.errors import DataError, TabadError

CSV_COLUMNS = ["path", "score", "normalised_score", "verdict", "defect_area_px", "defect_area_pct"]


def collect_images(inputs: Iterable[str | Path]) -> list[tuple[Path, str]]:
    """(file, output name) for every image given or found (recursively) in the folders given.

    The output name is the path relative to the folder given (or the file name), with the
    suffix dropped and separators kept, so overlays mirror the input tree.
    """
    from tabad.datasets.listing import is_image_file, natural_key

    found: list[tuple[Path, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted((f for f in p.rglob("*") if f.is_file() and is_image_file(f)),
                           key=lambda f: natural_key(str(f.relative_to(p))))
            found += [(f, str(f.relative_to(p).with_suffix(""))) for f in files]
        elif p.is_file():
            found.append((p, p.stem))
        else:
            raise DataError(p, "no such file or folder")
    names: dict[str, Path] = {}
    out = []
    for f, name in found:
        if name in names and names[name] != f:  # two inputs with the same relative name: keep both apart
            name = f"{name}__{len(names)}"
        names[name] = f
        out.append((f, name))
    return out


def overlay_image(image: np.ndarray, amap: np.ndarray, mask: np.ndarray, threshold: float, low: float,
                  verdict: str, score: float) -> np.ndarray:
    """image | heat map (0.5 of the colour scale = the pixel threshold) | defect contour, side by side."""
    import cv2

    h, w = amap.shape
    img = np.ascontiguousarray(image)
    spread = max(threshold - low, 1e-12)
    level = np.clip(0.5 + 0.5 * (amap - threshold) / spread, 0.0, 1.0)
    heat = cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    blend = (0.5 * img + 0.5 * heat).astype(np.uint8)
    contour = img.copy()
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(contour, contours, -1, (255, 0, 0), max(1, w // 160))
    colour = (200, 0, 0) if verdict == "anomalous" else (0, 140, 0)
    cv2.putText(contour, f"{verdict} {score:.2f}", (4, max(12, h // 14)), cv2.FONT_HERSHEY_SIMPLEX,
                max(0.35, w / 560), colour, max(1, w // 220), cv2.LINE_AA)
    return np.concatenate([img, blend, contour], axis=1)


@dataclass
class PredictConfig:
    model: Path
    inputs: list[Path]
    out: Path
    batch_size: int = 8
    skip_bad: bool = False
    overlays: bool = True
    masks: bool = True
    device: str = "auto"
    progress: bool = True
    resume: bool = True
    extra: dict = field(default_factory=dict)


def _read_done(path: Path, model_sha: str) -> dict[str, dict]:
    """Records already written for this model (a torn last line from an interrupt is ignored)."""
    done: dict[str, dict] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("model_sha256") == model_sha and "path" in rec:
            done[rec["path"]] = rec
    return done


def load_any_model(path: Path, device: str = "auto"):
    """A ``.onnx`` file through onnxruntime (torch is never imported), anything else as a tabad model file."""
    if Path(path).suffix.lower() == ".onnx":
        from tabad.inspection.onnx import OnnxInspectionModel

        return OnnxInspectionModel(path)
    from tabad.device import resolve_device
    from tabad.inspection.pipeline import load_inspection

    return load_inspection(path, device=resolve_device(device))


def run_predict(cfg: PredictConfig, log: Callable[[str], None] = print) -> list[dict]:
    """Score every image of ``cfg.inputs`` with ``cfg.model``; returns the records in input order."""
    from tabad.datasets.images import load_image
    from tabad.files import atomic_write_text, sha256_file
    from tabad.progress import progress as bar

    model = load_any_model(cfg.model, cfg.device)
    if model.calibration is None:
        raise TabadError(f"{cfg.model}: this model has no thresholds; make one with `tabad fit`")
    model_sha = sha256_file(cfg.model)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "predictions.jsonl"
    images = collect_images(cfg.inputs)
    if not images:
        raise TabadError("no images to score")
    done = _read_done(jsonl, model_sha) if cfg.resume else {}
    if not cfg.resume and jsonl.exists():
        jsonl.unlink()
    todo = [(f, n) for f, n in images if str(f) not in done]
    if done:
        log(f"{len(images) - len(todo)} of {len(images)} images already scored in {out}; scoring the rest")
    skipped: list[tuple[str, str]] = []
    pix = model.calibration.pixel
    with open(jsonl, "a", encoding="utf-8") as sink, \
            bar(total=len(todo), desc="predict", unit="img", disable=not cfg.progress) as pbar:
        for lo in range(0, len(todo), cfg.batch_size):
            chunk, arrays = [], []
            for f, name in todo[lo : lo + cfg.batch_size]:
                try:
                    arrays.append(np.array(load_image(f)))
                    chunk.append((f, name))
                except DataError as exc:
                    if not cfg.skip_bad:
                        raise DataError(f, f"{exc.problem} (pass skip_bad=True to skip unreadable files)",
                                        option="skip_bad") from None
                    skipped.append((str(f), exc.problem))
                    pbar.update(1)
            if not chunk:
                continue
            preds = model.predict(arrays, batch_size=cfg.batch_size)
            for (f, name), arr, p in zip(chunk, arrays, preds):
                if cfg.overlays:
                    view = model.view_image(arr)
                    pic = overlay_image(view, p.anomaly_map, p.mask, pix.value, pix.low, p.verdict,
                                        p.normalised_score)
                    _write_png(out / "overlays" / f"{name}.png", pic)
                if cfg.masks:
                    _write_png(out / "masks" / f"{name}.png", (p.mask * 255).astype(np.uint8))
                rec = {**p.record(), "path": str(f), "name": name, "model_sha256": model_sha}
                sink.write(json.dumps(rec) + "\n")
                done[str(f)] = rec
            # One flush per batch: an interrupt loses at most the batch being scored.
            sink.flush()
            os.fsync(sink.fileno())
            pbar.update(len(chunk))
    records = [done[str(f)] for f, _ in images if str(f) in done]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(records)
    atomic_write_text(out / "predictions.csv", buf.getvalue())
    if skipped:
        atomic_write_text(out / "skipped.txt", "".join(f"{p}\t{why}\n" for p, why in skipped))
        log(f"skipped {len(skipped)} unreadable file(s), listed in {out / 'skipped.txt'}:")
        for p, why in skipped:
            log(f"  {p}: {why}")
    n_bad = sum(r["verdict"] == "anomalous" for r in records)
    log(f"{len(records)} images: {n_bad} anomalous, {len(records) - n_bad} normal -> {out / 'predictions.csv'}")
    return records


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    from tabad.files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
