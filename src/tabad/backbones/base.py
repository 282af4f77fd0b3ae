"""The backbone protocol: a family of networks, and the frozen feature extractor built on one.

A :class:`Family` knows one kind of network (ResNet, EfficientNet): how to
build an architecture, where its weights come from, which intermediate
outputs stand in for ResNet's ``layer1`` .. ``layer4`` (strides 4, 8, 16, 32),
how to pool its last stage, and which input normalisation it was trained with.

A :class:`FeatureExtractor` is what the anomaly-detection methods see: an
``nn.Module`` whose ``forward(x, taps)`` returns ``{tap: feature map}``. It is
frozen (always ``eval()``, no gradients), so a method holding it as a
sub-module can switch its own heads to training without touching the
backbone's BatchNorm statistics, and the backbone's tensors are saved with a
fitted method.

Tap names are the same for every family (``layer1`` .. ``layer4``), so a
method written for ResNet's layer1-3 (PaDiM, PatchCore, SimpleNet) runs on
any family; each family documents which of its blocks the names stand for.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from tabad.errors import TabadError

if TYPE_CHECKING:
    from tabad.backbones.weights import WeightsInfo

#: The tap names every family provides, by stride 4, 8, 16, 32.
LAYERS = ("layer1", "layer2", "layer3", "layer4")

#: Tensor layouts a :class:`FeatureExtractor` can run in.
MEMORY_FORMATS = ("channels_last", "contiguous")


@dataclass(frozen=True)
class Tap:
    """One intermediate output: its channels and its stride relative to the input."""

    name: str
    channels: int
    stride: int


@dataclass(frozen=True)
class Normalisation:
    """Per-channel ``(x - mean) / std`` of [0, 1] RGB inputs, the statistics the weights were trained with."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}


IMAGENET_NORMALISATION = Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: TF-Lite's (x·255 − 127) / 128 ≈ mean 0.5, std 0.5 (EfficientNet-Lite).
HALF_NORMALISATION = Normalisation((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class Family(ABC):
    """One family of backbone networks (see the module docstring)."""

    #: registry name, e.g. ``"resnet"``.
    name: str
    #: the public key layout of its state dicts, named in errors (e.g. ``"torchvision"``, ``"timm"``).
    layout: str

    @abstractmethod
    def architectures(self) -> tuple[str, ...]:
        """The architectures this family builds."""

    @abstractmethod
    def taps(self, arch: str) -> dict[str, Tap]:
        """``layer1`` .. ``layer4`` of ``arch``: channels and stride."""

    @abstractmethod
    def normalisation(self, arch: str) -> Normalisation:
        """The input normalisation the family's weights expect."""

    @abstractmethod
    def new_model(self, arch: str) -> nn.Module:
        """A randomly initialised network in the family's public key layout."""

    @abstractmethod
    def load(self, arch: str, source: str, seed: int = 0,
             allow_download: bool = False) -> tuple[nn.Module, "WeightsInfo"]:
        """``arch`` filled from a weights source (``random``, ``random:SEED``, ``imagenet``, PATH)."""

    @abstractmethod
    def tap_forward(self, model: nn.Module, x: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        """The requested taps of ``model`` on ``x``; stages past the deepest tap are not run."""

    @abstractmethod
    def pooled(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled last-stage features (B, D), the input of a classifier head."""

    @abstractmethod
    def pooled_dim(self, arch: str) -> int:
        """D of :meth:`pooled`."""

    @abstractmethod
    def classifier(self, model: nn.Module) -> nn.Module:
        """The ImageNet classifier of ``model`` (not on the feature path; kept so checkpoints load strictly)."""

    def check(self, arch: str) -> None:
        if arch not in self.architectures():
            raise TabadError(f"{self.name} has no architecture {arch!r}; choose one of {', '.join(self.architectures())}")


class FeatureExtractor(nn.Module):
    """A frozen network of a :class:`Family` returning named intermediate feature maps.

    ``forward(x, taps)`` takes inputs normalised with :attr:`normalisation`
    and returns ``{tap: (B, C, H/stride, W/stride)}``; only the stages up to
    the deepest requested tap run, so PaDiM (layer1-3) never pays for layer4.
    """

    def __init__(self, family: Family, model: nn.Module, info: "WeightsInfo", memory_format: str = "channels_last"):
        super().__init__()
        # channels_last lets oneDNN / cuDNN pick their fast convolution kernels:
        # about 2.5x faster on a 2-core CPU for ResNet18, equal results up to float
        # rounding. "contiguous" (torch's default layout) gives bit-identical
        # features to another library's contiguous network, for side-by-side runs.
        if memory_format not in MEMORY_FORMATS:
            raise TabadError(f"memory_format={memory_format!r}; choose one of {MEMORY_FORMATS}")
        self.family = family
        self.info = info
        self.arch = info.arch
        self.memory_format = memory_format
        self._layout = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
        self.model = model.eval().to(memory_format=self._layout)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.taps = family.taps(self.arch)
        self.normalisation = family.normalisation(self.arch)

    def train(self, mode: bool = True) -> "FeatureExtractor":
        # Frozen: a method's .train() must never re-estimate the backbone's BatchNorm statistics.
        return super().train(False)

    def channels(self, layers: Sequence[str]) -> list[int]:
        return [self.taps[layer].channels for layer in layers]

    def forward(self, x: torch.Tensor, taps: Sequence[str] = LAYERS[:3]) -> dict[str, torch.Tensor]:
        unknown = [t for t in taps if t not in self.taps]
        if unknown:
            raise ValueError(f"unknown layers {unknown}; choose from {tuple(self.taps)}")
        with torch.no_grad():
            return self.family.tap_forward(self.model, x.contiguous(memory_format=self._layout), taps)

    def describe(self) -> dict:
        """What a model file records about its backbone."""
        return {"family": self.family.name, "arch": self.arch, "memory_format": self.memory_format,
                "normalisation": self.normalisation.to_dict(), "weights": self.info.to_dict()}


class PooledNetwork(nn.Module):
    """``model(x)`` = a family network's pooled last-stage features (B, D): the input of a classifier head.

    Wraps the bare network (trainable, unlike :class:`FeatureExtractor`) for
    classification and pre-training; the ImageNet classifier stays in the
    state dict, unused, so the weights still load strictly elsewhere.
    """

    def __init__(self, family: Family, model: nn.Module, arch: str):
        super().__init__()
        self.family = family
        self.model = model
        self.dim = family.pooled_dim(arch)
        self.normalisation = family.normalisation(arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.family.pooled(self.model, x)
