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
from tabad.methods.base import FitContext
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
    model = create_method("rd4ad", backbone, {"epochs": 1}).fit(batches, FitContext(seed=0))
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
    model.fit(batches, FitContext(seed=0))
    scores, maps = model.predict(x)
    assert scores.dtype == maps.dtype == torch.float32 and torch.isfinite(scores).all()


# ----------------------------------------------------------------------------
# checkpoints: read with weights_only=True; anything unreadable is ignored (training restarts)


class _WritesMarker:
    """Unpickling this calls ``exec``: a stand-in for a checkpoint that runs code when loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _tiny_state(seed: int) -> dict:
    torch.manual_seed(seed)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {"net": net, "optimizer": opt}


def test_training_state_round_trip(tmp_path):
    from tabad.methods.training import load_training_state, save_training_state

    saved, ckpt = _tiny_state(0), tmp_path / "run.train.pt"
    save_training_state(ckpt, saved, 3, "k", [{"epoch": 3, "loss": 0.5}])
    rng_after_save = torch.get_rng_state()
    torch.manual_seed(99)
    fresh = _tiny_state(1)
    assert load_training_state(ckpt, fresh, "other key") is None
    assert load_training_state(ckpt, fresh, "k") == (3, [{"epoch": 3, "loss": 0.5}])
    torch.testing.assert_close(fresh["net"].weight, saved["net"].weight, rtol=0, atol=0)
    assert fresh["optimizer"].state_dict()["state"][0]["step"] == 1
    assert torch.equal(torch.get_rng_state(), rng_after_save)


def test_checkpoint_that_would_run_code_is_refused_unexecuted(tmp_path, capsys, recwarn):
    import pickle

    from tabad.methods.training import load_training_state

    marker = tmp_path / "code-ran"
    pickle.loads(pickle.dumps(_WritesMarker(tmp_path / "probe")))
    assert (tmp_path / "probe").exists()  # plain unpickling really runs the code
    payload = {"key": "k", "epoch": 1, "log": [], "state": {"net": _WritesMarker(marker)},
               "torch_rng": torch.get_rng_state()}
    plain = tmp_path / "plain-pickle.pt"
    plain.write_bytes(pickle.dumps(payload))
    zipped = tmp_path / "torch-zip.pt"
    torch.save(payload, zipped)
    state = _tiny_state(0)
    before = {k: v.clone() for k, v in state["net"].state_dict().items()}
    for ckpt in (plain, zipped):
        assert load_training_state(ckpt, state, "k") is None
    assert not marker.exists()
    for k, v in state["net"].state_dict().items():
        assert torch.equal(v, before[k])
    assert capsys.readouterr() == ("", "")  # nothing printed, in particular not torch's "use weights_only=False"
    assert not [w for w in recwarn if "pickle" in str(w.message) or "weights_only" in str(w.message)]


def test_truncated_or_foreign_checkpoint_is_ignored(tmp_path):
    from tabad.methods.training import load_training_state, save_training_state

    ckpt = tmp_path / "run.train.pt"
    save_training_state(ckpt, _tiny_state(0), 1, "k", [{"epoch": 1, "loss": 1.0}])
    data = ckpt.read_bytes()
    state = _tiny_state(1)
    before = state["net"].weight.detach().clone()
    for damaged in (data[: len(data) // 2], data[:100], b"", b"not a checkpoint"):
        ckpt.write_bytes(damaged)
        assert load_training_state(ckpt, state, "k") is None
    # a readable file of the right key but not our layout is ignored too, before anything is loaded
    for foreign in ({"key": "k", "epoch": 1, "log": [], "state": {}}, {"key": "k"}, [1, 2]):
        torch.save(foreign, ckpt)
        assert load_training_state(ckpt, state, "k") is None
    assert torch.equal(state["net"].weight, before)
