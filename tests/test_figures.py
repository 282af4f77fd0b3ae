"""Supplementary figures: t-SNE from a benchmark folder, similarity matrix from a pre-training run, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from tabad.errors import TabadError, WeightsError


@pytest.fixture(scope="module")
def bench_dir(tiny_mvtec, tmp_path_factory) -> Path:
    from tabad.benchmark import BenchmarkConfig, run_benchmark

    out = tmp_path_factory.mktemp("bench")
    run_benchmark(BenchmarkConfig(data=tiny_mvtec, out=out, methods=["padim"], weights=["random", "random:1"],
                                  resize=64, crop=56, n_panels=0, progress=False), log=lambda *_: None)
    return out


def _pretrain(tiny_mvtec: Path, out: Path, tmp_path: Path, **kw) -> Path:
    from tabad.pretrain.trainer import PretrainConfig, pretrain

    cfg = dict(data=[str(tiny_mvtec)], out=str(out), init="random", epochs=1, batch_size=6, lr=0.01, resize=64,
               crop=56, workers=0, progress=False, cache_dir=str(tmp_path / "cache"))
    cfg.update(kw)
    pretrain(PretrainConfig(**cfg), log=lambda *_: None)
    return out


def test_tsne_one_panel_per_weights_source(bench_dir):
    from tabad.figures import tsne_figure

    path = tsne_figure(bench_dir, max_per_category=5)
    assert path == bench_dir / "figures" / "tsne.png"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.width > 1.5 * img.height  # two panels side by side
    meta = json.loads(path.with_suffix(".json").read_text())
    assert [p["label"] for p in meta["panels"]] == ["random", "random-1"]
    assert len(meta["points"]) == 10 and {p["category"] for p in meta["points"]} == {"obj", "tex"}
    assert all(len(p["xy"]) == 10 for p in meta["panels"])
    # Reproducible: same inputs, same embedding.
    again = tsne_figure(bench_dir, bench_dir / "again.png", max_per_category=5)
    assert json.loads(again.with_suffix(".json").read_text())["panels"] == meta["panels"]


def _with_weights_entry(bench_dir: Path, dst: Path, entry: dict) -> Path:
    dst.mkdir()
    report = json.loads((bench_dir / "results.json").read_text())
    report["provenance"]["weights"] = [entry]
    (dst / "results.json").write_text(json.dumps(report))
    return dst


def test_tsne_file_source_checks_sha256(bench_dir, tmp_path):
    import torchvision

    from tabad.figures import tsne_figure
    from tabad.files import sha256_file

    weights = tmp_path / "w.pt"
    torch.manual_seed(5)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    entry = {"label": "w", "source": str(weights), "arch": "resnet18", "sha256": sha256_file(weights),
             "path": str(weights), "description": "state dict file"}
    good = _with_weights_entry(bench_dir, tmp_path / "good", entry)
    assert tsne_figure(good, max_per_category=4).is_file()

    torch.manual_seed(6)
    torch.save(torchvision.models.resnet18().state_dict(), weights)  # the file changed afterwards
    with pytest.raises(TabadError, match="sha256"):
        tsne_figure(good, tmp_path / "bad.png", max_per_category=4)
    assert not (tmp_path / "bad.png").exists()


def test_tsne_random_source_checks_sha256(bench_dir, tmp_path):
    from tabad.figures import tsne_figure

    report = json.loads((bench_dir / "results.json").read_text())
    entry = dict(report["provenance"]["weights"][0], sha256="0" * 64)
    with pytest.raises(TabadError, match="sha256"):
        tsne_figure(_with_weights_entry(bench_dir, tmp_path / "r", entry))


def test_tsne_needs_results_json(tmp_path):
    from tabad.figures import tsne_figure

    with pytest.raises(TabadError, match="results.json"):
        tsne_figure(tmp_path)


def test_similarity_matrix(tiny_mvtec, tmp_path, fake_text):
    from tabad.figures import similarity_figure

    run = _pretrain(tiny_mvtec, tmp_path / "run", tmp_path)
    path = similarity_figure(run, tiny_mvtec, n_images=4)
    assert path == run / "figures" / "similarity.png"
    with Image.open(path) as img:
        img.verify()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["columns"] == ["normal obj", "normal tex", "abnormal obj", "abnormal tex"]
    assert meta["rows"][:4] == ["obj/normal", "tex/normal", "obj/normal", "tex/normal"]
    assert meta["rows"][4:] == [r.replace("normal", "abnormal") for r in meta["rows"][:4]]
    sim = torch.tensor(meta["similarity"])
    assert sim.shape == (8, 4) and bool((sim.abs() <= 1 + 1e-5).all())
    # a damaged run file is named in a WeightsError, not a bare unpickling traceback
    head = run / "head.pt"
    head.write_bytes(head.read_bytes()[:200])
    with pytest.raises(WeightsError, match="head.pt"):
        similarity_figure(run, tiny_mvtec, n_images=4)


def test_similarity_refuses_classification_run(tiny_mvtec, tmp_path, fake_text):
    from tabad.figures import similarity_figure

    run = _pretrain(tiny_mvtec, tmp_path / "cls", tmp_path, loss="classification")
    with pytest.raises(TabadError, match="classification"):
        similarity_figure(run, tiny_mvtec)


def test_cli_figures_help(capsys):
    from tabad.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["figures", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--results" in text and "--pretrain" in text and "t-SNE" in text


def test_cli_figures_needs_an_input():
    from tabad.cli import main

    with pytest.raises(SystemExit, match="--results"):
        main(["figures"])


def test_cli_figures_writes_tsne(bench_dir, tmp_path, capsys):
    from tabad.cli import main

    copy = tmp_path / "bench"
    shutil.copytree(bench_dir, copy)
    assert main(["figures", "--results", str(copy), "--out", str(tmp_path / "figs"),
                 "--max-per-category", "4"]) == 0
    assert str(tmp_path / "figs" / "tsne.png") in capsys.readouterr().out
    assert (tmp_path / "figs" / "tsne.png").is_file()
