"""tabad.config from Python: run files, KEY=VALUE items, precedence, and errors that name the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tabad.config import (
    RUN_SETTINGS,
    RunConfig,
    load_run_config,
    parse_method_sets,
    parse_options,
    parse_size,
    split_csv,
)
from tabad.errors import ConfigError, TabadError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- run files


def test_load_run_config_splits_settings_and_method_options(tmp_path):
    path = write(tmp_path, "data: [x, y]\nmethod: padim, patchcore\nweights: [random]\nresize: 128x96\n"
                           "crop: none\nepochs: 3\ntitle: t\npatchcore: {coreset_ratio: 0.5, layers: [layer2]}\n")
    run = load_run_config(path)
    assert isinstance(run, RunConfig) and run.source == path
    assert run.settings == {"data": ["x", "y"], "method": ["padim", "patchcore"], "weights": ["random"],
                            "resize": (128, 96), "crop": None, "epochs": 3, "title": "t"}
    assert run.method_options == {"patchcore": {"coreset_ratio": 0.5, "layers": ("layer2",)}}


def test_empty_file_is_an_empty_config(tmp_path):
    run = load_run_config(write(tmp_path, "# nothing yet\n"))
    assert run.settings == {} and run.method_options == {}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_from_python(path):
    run = load_run_config(path)
    assert run.settings["data"] and len(run.settings["weights"]) == 2
    assert set(run.settings) <= RUN_SETTINGS and not set(run.method_options) & RUN_SETTINGS


def test_override_wins_over_the_file_and_none_means_not_given(tmp_path):
    run = load_run_config(write(tmp_path, "weights: [imagenet]\nseed: 3\npadim: {n_features: 30, sigma: 2.0}\n"))
    merged = run.override({"weights": ["random:1"], "seed": None, "crop": "none"},
                          parse_method_sets(["padim.n_features=all", "rd4ad.epochs=1"]))
    assert merged.settings == {"weights": ["random:1"], "seed": 3, "crop": None}
    assert merged.method_options == {"padim": {"n_features": "all", "sigma": 2.0}, "rd4ad": {"epochs": 1}}
    assert merged.source == run.source
    # pure: the loaded config is unchanged
    assert run.settings == {"weights": ["imagenet"], "seed": 3}
    assert run.method_options == {"padim": {"n_features": 30, "sigma": 2.0}}


def test_override_rejects_unknown_settings():
    with pytest.raises(ConfigError, match="wieghts"):
        RunConfig().override({"wieghts": ["random"]})


@pytest.mark.parametrize("text,needle", [
    ("- 1\n- 2\n", "expected a mapping"),
    ("data: [x\n", "not valid YAML"),
    ("padim: 3\n", "'padim' maps to 3"),
    ("resize: wide\n", "resize"),
])
def test_bad_files_raise_config_errors_naming_the_file(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    assert str(path) in str(info.value) and needle in str(info.value)
    assert isinstance(info.value, TabadError)  # what the CLI prints as "error: ..."


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_run_config(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------- items and values


def test_parse_method_sets_values():
    sets = parse_method_sets(["padim.n_features=all", "padim.sigma=2.5", "padim.batch_size=8",
                              "padim.layers=[layer1, layer2]", "other.name=a=b"])
    assert sets == {
        "padim": {"n_features": "all", "sigma": 2.5, "batch_size": 8, "layers": ("layer1", "layer2")},
        "other": {"name": "a=b"},
    }
    assert parse_method_sets(None) == {} and parse_method_sets([]) == {}


@pytest.mark.parametrize("item", ["padim", "padim.n_features", "n_features=20", "=3"])
def test_parse_method_sets_bad_syntax(item):
    with pytest.raises(ConfigError) as info:
        parse_method_sets([item])
    assert "METHOD.KEY=VALUE" in str(info.value) and repr(item) in str(info.value)


def test_parse_options():
    assert parse_options(["mode=mixed", " scale = [0.1, 0.5]", "n=3", "mode=swap"]) == {
        "mode": "swap", "scale": (0.1, 0.5), "n": 3}
    assert parse_options(None) == {}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_options(["mixed"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_options(["scale=[0.1"])


def test_sizes_and_lists():
    assert parse_size("256") == 256 and parse_size(" 256x512 ") == (256, 512)
    assert parse_size("none") == parse_size("0") == "none"
    with pytest.raises(ConfigError, match="HxW"):
        parse_size("wide")
    assert split_csv("a, b,,c ") == ["a", "b", "c"] and split_csv("") == []


def test_importing_config_is_light():
    # The CLI builds its parser from this module: no YAML parser until a file or item is parsed.
    code = "import sys, tabad.config; assert 'yaml' not in sys.modules and 'numpy' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
