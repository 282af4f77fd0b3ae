"""RegAD (methods.md §4): STN geometry, support augmentation, loss, training protocol, scoring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tabad import metrics
from tabad.backbones import build_backbone
from tabad.errors import ConfigError, TabadError
from tabad.methods.regad import (N_AUGMENTED, ROTATIONS, STN, STN_IDENTITY, Episodes, RegAD, RegADConfig,
                                 augment_support, invert_affine, lowrank_gaussian, lowrank_mahalanobis,
                                 simsiam_loss, stn_theta, warp)


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("resnet18", "random:0")


def _model(backbone, seed=0, **kw):
    base = dict(image_size=32, batch_size=3, shots=2, epochs=3, lr=0.05)
    base.update(kw)
    torch.manual_seed(seed)
    return RegAD(backbone, RegADConfig(**base))


def _toy_sets(n=(5, 6), size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"c{i}": torch.randint(0, 256, (k, 3, size, size), generator=g, dtype=torch.uint8) for i, k in enumerate(n)}


def _state(model):
    return {f"{name}.{k}": v.clone() for name in ("net", "encoder", "predictor")
            for k, v in getattr(model, name).state_dict().items()}


def _smooth(b=2, c=3, size=32):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([torch.sin(3 * xx + k) * torch.cos(2 * yy - k) for k in range(b * c)])
    return base.view(b, c, size, size)


# --------------------------------------------------------------------------- STN geometry


@pytest.mark.parametrize("mode", sorted(STN_IDENTITY))
def test_stn_is_identity_at_init(mode):
    torch.manual_seed(0)
    stn = STN(8, (12, 12), mode).eval()
    x = torch.randn(2, 8, 12, 12)
    y, theta = stn(x)
    torch.testing.assert_close(theta, torch.eye(2, 3).expand(2, 2, 3))
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_registered_features_equal_backbone_features_at_init(backbone):
    # Identity STNs: the inverse-registered stage outputs are the plain layer1-3 features.
    model = _model(backbone)
    x = torch.rand(2, 3, 32, 32)
    _, registered = model.net(x, register=True)
    feats = backbone(x, ("layer1", "layer2", "layer3"))
    for r, name in zip(registered, ("layer1", "layer2", "layer3")):
        torch.testing.assert_close(r, feats[name], atol=1e-4, rtol=1e-4)
    assert model.embed(x).shape == (2, 448, 8, 8)


def test_rotation_scale_theta_quirk():
    a, sx, sy = 0.3, 1.2, 0.7
    theta = stn_theta(torch.tensor([[a, sx, sy]]), "rotation_scale")[0]
    want = torch.tensor([[sx * math.cos(a), -math.sin(a), 0.0], [math.sin(a), sy * math.cos(a), 0.0]])
    torch.testing.assert_close(theta, want)
    theta = stn_theta(torch.tensor([[a, 0.1, -0.2, sx, sy]]), "rotation_translation_scale")[0]
    want[0, 2], want[1, 2] = 0.1, -0.2
    torch.testing.assert_close(theta, want)


def test_stn_head_parameters_drive_theta():
    stn = STN(4, (8, 8), "rotation_scale")
    with torch.no_grad():
        stn.head[2].bias.copy_(torch.tensor([0.2, 1.1, 0.9]))
    _, theta = stn(torch.randn(1, 4, 8, 8))
    want = stn_theta(torch.tensor([[0.2, 1.1, 0.9]]), "rotation_scale")
    torch.testing.assert_close(theta, want)


def test_inverse_warp_round_trip():
    x = _smooth()
    theta = stn_theta(torch.tensor([[0.25, 1.1, 0.9], [-0.15, 0.95, 1.05]]), "rotation_scale")
    eye = torch.eye(3)[:2].expand(2, 2, 3)
    composed = torch.linalg.inv(torch.cat([invert_affine(theta), torch.tensor([[[0.0, 0, 1]]]).expand(2, 1, 3)], 1))
    torch.testing.assert_close(composed[:, :2], theta)  # invert twice = theta
    back = warp(warp(x, theta), invert_affine(theta))
    inner = (slice(None), slice(None), slice(8, 24), slice(8, 24))
    assert (back - x)[inner].abs().max() < 0.05 * x.abs().max()
    assert (warp(x, theta) - x)[inner].abs().max() > 0.2  # the warp itself is not a near-identity
    torch.testing.assert_close(warp(x, eye), x, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- support augmentation


def test_augmentation_gives_22_views_per_shot():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 20, 20, generator=g)
    out = augment_support(x)
    assert N_AUGMENTED == 22 and out.shape == (44, 3, 20, 20)
    view = [out[2 * v : 2 * v + 2] for v in range(22)]
    assert torch.equal(view[0], x)
    assert sorted(ROTATIONS) == pytest.approx([s * k * math.pi / 16 for s, k in
                                               [(-1, 4), (-1, 3), (-1, 2), (-1, 1), (1, 1), (1, 2), (1, 3), (1, 4)]])
    # translation (0.2, 0.2) grid units = 0.1 * 20 = 2 pixels right and down
    torch.testing.assert_close(view[9][..., :18, :18], x[..., 2:, 2:])
    torch.testing.assert_close(view[13][..., :19, :19], x[..., 1:, 1:])  # (0.1, 0.1)
    torch.testing.assert_close(view[11][..., 2:, 2:], x[..., :18, :18])  # (-0.2, -0.2)
    assert torch.equal(view[17], x.flip(-1))
    grey = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for c in range(3):
        torch.testing.assert_close(view[18][:, c], grey)
    for r in (1, 2, 3):
        assert torch.equal(view[18 + r], torch.rot90(x, r, dims=(-2, -1)))
    # the small rotations keep a constant image constant and turn a striped one
    flat = augment_support(torch.full((1, 3, 20, 20), 0.5))
    torch.testing.assert_close(flat, torch.full_like(flat, 0.5))
    stripes = torch.zeros(1, 3, 20, 20)
    stripes[..., ::4] = 1.0
    for v in range(1, 9):
        assert not torch.allclose(augment_support(stripes)[v], stripes[0], atol=0.1)


def test_augmentation_needs_square_images():
    with pytest.raises(ConfigError, match="square"):
        augment_support(torch.rand(1, 3, 16, 20))


# --------------------------------------------------------------------------- loss


def test_simsiam_loss_hand_check_and_stop_gradient():
    p_q = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]], requires_grad=True)  # (1, 2, 1, 2): vectors (1,0), (0,1)
    z_s = torch.tensor([[[[1.0, 1.0]], [[0.0, 1.0]]]], requires_grad=True)  # (1,0) and (1,1)/√2
    p_s = torch.tensor([[[[1.0, 3.0]], [[2.0, 0.0]]]], requires_grad=True)  # (1,2) and (3,0)
    z_q = torch.tensor([[[[0.0, -1.0]], [[1.0, 1.0]]]], requires_grad=True)  # (0,1) and (-1,1)
    loss = simsiam_loss(p_q, z_s, p_s, z_q)
    want = 0.5 * -(1.0 + 1 / math.sqrt(2)) / 2 + 0.5 * -(2 / math.sqrt(5) - 1 / math.sqrt(2)) / 2
    assert float(loss.detach()) == pytest.approx(want)
    loss.backward()
    assert z_s.grad is None and z_q.grad is None  # stop-gradient on the target branch
    assert p_q.grad is not None and p_q.grad.abs().sum() > 0 and p_s.grad.abs().sum() > 0


# --------------------------------------------------------------------------- training protocol


def test_episodes_pairing():
    sets = _toy_sets((5, 7))
    ep = Episodes(sets, batch_size=3, shots=4, seed=1)
    steps = ep.pairing(0)
    assert len(steps) == len(ep) == 2 + 3
    for name in sets:
        queries = torch.cat([q for c, q, _ in steps if c == name])
        assert sorted(queries.tolist()) == list(range(len(sets[name])))  # every image a query once
    for c, q, s in steps:
        assert len(q) <= 3 and s.shape == (len(q), 4)
        assert ((s >= 0) & (s < len(sets[c]))).all() and not (s == q[:, None]).any()
    again = Episodes(sets, batch_size=3, shots=4, seed=1).pairing(0)
    assert all(a[0] == b[0] and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) for a, b in zip(steps, again))
    other = ep.pairing(1)
    assert any(not torch.equal(a[2], b[2]) for a, b in zip(steps, other) if a[0] == b[0] and len(a[1]) == len(b[1]))
    query, support = next(iter(ep.epoch(0)))
    assert query.dtype == torch.float32 and 0 <= float(query.min()) and float(query.max()) <= 1
    assert support.shape == (len(query), 4, 3, 32, 32)
    with pytest.raises(TabadError, match="at least 2"):
        Episodes({"a": sets["c0"][:1]}, batch_size=3, shots=2)


def test_training_is_deterministic_and_changes_the_weights(backbone):
    sets = _toy_sets()
    a, b = _model(backbone), _model(backbone)
    init = _state(a)
    a.fit_registration(sets, epochs=2, seed=3)
    b.fit_registration(sets, epochs=2, seed=3)
    sa, sb = _state(a), _state(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], init[k]) for k in sa if "stns" in k and "head.2.weight" in k)
    assert [e["lr"] for e in a.train_log] == pytest.approx([0.05 * 0.5 * (1 + math.cos(math.pi * e / 2)) for e in (1, 2)])
    assert not a.training  # back in eval mode after training


def test_resume_equals_uninterrupted(backbone, tmp_path, monkeypatch):
    sets = _toy_sets()
    full = _model(backbone).fit_registration(sets, epochs=3, seed=5)

    ckpt = tmp_path / "regad.pt"
    interrupted = _model(backbone)
    original = RegAD.train_epoch

    def stop_at_second(self, episodes, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, episodes, epoch)

    monkeypatch.setattr(RegAD, "train_epoch", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit_registration(sets, epochs=3, seed=5, checkpoint=ckpt, key="k")
    monkeypatch.setattr(RegAD, "train_epoch", original)
    resumed = _model(backbone).fit_registration(sets, epochs=3, seed=5, checkpoint=ckpt, key="k")
    assert [e["epoch"] for e in resumed.train_log] == [1, 2, 3]
    sf, sr = _state(full), _state(resumed)
    for k in sf:
        torch.testing.assert_close(sr[k], sf[k], rtol=0, atol=0, msg=k)


def test_fit_support_does_not_change_the_trained_network(backbone):
    model = _model(backbone).fit_registration(_toy_sets(), epochs=1)
    before = _state(model)
    model.fit_support(_toy_sets()["c0"][:2])
    model.predict(torch.rand(2, 3, 32, 32))
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.basis.shape == (8 * 8, 2 * 22, 448)  # all 448 channels, 22 views per shot


# --------------------------------------------------------------------------- the Gaussian and scoring


def test_lowrank_gaussian_equals_dense_torch_cov():
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(7, 12, 2, 3, generator=g) * 3 + 1
    test = torch.randn(4, 12, 2, 3, generator=g) * 3 + 1
    mean, basis = lowrank_gaussian(samples, 0.01)
    dist = lowrank_mahalanobis(test, mean, basis, 0.01)
    for p in range(6):
        i, j = divmod(p, 3)
        v = samples[:, :, i, j].double()
        inv = torch.linalg.inv(torch.cov(v.T) + 0.01 * torch.eye(12, dtype=torch.float64))
        torch.testing.assert_close(mean[p], v.mean(0))
        for b in range(4):
            delta = test[b, :, i, j].double() - v.mean(0)
            want = torch.sqrt(delta @ inv @ delta)
            assert float(dist[b, i, j]) == pytest.approx(float(want), rel=1e-4)
    with pytest.raises(TabadError, match="at least 2"):
        lowrank_gaussian(samples[:1], 0.01)


@pytest.mark.parametrize("category", ["obj", "tex"])
def test_bright_square_defects_score_higher(backbone, tiny_mvtec, category):
    from tabad.datasets.loader import load_split
    from tabad.datasets.readers import read_category
    from tabad.datasets.transforms import Geometry

    geometry = Geometry(64, 64)
    other = {"obj": "tex", "tex": "obj"}[category]
    train = load_split(read_category(tiny_mvtec, other).train, geometry)
    target = read_category(tiny_mvtec, category)
    pool, test = load_split(target.train, geometry), load_split(target.test, geometry)
    torch.manual_seed(0)
    model = RegAD(backbone, RegADConfig(image_size=64, epochs=1, shots=2))
    model.fit_registration({other: train}, epochs=1)
    model.fit_support(pool.images[:2])
    scores, maps = model.predict(next(iter(test.batches(32, normalise=False))))
    assert maps.shape == (len(test), 64, 64)
    values = metrics.evaluate(test.labels, scores.numpy(), test.masks.numpy(), maps.numpy())
    assert values["image_auroc"] == 1.0
    assert values["pixel_auroc"] > 0.9
    # scrambling the defect pixels' positions would break this: the maximum sits on the square
    anomalous = np.flatnonzero(test.labels)
    for i in anomalous:
        peak = np.unravel_index(int(maps[i].argmax()), maps[i].shape)
        assert test.masks[i].numpy()[max(peak[0] - 6, 0) : peak[0] + 7, max(peak[1] - 6, 0) : peak[1] + 7].any()


def test_input_checks(backbone):
    with pytest.raises(ConfigError, match="stn_mode"):
        RegAD(backbone, RegADConfig(stn_mode="nope"))
    model = _model(backbone)
    with pytest.raises(ValueError, match="32x32"):
        model.net(torch.rand(1, 3, 40, 40))
    with pytest.raises(RuntimeError, match="fit_support"):
        model.predict(torch.rand(1, 3, 32, 32))
    assert model.input_normalisation is False and RegAD.name == "regad"
    assert _model(backbone, input_normalisation=True).input_normalisation is True
