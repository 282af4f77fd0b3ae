"""RD4AD (methods.md §2): architecture, training protocol, loss and scoring."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tabad.backbones import build_backbone
from tabad.methods.base import FitContext
from tabad.datasets.loader import Batches
from tabad.errors import ConfigError, TabadError
from tabad.methods import REGISTRY, create_method
from tabad.methods.common import gaussian_blur
from tabad.methods.rd4ad import DeResNet, Ocbe, Rd4ad, Rd4adConfig, anomaly_map, distillation_loss


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("resnet18", "random:0")


@pytest.fixture(scope="module")
def train_batches():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8, generator=g)
    return Batches(images, batch_size=3)


def _fit(backbone, batches, epochs=1, seed=0, **kw) -> Rd4ad:
    torch.manual_seed(seed)
    return create_method("rd4ad", backbone, {"epochs": epochs}).fit(batches, FitContext(seed=seed, **kw))


def _trained_state(model: Rd4ad) -> dict[str, torch.Tensor]:
    return {**{f"ocbe.{k}": v for k, v in model.ocbe.state_dict().items()},
            **{f"student.{k}": v for k, v in model.student.state_dict().items()}}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------- config


def test_registered_and_defaults():
    assert "rd4ad" in REGISTRY
    c = Rd4adConfig()
    assert (c.layers, c.epochs, c.batch_size, c.lr, c.betas, c.sigma) == (
        ("layer1", "layer2", "layer3"), 200, 16, 0.005, (0.5, 0.999), 4.0)
    assert (c.loss, c.map_mode, c.amp, c.blur_padding) == ("flat", "add", True, "symmetric")
    with pytest.raises(FrozenInstanceError):
        c.epochs = 3


@pytest.mark.parametrize("overrides", [{"loss": "mse"}, {"map_mode": "max"}, {"layers": ("layer2", "layer3")},
                                       {"betas": (0.5,)}, {"lr": 0}, {"epochs": -1}, {"batch_size": 0},
                                       {"blur_padding": "edge"}])
def test_invalid_config(backbone, overrides):
    with pytest.raises(ConfigError):
        create_method("rd4ad", backbone, overrides)


# --------------------------------------------------------------------------- architecture


def test_shapes_resnet18_non_square(backbone):
    model = create_method("rd4ad", backbone).eval()
    x = torch.randn(2, 3, 64, 96)
    t, s = model.features(x)
    assert [tuple(f.shape) for f in t] == [(2, 64, 16, 24), (2, 128, 8, 12), (2, 256, 4, 6)]
    assert [f.shape for f in s] == [f.shape for f in t]
    assert tuple(model.ocbe(t).shape) == (2, 512, 2, 3)
    scores, maps = model.predict(x)
    assert scores.shape == (2,) and maps.shape == (2, 64, 96)
    with pytest.raises(ValueError, match="divisible by 32"):
        model.predict(torch.randn(1, 3, 64, 56))


def test_shapes_wide_resnet50_2_ocbe_and_student():
    torch.manual_seed(0)
    ocbe, student = Ocbe("wide_resnet50_2").eval(), DeResNet("wide_resnet50_2").eval()
    assert [len(stage) for stage in student.stages] == [3, 4, 6]
    assert ocbe.oce[0].conv2.stride == (2, 2) and len(ocbe.oce) == 3
    assert ocbe.oce[0].conv1.out_channels == 1024  # Bottleneck width_per_group 128
    feats = [torch.randn(1, 256, 8, 8), torch.randn(1, 512, 4, 4), torch.randn(1, 1024, 2, 2)]  # 32 px input
    with torch.no_grad():
        z = ocbe(feats)
        assert tuple(z.shape) == (1, 2048, 1, 1)
        assert [tuple(f.shape) for f in student(z)] == [tuple(f.shape) for f in feats]


def test_official_initialisation(backbone):
    torch.manual_seed(0)
    model = create_method("rd4ad", backbone)
    first = model.student.stages[0][0]
    assert isinstance(first.conv1, torch.nn.ConvTranspose2d) and first.conv1.kernel_size == (2, 2)
    assert isinstance(first.upsample[0], torch.nn.ConvTranspose2d)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    conv = model.ocbe.fuse1[0]  # Kaiming normal, fan_out: std = sqrt(2 / (out * 3 * 3))
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (128 * 9)), rel=0.05)


# --------------------------------------------------------------------------- loss and map


def test_loss_formula_flat_vs_pixel():
    # one image, 2 channels, 1x2 positions: teacher (1,0) | (0,1), student (2,0) | (1,0)
    t = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    s = torch.tensor([[[[2.0, 1.0]], [[0.0, 0.0]]]])
    # pixel (paper Eq. 1-2): mean of per-position distances (1 - 1, 1 - 0) = 0.5
    assert distillation_loss([t], [s], "pixel").item() == pytest.approx(0.5)
    # flat (official): vectors (1, 0, 0, 1) and (2, 1, 0, 0): 1 - 2 / (sqrt(2) sqrt(5))
    flat = 1 - 2 / math.sqrt(10)
    assert distillation_loss([t], [s], "flat").item() == pytest.approx(flat)
    # summed over scales, averaged over the batch
    t2, s2 = torch.cat([t, t]), torch.cat([s, t])  # second image reconstructs perfectly
    assert distillation_loss([t2, t2], [s2, s2], "flat").item() == pytest.approx(2 * flat / 2)
    assert distillation_loss([t2, t2], [s2, s2], "pixel").item() == pytest.approx(2 * 0.5 / 2)


def test_predict_map_is_upsampled_cosine_distance(backbone):
    torch.manual_seed(0)
    model = create_method("rd4ad", backbone).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        t, s = model.features(x)
    ref = 0
    for a, b in zip(t, s):
        d = 1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
        ref = ref + F.interpolate(d[:, None], size=(64, 64), mode="bilinear", align_corners=True)[:, 0]
    ref_before_blur = ref
    ref = gaussian_blur(ref, 4.0)
    scores, maps = model.predict(x)
    assert torch.allclose(maps, ref, atol=1e-5)
    assert torch.allclose(scores, ref.flatten(1).amax(1), atol=1e-5)
    # anomalib's border: the same map away from the blur radius, another one near the edge
    model_r = create_method("rd4ad", backbone, {"blur_padding": "reflect"}).eval()
    model_r.load_state_dict(model.state_dict())
    _, maps_r = model_r.predict(x)
    ref_r = gaussian_blur(ref_before_blur, 4.0, padding="reflect")
    assert torch.allclose(maps_r, ref_r, atol=1e-5)
    assert torch.allclose(maps_r[:, 16:-16, 16:-16], maps[:, 16:-16, 16:-16], atol=1e-6)
    assert not torch.allclose(maps_r, maps, atol=1e-6)
    mul = anomaly_map(t, s, (64, 64), "mul")
    assert torch.all(mul <= anomaly_map(t, s, (64, 64), "add"))  # each distance is in [0, 2]


# --------------------------------------------------------------------------- training protocol


def test_teacher_untouched_and_eval_after_fit(backbone, train_batches):
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    model = _fit(backbone, train_batches, epochs=1)
    assert not backbone.model.training
    _assert_same_state(before, backbone.model.state_dict())  # weights and BN running stats
    assert not model.ocbe.training and not model.student.training
    # The teacher is saved with the fitted model (one self-contained file) but never optimised.
    trained = {id(p) for g in model.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in trained or p.requires_grad for p in model.backbone.parameters())
    opt_params = {id(p) for g in model.optimizer.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in list(model.ocbe.parameters()) + list(model.student.parameters())}
    assert model.optimizer.defaults["betas"] == (0.5, 0.999) and model.optimizer.defaults["lr"] == 0.005
    assert len(model.train_log) == 1 and math.isfinite(model.train_log[0]["loss"])


def test_same_seed_same_weights(backbone, train_batches):
    a = _fit(backbone, train_batches, epochs=1, seed=3)
    b = _fit(backbone, train_batches, epochs=1, seed=3)
    _assert_same_state(_trained_state(a), _trained_state(b))
    assert a.train_log[0]["loss"] == b.train_log[0]["loss"]


def test_resume_equals_uninterrupted(backbone, train_batches, tmp_path):
    full = _fit(backbone, train_batches, epochs=2)
    ckpt = tmp_path / "rd4ad.train.pt"
    _fit(backbone, train_batches, epochs=1, checkpoint=ckpt, key="run")  # "interrupted" after epoch 1
    resumed = _fit(backbone, train_batches, epochs=2, seed=0, checkpoint=ckpt, key="run")
    _assert_same_state(_trained_state(full), _trained_state(resumed))
    assert [e["loss"] for e in resumed.train_log] == [e["loss"] for e in full.train_log]


def test_fit_needs_batches(backbone):
    with pytest.raises(TypeError):
        create_method("rd4ad", backbone, {"epochs": 1}).fit([torch.randn(2, 3, 64, 64)])
    with pytest.raises(TabadError):
        create_method("rd4ad", build_backbone("resnet18", "random:0"), {"epochs": 1}).fit(
            Batches(torch.zeros((0, 3, 64, 64), dtype=torch.uint8), 4))


# --------------------------------------------------------------------------- scoring end to end


def test_obvious_defect_scores_higher(backbone, tiny_mvtec):
    """Two epochs on 6 normal images already rank the bright-square defects above the
    normal images (image AUROC 1.0 for seeds 0-3) and put more map mass on the defect
    pixels; an untrained student gives chance-level scores, so this catches broken scoring."""
    from tabad.datasets.loader import load_split
    from tabad.datasets.readers import read_category
    from tabad.datasets.transforms import Geometry

    cat = read_category(tiny_mvtec, "obj")
    geometry = Geometry(64, 64)
    train, test = load_split(cat.train, geometry), load_split(cat.test, geometry)
    torch.manual_seed(0)
    model = create_method("rd4ad", backbone, {"epochs": 2}).fit(train.batches(16))
    scores, maps = model.predict(next(iter(test.batches(32))))
    scores, maps = scores.numpy(), maps.numpy()
    labels = test.labels
    assert labels.sum() == 3 and (labels == 0).sum() == 3
    assert scores[labels == 1].min() > scores[labels == 0].max()
    masks = test.masks.numpy()
    assert maps[masks].mean() > 1.05 * maps[~masks].mean()
    assert np.isfinite(maps).all()
