"""Pre-training on EfficientNet-Lite0: checkpoint in timm's layout, family normalisation, resume, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tabad.pretrain import trainer as trainer_mod
from tabad.pretrain.trainer import PretrainConfig, pretrain

ARCH = "efficientnet_lite0"


def _cfg(data: Path, out: Path, tmp_path: Path, **kw) -> PretrainConfig:
    # 12 tiny images, 1 held out for the monitor: 11 train, batch 6 -> 2 steps per epoch.
    base = dict(data=[str(data)], out=str(out), arch=ARCH, init="random", epochs=1, batch_size=6, lr=0.01,
                resize=64, crop=64, workers=0, progress=False, cache_dir=str(tmp_path / "cache"), seed=3)
    base.update(kw)
    return PretrainConfig(**base)


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_lite0_from_random_checkpoint_is_timm_layout(tiny_mvtec, tmp_path, fake_text, monkeypatch):
    import timm

    import tabad.datasets.transforms as transforms
    from tabad.backbones import build_backbone, load_weights

    seen = set()
    real = transforms.normalize

    def spy(x, mean=transforms.IMAGENET_MEAN, std=transforms.IMAGENET_STD):
        seen.add((tuple(mean), tuple(std)))
        return real(x, mean, std)

    monkeypatch.setattr(transforms, "normalize", spy)
    out = tmp_path / "lite0"
    path = pretrain(_cfg(tiny_mvtec, out, tmp_path))
    assert seen == {((0.5,) * 3, (0.5,) * 3)}  # the family's normalisation, in training and in the monitor

    sd = _load(path)
    timm.create_model("tf_efficientnet_lite0", pretrained=False).load_state_dict(sd, strict=True)
    init, _ = load_weights(ARCH, "random", seed=3)
    ref = init.state_dict()
    assert sd.keys() == ref.keys()
    assert not torch.equal(sd["blocks.3.0.conv_pw.weight"], ref["blocks.3.0.conv_pw.weight"])  # it trained
    for k in ("classifier.weight", "classifier.bias"):  # frozen, saved for the strict load
        assert torch.equal(sd[k], ref[k])

    side = json.loads((out / "backbone.json").read_text())
    assert side["family"] == "efficientnet" and side["arch"] == ARCH and side["layout"] == "timm"
    assert side["normalisation"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert side["bn_stats"] == "train" and side["frozen"] == [] and side["config"]["arch"] == ARCH
    assert (out / "metrics.csv").read_text().splitlines()[0].endswith(
        "heldout_acc_normal,heldout_acc_abnormal,cka_layer2,cka_layer3,cka_warning")

    # A weights source for `tabad benchmark --backbone efficientnet_lite0 --weights PATH`.
    model, info = load_weights(ARCH, str(path))
    assert info.sha256 == side["sha256"] and info.trained_on["epochs"] == 1
    bb = build_backbone(ARCH, str(path))
    assert bb.info.sha256 == side["sha256"] and bb.describe()["family"] == "efficientnet"
    feats = bb(torch.zeros(1, 3, 64, 64), ("layer2", "layer3"))
    assert feats["layer3"].shape == (1, 112, 4, 4)


def test_lite0_resume_is_bit_identical(tiny_mvtec, tmp_path, fake_text, monkeypatch):
    straight = pretrain(_cfg(tiny_mvtec, tmp_path / "a", tmp_path, epochs=2))
    real_save = trainer_mod.Trainer._save_state

    def save_then_crash(self, path, model, opt, sched, scaler, epoch, history):
        real_save(self, path, model, opt, sched, scaler, epoch, history)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod.Trainer, "_save_state", save_then_crash)
    cfg = _cfg(tiny_mvtec, tmp_path / "b", tmp_path, epochs=2)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg)
    monkeypatch.setattr(trainer_mod.Trainer, "_save_state", real_save)
    resumed = pretrain(cfg, resume=True)
    a, b = _load(straight), _load(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma = (tmp_path / "a" / "metrics.csv").read_text().splitlines()
    mb = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    # Same losses and CKA per epoch (the timing columns differ).
    cols = ma[0].split(",")
    keep = [i for i, c in enumerate(cols) if c not in ("images_per_s", "samples_per_s", "seconds")]
    assert [[r.split(",")[i] for i in keep] for r in ma] == [[r.split(",")[i] for i in keep] for r in mb]


def test_resume_refuses_other_bn_stats_or_initial_weights(tiny_mvtec, tmp_path, fake_text):
    import torchvision

    from tabad.errors import TabadError

    init = tmp_path / "init.pt"
    torch.save(torchvision.models.resnet18().state_dict(), init)
    cfg = _cfg(tiny_mvtec, tmp_path / "c", tmp_path, arch="resnet18", crop=56, init=str(init))
    pretrain(cfg)  # bn_stats auto -> frozen (pre-trained weights), recorded resolved
    with pytest.raises(TabadError, match="bn_stats: saved 'frozen', now 'train'"):
        pretrain(_cfg(tiny_mvtec, tmp_path / "c", tmp_path, arch="resnet18", crop=56, init=str(init),
                      bn_stats="train"), resume=True)
    torch.save(torchvision.models.resnet18().state_dict(), init)  # other weights under the same name
    with pytest.raises(TabadError, match="other initial weights"):
        pretrain(cfg, resume=True)


def test_cli_lite0_frozen_bn_and_stages(tiny_mvtec, tmp_path, fake_text):
    """`tabad pretrain --backbone efficientnet_lite0 --bn-stats frozen --freeze-stages 2`: every BatchNorm
    statistic and the stem + blocks.0-1 stay as initialised, the rest trains; the sidecar records it."""
    from tabad.backbones import load_weights
    from tabad.cli import main

    out = tmp_path / "cli"
    rc = main(["pretrain", "--data", str(tiny_mvtec), "--backbone", ARCH, "--init", "random:5", "--epochs", "1",
               "--batch-size", "6", "--lr", "0.05", "--resize", "64", "--crop", "64", "--workers", "0",
               "--bn-stats", "frozen", "--freeze-stages", "2", "--cka-holdout", "0.2", "--cka-warn", "0.5",
               "--out", str(out)])
    assert rc == 0
    sd = _load(out / "backbone.pt")
    init = load_weights(ARCH, "random:5")[0].state_dict()
    stats = [k for k in sd if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(stats) == 3 * 49
    for k in stats:
        assert torch.equal(sd[k], init[k]), k
    for k in sd:
        if k.startswith(("conv_stem.", "bn1.", "blocks.0.", "blocks.1.")):
            assert torch.equal(sd[k], init[k]), k
    assert not torch.equal(sd["blocks.5.0.conv_pw.weight"], init["blocks.5.0.conv_pw.weight"])
    assert not torch.equal(sd["blocks.5.0.bn1.weight"], init["blocks.5.0.bn1.weight"])  # affine still trains
    side = json.loads((out / "backbone.json").read_text())
    assert side["bn_stats"] == "frozen" and side["freeze_stages"] == 2
    assert side["frozen"] == ["stem", "blocks.0", "blocks.1"]
    assert side["config"]["cka_holdout"] == 0.2 and side["monitor"]["warn_level"] == 0.5
    assert side["monitor"]["n_images"] == 2 and side["n_images"] == 10
