"""--bn-stats and --freeze-stages (tabad.pretrain.freeze, TABModel.train)."""

from __future__ import annotations

import pytest
import torch

from tabad.backbones import family_of, load_weights
from tabad.errors import TabadError
from tabad.pretrain.freeze import DEFAULT_BN_STATS, backbone_stages, batchnorms, frozen_groups, resolve_bn_stats
from tabad.pretrain.model import TABModel


def test_bn_stats_default_depends_on_the_initial_weights():
    assert DEFAULT_BN_STATS == {"random": "train", "pretrained": "frozen"}
    assert resolve_bn_stats("auto", "random") == "train"
    assert resolve_bn_stats("auto", "random:7") == "train"
    assert resolve_bn_stats("auto", "imagenet") == "frozen"
    assert resolve_bn_stats("auto", "/runs/tab/backbone.pt") == "frozen"
    assert resolve_bn_stats("train", "imagenet") == "train"
    assert resolve_bn_stats("frozen", "random") == "frozen"
    with pytest.raises(TabadError):
        resolve_bn_stats("sometimes", "random")


@pytest.mark.parametrize("arch, names", [
    ("resnet18", ["stem", "layer1", "layer2", "layer3", "layer4"]),
    ("efficientnet_lite0", ["stem"] + [f"blocks.{i}" for i in range(7)]),
])
def test_stages_per_family(arch, names):
    model, _ = load_weights(arch, "random")
    family = family_of(arch)
    assert [n for n, _ in backbone_stages(family.name, model)] == names
    assert frozen_groups(family.name, model, -1) == []
    assert [n for n, _ in frozen_groups(family.name, model, 2)] == names[:3]
    with pytest.raises(TabadError, match="stages"):
        frozen_groups(family.name, model, len(names))


def _step(model: TABModel, seed: int = 0) -> None:
    """One SGD step on a 2-class TAB loss."""
    from tabad.pretrain.loss import tab_loss

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 64, 64, generator=g)
    t = torch.nn.functional.normalize(torch.randn(2, 8, generator=g), dim=1)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    out = model(x)
    res = tab_loss(out[:2], out[2:], torch.tensor([0, 1]), "tab", t, t.flip(0), model.scale)
    opt.zero_grad()
    res.loss.backward()
    opt.step()


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_lite0"])
def test_frozen_bn_stats_stay_while_weights_change(arch):
    backbone, _ = load_weights(arch, "random", seed=1)
    model = TABModel(backbone, text_dim=8, n_classes=2, family=family_of(arch), bn_stats="frozen")
    model.train()
    bns = batchnorms(model.backbone)
    assert bns and not any(m.training for m in bns) and model.head.training
    before = _snapshot(model.backbone)
    _step(model)
    after = model.backbone.state_dict()
    buffers = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(buffers) == 3 * len(bns)
    for k in buffers:
        assert torch.equal(before[k], after[k]), k
    # The affine BatchNorm parameters and the convolutions still train.
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    bn_affine = {f"{n}.{p}" for n, m in model.backbone.named_modules() if m in bns for p in ("weight", "bias")}
    assert changed & bn_affine and changed - bn_affine
    # eval() and train() again: still frozen.
    model.eval().train()
    assert not any(m.training for m in bns)


@pytest.mark.parametrize("arch, n, frozen_prefixes, trained_prefix", [
    ("resnet18", 2, ("conv1.", "bn1.", "layer1.", "layer2."), "layer3."),
    ("efficientnet_lite0", 2, ("conv_stem.", "bn1.", "blocks.0.", "blocks.1."), "blocks.2."),
])
def test_frozen_stages_do_not_change(arch, n, frozen_prefixes, trained_prefix):
    backbone, _ = load_weights(arch, "random", seed=2)
    model = TABModel(backbone, text_dim=8, n_classes=2, family=family_of(arch), freeze_stages=n)
    assert model.frozen_names[0] == "stem" and len(model.frozen_names) == n + 1
    before = _snapshot(model.backbone)
    _step(model)
    after = model.backbone.state_dict()
    frozen = [k for k in before if k.startswith(frozen_prefixes)]
    assert frozen
    for k in frozen:  # weights and BatchNorm statistics alike
        assert torch.equal(before[k], after[k]), k
    later = [k for k in before if k.startswith(trained_prefix)]
    assert any(not torch.equal(before[k], after[k]) for k in later if "running" in k)  # bn_stats train
    assert any(not torch.equal(before[k], after[k]) for k in later if k.endswith("weight"))
    assert not any(p.requires_grad for k, p in model.backbone.named_parameters() if k.startswith(frozen_prefixes))
