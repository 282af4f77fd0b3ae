"""PaDiM (methods.md §1) against a literal, loop-based numpy reference."""

from __future__ import annotations

import random
from dataclasses import FrozenInstanceError

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from scipy import ndimage

from tabad.backbones import build_backbone
from tabad.errors import TabadError
from tabad.methods import REGISTRY, create_method, method_names
from tabad.methods.padim import Padim, PadimConfig, select_channels


def _reference_sample(total: int, d: int, seed: int = 1024) -> list[int]:
    """The reference repo's channel subset, drawn from the *global* generator (state restored)."""
    state = random.getstate()
    try:
        random.seed(seed)
        return random.sample(range(total), d)
    finally:
        random.setstate(state)


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("resnet18", "random", seed=0)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(10, 3, 32, 32, generator=g), torch.randn(4, 3, 32, 32, generator=g)


# --------------------------------------------------------------------------- channel selection


def test_select_channels_matches_reference_resnet18():
    assert select_channels(448, None, "resnet18") == _reference_sample(448, 100)


def test_select_channels_matches_reference_wide_resnet():
    assert select_channels(1792, None, "wide_resnet50_2") == _reference_sample(1792, 550)


def test_select_channels_keeps_global_random_state():
    random.seed(99)
    state = random.getstate()
    select_channels(448, None, "resnet18")
    select_channels(448, 10, "resnet18", seed=5)
    assert random.getstate() == state


def test_select_channels_options():
    assert select_channels(448, "all", "resnet18") == list(range(448))
    assert select_channels(448, 10, "resnet18") == _reference_sample(448, 10)
    assert select_channels(448, 448, "resnet18") == _reference_sample(448, 448)
    assert select_channels(448, 10, "resnet18", seed=3) == _reference_sample(448, 10, seed=3)
    # unknown architecture without an explicit number: keep everything (as a sample)
    assert sorted(select_channels(50, None, "other")) == list(range(50))


@pytest.mark.parametrize("bad", [0, -1, 449, "some"])
def test_select_channels_invalid(bad):
    with pytest.raises(ValueError):
        select_channels(448, bad, "resnet18")


def test_padim_uses_reference_indices(backbone):
    # The same channel subset as the reference, kept sorted (the distance ignores the order).
    model = create_method("padim", backbone)
    assert model.idx.tolist() == sorted(_reference_sample(448, 100))
    two = create_method("padim", backbone, {"layers": ("layer1", "layer2")})
    assert two.idx.tolist() == sorted(_reference_sample(192, 100))


# --------------------------------------------------------------------------- reference implementation


def _reference_features(state_dict: dict, x: torch.Tensor) -> np.ndarray:
    """layer1-3 of a plain torchvision resnet18, coarse layers replicated onto layer1 cells (np.repeat)."""
    net = torchvision.models.resnet18(weights=None)
    net.load_state_dict(state_dict)
    net.eval().to(memory_format=torch.channels_last)  # channels_last only for speed on CPU
    feats = []
    with torch.no_grad():
        h = x.contiguous(memory_format=torch.channels_last)
        for stage in (net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3):
            h = stage(h)
            if stage in (net.layer1, net.layer2, net.layer3):
                feats.append(h.double().numpy())
    l1, l2, l3 = feats
    l2 = l2.repeat(2, axis=2).repeat(2, axis=3)
    l3 = l3.repeat(4, axis=2).repeat(4, axis=3)
    return np.concatenate([l1, l2, l3], axis=1)


def _reference_padim(state_dict: dict, train: torch.Tensor, test: torch.Tensor, d: int):
    idx = _reference_sample(448, d)
    f = _reference_features(state_dict, torch.cat([train, test]))[:, idx]
    ftr, fte = f[: len(train)], f[len(train) :]
    _, _, h, w = ftr.shape
    dist = np.zeros((len(test), h, w))
    for i in range(h):
        for j in range(w):
            x = ftr[:, :, i, j]
            mu = x.mean(axis=0)
            inv = np.linalg.inv(np.cov(x, rowvar=False) + 0.01 * np.eye(d))
            for b in range(len(test)):
                delta = fte[b, :, i, j] - mu
                dist[b, i, j] = np.sqrt(delta @ inv @ delta)
    up = F.interpolate(torch.from_numpy(dist)[:, None], size=tuple(test.shape[-2:]), mode="bilinear",
                       align_corners=False)[:, 0].numpy()
    maps = np.stack([ndimage.gaussian_filter(m, sigma=4) for m in up])
    return maps.reshape(len(maps), -1).max(axis=1), maps


def test_padim_matches_reference(backbone, data):
    train, test = data
    want_scores, want_maps = _reference_padim(backbone.model.state_dict(), train, test, d=30)
    model = create_method("padim", backbone, {"n_features": 30, "batch_size": 4})
    model.fit(train[i : i + 4] for i in range(0, len(train), 4))
    scores, maps = model.predict(test)
    assert scores.shape == (4,) and maps.shape == (4, 32, 32)
    np.testing.assert_allclose(scores.numpy(), want_scores, rtol=1e-3)
    np.testing.assert_allclose(maps.numpy(), want_maps, rtol=1e-3, atol=1e-3 * np.abs(want_maps).max())


