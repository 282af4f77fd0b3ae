"""Backbones: weights sources (random, imagenet, state-dict files), their errors, layer taps."""

from __future__ import annotations

import copy
import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from tabad.backbones import (
    LAYERS,
    build_backbone,
    load_weights,
    state_dict_sha256,
    weights_label,
)
from tabad.backbones.base import FeatureExtractor
from tabad.backbones.resnet import CHANNELS as ARCHITECTURES
from tabad.backbones.resnet import RESNET
from tabad.errors import TabadError, WeightsError


@lru_cache(maxsize=None)
def _random(source: str, seed: int = 0):
    """Cached (model, info) so several tests share one construction."""
    return load_weights("resnet18", source, seed=seed)


def _file_sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tv_state_dict() -> dict:
    """A torchvision resnet18 state dict with seeded (non-default-seed) random values."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        return torchvision.models.resnet18(weights=None).state_dict()


@pytest.fixture(scope="module")
def backbone() -> FeatureExtractor:
    return build_backbone("resnet18", "random", seed=0)


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------- random weights


def test_random_weights_are_deterministic_by_seed():
    m1, i1 = _random("random", 0)
    torch.manual_seed(11)  # whatever the global RNG holds must not matter
    torch.rand(7)
    m2, i2 = load_weights("resnet18", "random", seed=0)
    assert i1.sha256 == i2.sha256
    assert len(i1.sha256) == 64
    _assert_same_tensors(m1.state_dict(), m2.state_dict())
    # The recorded hash is the hash of the tensors themselves.
    assert i2.sha256 == state_dict_sha256(m2.state_dict())
    assert i2.path is None and i2.arch == "resnet18" and i2.source == "random" and i2.label == "random"
    assert "manual_seed(0)" in i2.description


def test_random_weights_differ_between_seeds():
    m0, i0 = _random("random", 0)
    m1, i1 = _random("random", 1)
    assert i0.sha256 != i1.sha256
    sd0, sd1 = m0.state_dict(), m1.state_dict()
    assert not torch.equal(sd0["conv1.weight"], sd1["conv1.weight"])
    assert not torch.equal(sd0["layer3.0.conv1.weight"], sd1["layer3.0.conv1.weight"])


def test_random_colon_seed_overrides_the_seed_argument():
    m7, i7 = _random("random:7", 0)
    m7b, i7b = _random("random", 7)
    assert i7.sha256 == i7b.sha256
    _assert_same_tensors(m7.state_dict(), m7b.state_dict())
    assert i7.sha256 != _random("random", 0)[1].sha256
    assert i7.label == "random-7" and i7.source == "random:7"
    assert "manual_seed(7)" in i7.description


@pytest.mark.parametrize("source", ["random:x", "random:", "random:1.5"])
def test_bad_random_seed_is_a_weights_error(source):
    with pytest.raises(WeightsError, match="random:SEED"):
        load_weights("resnet18", source)


def test_state_dict_sha256_sees_names_shapes_and_values():
    a = {"w": torch.zeros(2, 3), "b": torch.ones(3)}
    base = state_dict_sha256(a)
    assert state_dict_sha256({"b": torch.ones(3), "w": torch.zeros(2, 3)}) == base  # order-free
    assert state_dict_sha256({"w": torch.zeros(3, 2), "b": torch.ones(3)}) != base
    assert state_dict_sha256({"w": torch.zeros(2, 3), "c": torch.ones(3)}) != base
    b = {"w": torch.zeros(2, 3), "b": torch.ones(3)}
    b["w"][1, 2] = 1e-30
    assert state_dict_sha256(b) != base
    assert state_dict_sha256({"w": torch.zeros(2, 3, dtype=torch.float64), "b": torch.ones(3)}) != base


def test_building_random_weights_leaves_global_torch_rng_untouched():
    torch.manual_seed(5)
    state = torch.get_rng_state()
    load_weights("resnet18", "random:2")
    assert torch.equal(torch.get_rng_state(), state)


def test_weights_label():
    assert weights_label("random") == "random"
    assert weights_label("random:3") == "random-3"
    assert weights_label("imagenet") == "imagenet"
    assert weights_label("/some/dir/tab_r18.pt") == "tab_r18"


def test_unknown_architecture():
    with pytest.raises(WeightsError, match="unknown backbone"):
        load_weights("vgg16", "random")
    assert issubclass(WeightsError, TabadError)


# --------------------------------------------------------------------------- layer taps


def test_layer_shapes_resnet18_at_64px(backbone):
    x = torch.randn(2, 3, 64, 64)
    out = backbone(x, list(LAYERS))
    assert list(out) == list(LAYERS)
    for (name, t), ch, stride in zip(out.items(), ARCHITECTURES["resnet18"], (4, 8, 16, 32)):
        assert tuple(t.shape) == (2, ch, 64 // stride, 64 // stride), name
    assert backbone.channels(["layer1", "layer2", "layer3"]) == [64, 128, 256]
    assert backbone.channels(["layer4"]) == [512]


def test_layer_outputs_equal_plain_torchvision_forward(backbone):
    # Reference: the plain torchvision model (no channels_last), outputs captured by forward hooks.
    ref = torchvision.models.resnet18(weights=None)
    ref.load_state_dict(backbone.model.state_dict())
    ref.eval()
    captured = {}
    for name in LAYERS:
        getattr(ref, name).register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref(x)
    out = backbone(x, ["layer1", "layer3"])
    for name in ("layer1", "layer3"):
        torch.testing.assert_close(out[name], captured[name], rtol=1e-4, atol=1e-4)


def test_contiguous_layout_is_bit_identical_to_plain_torchvision_forward():
    # The side-by-side benchmarks rely on it: same weights, same input, same bits.
    model, info = _random("random", 0)
    bb = FeatureExtractor(RESNET, copy.deepcopy(model), info, memory_format="contiguous")  # the cached model stays as it was
    ref = torchvision.models.resnet18(weights=None)
    ref.load_state_dict(bb.model.state_dict())
    ref.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))
    got = bb(x, ["layer2"])["layer2"]
    assert got.is_contiguous()
    assert torch.equal(got, want)


def test_channels_last_is_the_default_layout(backbone):
    assert backbone.memory_format == "channels_last"
    out = backbone(torch.randn(1, 3, 64, 64), ["layer1"])["layer1"]
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_unknown_memory_format_is_rejected():
    with pytest.raises(TabadError, match="memory_format"):
        build_backbone("resnet18", "random", memory_format="nhwc")


def test_only_requested_layers_are_computed(backbone):
    calls = []
    hooks = [getattr(backbone.model, n).register_forward_hook(lambda m, i, o, n=n: calls.append(n)) for n in LAYERS]
    try:
        out = backbone(torch.randn(1, 3, 64, 64), ["layer2"])
        assert list(out) == ["layer2"]
        assert calls == ["layer1", "layer2"]
        calls.clear()
        out = backbone(torch.randn(1, 3, 64, 64), ["layer3", "layer1"])
        assert sorted(out) == ["layer1", "layer3"]
        assert calls == ["layer1", "layer2", "layer3"]
    finally:
        for h in hooks:
            h.remove()


def test_unknown_layer_is_rejected(backbone):
    with pytest.raises(ValueError, match="layer5"):
        backbone(torch.randn(1, 3, 32, 32), ["layer1", "layer5"])


def test_backbone_is_frozen_and_in_eval_mode(backbone):
    assert not backbone.model.training
    assert all(not m.training for m in backbone.model.modules())
    assert all(not p.requires_grad for p in backbone.model.parameters())
    bn = backbone.model.bn1
    before = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    out = backbone(x, ["layer1"])
    assert not out["layer1"].requires_grad
    # eval(): BatchNorm uses (and never updates) its running statistics.
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert torch.equal(bn.num_batches_tracked, before[2])


def test_backbone_info(backbone):
    assert backbone.arch == "resnet18"
    assert backbone.info.to_dict()["sha256"] == backbone.info.sha256


# --------------------------------------------------------------------------- state-dict files


def test_load_torchvision_state_dict_file(tmp_path, tv_state_dict):
    path = tmp_path / "tab_r18.pt"
    torch.save(tv_state_dict, path)
    model, info = load_weights("resnet18", str(path))
    _assert_same_tensors(model.state_dict(), tv_state_dict)
    assert info.sha256 == _file_sha(path)
    assert info.label == "tab_r18"
    assert info.path == str(path.resolve())
    assert info.source == str(path)
    bb = build_backbone("resnet18", str(path))
    assert bb.info.sha256 == info.sha256


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "module."])
def test_wrapped_and_ddp_state_dicts_load(tmp_path, tv_state_dict, wrapper):
    if wrapper == "module.":
        obj = {f"module.{k}": v for k, v in tv_state_dict.items()}
    else:
        obj = {wrapper: tv_state_dict, "epoch": 3}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    model, info = load_weights("resnet18", str(path))
    _assert_same_tensors(model.state_dict(), tv_state_dict)
    assert info.sha256 == _file_sha(path)


def test_missing_key_is_listed(tmp_path, tv_state_dict):
    sd = dict(tv_state_dict)
    del sd["fc.weight"]
    path = tmp_path / "missing.pt"
    torch.save(sd, path)
    with pytest.raises(WeightsError) as exc:
        load_weights("resnet18", str(path))
    msg = str(exc.value)
    assert str(path) in msg
    assert "missing keys (1): fc.weight" in msg
    assert "unexpected" not in msg


def test_unexpected_key_is_listed(tmp_path, tv_state_dict):
    sd = dict(tv_state_dict)
    sd["head.proj.weight"] = torch.zeros(4, 4)
    path = tmp_path / "extra.pt"
    torch.save(sd, path)
    with pytest.raises(WeightsError) as exc:
        load_weights("resnet18", str(path))
    msg = str(exc.value)
    assert "unexpected keys (1): head.proj.weight" in msg
    assert "missing" not in msg


def test_wrong_shape_is_listed(tmp_path, tv_state_dict):
    sd = dict(tv_state_dict)
    sd["layer1.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    path = tmp_path / "shape.pt"
    torch.save(sd, path)
    with pytest.raises(WeightsError) as exc:
        load_weights("resnet18", str(path))
    msg = str(exc.value)
    assert "wrong shapes (1)" in msg
    assert "layer1.0.conv1.weight: file (128, 64, 1, 1) vs resnet18 (64, 64, 3, 3)" in msg


def test_wide_resnet_dict_loaded_as_resnet18(tmp_path):
    # Build a WRN50-2-keyed dict cheaply: shapes from a meta-device model, storage of one element each.
    with torch.device("meta"):
        wrn = torchvision.models.wide_resnet50_2(weights=None)
    sd = {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in wrn.state_dict().items()}
    path = tmp_path / "wrn50.pt"
    torch.save(sd, path)
    assert path.stat().st_size < 2_000_000
    with pytest.raises(WeightsError) as exc:
        load_weights("resnet18", str(path))
    msg = str(exc.value)
    assert msg.splitlines()[0] == f"{path}: does not fit a torchvision resnet18 (strict load)."
    assert "unexpected keys" in msg and "layer1.0.conv3.weight" in msg
    assert "wrong shapes" in msg and "fc.weight: file (1000, 2048) vs resnet18 (1000, 512)" in msg
    assert "more)" in msg  # long lists are shortened
    assert "another architecture" in msg


def test_nonexistent_path(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(WeightsError, match="weights file not found") as exc:
        load_weights("resnet18", str(path))
    assert str(path) in str(exc.value)


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(WeightsError, match="cannot read as a torch state dict") as exc:
        load_weights("resnet18", str(path))
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("obj, kind", [([1, 2, 3], "list"), ({"a": 1, "b": "x"}, "dict"), (torch.zeros(3), "Tensor")])
def test_non_state_dict_pickle(tmp_path, obj, kind):
    path = tmp_path / "other.pt"
    torch.save(obj, path)
    with pytest.raises(WeightsError, match="expected a state dict of tensors") as exc:
        load_weights("resnet18", str(path))
    assert str(path) in str(exc.value) and kind in str(exc.value)


# --------------------------------------------------------------------------- imagenet


def test_imagenet_missing_file_names_file_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(WeightsError) as exc:
        load_weights("resnet18", "imagenet")
    msg = str(exc.value)
    assert "resnet18-f37072fd.pth" in msg
    assert str(expected) in msg
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    assert not expected.exists()  # nothing was downloaded


def test_imagenet_file_in_cache_is_used(tmp_path, monkeypatch, tv_state_dict):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(tv_state_dict, path)  # stand-in bytes: no hash check without download
    model, info = load_weights("resnet18", "imagenet")
    _assert_same_tensors(model.state_dict(), tv_state_dict)
    assert info.label == "imagenet" and info.source == "imagenet"
    assert info.sha256 == _file_sha(path) and info.path == str(path)
