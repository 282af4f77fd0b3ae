"""Atomic writes: torch files are content-addressed (equal tensors, equal bytes, whatever the path)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from tabad.files import atomic_write_torch, sha256_file


def _state() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"conv.weight": torch.randn(4, 3, 3, 3, generator=g), "bn.num_batches_tracked": torch.tensor(7),
            "meta": {"names": ["a", "b"], "epoch": 2, "lr": 0.1}}


def test_equal_tensors_give_equal_sha256_at_different_paths(tmp_path):
    a = atomic_write_torch(tmp_path / "one" / "backbone.pt", _state())
    b = atomic_write_torch(tmp_path / "other-name.pt", _state())  # an equal copy, not the same objects
    assert sha256_file(a) == sha256_file(b)
    assert not [p.name for p in tmp_path.rglob(".*")]  # no temporary files left behind
    loaded = torch.load(b, map_location="cpu", weights_only=True)
    torch.testing.assert_close(loaded["conv.weight"], _state()["conv.weight"], rtol=0, atol=0)
    assert loaded["meta"] == _state()["meta"]
    c = atomic_write_torch(tmp_path / "changed.pt", {**_state(), "bn.num_batches_tracked": torch.tensor(8)})
    assert sha256_file(c) != sha256_file(a)


def test_bytes_do_not_depend_on_the_process(tmp_path):
    # no timestamp, pid or random id in torch's zip output: a second interpreter writes the same bytes
    here = atomic_write_torch(tmp_path / "here.pt", _state())
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from test_files import _state; "
            "from tabad.files import atomic_write_torch; atomic_write_torch(sys.argv[1], _state())")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "there.pt"), str(Path(__file__).parent)],
                   check=True, timeout=120)
    assert sha256_file(here) == sha256_file(tmp_path / "there.pt")


def test_importing_tabad_files_does_not_import_torch():
    code = "import sys, tabad.files; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
