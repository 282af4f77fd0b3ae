"""The shipped run configs (configs/*.yaml) parse, name only known methods and options, and resolve."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from tabad.cli import _benchmark_settings, build_parser
from tabad.config import RUN_SETTINGS
from tabad.methods import config_class, method_names

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_exist():
    assert {p.name for p in CONFIGS} >= {"paper_tables_2_3.yaml", "table4_cross_dataset.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_resolves(path):
    args = build_parser().parse_args(["benchmark", "--config", str(path), "--out", "o"])
    settings, options = _benchmark_settings(args)
    assert settings["data"] and settings["weights"] and len(settings["weights"]) == 2
    assert set(settings["method"]) <= set(method_names())
    for method, opts in options.items():
        assert method in method_names(), method
        known = {f.name for f in fields(config_class(method))}
        assert set(opts) <= known, (method, set(opts) - known)
        config_class(method)(**opts)  # the values are valid, too
    assert set(settings) <= RUN_SETTINGS
    if isinstance(settings.get("layout"), list) and len(settings["layout"]) > 1:
        assert len(settings["layout"]) == len(settings["data"])
