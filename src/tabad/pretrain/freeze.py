"""What pre-training may change in the backbone: BatchNorm statistics and frozen stages.

BatchNorm statistics (``--bn-stats``)
    ``train``
        every BatchNorm layer is in train mode: batch statistics normalise each
        step and the running mean/var drift toward the pre-training images (the
        paper's and the authors' code's behaviour, tab_reference_code.md).
    ``frozen``
        every BatchNorm layer of the backbone stays in eval mode: it normalises
        with its stored running mean/var, which never change (``num_batches_tracked``
        neither); its affine weight and bias are still trained.
    ``auto`` (the default) resolves by :data:`DEFAULT_BN_STATS`, **the one place to
    change the default**: ``train`` from a random initialisation (its statistics
    mean nothing and must be estimated), ``frozen`` from pre-trained weights
    (``imagenet`` or a file). With ImageNet EfficientNet-Lite0 weights, naive TAB
    fine-tuning lost accuracy on unseen categories, and the whole loss was
    explained by the running statistics drifting to the pre-training images;
    with them frozen at ImageNet's the loss disappeared. This departs from the
    paper for ResNet18 + ImageNet: ``--bn-stats train`` reproduces the paper.
    The resolved value is what runs, resumes and is recorded.

Frozen stages (``--freeze-stages N``)
    ``-1`` (default) freezes nothing; ``N >= 0`` freezes the stem and the first
    ``N`` stages (no gradients, not handed to the optimiser, and kept in eval
    mode so their BatchNorm statistics do not move either). Stages per family
    (:data:`STAGES`):

    ============  ==========================  ===================================
    family        stem                        stages 1..N
    ============  ==========================  ===================================
    resnet        ``conv1``, ``bn1``          ``layer1`` .. ``layer4`` (N <= 4)
    efficientnet  ``conv_stem``, ``bn1``      ``blocks.0`` .. ``blocks.6`` (N <= 7)
    ============  ==========================  ===================================

    EfficientNet's ``conv_head``/``bn2`` (the 1x1 convolution to 1280 channels
    before pooling) is never frozen by this option, as ResNet has no counterpart.
    The ImageNet classifier is always frozen (see :mod:`tabad.pretrain.model`).
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from tabad.errors import TabadError

BN_STATS = ("train", "frozen")

#: ``--bn-stats auto`` by kind of initial weights: change the default here.
DEFAULT_BN_STATS: dict[str, str] = {"random": "train", "pretrained": "frozen"}


def init_kind(init: str) -> str:
    """``random`` for ``random`` / ``random:SEED``, else ``pretrained`` (``imagenet`` or a file)."""
    return "random" if init == "random" or init.startswith("random:") else "pretrained"


def resolve_bn_stats(bn_stats: str, init: str) -> str:
    """The BatchNorm mode a run uses: ``bn_stats`` itself, or its default for ``init`` when ``auto``."""
    if bn_stats == "auto":
        return DEFAULT_BN_STATS[init_kind(init)]
    if bn_stats not in BN_STATS:
        raise TabadError(f"bn_stats={bn_stats!r}; choose auto, {' or '.join(BN_STATS)}")
    return bn_stats


def _resnet(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    return [("stem", [model.conv1, model.bn1])] + [(f"layer{i}", [getattr(model, f"layer{i}")]) for i in range(1, 5)]


def _efficientnet(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    return [("stem", [model.conv_stem, model.bn1])] + [(f"blocks.{i}", [b]) for i, b in enumerate(model.blocks)]


#: family name -> the backbone's (name, modules) groups: the stem first, then the stages in order.
STAGES: dict[str, Callable[[nn.Module], list[tuple[str, list[nn.Module]]]]] = {
    "resnet": _resnet,
    "efficientnet": _efficientnet,
}


def backbone_stages(family_name: str, model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """``[("stem", [...]), (stage name, [...]), ...]`` of a backbone of the family ``family_name``."""
    if family_name not in STAGES:
        raise TabadError(f"no stage definition for backbone family {family_name!r} (tabad.pretrain.freeze.STAGES)")
    return STAGES[family_name](model)


def frozen_groups(family_name: str, model: nn.Module, freeze_stages: int) -> list[tuple[str, list[nn.Module]]]:
    """The groups ``--freeze-stages freeze_stages`` freezes: none for -1, the stem and N stages for N >= 0."""
    groups = backbone_stages(family_name, model)
    if not -1 <= freeze_stages <= len(groups) - 1:
        raise TabadError(f"freeze_stages={freeze_stages}: a {family_name} backbone has the stem and "
                         f"{len(groups) - 1} stages ({', '.join(n for n, _ in groups[1:])}); choose -1 (nothing) "
                         f"to {len(groups) - 1}")
    return groups[: freeze_stages + 1]


def batchnorms(model: nn.Module) -> list[nn.Module]:
    """Every BatchNorm layer of ``model`` (timm's ``BatchNormAct2d`` included)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
