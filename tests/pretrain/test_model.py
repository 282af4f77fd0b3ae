import math

import pytest
import torch
import torchvision

from tabad.pretrain.model import TABModel
from tabad.pretrain.trainer import lr_factor


def _model(**kw):
    torch.manual_seed(0)
    return TABModel(torchvision.models.resnet18(), text_dim=8, n_classes=3, **kw)


def test_outputs_are_unit_vectors_in_text_dim():
    z = _model()(torch.randn(2, 3, 64, 64))
    assert z.shape == (2, 8)
    assert torch.allclose(z.norm(dim=1), torch.ones(2), atol=1e-5)


def test_logit_scale_is_stored_in_log_space_and_starts_at_clip_value():
    m = _model()
    assert m.log_scale.requires_grad
    assert m.scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    fixed = _model(learn_scale=False)
    assert not any(p is fixed.log_scale for p in fixed.parameters())


def test_classification_head_gives_2c_logits():
    z = _model(loss="classification")(torch.randn(2, 3, 64, 64))
    assert z.shape == (2, 6)


def test_backbone_keys_stay_torchvision_keys():
    m = _model()
    torchvision.models.resnet18().load_state_dict(m.backbone.state_dict(), strict=True)


def test_cosine_schedule_is_per_iteration():
    total = 100
    assert lr_factor(0, total, "cosine", 0) == pytest.approx(1.0)
    assert lr_factor(50, total, "cosine", 0) == pytest.approx(0.5)
    assert lr_factor(99, total, "cosine", 0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))
    assert lr_factor(3, total, "cosine", 10) == pytest.approx(0.4)
    assert lr_factor(7, total, "constant", 0) == 1.0
