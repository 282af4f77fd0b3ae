"""The method registry: name -> class, resolved only when a method is used.

A new method is one module (an :class:`~tabad.methods.base.AnomalyModel`
subclass) and one line in :data:`REGISTRY`.
"""

from __future__ import annotations

import importlib
from typing import Any

from tabad.errors import TabadError

#: name -> "module:Class" of the method (its config class is ``Class.config_class``), or the class itself.
REGISTRY: dict[str, str | type] = {
    "padim": "tabad.methods.padim:Padim",
    "patchcore": "tabad.methods.patchcore:PatchCore",
    "simplenet": "tabad.methods.simplenet:SimpleNet",
    "rd4ad": "tabad.methods.rd4ad:Rd4ad",
    "regad": "tabad.methods.regad:RegAD",
}


def method_names() -> list[str]:
    return sorted(REGISTRY)


def method_class(name: str) -> type:
    """The :class:`~tabad.methods.base.AnomalyModel` subclass registered as ``name``."""
    if name not in REGISTRY:
        raise TabadError(f"unknown method {name!r}; available: {', '.join(method_names())}")
    ref = REGISTRY[name]
    if isinstance(ref, type):
        return ref
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def config_class(name: str):
    """The config dataclass of method ``name``."""
    return method_class(name).config_class


def make_config(name: str, overrides: dict[str, Any] | None = None):
    """Method ``name``'s default config updated by ``overrides`` (unknown keys are an error)."""
    from dataclasses import fields, replace

    cls = config_class(name)
    config = cls()
    if overrides:
        known = {f.name for f in fields(config)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise TabadError(f"{name} has no option(s) {bad}; options: {sorted(known)}")
        config = replace(config, **overrides)
    return config


def create_method(name: str, backbone, overrides: dict[str, Any] | None = None) -> Any:
    """Build method ``name`` on ``backbone`` with its default config updated by ``overrides``."""
    return method_class(name)(backbone, make_config(name, overrides))


def load_model(path, device="cpu") -> Any:
    """The fitted method stored in a model file, whatever its class (:mod:`tabad.methods.modelfile`)."""
    from tabad.methods.modelfile import read_header

    return method_class(read_header(path)["method"]).load(path, device=device)
