"""The ``tabad`` command: fast help, argument handling, errors without tracebacks, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tabad
from tabad.cli import build_parser, main

_BACKBONES: dict = {}


@pytest.fixture
def cached_backbones(monkeypatch):
    """build_backbone once per (arch, source, seed) for this module: the backbone is frozen."""
    from tabad.backbones import build_backbone as real

    def cached(arch, source, seed=0, allow_download=False, memory_format="channels_last"):
        key = (arch, source, seed, memory_format)
        if key not in _BACKBONES:
            _BACKBONES[key] = real(arch, source, seed=seed, allow_download=allow_download, memory_format=memory_format)
        return _BACKBONES[key]

    monkeypatch.setattr("tabad.backbones.build_backbone", cached)


def _python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- help, without torch


def test_importing_tabad_and_cli_does_not_import_torch():
    proc = _python("import tabad, tabad.cli, sys; tabad.cli.build_parser(); "
                   "heavy = [m for m in ('torch', 'torchvision', 'cv2', 'matplotlib', 'scipy') if m in sys.modules]; "
                   "assert not heavy, heavy")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("argv", [["--help"], ["benchmark", "--help"], ["make-data", "--help"], ["--version"]])
def test_help_does_not_import_torch(argv):
    code = (
        "import sys\nfrom tabad.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


def test_tabad_help_subprocess_is_fast():
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tabad", "--help"], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    assert "benchmark" in proc.stdout and "make-data" in proc.stdout and "weights sources" in proc.stdout
    assert elapsed < 10  # no torch import (~3 s alone); generous for a loaded machine
    script = Path(sys.executable).parent / "tabad"
    if script.exists():  # the installed console script
        proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout.strip() == f"tabad {tabad.__version__}"


def test_benchmark_help_mentions_layouts(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for needle in ("mvtec", "mvtec3d", "mvtec-stem", "<stem>_mask.png", "--no-resume", "--set", "--weights"):
        assert needle in text, needle


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: tabad" in capsys.readouterr().out


def test_parser_defaults():
    from tabad.cli import _benchmark_settings

    args = build_parser().parse_args(["benchmark", "--data", "d", "--out", "o", "--weights", "random, imagenet,x.pt"])
    assert args.weights == ["random", "imagenet", "x.pt"]
    settings, options = _benchmark_settings(args)
    # only what was given is set; BenchmarkConfig's defaults fill the rest
    assert settings == {"data": ["d"], "weights": ["random", "imagenet", "x.pt"]} and options == {}
    assert args.categories is None and args.panels is None and not args.no_resume


def test_non_square_resize_and_no_crop():
    from tabad.cli import _benchmark_settings

    args = build_parser().parse_args(["benchmark", "--data", "a,b", "--out", "o", "--resize", "256x512",
                                      "--crop", "none", "--layout", "btad,ksdd2"])
    settings, _ = _benchmark_settings(args)
    assert settings["resize"] == (256, 512) and settings["crop"] is None
    assert settings["data"] == ["a", "b"] and settings["layout"] == ["btad", "ksdd2"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["benchmark", "--data", "d", "--out", "o", "--resize", "wide"])


def test_config_file_settings_and_flags_win(tmp_path):
    from tabad.cli import _benchmark_settings

    cfg = tmp_path / "run.yaml"
    cfg.write_text("data: [x, y]\nmethod: padim,patchcore\nweights: [random]\nresize: 128x96\ncrop: null\n"
                   "epochs: 3\npatchcore: {coreset_ratio: 0.5}\n")
    args = build_parser().parse_args(["benchmark", "--config", str(cfg), "--out", "o", "--weights", "random:1",
                                      "--set", "padim.n_features=all"])
    settings, options = _benchmark_settings(args)
    assert settings["data"] == ["x", "y"] and settings["method"] == ["padim", "patchcore"]
    assert settings["weights"] == ["random:1"]  # the flag wins over the file
    assert settings["resize"] == (128, 96) and settings["crop"] is None and settings["epochs"] == 3
    assert options == {"patchcore": {"coreset_ratio": 0.5}, "padim": {"n_features": "all"}}


# --------------------------------------------------------------------------- --set / --config
# (the parsing itself is tested in test_config.py; here: the CLI reports its errors)


@pytest.mark.parametrize("item", ["padim", "padim.n_features", "n_features=20", "=3"])
def test_set_with_bad_syntax_fails_clearly(item, tmp_path, capsys):
    rc = main(["benchmark", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--set", item])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "METHOD.KEY=VALUE" in err and repr(item) in err
    assert "Traceback" not in err


def test_config_file_that_is_not_a_mapping(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("- 1\n- 2\n")
    rc = main(["benchmark", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(cfg)])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and str(cfg) in err


def test_missing_config_file_is_exit_2_with_path(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["benchmark", "--out", str(tmp_path / "o"), "--config", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


# --------------------------------------------------------------------------- errors


def test_missing_data_is_exit_2_with_path(tmp_path, capsys):
    missing = tmp_path / "no_such_dataset"
    rc = main(["benchmark", "--data", str(missing), "--out", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and str(missing) in err
    assert "Traceback" not in err


def test_unknown_method_option_is_exit_2(tiny_mvtec, tmp_path, capsys, cached_backbones):
    rc = main(["benchmark", "--data", str(tiny_mvtec), "--out", str(tmp_path / "out"), "--categories", "obj",
               "--resize", "40", "--crop", "32", "--panels", "0", "--weights", "random", "--set", "padim.nope=1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "error:" in err and "nope" in err


def test_bad_method_option_value_is_exit_2(tiny_mvtec, tmp_path, capsys, cached_backbones):
    rc = main(["benchmark", "--data", str(tiny_mvtec), "--out", str(tmp_path / "out"), "--categories", "obj",
               "--resize", "40", "--crop", "32", "--panels", "0", "--weights", "random",
               "--set", "padim.n_features=0"])
    assert rc == 2
    assert "n_features" in capsys.readouterr().err


def test_missing_weights_file_is_exit_2(tiny_mvtec, tmp_path, capsys):
    missing = tmp_path / "tab_r18.pt"
    rc = main(["benchmark", "--data", str(tiny_mvtec), "--out", str(tmp_path / "out"), "--weights", str(missing)])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and str(missing) in err


def test_keyboard_interrupt_is_exit_130(tmp_path, capsys, monkeypatch):
    def interrupted(cfg, log=print):
        raise KeyboardInterrupt

    monkeypatch.setattr("tabad.benchmark.run_benchmark", interrupted)
    rc = main(["benchmark", "--data", str(tmp_path), "--out", str(tmp_path / "out")])
    assert rc == 130
    assert "rerun the same command" in capsys.readouterr().err


# --------------------------------------------------------------------------- end to end


def test_benchmark_end_to_end(tiny_mvtec, tmp_path, capsys, cached_backbones):
    out = tmp_path / "out"
    config = tmp_path / "opts.yaml"
    config.write_text("padim:\n  n_features: 30\n  sigma: 2.0\n")
    rc = main(["benchmark", "--data", str(tiny_mvtec), "--out", str(out), "--categories", "obj",
               "--resize", "64", "--crop", "56", "--weights", "random", "--panels", "1",
               "--config", str(config), "--set", "padim.n_features=20", "--memory-format", "contiguous"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "Image AUROC" in stdout and str(out / "results.md") in stdout
    report = json.loads((out / "results.json").read_text())
    (row,) = report["results"]
    assert row["category"] == "obj" and row["method"] == "padim" and row["weights"] == "random"
    assert row["config"]["n_features"] == 20  # --set wins over --config
    assert row["config"]["sigma"] == 2.0  # the rest of --config is kept
    assert report["provenance"]["methods"] == {"padim": {"n_features": 20, "sigma": 2.0}}
    assert report["provenance"]["method_configs"]["padim"]["n_features"] == 20
    assert report["provenance"]["image_size"] == [56, 56]
    assert report["provenance"]["memory_format"] == "contiguous"
    assert (out / "results.csv").is_file() and (out / "results.md").is_file()
    assert (out / "panels" / "obj__padim.png").is_file()


def test_layout_choices_come_from_the_layout_registry(capsys):
    from tabad.datasets.layouts import ALL_LAYOUTS

    for name in ("auto", *ALL_LAYOUTS):
        assert build_parser().parse_args(["pretrain", "--data", "d", "--out", "o", "--layout", name]).layout == name
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pretrain", "--data", "d", "--out", "o", "--layout", "mvtec-ad"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["benchmark", "--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in ALL_LAYOUTS)


def test_regad_is_routed_to_the_fewshot_protocol(tmp_path, monkeypatch):
    import tabad.fewshot as fs

    seen = {}

    def fake_run(cfg):
        seen["cfg"] = cfg
        (cfg.out).mkdir(parents=True, exist_ok=True)
        (cfg.out / "results.md").write_text("table")
        return {}

    monkeypatch.setattr(fs, "run_fewshot", fake_run)
    assert main(["benchmark", "--data", str(tmp_path), "--method", "regad", "--shots", "2,8", "--rounds", "3",
                 "--epochs", "1", "--set", "regad.input_normalisation=true", "--out", str(tmp_path / "o")]) == 0
    cfg = seen["cfg"]
    assert cfg.shots == [2, 8] and cfg.rounds == 3 and cfg.epochs == 1 and cfg.seed == 668
    assert cfg.method_options == {"input_normalisation": True} and (cfg.resize, cfg.crop) == (224, 224)
    with pytest.raises(SystemExit, match="on its own"):
        main(["benchmark", "--data", str(tmp_path), "--method", "padim,regad", "--out", str(tmp_path / "o2")])
