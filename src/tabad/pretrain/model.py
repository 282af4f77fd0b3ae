"""The visual encoder E_V of TAB (paper §3.3, Algorithm 1).

backbone (any :mod:`tabad.backbones` family) → global average pool of its
last stage → projection head to the text dimension D → L2 normalisation. Only the backbone is kept
after pre-training; the head and the logit scale are training scaffolding.

What of the backbone trains is set by ``bn_stats`` and ``freeze_stages``
(:mod:`tabad.pretrain.freeze`): :meth:`TABModel.train` puts the whole model in
train mode, then puts back in eval mode every BatchNorm layer (``bn_stats="frozen"``)
and every frozen stage, so a caller's ``model.train()`` (or DDP's) never
re-estimates statistics that are meant to stay.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tabad.backbones.base import Family

LOSSES = ("tab", "joint", "normal-only", "classification")


class ProjectionHead(nn.Module):
    """Pooled backbone feature → text space.

    ``linear``: one Linear layer (CLIP's image projection). ``mlp`` (default):
    Linear → ReLU → Linear with a residual connection and LayerNorm, the head of
    the authors' code without its dropout (dropout would make resumed and
    uninterrupted runs draw different masks for no documented gain).
    """

    def __init__(self, in_dim: int, out_dim: int, kind: str = "mlp"):
        super().__init__()
        if kind not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {kind!r}")
        self.kind = kind
        self.proj = nn.Linear(in_dim, out_dim)
        if kind == "mlp":
            self.fc = nn.Linear(out_dim, out_dim)
            self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.proj(x)
        if self.kind == "linear":
            return p
        return self.norm(p + self.fc(F.relu(p)))


class TABModel(nn.Module):
    """Backbone + head + logit scale; ``forward`` returns unit vectors (B, D).

    For the ``classification`` baseline (paper Table 5) the head is a
    2C-way linear classifier on the pooled feature instead, and ``forward``
    returns its logits.
    """

    def __init__(self, backbone: nn.Module, text_dim: int, n_classes: int, loss: str = "tab",
                 head: str = "mlp", init_scale: float = 1 / 0.07, learn_scale: bool = True,
                 family: Family | None = None, bn_stats: str = "train", freeze_stages: int = -1):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if family is None:
            from tabad.backbones.resnet import RESNET

            family = RESNET
        self.family = family
        self.backbone = backbone
        # The ImageNet classifier is not part of the feature path; it is kept
        # (frozen) only so the checkpoint loads strictly into the family's own network.
        classifier = family.classifier(backbone)
        classifier.requires_grad_(False)
        from tabad.pretrain.freeze import BN_STATS, batchnorms, frozen_groups

        if bn_stats not in BN_STATS:
            raise ValueError(f"bn_stats must be one of {BN_STATS}, got {bn_stats!r}")
        self.bn_stats = bn_stats
        self.freeze_stages = freeze_stages
        groups = frozen_groups(family.name, backbone, freeze_stages)
        #: names of the frozen groups ("stem", "layer1", "blocks.0", ...).
        self.frozen_names = [name for name, _ in groups]
        # Plain lists (not registered sub-modules): the state dict keeps its layout.
        self._eval_modules: list[nn.Module] = [m for _, mods in groups for m in mods]
        for m in self._eval_modules:
            m.requires_grad_(False)
        if bn_stats == "frozen":
            self._eval_modules += batchnorms(backbone)
        self.loss_kind = loss
        in_dim = classifier.in_features
        if loss == "classification":
            self.head = nn.Linear(in_dim, 2 * n_classes)
        else:
            self.head = ProjectionHead(in_dim, text_dim, head)
        # CLIP stores the temperature in log space so it stays positive; the
        # authors' code forgot the exp (methods in tab_reference_code.md §1).
        log_scale = torch.tensor(math.log(init_scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def train(self, mode: bool = True) -> "TABModel":
        super().train(mode)
        if mode:
            for m in self._eval_modules:
                m.eval()
        return self

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.family.pooled(self.backbone, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.pooled(x))
        return z if self.loss_kind == "classification" else F.normalize(z, dim=-1)

    @property
    def scale(self) -> torch.Tensor:
        # CLIP clamps the scale at 100 to keep training stable.
        return self.log_scale.exp().clamp(max=100.0)
