"""Backbones: families of CNNs as frozen feature extractors, and their weights sources.

``build_backbone(arch, source)`` gives a :class:`FeatureExtractor` (an
``nn.Module`` with ``forward(x, taps) -> {tap: tensor}``) for any registered
architecture; ``load_weights(arch, source)`` gives the bare network, for code
that trains it (TAB pre-training, classification). Weights sources are
described in :mod:`tabad.backbones.weights`.

Families live one per module and are imported only when used, so the
architecture list below is all ``tabad --help`` needs:

=====================  ============  ==============================================
architecture           family        taps layer1..4 (stride 4/8/16/32)
=====================  ============  ==============================================
resnet18               resnet        torchvision layer1..layer4
wide_resnet50_2        resnet        torchvision layer1..layer4
efficientnet_lite0..2  efficientnet  timm ``tf_efficientnet_liteN`` blocks 1, 2, 4, 6
efficientnet_b4        efficientnet  timm ``tf_efficientnet_b4`` blocks 1, 2, 4, 6
=====================  ============  ==============================================

A new family is one module with a :class:`~tabad.backbones.base.Family`
instance, one entry in :data:`FAMILIES` and its architectures in
:data:`ARCH_FAMILY`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tabad.backbones.weights import WeightsInfo, pretraining_record, state_dict_sha256, weights_label
from tabad.errors import WeightsError

if TYPE_CHECKING:
    from torch import nn

    from tabad.backbones.base import Family, FeatureExtractor

#: family name -> "module:instance".
FAMILIES: dict[str, str] = {
    "resnet": "tabad.backbones.resnet:RESNET",
    "efficientnet": "tabad.backbones.efficientnet:EFFICIENTNET",
}

#: architecture -> family name (plain data: the CLI lists it without importing torch).
ARCH_FAMILY: dict[str, str] = {
    "resnet18": "resnet",
    "wide_resnet50_2": "resnet",
    "efficientnet_lite0": "efficientnet",
    "efficientnet_lite1": "efficientnet",
    "efficientnet_lite2": "efficientnet",
    "efficientnet_b4": "efficientnet",
}

#: The tap names every family provides (ResNet's stage names).
LAYERS = ("layer1", "layer2", "layer3", "layer4")


def architectures() -> list[str]:
    return list(ARCH_FAMILY)


def get_family(name: str) -> "Family":
    """A family by registry name."""
    if name not in FAMILIES:
        raise WeightsError(f"unknown backbone family {name!r}; choose one of {', '.join(FAMILIES)}")
    module, attr = FAMILIES[name].split(":")
    return getattr(importlib.import_module(module), attr)


def family_of(arch: str) -> "Family":
    """The family that builds ``arch``."""
    if arch not in ARCH_FAMILY:
        raise WeightsError(f"unknown backbone {arch!r}; choose one of {', '.join(ARCH_FAMILY)}")
    return get_family(ARCH_FAMILY[arch])


def load_weights(arch: str, source: str, seed: int = 0, allow_download: bool = False) -> tuple["nn.Module", WeightsInfo]:
    """The bare network ``arch`` filled from ``source`` (see :mod:`tabad.backbones.weights`)."""
    return family_of(arch).load(arch, source, seed=seed, allow_download=allow_download)


def build_backbone(arch: str, source: str, seed: int = 0, allow_download: bool = False,
                   memory_format: str = "channels_last") -> "FeatureExtractor":
    """A frozen :class:`FeatureExtractor` of ``arch`` with weights from ``source``."""
    from tabad.backbones.base import FeatureExtractor

    family = family_of(arch)
    model, info = family.load(arch, source, seed=seed, allow_download=allow_download)
    return FeatureExtractor(family, model, info, memory_format=memory_format)


def __getattr__(name: str):
    # Names of the ResNet-only module this package replaced, resolved lazily so that
    # importing the package stays free of torch.
    if name == "Backbone":
        from tabad.backbones.base import FeatureExtractor

        return FeatureExtractor
    if name == "ARCHITECTURES":
        from tabad.backbones.resnet import CHANNELS

        return CHANNELS
    if name == "MEMORY_FORMATS":
        from tabad.backbones.base import MEMORY_FORMATS

        return MEMORY_FORMATS
    if name == "imagenet_weights_file":
        from tabad.backbones.resnet import imagenet_weights_file

        return imagenet_weights_file
    raise AttributeError(f"module 'tabad.backbones' has no attribute {name!r}")


__all__ = ["ARCH_FAMILY", "FAMILIES", "LAYERS", "WeightsInfo", "architectures", "build_backbone", "family_of",
           "get_family", "load_weights", "pretraining_record", "state_dict_sha256", "weights_label"]
