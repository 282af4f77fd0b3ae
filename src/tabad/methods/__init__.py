"""Anomaly-detection methods behind one protocol (:mod:`tabad.methods.base`).

Every method is an :class:`~tabad.methods.base.AnomalyModel`: an
``nn.Module`` built from a frozen backbone and a config dataclass, with
``fit(data, context)`` and ``forward(x) -> AnomalyOutput(scores, maps)``,
class attributes ``name``, ``kind``, ``uses_backbone`` and ``trains``, and
``save``/``load`` of the fitted model (:mod:`tabad.methods.modelfile`).

Methods are looked up by name in :data:`REGISTRY`; a method's module is
imported only when the method is used, so ``tabad --help`` stays instant.
A new method is one module and one line here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tabad.errors import TabadError

if TYPE_CHECKING:
    from tabad.methods.base import AnomalyModel

#: name -> "module:Class" of the method (its config class is ``Class.config_class``).
REGISTRY: dict[str, str] = {
    "padim": "tabad.methods.padim:Padim",
    "patchcore": "tabad.methods.patchcore:PatchCore",
    "simplenet": "tabad.methods.simplenet:SimpleNet",
    "rd4ad": "tabad.methods.rd4ad:Rd4ad",
    "regad": "tabad.methods.regad:RegAD",
}


def method_names() -> list[str]:
    return sorted(REGISTRY)


def method_class(name: str) -> type["AnomalyModel"]:
    """The :class:`~tabad.methods.base.AnomalyModel` subclass registered as ``name``."""
    if name not in REGISTRY:
        raise TabadError(f"unknown method {name!r}; available: {', '.join(method_names())}")
    module, attr = REGISTRY[name].split(":")
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


def create_method(name: str, backbone, overrides: dict[str, Any] | None = None) -> "AnomalyModel":
    """Build method ``name`` on ``backbone`` with its default config updated by ``overrides``."""
    return method_class(name)(backbone, make_config(name, overrides))


def load_model(path, device="cpu") -> "AnomalyModel":
    """A fitted method from its model file (:mod:`tabad.methods.modelfile`)."""
    from tabad.methods.modelfile import load_model as _load

    return _load(path, device=device)
