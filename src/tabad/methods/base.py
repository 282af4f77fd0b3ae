"""The method protocol: what every anomaly-detection method is, in code.

A method is an :class:`AnomalyModel`, a ``torch.nn.Module`` built from a
frozen :class:`~tabad.backbones.base.FeatureExtractor` and a config dataclass:

* class attributes ``name``, ``kind`` (:data:`ONE_CLASS`, :data:`FEW_SHOT`,
  :data:`MULTI_CLASS`), ``uses_backbone`` (False: the method has its own
  network and runs once per category, not once per weights source) and
  ``trains`` (True: ``fit`` runs epochs, resumable from ``context.checkpoint``);
* ``fit(data, context)`` learns the normal model; ``data`` is a re-iterable
  :class:`~tabad.datasets.loader.Batches` of inputs normalised with
  :attr:`AnomalyModel.normalisation`, ``context`` a :class:`FitContext`
  (seed, checkpoint and resume key, progress);
* ``forward(x) -> AnomalyOutput(scores, maps)``: image scores (B,) and anomaly
  maps (B, H, W) at the input size, higher = more anomalous. ``model(x)``
  works, and the graph can be traced for export;
* its config class says the input geometry of its paper
  (``paper_geometry``); its backbone says the input normalisation.

Fitted methods save and load with :mod:`tabad.methods.modelfile`.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from tabad.backbones.base import Normalisation

ONE_CLASS = "one-class"
FEW_SHOT = "few-shot"
MULTI_CLASS = "multi-class"
KINDS = (ONE_CLASS, FEW_SHOT, MULTI_CLASS)


class AnomalyOutput(NamedTuple):
    """What a method's ``forward`` returns (a named tuple, so tracing and ONNX export keep both outputs)."""

    scores: torch.Tensor  # (B,) image anomaly scores
    maps: torch.Tensor  # (B, H, W) anomaly maps at the input resolution


@dataclass
class FitContext:
    """What a runner hands to ``fit`` besides the data."""

    seed: int = 0
    #: where a training method saves its per-epoch state (None: no checkpoint).
    checkpoint: Path | None = None
    #: everything that changes the run; a checkpoint written under another key is never resumed.
    key: str = ""
    progress: bool = False


class AnomalyModel(nn.Module):
    """Base class of every method (see the module docstring)."""

    name: ClassVar[str]
    kind: ClassVar[str] = ONE_CLASS
    uses_backbone: ClassVar[bool] = True
    trains: ClassVar[bool] = False
    #: the config dataclass of the method.
    config_class: ClassVar[type]
    #: attributes that are not tensors but are part of a fitted model (saved in the model file's header).
    fitted_attributes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, backbone, config):
        super().__init__()
        self.backbone = backbone
        self.config = config
        #: per-epoch log of the last ``fit`` (training methods).
        self.train_log: list[dict] | None = None

    # ----------------------------------------------------------------- protocol
    @property
    def normalisation(self) -> Normalisation | None:
        """How inputs must be normalised: the backbone's statistics, or None for [0, 1] RGB."""
        return self.backbone.normalisation

    @property
    def batch_size(self) -> int:
        return int(self.config.batch_size)

    @abstractmethod
    def fit(self, data, context: FitContext | None = None) -> "AnomalyModel":
        """Learn the normal model from ``data``; returns ``self``."""

    @abstractmethod
    def forward(self, x: torch.Tensor) -> AnomalyOutput:
        """Image scores (B,) and anomaly maps (B, H, W) of normalised inputs (B, 3, H, W)."""

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores, maps)`` without gradients."""
        out = self(x)
        return out.scores, out.maps

    def backbone_description(self) -> dict | None:
        """What the model file records about the backbone (None: the method has none)."""
        return self.backbone.describe() if self.uses_backbone else None

    def summary(self) -> dict:
        """Facts about the fitted model recorded with each result (e.g. PatchCore's memory-bank size)."""
        return {}

    # ----------------------------------------------------------------- model files
    def fitted_state(self) -> dict[str, Any]:
        """The JSON-able attributes of a fitted model (:attr:`fitted_attributes`)."""
        out = {}
        for name in self.fitted_attributes:
            v = getattr(self, name)
            out[name] = list(v) if isinstance(v, tuple) else v
        return out

    def restore_fitted_state(self, state: dict[str, Any]) -> None:
        """Set back what :meth:`fitted_state` returned (lists become tuples), then :meth:`after_load`."""
        for name in self.fitted_attributes:
            v = state.get(name)
            setattr(self, name, tuple(v) if isinstance(v, list) else v)
        self.after_load()

    def after_load(self) -> None:
        """Rebuild derived, unsaved state (caches, non-persistent buffers) after loading."""

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """One model file (see :mod:`tabad.methods.modelfile`)."""
        from tabad.methods.modelfile import save_model

        return save_model(self, path, extra=extra)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "AnomalyModel":
        """A fitted model of this class from its file (``tabad.methods.load_model`` for any method)."""
        from tabad.methods.modelfile import load_as

        return load_as(cls, path, device=device)
