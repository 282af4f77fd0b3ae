"""Mixed precision of the training-based methods (methods/training.py ``autocast``).

No GPU here, so the CUDA branch is checked by what it builds, and the methods' bfloat16 paths are
run through CPU autocast in its place: what must hold on CUDA (frozen features cast back to float32
before anything trainable, finite losses, float32 outputs) holds for any bfloat16 autocast.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from tabad.backbones import build_backbone
from tabad.datasets.loader import Batches
from tabad.methods import create_method, rd4ad, simplenet
from tabad.methods.training import autocast


def test_autocast_is_bfloat16_on_cuda_and_off_elsewhere():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available" where there is none
        on = autocast("cuda", enabled=True)
    assert on.device == "cuda" and on.fast_dtype == torch.bfloat16
    for ctx in (autocast("cpu"), autocast("cpu", enabled=False), autocast(torch.device("cpu"))):
        with ctx:
            a = torch.randn(4, 4)
            assert (a @ a).dtype == torch.float32  # no reduced precision on a CPU


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def _cpu_bf16(device, enabled=True):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("resnet18", "random:0")


@pytest.fixture(scope="module")
def batches():
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return Batches(images, batch_size=2)


def test_rd4ad_teacher_in_bfloat16_trains_and_scores_in_float32(backbone, batches, monkeypatch):
    x = next(iter(batches))
    plain = create_method("rd4ad", backbone, {"epochs": 1})
    reference = plain.teacher_features(x)
    monkeypatch.setattr(rd4ad, "autocast", _cpu_bf16)
    torch.manual_seed(0)
    model = create_method("rd4ad", backbone, {"epochs": 1}).fit(batches, seed=0)
    feats = model.teacher_features(x)
    assert [f.dtype for f in feats] == [torch.float32] * 3
    for got, want in zip(feats, reference):
        assert 0 < _relative_error(got, want) < 2e-2  # bfloat16 really ran (8-bit mantissa), and stayed close
    assert all(p.dtype == torch.float32 for p in model.student.parameters())
    losses = [e["loss"] for e in model.train_log]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    scores, maps = model.predict(x)
    assert scores.dtype == maps.dtype == torch.float32 and torch.isfinite(maps).all()
    # amp=false keeps the teacher in float32 even under a reduced-precision autocast
    off = create_method("rd4ad", backbone, {"epochs": 1, "amp": False})
    for got, want in zip(off.teacher_features(x), reference):
        torch.testing.assert_close(got, want)


def test_simplenet_backbone_in_bfloat16_gives_float32_features(backbone, batches, monkeypatch):
    x = next(iter(batches))
    reference = create_method("simplenet", backbone, {"epochs": 1}).embed(x)
    monkeypatch.setattr(simplenet, "autocast", _cpu_bf16)
    model = create_method("simplenet", backbone, {"epochs": 1, "amp": True})
    feats = model.embed(x)
    assert feats.dtype == torch.float32 and feats.shape == reference.shape
    assert 0 < _relative_error(feats, reference) < 2e-2
    torch.manual_seed(0)
    model.fit(batches, seed=0)
    scores, maps = model.predict(x)
    assert scores.dtype == maps.dtype == torch.float32 and torch.isfinite(scores).all()
