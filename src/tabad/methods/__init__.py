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

from tabad.methods.modelfile import read_header
from tabad.methods.registry import (REGISTRY, config_class, create_method, load_model, make_config, method_class,
                                    method_names)

__all__ = ["REGISTRY", "config_class", "create_method", "load_model", "make_config", "method_class", "method_names",
           "read_header"]
