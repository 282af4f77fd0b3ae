"""What an inspection produces, without torch: the output names, thresholds and per-image predictions.

Kept free of torch so that running an exported ONNX model
(:mod:`tabad.inspection.onnx`) does not load it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from tabad.inspection.thresholds import Threshold

if TYPE_CHECKING:
    import torch


class InspectionOutput(NamedTuple):
    """Named outputs (also the ONNX output names)."""

    score: torch.Tensor  # (N,) raw image score
    normalised_score: torch.Tensor  # (N,) in [0, 1], 0.5 = threshold
    label: torch.Tensor  # (N,) int64, 1 = anomalous (score > threshold)
    anomaly_map: torch.Tensor  # (N, h, w) raw map at the model's input size
    mask: torch.Tensor  # (N, h, w) uint8, 1 = defect pixel (map > pixel threshold)


OUTPUT_NAMES = InspectionOutput._fields


@dataclass(frozen=True)
class Calibration:
    """The image and pixel thresholds of a fitted model."""

    image: Threshold
    pixel: Threshold

    def to_dict(self) -> dict:
        return {"image": self.image.to_dict(), "pixel": self.pixel.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        return cls(Threshold.from_dict(d["image"]), Threshold.from_dict(d["pixel"]))


@dataclass
class Prediction:
    """The verdict on one image."""

    path: str | None
    score: float
    normalised_score: float
    #: "anomalous" or "normal".
    verdict: str
    defect_area_px: int
    defect_area_pct: float
    anomaly_map: np.ndarray  # (h, w) float32
    mask: np.ndarray  # (h, w) uint8

    @classmethod
    def from_output(cls, out: InspectionOutput, i: int, path=None) -> "Prediction":
        mask = out.mask[i].cpu().numpy()
        area = int(mask.sum())
        return cls(None if path is None else str(path), float(out.score[i]), float(out.normalised_score[i]),
                   "anomalous" if int(out.label[i]) else "normal", area, round(100.0 * area / mask.size, 4),
                   out.anomaly_map[i].float().cpu().numpy(), mask)

    def record(self) -> dict:
        """The JSON-able fields (no arrays)."""
        return {"path": self.path, "score": self.score, "normalised_score": self.normalised_score,
                "verdict": self.verdict, "defect_area_px": self.defect_area_px,
                "defect_area_pct": self.defect_area_pct}


def as_uint8_image(item) -> np.ndarray:
    """A path, PIL image or array → uint8 RGB (H, W, 3)."""
    from PIL import Image

    from tabad.datasets.images import as_rgb, load_image

    if isinstance(item, (str, Path)):
        return np.array(load_image(item))
    if isinstance(item, Image.Image):
        return np.array(as_rgb(item))
    arr = np.asarray(item)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB array (H, W, 3), got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)
