"""PaDiM: a Gaussian per feature position, Mahalanobis distance as the score.

Follows the de-facto reference (xiahaifeng1995/PaDiM-Anomaly-Detection-
Localization-master) as specified in methods.md §1; Defard et al., ICPR-W 2020:

* features of layer1-3, coarser layers replicated onto the layer1 grid
  (nearest upsampling) and concatenated (448 channels for ResNet18);
* one fixed random channel subset, ``random.seed(1024);
  random.sample(range(total), d)`` with d = 100 (ResNet18) or 550
  (WideResNet50-2) — the same indices for every backbone of a given width;
* per position: mean and unbiased covariance (N − 1) + 0.01·I;
* Mahalanobis distance per position, bilinear upsampling to the input size
  (align_corners=False), Gaussian blur σ = 4 (scipy-equivalent), image score
  = max of the smoothed map.

Deviations from the reference, all without effect on the numbers: statistics
are accumulated batch by batch (memory grows with positions·d², not with the
number of images), the precision matrices are computed once at fit time and
the distance is a batched einsum instead of a per-pixel scipy loop. Maps are
not min-max normalised over the test set (monotone, so no metric changes).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar, Iterable

import torch
import torch.nn.functional as F

from tabad.backbones.base import FeatureExtractor
from tabad.datasets.transforms import Geometry
from tabad.errors import ConfigError, TabadError
from tabad.methods.base import AnomalyModel, AnomalyOutput, FitContext
from tabad.methods.common import gaussian_blur, upsample

#: Reference channel-subset sizes per architecture (methods.md §1).
DEFAULT_N_FEATURES = {"resnet18": 100, "wide_resnet50_2": 550}


@dataclass(frozen=True)
class PadimConfig:
    """PaDiM hyperparameters; defaults are the reference's."""

    #: the reference's input: resize 256, centre crop 224.
    paper_geometry: ClassVar[Geometry] = Geometry(256, 224)

    layers: tuple[str, ...] = ("layer1", "layer2", "layer3")
    #: channels kept: an int, "all", or None for the per-architecture default.
    n_features: int | str | None = None
    #: seed of Python's ``random`` for the channel subset (reference: 1024).
    channel_seed: int = 1024
    #: diagonal regulariser added to every covariance.
    epsilon: float = 0.01
    #: Gaussian smoothing of the upsampled map.
    sigma: float = 4.0
    batch_size: int = 32


def select_channels(total: int, n_features: int | str | None, arch: str, seed: int = 1024) -> list[int]:
    """The reference's channel subset: ``random.seed(seed); random.sample(range(total), d)``.

    A private ``random.Random`` gives the same sequence as seeding the global
    generator, without disturbing anyone else's random state.
    """
    if n_features == "all":
        return list(range(total))
    d = DEFAULT_N_FEATURES.get(arch, total) if n_features is None else int(n_features)
    if not 0 < d <= total:
        raise ConfigError(f"n_features={d} must be in 1..{total} (or 'all')")
    return random.Random(seed).sample(range(total), d)


class Padim(AnomalyModel):
    """PaDiM on a frozen backbone: ``fit`` then ``model(x)`` (:mod:`tabad.methods.base`)."""

    name = "padim"
    config_class = PadimConfig
    fitted_attributes = ("grid",)

    def __init__(self, backbone: FeatureExtractor, config: PadimConfig = PadimConfig()):
        super().__init__(backbone, config)
        widths = backbone.channels(config.layers)
        idx = select_channels(sum(widths), config.n_features, backbone.arch, config.channel_seed)
        # The Mahalanobis distance does not depend on the order of the channels, so the
        # subset is kept sorted and split per layer: each layer gives its own channels
        # *before* the coarse maps are upsampled, instead of gathering from all 448 after.
        self.register_buffer("idx", torch.tensor(sorted(idx), dtype=torch.long))
        offsets = [0]
        for w in widths:
            offsets.append(offsets[-1] + w)
        self._layer_idx = [self.idx[(self.idx >= lo) & (self.idx < hi)] - lo for lo, hi in zip(offsets, offsets[1:])]
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("precision", torch.empty(0))
        self.grid: tuple[int, int] | None = None

    @property
    def is_fitted(self) -> bool:
        return self.mean.numel() > 0

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, d, h, w) selected features at layer1 resolution."""
        feats = self.backbone(x, self.config.layers)
        size = feats[self.config.layers[0]].shape[-2:]
        parts = []
        for name, sel in zip(self.config.layers, self._layer_idx):
            if sel.numel():
                f = feats[name].index_select(1, sel.to(x.device))
                # Nearest upsampling = the reference's replication of coarse cells.
                parts.append(f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="nearest"))
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def fit(self, data: Iterable[torch.Tensor], context: FitContext | None = None) -> "Padim":
        """Per-position mean and regularised covariance from normal training batches."""
        n = 0
        shift = s1 = s2 = None
        for x in data:
            e = self.embed(x)  # (B, d, h, w)
            b, d, h, w = e.shape
            v = e.permute(2, 3, 0, 1).reshape(h * w, b, d)  # (P, B, d)
            if shift is None:
                self.grid = (h, w)
                # Centring on the first batch's mean keeps float32 sums of squares accurate.
                shift = v.mean(dim=1, keepdim=True)
                s1 = torch.zeros(h * w, d, dtype=torch.float64, device=e.device)
                s2 = torch.zeros(h * w, d, d, dtype=torch.float64, device=e.device)
            c = v - shift
            s1 += c.sum(dim=1).double()
            s2 += torch.bmm(c.transpose(1, 2), c).double()
            n += b
        if n < 2:
            raise TabadError(f"PaDiM needs at least 2 training images, got {n}")
        mean_c = s1 / n
        cov = (s2 - n * mean_c.unsqueeze(2) * mean_c.unsqueeze(1)) / (n - 1)
        cov += self.config.epsilon * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        self.mean = (mean_c + shift.squeeze(1).double()).float()
        # contiguous: inv returns column-major matrices, and a saved-and-loaded (row-major) copy
        # would take another GEMM path with other rounding.
        self.precision = torch.linalg.inv(cov).float().contiguous()
        return self

    @torch.no_grad()
    def distance_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance on the feature grid, (B, h, w)."""
        if not self.is_fitted:
            raise RuntimeError("call fit() before predict()")
        e = self.embed(x)
        b, d, h, w = e.shape
        if (h, w) != tuple(self.grid):
            raise ValueError(f"input gives a {h}x{w} feature grid but the model was fitted on {self.grid}")
        delta = e.permute(2, 3, 0, 1).reshape(h * w, b, d) - self.mean.unsqueeze(1)  # (P, B, d)
        m = torch.bmm(delta, self.precision)  # (P, B, d)
        dist2 = (m * delta).sum(-1).clamp_min_(0)  # (P, B)
        return dist2.sqrt().T.reshape(b, h, w)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> AnomalyOutput:
        """Image scores (B,) and smoothed anomaly maps (B, H, W) at the input size."""
        maps = upsample(self.distance_grid(x), tuple(x.shape[-2:]), align_corners=False)
        maps = gaussian_blur(maps, self.config.sigma)
        return AnomalyOutput(maps.flatten(1).amax(dim=1), maps)
