"""Linear CKA (tabad.pretrain.cka), the collapse warning, and the per-epoch monitor of the trainer."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from tabad.pretrain.cka import WARN_LEVEL, cka_to_reference, cka_warning, linear_cka, patch_features


def test_identical_features_give_one():
    x = torch.randn(20, 5, generator=torch.Generator().manual_seed(0))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_invariant_to_orthogonal_transform_isotropic_scale_and_offset():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 6, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    assert linear_cka(x, 3.0 * x @ q + 7.0) == pytest.approx(1.0, abs=1e-12)


def test_hand_computed_3x2_example():
    # X and Y have zero column means already:
    #   X = [[1, 0], [0, 1], [-1, -1]],  Y = [[1, 1], [0, -1], [-1, 0]]
    #   Yᵀ X = [[2, 1], [1, -1]]             ||·||²_F = 4 + 1 + 1 + 1 = 7
    #   Xᵀ X = Yᵀ Y = [[2, 1], [1, 2]]       ||·||_F  = sqrt(4 + 1 + 1 + 4) = sqrt(10)
    #   CKA = 7 / (sqrt(10) · sqrt(10)) = 0.7
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    y = torch.tensor([[1.0, 1.0], [0.0, -1.0], [-1.0, 0.0]])
    assert linear_cka(x, y) == pytest.approx(0.7, abs=1e-12)
    assert linear_cka(y, x) == pytest.approx(0.7, abs=1e-12)
    # Centring is part of the definition: a per-column offset changes nothing.
    assert linear_cka(x + torch.tensor([5.0, -2.0]), y + 10.0) == pytest.approx(0.7, abs=1e-12)


def test_constant_features_are_total_collapse():
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(2))
    assert linear_cka(x, torch.ones(10, 3)) == 0.0


def test_shapes_must_match():
    with pytest.raises(ValueError):
        linear_cka(torch.zeros(3, 2), torch.zeros(4, 2))


def test_warning_names_epoch_layer_and_value_only_below_level():
    msg = cka_warning(3, {"layer2": 0.95, "layer3": 0.4321}, level=0.8)
    assert msg is not None and "\n" not in msg
    assert "epoch 3" in msg and "layer3 0.432" in msg and "layer2" not in msg and "0.8" in msg
    assert cka_warning(3, {"layer2": 0.95, "layer3": 0.81}, level=0.8) is None
    assert cka_warning(1, {"layer2": None, "layer3": None}) is None
    assert WARN_LEVEL == 0.8


def test_collapsed_backbone_fires_and_unchanged_does_not():
    from tabad.backbones import family_of, load_weights

    family = family_of("efficientnet_lite0")
    model, _ = load_weights("efficientnet_lite0", "random", seed=0)
    model.eval()
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    device = torch.device("cpu")
    ref = patch_features(family, model, images, (0.5,) * 3, (0.5,) * 3, device)
    assert ref["layer2"].shape == (3 * 16, 40) and ref["layer3"].shape == (3 * 16, 112)

    same = cka_to_reference(ref, patch_features(family, model, images, (0.5,) * 3, (0.5,) * 3, device))
    assert same == pytest.approx({"layer2": 1.0, "layer3": 1.0}, abs=1e-9)
    assert cka_warning(1, same) is None

    with torch.no_grad():  # layer3 = blocks[4]: its last block's projection zeroed -> only the residual path is left
        for block in model.blocks[4]:
            block.conv_pwl.weight.zero_()
            block.bn3.weight.zero_()
            block.bn3.bias.zero_()
    # blocks[4]'s first block has no residual (channels change): its output, and the stage's, become constant.
    collapsed = cka_to_reference(ref, patch_features(family, model, images, (0.5,) * 3, (0.5,) * 3, device))
    assert collapsed["layer2"] == pytest.approx(1.0, abs=1e-9)
    assert collapsed["layer3"] < 0.5
    msg = cka_warning(2, collapsed)
    assert msg is not None and "epoch 2" in msg and f"layer3 {collapsed['layer3']:.3f}" in msg


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_trainer_records_cka_and_warns_on_collapse(tiny_mvtec, tmp_path, fake_text, monkeypatch):
    """From pre-trained (file) weights with lr 0 the features do not move: CKA 1, no warning. Zeroing
    layer3 after epoch 1 collapses it: epoch 2 warns once, in the log, metrics.csv and backbone.json."""
    import torchvision

    from tabad.pretrain import trainer as trainer_mod
    from tabad.pretrain.trainer import PretrainConfig, pretrain

    init = tmp_path / "init.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), init)
    real_save = trainer_mod.Trainer._save_state

    def save_then_collapse(self, path, model, opt, sched, scaler, epoch, history):
        real_save(self, path, model, opt, sched, scaler, epoch, history)
        if epoch == 1:
            with torch.no_grad():
                for p in model.backbone.layer3.parameters():
                    p.zero_()

    monkeypatch.setattr(trainer_mod.Trainer, "_save_state", save_then_collapse)
    lines: list[str] = []
    out = tmp_path / "run"
    cfg = PretrainConfig(data=[str(tiny_mvtec)], out=str(out), init=str(init), epochs=2, batch_size=6, lr=0.0,
                         resize=64, crop=56, workers=0, progress=False, cache_dir=str(tmp_path / "cache"),
                         seed=3, cka_holdout=0.2)
    pretrain(cfg, log=lines.append)

    rows = _rows(out / "metrics.csv")
    assert float(rows[0]["cka_layer2"]) == pytest.approx(1.0, abs=1e-9)
    assert float(rows[0]["cka_layer3"]) == pytest.approx(1.0, abs=1e-9)
    assert rows[0]["cka_warning"] == ""
    assert float(rows[1]["cka_layer2"]) == pytest.approx(1.0, abs=1e-9)
    assert float(rows[1]["cka_layer3"]) == 0.0  # constant features: total collapse
    for row in rows:
        assert 0.0 <= float(row["heldout_acc_normal"]) <= 1.0 and not math.isnan(float(row["acc_normal"]))
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert len(warnings) == 1 and "epoch 2" in warnings[0] and "layer3 0.000" in warnings[0]
    assert rows[1]["cka_warning"] == warnings[0]
    assert warnings[0] in (out / "train.log").read_text()

    side = json.loads((out / "backbone.json").read_text())
    assert side["warnings"] == warnings
    assert side["bn_stats"] == "frozen"  # the default from pre-trained weights
    mon = side["monitor"]
    assert mon["checked"] and mon["held_out"] and mon["n_images"] == 2 and len(mon["files"]) == 2
    assert side["n_images"] == 12 - 2  # the monitor images were not trained on


def test_monitor_split_holds_out_a_seeded_fraction_and_keeps_every_class(tiny_mvtec):
    from tabad.datasets.transforms import Geometry
    from tabad.pretrain.data import load_pretrain_images, monitor_split

    images = load_pretrain_images([tiny_mvtec], None, Geometry(64, 56), progress=False)
    split = monitor_split(images, 0.2, 64, seed=3)
    assert len(split.monitor) == 2 and not split.monitor_trained_on
    assert sorted([*split.train, *split.monitor]) == list(range(len(images)))
    assert monitor_split(images, 0.2, 64, seed=3).monitor.tolist() == split.monitor.tolist()
    assert len(monitor_split(images, 0.9, 1, seed=3).monitor) == 1  # capped
    big = monitor_split(images, 0.99, 64, seed=3)  # never a class's last image
    assert set(images.labels[big.train]) == {0, 1} and len(big.train) == 2
    off = monitor_split(images, 0.0, 64, seed=3)
    assert len(off.monitor) == 0 and len(off.train) == len(images)
    two = images.subset([0, 6])  # one image per class: nothing can be held out
    fallback = monitor_split(two, 0.5, 64, seed=3)
    assert fallback.monitor_trained_on and len(fallback.monitor) == 1 and len(fallback.train) == 2


def test_no_warning_check_from_random_weights(tiny_mvtec, tmp_path, fake_text):
    from tabad.pretrain.trainer import PretrainConfig, pretrain

    lines: list[str] = []
    out = tmp_path / "rnd"
    pretrain(PretrainConfig(data=[str(tiny_mvtec)], out=str(out), init="random", epochs=1, batch_size=6, lr=0.5,
                            resize=64, crop=56, workers=0, progress=False, cache_dir=str(tmp_path / "cache"),
                            seed=3, cka_warn=1.5), log=lines.append)
    assert not [line for line in lines if line.startswith("WARNING")]
    row = _rows(out / "metrics.csv")[0]
    assert row["cka_warning"] == "" and 0.0 <= float(row["cka_layer3"]) <= 1.0
    side = json.loads((out / "backbone.json").read_text())
    assert side["bn_stats"] == "train" and side["monitor"]["checked"] is False and side["warnings"] == []
