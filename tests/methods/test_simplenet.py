"""SimpleNet (methods.md §3) against straightforward references of the official code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tabad.backbones import build_backbone
from tabad.methods.base import FitContext
from tabad.errors import ConfigError, TabadError
from tabad.methods import REGISTRY, create_method, method_names
from tabad.methods.simplenet import (SimpleNet, SimpleNetConfig, default_embed_dim, stream_seed,
                                     truncated_l1)

#: Small adaptor / discriminator so the mechanics tests take milliseconds.
SMALL = {"embed_dim": 64, "dsc_hidden": 32}


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("resnet18", "random:0")


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, 3, 32, 32, generator=g), torch.randn(3, 3, 32, 32, generator=g)


def _state(model: SimpleNet) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class ToyBackbone:
    """Stands in for :class:`tabad.backbones.Backbone`: fixed layer2 / layer3 maps of any batch."""

    arch = "toy"

    def __init__(self, maps: dict[str, torch.Tensor]):
        self.maps = maps

    def channels(self, layers):
        return [self.maps[name].shape[1] for name in layers]

    def __call__(self, x, layers):
        return {name: self.maps[name][: len(x)] for name in layers}


# --------------------------------------------------------------------------- features


def _pool_matrix(n: int, d: int) -> torch.Tensor:
    """adaptive_avg_pool1d of n values to d by its definition: bin i averages [floor(i·n/d), ceil((i+1)·n/d))."""
    m = torch.zeros(d, n)
    for i in range(d):
        lo, hi = (i * n) // d, -((-(i + 1) * n) // d)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def _reference_features(l2: torch.Tensor, l3: torch.Tensor, d: int) -> torch.Tensor:
    """The official pipeline written out: (B, h, w, d)."""
    def neighbourhoods(f):  # zero-padded 3×3 neighbourhoods, (B, h, w, C·9) channel-major
        b, c, h, w = f.shape
        fp = F.pad(f, (1, 1, 1, 1))
        out = torch.empty(b, h, w, c, 3, 3)
        for i in range(h):
            for j in range(w):
                out[:, i, j] = fp[:, :, i : i + 3, j : j + 3]
        return out.reshape(b, h, w, c * 9)

    n2, n3 = neighbourhoods(l2), neighbourhoods(l3)
    b, h, w, _ = n2.shape
    # every element of the layer3 patches is resized bilinearly onto the layer2 grid
    n3 = F.interpolate(n3.permute(0, 3, 1, 2), size=(h, w), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    pooled = [n2 @ _pool_matrix(n2.shape[-1], d).T, n3 @ _pool_matrix(n3.shape[-1], d).T]
    return torch.cat(pooled, dim=-1) @ _pool_matrix(2 * d, d).T  # the layer vectors one after the other


def test_features_match_the_official_pipeline():
    g = torch.Generator().manual_seed(1)
    maps = {"layer2": torch.randn(2, 4, 4, 6, generator=g), "layer3": torch.randn(2, 8, 2, 3, generator=g)}
    model = SimpleNet(ToyBackbone(maps), SimpleNetConfig(embed_dim=20, dsc_hidden=8))  # 36 and 72 values -> 20
    got = model.embed(torch.zeros(2, 3, 32, 48)).permute(0, 2, 3, 1)
    want = _reference_features(maps["layer2"], maps["layer3"], 20)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_embed_dim_defaults(backbone):
    assert default_embed_dim("wide_resnet50_2", [512, 1024]) == 1536  # official run.sh
    assert default_embed_dim("resnet18", [128, 256]) == 1024  # <= 1152: no duplicated entries
    assert default_embed_dim("resnet18", [64, 128]) == 576  # layer1 would give only 64·9 values
    assert create_method("simplenet", backbone).embed_dim == 1024
    assert create_method("simplenet", backbone).config.embed_dim == 1024  # resolved: recorded in results
    assert create_method("simplenet", backbone, {"embed_dim": 256}).embed_dim == 256
    wrn = ToyBackbone({"layer2": torch.zeros(1, 512, 1, 1), "layer3": torch.zeros(1, 1024, 1, 1)})
    wrn.arch = "wide_resnet50_2"
    model = SimpleNet(wrn, SimpleNetConfig())
    assert model.embed_dim == 1536 and model.adaptor.weight.shape == (1536, 1536)
    assert [tuple(m.weight.shape) for m in model.discriminator if isinstance(m, torch.nn.Linear)] == [(1024, 1536),
                                                                                                       (1, 1024)]
    assert model.discriminator[-1].bias is None


# --------------------------------------------------------------------------- loss and training step


def test_truncated_l1_by_hand():
    true, fake = torch.tensor([1.0, 0.2, 0.5]), torch.tensor([-1.0, 0.0, -0.3])
    # true: max(0, .5 − s) = 0, .3, 0; fake: max(0, s + .5) = 0, .5, .2
    assert truncated_l1(true, fake, 0.5).item() == pytest.approx(0.3 / 3 + 0.7 / 3)
    assert truncated_l1(torch.tensor([0.7]), torch.tensor([-0.9]), 0.5).item() == 0.0


def test_train_epoch_is_one_official_step(backbone, images):
    cfg = {**SMALL, "epochs": 1, "noise_std": 0.05}
    model = create_method("simplenet", backbone, cfg).fit([images[0][:2], images[0][2:]], FitContext(seed=3))
    # Replay the single step (5 images, batch 8) by hand from the documented seeds.
    ref = create_method("simplenet", backbone, cfg)
    ref.reset_parameters(3)
    feats = ref.extract([images[0]])  # (5, 16, 64)
    order = torch.randperm(5, generator=torch.Generator().manual_seed(stream_seed(3, 1, 0)))
    f = feats[order].reshape(-1, 64)
    q = ref.adaptor(f)
    noise = torch.randn(q.shape, generator=torch.Generator().manual_seed(stream_seed(3, 2, 0))) * 0.05
    s = ref.discriminator(torch.cat([q, q + noise]))
    loss = torch.clamp(0.5 - s[:80], min=0).mean() + torch.clamp(s[80:] + 0.5, min=0).mean()
    loss.backward()
    ref.adaptor_opt.step()
    ref.discriminator_opt.step()
    log = model.train_log[0]
    assert log["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert log["p_true"] == pytest.approx((s[:80] >= 0.5).float().mean().item())
    assert log["p_fake"] == pytest.approx((s[80:] < -0.5).float().mean().item())
    assert log["feature_std"] == pytest.approx(feats.std().item(), rel=1e-5) == model.feature_std
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_fit_is_deterministic_and_leaves_backbone_and_global_rng(backbone, images):
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    rng = torch.random.get_rng_state()
    batches = [images[0][:3], images[0][3:]]
    a = create_method("simplenet", backbone, {**SMALL, "epochs": 2, "batch_size": 2}).fit(batches, FitContext(seed=0))
    b = create_method("simplenet", backbone, {**SMALL, "epochs": 2, "batch_size": 2}).fit(batches, FitContext(seed=0))
    c = create_method("simplenet", backbone, {**SMALL, "epochs": 2, "batch_size": 2}).fit(batches, FitContext(seed=1))
    assert _same_state(_state(a), _state(b)) and not _same_state(_state(a), _state(c))
    assert [e["loss"] for e in a.train_log] == [e["loss"] for e in b.train_log]
    assert torch.equal(torch.random.get_rng_state(), rng)
    after = backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not backbone.model.training and not any(p.requires_grad for p in backbone.model.parameters())
    assert not a.training and a._cache is None  # eval mode, cache freed


def test_resume_equals_uninterrupted(backbone, images, tmp_path):
    batches = [images[0][:3], images[0][3:]]
    cfg = {**SMALL, "batch_size": 2}
    ckpt, key = tmp_path / "sn.train.pt", "run-key"
    create_method("simplenet", backbone, {**cfg, "epochs": 1}).fit(batches, FitContext(checkpoint=ckpt, key=key, seed=0))
    resumed = create_method("simplenet", backbone, {**cfg, "epochs": 2}).fit(batches, FitContext(checkpoint=ckpt, key=key,
                                                                             seed=0))
    straight = create_method("simplenet", backbone, {**cfg, "epochs": 2}).fit(batches, FitContext(seed=0))
    assert _same_state(_state(resumed), _state(straight))
    drop = ("seconds", "images_per_second")
    strip = lambda log: [{k: v for k, v in e.items() if k not in drop} for e in log]  # noqa: E731
    assert strip(resumed.train_log) == strip(straight.train_log) and len(resumed.train_log) == 2
    torch.testing.assert_close(resumed.predict(images[1])[1], straight.predict(images[1])[1], rtol=0, atol=0)


# --------------------------------------------------------------------------- scoring


@pytest.fixture(scope="module")
def fitted(backbone, images):
    return create_method("simplenet", backbone, {**SMALL, "epochs": 1}).fit([images[0]])


@pytest.mark.parametrize("size", [(64, 64), (64, 48)])
def test_predict_shapes(fitted, size):
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    scores, maps = fitted.predict(x)
    assert scores.shape == (2,) and maps.shape == (2, *size)
    assert fitted.patch_scores(x).shape == (2, size[0] // 8, size[1] // 8)
    assert torch.isfinite(scores).all() and torch.isfinite(maps).all()


def test_image_score_is_max_of_raw_patch_scores(fitted, images):
    scores, maps = fitted.predict(images[1])
    grid = fitted.patch_scores(images[1])
    assert torch.equal(scores, grid.flatten(1).amax(dim=1))
    # and the patch score is −D(G(f)) in eval mode (BatchNorm running statistics)
    assert not fitted.discriminator.training
    e = fitted.embed(images[1]).permute(0, 2, 3, 1).reshape(-1, 64)
    with torch.no_grad():
        torch.testing.assert_close(grid.flatten(), -fitted.discriminator(fitted.adaptor(e)).flatten())
    assert not torch.equal(scores, maps.flatten(1).amax(dim=1))  # not the smoothed map's maximum


def test_obvious_defect_scores_higher(backbone, tiny_mvtec):
    from tabad.metrics import image_auroc, pixel_auroc

    from tests.conftest import score_tiny_obj

    # 6 training images: batch 1 gives 6 steps an epoch, 96 in all, enough for D's BatchNorm running
    # statistics (momentum 0.1) to settle. Random-init ResNet18 features have std ≈ 0.86, so the
    # WRN50-tuned σ = 0.015 leaves D nothing to learn in 96 steps; σ = 0.1 does.
    overrides = {"epochs": 16, "batch_size": 1, "noise_std": 0.1}
    test, s, maps = score_tiny_obj("simplenet", backbone, tiny_mvtec, overrides=overrides)
    assert maps.shape == (len(test), 56, 56)
    assert image_auroc(test.labels, s) == 1.0
    assert s[test.labels == 1].min() > s[test.labels == 0].max() + 2.0  # observed gap ≈ 7, not luck
    assert pixel_auroc(test.masks.numpy(), maps.numpy()) > 0.8  # observed 0.95


# --------------------------------------------------------------------------- registry, config, errors


def test_registry_and_overrides(backbone):
    assert "simplenet" in method_names() and method_names() == sorted(REGISTRY)
    model = create_method("simplenet", backbone, {"epochs": 3, "noise_std": 0.1})
    assert isinstance(model, SimpleNet) and model.name == "simplenet"
    assert model.config.epochs == 3 and model.config.dsc_margin == 0.5 and model.config.batch_size == 8
    cfg = SimpleNetConfig()
    assert (cfg.layers, cfg.patch_size, cfg.epochs, cfg.noise_std, cfg.dsc_layers, cfg.dsc_hidden) == \
        (("layer2", "layer3"), 3, 160, 0.015, 2, 1024)
    assert (cfg.adaptor_lr, cfg.dsc_lr, cfg.dsc_weight_decay, cfg.sigma) == (1e-4, 2e-4, 1e-5, 4.0)
    assert set(model.training_state()) == {"adaptor", "discriminator", "adaptor_opt", "discriminator_opt"}


@pytest.mark.parametrize("overrides", [
    {"epochs": 0}, {"batch_size": -1}, {"embed_dim": 0}, {"patch_size": 2}, {"noise_std": -0.1},
    {"dsc_margin": float("nan")}, {"layers": ()}, {"layers": ("layer9",)}, {"epochs": 1.5}, {"dsc_layers": True},
])
def test_bad_config_is_rejected(backbone, overrides):
    with pytest.raises(ConfigError, match="simplenet"):
        create_method("simplenet", backbone, overrides)


def test_unfitted_and_empty(backbone, images):
    model = create_method("simplenet", backbone, SMALL)
    with pytest.raises(RuntimeError, match="fit"):
        model.predict(images[1])
    with pytest.raises(TabadError, match="at least 1"):
        model.fit([])


def test_single_layer_discriminator(backbone, images):
    model = create_method("simplenet", backbone, {**SMALL, "epochs": 1, "dsc_layers": 1}).fit([images[0]])
    assert len(model.discriminator) == 1 and model.predict(images[1])[0].shape == (3,)