def test_fit_statistics_match_numpy(backbone, data):
    train, _ = data
    model = create_method("padim", backbone, {"n_features": 30}).fit([train])
    f = _reference_features(backbone.model.state_dict(), train)[:, sorted(_reference_sample(448, 30))]
    n, d, h, w = f.shape
    assert model.grid == (h, w)
    assert model.mean.shape == (h * w, d) and model.precision.shape == (h * w, d, d)
    for p in (0, 17, h * w - 1):
        x = f[:, :, p // w, p % w]
        np.testing.assert_allclose(model.mean[p].numpy(), x.mean(0), rtol=1e-5, atol=1e-5)
        cov = np.cov(x, rowvar=False) + 0.01 * np.eye(d)
        np.testing.assert_allclose(model.precision[p].numpy() @ cov, np.eye(d), atol=1e-3)


def test_fit_is_batch_size_independent(backbone, data):
    train, _ = data
    a = create_method("padim", backbone, {"n_features": 30}).fit([train[i : i + 2] for i in range(0, 10, 2)])
    b = create_method("padim", backbone, {"n_features": 30}).fit([train[:5], train[5:]])
    torch.testing.assert_close(a.mean, b.mean, rtol=1e-5, atol=1e-5)
    scale = float(a.precision.abs().max())
    torch.testing.assert_close(a.precision, b.precision, rtol=1e-4, atol=1e-4 * scale)


def test_fit_and_predict_are_deterministic(backbone, data):
    train, test = data
    a = create_method("padim", backbone, {"n_features": 30}).fit([train])
    b = create_method("padim", backbone, {"n_features": 30}).fit([train])
    assert torch.equal(a.mean, b.mean) and torch.equal(a.precision, b.precision)
    sa, ma = a.predict(test)
    sb, mb = b.predict(test)
    assert torch.equal(sa, sb) and torch.equal(ma, mb)
    # predicting an image alone gives the same as inside a batch
    s1, m1 = a.predict(test[2:3])
    torch.testing.assert_close(s1, sa[2:3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m1, ma[2:3], rtol=1e-5, atol=1e-5)


def test_image_score_is_max_of_map(backbone, data):
    train, test = data
    model = create_method("padim", backbone, {"n_features": 20}).fit([train])
    scores, maps = model.predict(test)
    assert torch.equal(scores, maps.flatten(1).amax(1))
    assert (maps >= 0).all()


def test_maps_have_input_size_including_non_square(backbone):
    g = torch.Generator().manual_seed(1)
    train, test = torch.randn(3, 3, 64, 32, generator=g), torch.randn(2, 3, 64, 32, generator=g)
    model = create_method("padim", backbone, {"n_features": 10}).fit([train])
    assert model.grid == (16, 8)
    scores, maps = model.predict(test)
    assert scores.shape == (2,) and maps.shape == (2, 64, 32)
    with pytest.raises(ValueError, match="feature grid"):
        model.predict(torch.randn(1, 3, 32, 32))


def test_predict_before_fit_raises(backbone, data):
    model = create_method("padim", backbone, {"n_features": 10})
    assert not model.is_fitted
    with pytest.raises(RuntimeError, match="fit"):
        model.predict(data[1])


def test_fit_needs_two_images(backbone, data):
    with pytest.raises(TabadError, match="at least 2"):
        create_method("padim", backbone, {"n_features": 10}).fit([data[0][:1]])
    with pytest.raises(TabadError, match="at least 2"):
        create_method("padim", backbone, {"n_features": 10}).fit([])


def test_obvious_defect_scores_higher(backbone, tiny_mvtec):
    from tabad.metrics import image_auroc, pixel_auroc

    from tests.conftest import score_tiny_obj

    test, s, maps = score_tiny_obj("padim", backbone, tiny_mvtec)
    assert maps.shape == (len(test), 56, 56)
    assert image_auroc(test.labels, s) == 1.0
    assert s[test.labels == 1].min() > 3 * s[test.labels == 0].max()  # a wide margin, not luck
    assert pixel_auroc(test.masks.numpy(), maps.numpy()) > 0.9


# --------------------------------------------------------------------------- registry and config


def test_create_method_with_overrides(backbone):
    model = create_method("padim", backbone, {"n_features": 10, "sigma": 2.0})
    assert isinstance(model, Padim)
    assert model.config.n_features == 10 and model.config.sigma == 2.0
    assert model.config.epsilon == 0.01 and model.config.channel_seed == 1024  # untouched defaults
    assert model.idx.numel() == 10
    assert create_method("padim", backbone).config == PadimConfig()


def test_create_method_rejects_unknown_option_and_method(backbone):
    with pytest.raises(TabadError, match="no option") as exc:
        create_method("padim", backbone, {"n_featurs": 10})
    assert "n_featurs" in str(exc.value) and "n_features" in str(exc.value)
    with pytest.raises(TabadError, match="unknown method"):
        create_method("patchcor", backbone)


def test_registry():
    assert "padim" in method_names() and method_names() == sorted(REGISTRY)


def test_config_defaults_are_the_reference():
    cfg = PadimConfig()
    assert cfg.layers == ("layer1", "layer2", "layer3")
    assert cfg.n_features is None and cfg.channel_seed == 1024
    assert cfg.epsilon == 0.01 and cfg.sigma == 4.0 and cfg.batch_size == 32
    with pytest.raises(FrozenInstanceError):
        cfg.sigma = 1.0  # type: ignore[misc]
