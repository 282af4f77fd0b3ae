"""One ``nn.Module`` from uint8 images to verdicts: the model that is fitted, saved, exported and served.

:class:`InspectionModel` wraps a fitted method (:mod:`tabad.methods.base`)
with everything between a camera image and a decision:

1. uint8 RGB images (N, H, W, 3) of any size → float, bilinear resize
   (antialiased) to the method's geometry, centre crop, the backbone's
   normalisation (:meth:`InspectionModel.preprocess`);
2. the method: raw image scores and anomaly maps;
3. thresholds (:mod:`tabad.inspection.thresholds`): ``score > threshold`` is
   the verdict, ``map > pixel threshold`` the defect mask, and both scores are
   also given normalised so that 0.5 is the threshold.

Fitting, calibration and prediction all go through :meth:`preprocess`, so the
images the thresholds were chosen on are prepared exactly like the images a
deployed model sees. Maps and masks are at the model's input resolution (the
resized, cropped image).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tabad.datasets.transforms import Geometry

# The records live in a torch-free module (for the ONNX runtime path); imported here for the pipeline's users.
from tabad.inspection.records import (  # noqa: F401
    OUTPUT_NAMES,
    Calibration,
    InspectionOutput,
    Prediction,
    as_uint8_image,
)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class InspectionModel(nn.Module):
    """A fitted method with its input pipeline and thresholds (see the module docstring)."""

    def __init__(self, method: nn.Module, geometry: Geometry, calibration: Calibration | None = None):
        super().__init__()
        self.method = method.eval()
        self.geometry = geometry
        self.resize_hw = _pair(geometry.resize)
        self.crop_hw = _pair(geometry.crop) if geometry.crop is not None else self.resize_hw
        norm = method.normalisation
        mean = norm.mean if norm is not None else (0.0, 0.0, 0.0)
        std = norm.std if norm is not None else (1.0, 1.0, 1.0)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.calibration: Calibration | None = None
        self.register_buffer("thresholds", torch.zeros(4), persistent=False)  # image t, low, pixel t, low
        if calibration is not None:
            self.set_calibration(calibration)

    def set_calibration(self, calibration: Calibration) -> None:
        self.calibration = calibration
        c = calibration
        self.thresholds = torch.tensor([c.image.value, c.image.low, c.pixel.value, c.pixel.low],
                                       dtype=torch.float32, device=self.thresholds.device)

    # ----------------------------------------------------------------- pipeline
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) → normalised float (N, 3, h, w) at the method's input geometry."""
        return (self.resize_crop(images) - self.mean) / self.std

    def view_image(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) → the uint8 (h, w, 3) image the model sees, for overlays."""
        with torch.no_grad():
            x = self.resize_crop(torch.from_numpy(np.ascontiguousarray(image)).unsqueeze(0))
        return (x[0].permute(1, 2, 0) * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()

    def resize_crop(self, images: torch.Tensor, always_resize: bool = False) -> torch.Tensor:
        """uint8 (N, H, W, 3) → float (N, 3, h, w) in [0, 1]: resized (bilinear, antialiased) and centre-cropped.

        An image already at the resize size is not resized (in PyTorch that resize is exactly the
        identity); ``always_resize`` keeps the step for a traced graph, whose input size is symbolic.
        """
        x = images.permute(0, 3, 1, 2).float() / 255.0
        if always_resize or tuple(x.shape[-2:]) != self.resize_hw:
            x = F.interpolate(x, size=self.resize_hw, mode="bilinear", align_corners=False, antialias=True)
        rh, rw = self.resize_hw
        ch, cw = self.crop_hw
        if (ch, cw) != (rh, rw):
            # torchvision's CenterCrop offsets (round half to even, as Python's round on .5).
            top, left = int(round((rh - ch) / 2.0)), int(round((rw - cw) / 2.0))
            x = x[:, :, top : top + ch, left : left + cw]
        return x

    def scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (scores, maps) of uint8 images, without thresholds (what calibration needs)."""
        out = self.method(self.preprocess(images))
        return out[0], out[1]

    def forward(self, images: torch.Tensor) -> InspectionOutput:
        return self.decide(*self.scores(images))

    def decide(self, score: torch.Tensor, amap: torch.Tensor) -> InspectionOutput:
        """Verdicts, normalised scores and masks of raw scores and maps."""
        t = self.thresholds
        label = (score > t[0]).to(torch.int64)
        mask = (amap > t[2]).to(torch.uint8)
        return InspectionOutput(score, _normalise(score, t[0], t[1]), label, amap, mask)

    @torch.no_grad()
    def predict(self, images, batch_size: int = 8) -> list["Prediction"]:
        """Predictions for image paths, PIL images or uint8 (H, W, 3) arrays, of any sizes.

        >>> model = tabad.load_model("model.tabad")          # doctest: +SKIP
        >>> [p.verdict for p in model.predict(["part.png"])]  # doctest: +SKIP
        """
        if self.calibration is None:
            from tabad.errors import TabadError

            raise TabadError("this model has no thresholds (fit it with `tabad fit`)")
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        out: list[Prediction] = []
        device = self.thresholds.device
        for lo in range(0, len(items), batch_size):
            chunk = items[lo : lo + batch_size]
            arrays = [as_uint8_image(item) for item in chunk]
            # Images of different sizes are resized one by one, then scored as one batch.
            x = torch.cat([self.preprocess(torch.from_numpy(a).unsqueeze(0).to(device)) for a in arrays])
            res = self.decide(*self.method(x)[:2])
            for i, item in enumerate(chunk):
                out.append(Prediction.from_output(res, i, item if isinstance(item, (str, Path)) else None))
        return out

    @property
    def input_size(self) -> tuple[int, int]:
        """(h, w) of maps and masks."""
        return self.crop_hw


def _normalise(raw: torch.Tensor, threshold: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    # Same formula as tabad.inspection.thresholds.normalise, in torch so it is part of the graph.
    spread = torch.clamp(threshold - low, min=1e-12)
    return torch.clamp(0.5 + 0.5 * (raw - threshold) / spread, 0.0, 1.0)


# --------------------------------------------------------------------------- files

def save_inspection(model: InspectionModel, path, extra: dict | None = None) -> Path:
    """One model file: the method's tensors, and in the header its geometry and calibration."""
    g = model.geometry
    record = {"geometry": {"resize": g.resize, "crop": g.crop},
              "calibration": None if model.calibration is None else model.calibration.to_dict()}
    return model.method.save(path, extra={"inspection": record, **(extra or {})})


def load_inspection(path, device="cpu") -> InspectionModel:
    """An :class:`InspectionModel` from a file written by :func:`save_inspection` (or by a method's ``save``:
    then with the method's paper geometry and no thresholds)."""
    from tabad.methods import load_model

    method = load_model(path, device=device)
    record = method.header.get("inspection")
    if record is None:
        geometry = method.config_class.paper_geometry
        calibration = None
    else:
        geo = record["geometry"]
        geometry = Geometry(_geo(geo["resize"]), _geo(geo["crop"]))
        calibration = Calibration.from_dict(record["calibration"]) if record.get("calibration") else None
    model = InspectionModel(method, geometry, calibration).to(device)
    model.header = method.header
    return model


def _geo(v):
    return tuple(v) if isinstance(v, list) else v
