"""The anomaly-text-aware loss (paper Eq. 4-6, supplementary Algorithm 1) and its ablations.

``tab`` (default, the paper)
    normal_logits = t·<f_n, T_n> and abnormal_logits = t·<f_a, T_a>, each B × C,
    target = class index; loss = (CE_normal + CE_abnormal) / 2.
``joint``
    both branches score against the 2C rows [T_n; T_a] (targets c and c + C), so
    normal and abnormal are contrasted directly (the authors' older ``src/`` code).
``normal-only``
    only the normal branch (paper Table 7, "normal text" row).
``classification``
    no text: 2C-way cross-entropy of a linear classifier, normal → c, synthetic
    → c + C (paper Table 5, "Classification").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossOutput:
    loss: torch.Tensor
    loss_normal: float
    loss_abnormal: float
    acc_normal: float  # argmax of the logits hits the target
    acc_abnormal: float
    logits_normal: torch.Tensor
    logits_abnormal: torch.Tensor | None


def _acc(logits: torch.Tensor, target: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == target).float().mean().item()


def tab_loss(out_n: torch.Tensor, out_a: torch.Tensor | None, labels: torch.Tensor, kind: str = "tab",
             text_normal: torch.Tensor | None = None, text_abnormal: torch.Tensor | None = None,
             scale: torch.Tensor | float = 1.0) -> LossOutput:
    """Loss of one batch. ``out_n``/``out_a``: model outputs for normal and synthetic images.

    For the text losses they are unit vectors (B, D) and ``text_*`` the frozen
    (C, D) class prototypes; for ``classification`` they are (B, 2C) logits.
    """
    n_classes = None if text_normal is None else text_normal.shape[0]
    if kind == "normal-only":
        # Table 7's normal-text row: synthetic images play no part.
        ln = scale * out_n @ text_normal.T
        ce_n = F.cross_entropy(ln.float(), labels)
        return LossOutput(ce_n, ce_n.item(), float("nan"), _acc(ln, labels), float("nan"), ln.detach(), None)
    if kind == "classification":
        n_classes = out_n.shape[1] // 2
        ln, la = out_n, out_a
        tn, ta = labels, labels + n_classes
    elif kind == "tab":
        ln = scale * out_n @ text_normal.T
        la = scale * out_a @ text_abnormal.T
        tn, ta = labels, labels
    elif kind == "joint":
        both = torch.cat([text_normal, text_abnormal], dim=0)
        ln, la = scale * out_n @ both.T, scale * out_a @ both.T
        tn, ta = labels, labels + n_classes
    else:
        raise ValueError(f"unknown loss {kind!r}")
    ce_n = F.cross_entropy(ln.float(), tn)
    ce_a = F.cross_entropy(la.float(), ta)
    loss = (ce_n + ce_a) / 2
    return LossOutput(loss, ce_n.item(), ce_a.item(), _acc(ln, tn), _acc(la, ta), ln.detach(), la.detach())
