"""Anomaly detection methods behind one small protocol.

Every method is a plain ``torch.nn.Module`` built from a frozen
:class:`tabad.backbones.Backbone` and a config dataclass, with

* ``fit(batches)``: learn the normal model from an iterable of normalised
  training batches (B, 3, H, W);
* ``predict(x) -> (scores, maps)``: image scores (B,) and anomaly maps
  (B, H, W) at the input resolution, higher = more anomalous.

Methods that train (RD4AD, SimpleNet) also define ``train_epoch`` and
``training_state`` (see :mod:`tabad.methods.training`); their ``fit`` takes
a re-iterable :class:`tabad.datasets.loader.Batches` and keyword arguments
``checkpoint``, ``key``, ``progress`` and ``seed`` so a run resumes after an
interruption. A method whose ``input_normalisation`` is False gets [0, 1]
inputs instead of ImageNet-normalised ones.

Methods are looked up by name in :data:`REGISTRY`; the module is imported
only when the method is used, so ``tabad --help`` stays instant.
"""

from __future__ import annotations

import importlib
from typing import Any

from tabad.errors import TabadError

#: name -> "module:Class" of the method and "module:Class" of its config.
REGISTRY: dict[str, tuple[str, str]] = {
    "padim": ("tabad.methods.padim:Padim", "tabad.methods.padim:PadimConfig"),
    "patchcore": ("tabad.methods.patchcore:PatchCore", "tabad.methods.patchcore:PatchCoreConfig"),
    "simplenet": ("tabad.methods.simplenet:SimpleNet", "tabad.methods.simplenet:SimpleNetConfig"),
    "rd4ad": ("tabad.methods.rd4ad:Rd4ad", "tabad.methods.rd4ad:Rd4adConfig"),
}


def _resolve(ref: str) -> Any:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def method_names() -> list[str]:
    return sorted(REGISTRY)


def config_class(name: str):
    """The config dataclass of method ``name``."""
    if name not in REGISTRY:
        raise TabadError(f"unknown method {name!r}; available: {', '.join(method_names())}")
    return _resolve(REGISTRY[name][1])


def create_method(name: str, backbone, overrides: dict[str, Any] | None = None):
    """Build method ``name`` on ``backbone`` with its default config updated by ``overrides``."""
    from dataclasses import fields, replace

    if name not in REGISTRY:
        raise TabadError(f"unknown method {name!r}; available: {', '.join(method_names())}")
    method_cls, config_cls = (_resolve(r) for r in REGISTRY[name])
    config = config_cls()
    if overrides:
        known = {f.name for f in fields(config)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise TabadError(f"{name} has no option(s) {bad}; options: {sorted(known)}")
        config = replace(config, **overrides)
    return method_cls(backbone, config)
