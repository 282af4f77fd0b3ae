"""Has pre-training damaged the features? Linear CKA to the initial backbone.

The anomaly-detection methods use the backbone's ``layer2``/``layer3`` patch
features, so a pre-training run is only useful while those stay informative.
After every epoch the trainer compares them with the *initial* backbone's on a
fixed set of held-out normal images (:func:`tabad.pretrain.data.monitor_split`)
and warns when they drift too far.

Definition (plain linear CKA, Kornblith et al. 2019, Eq. for the linear kernel)
    For feature matrices X (n × d1) and Y (n × d2) of the same n rows, each
    column-centred:

        CKA(X, Y) = ||Yᵀ X||²_F / (||Xᵀ X||_F · ||Yᵀ Y||_F)

    in [0, 1]; 1 for identical features and for features equal up to an
    orthogonal transform and an isotropic scaling. It is the *plain* (biased)
    estimator, not the debiased one: with few rows relative to the feature
    width it is biased upward, so compare values of one setting, not across
    very different held-out sizes. A constant feature set (everything centred
    to zero, e.g. a stage whose weights were zeroed) has no defined CKA; it is
    reported as 0.0, total collapse. Computed in float64.

Features (:func:`patch_features`)
    the family's ``layer2`` and ``layer3`` taps (strides 8 and 16: ResNet's
    ``layer2``/``layer3``, EfficientNet's ``blocks[2]``/``blocks[4]``), each
    average-pooled to a :data:`GRID` × :data:`GRID` grid of patches: every
    image gives GRID² rows of C channels. Patches rather than one
    global-average-pooled vector per image because the methods (PaDiM,
    PatchCore) consume local features, and because a held-out set of a few
    images still gives enough rows. Both backbones run in eval mode (stored
    BatchNorm statistics) on the family's normalisation.

Warning (:func:`cka_warning`)
    when a layer's CKA falls below :data:`WARN_LEVEL` (0.8, ``--cka-warn``) the
    run logs one line naming the epoch, the layer and the value, and records it
    in ``metrics.csv`` (``cka_warning``) and ``backbone.json`` (``warnings``).
    0.8 is a heuristic level, not a calibrated one. The check runs only from
    pre-trained initial weights: from a random initialisation the features are
    meant to change completely (CKA is still recorded).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

#: the taps compared.
LAYERS = ("layer2", "layer3")
#: patches per side of each compared feature map.
GRID = 4
#: default ``--cka-warn`` level.
WARN_LEVEL = 0.8


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Plain linear CKA of two (n, d) feature matrices with the same rows (see the module docstring)."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs (n, d1) and (n, d2) matrices, got {tuple(x.shape)} and {tuple(y.shape)}")
    x = x.double() - x.double().mean(dim=0, keepdim=True)
    y = y.double() - y.double().mean(dim=0, keepdim=True)
    den = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    if den.item() == 0.0:
        return 0.0
    return float((torch.linalg.matrix_norm(y.T @ x) ** 2 / den).item())


@torch.no_grad()
def patch_features(family, backbone: torch.nn.Module, images_uint8: torch.Tensor, mean, std,
                   device: torch.device, layers: Sequence[str] = LAYERS, grid: int = GRID,
                   batch_size: int = 32) -> dict[str, torch.Tensor]:
    """``{layer: (n · grid², C) float64}`` of ``backbone`` on uint8 images (N, 3, H, W).

    The caller puts ``backbone`` in eval mode; this function changes no state
    and draws no random numbers.
    """
    from tabad.datasets.transforms import normalize

    parts: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
    for i in range(0, len(images_uint8), batch_size):
        x = normalize(images_uint8[i : i + batch_size].to(device), mean, std)
        taps = family.tap_forward(backbone, x, tuple(layers))
        for layer in layers:
            f = F.adaptive_avg_pool2d(taps[layer].float(), grid)  # (B, C, g, g)
            parts[layer].append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).double().cpu())
    return {layer: torch.cat(p) for layer, p in parts.items()}


def cka_to_reference(reference: dict[str, torch.Tensor], current: dict[str, torch.Tensor]) -> dict[str, float]:
    """``{layer: CKA(reference[layer], current[layer])}``."""
    return {layer: linear_cka(reference[layer], current[layer]) for layer in reference}


def cka_warning(epoch: int, values: dict[str, float | None], level: float = WARN_LEVEL,
                advice: str = "consider --bn-stats frozen, --freeze-stages N, a lower --lr or fewer epochs") -> str | None:
    """The one-line warning for ``epoch`` when any layer's CKA is below ``level``, else None."""
    low = [(layer, v) for layer, v in values.items() if v is not None and v < level]
    if not low:
        return None
    what = ", ".join(f"{layer} {v:.3f}" for layer, v in low)
    return (f"WARNING: epoch {epoch}: linear CKA to the initial backbone fell below {level:g} ({what}): "
            f"pre-training is changing the features anomaly detection uses" + (f" ({advice})" if advice else ""))
