"""Fitted models as one file: safetensors tensors plus a JSON header.

A ``.tabad`` model file is a `safetensors <https://github.com/huggingface/safetensors>`_
file: every tensor of the fitted method (its backbone's weights included, so
the file is self-contained) and, in the format's metadata, one JSON header
under the key ``tabad``::

    format        "tabad-model/1"
    method        registry name, e.g. "patchcore"
    config        the method's config dataclass
    backbone      family, architecture, memory format, normalisation, weights
                  (source, sha256, package)
    geometry      the input geometry the model was fitted at
    fitted        the method's non-tensor fitted state (e.g. the feature grid)
    tabad_version, torch_version, and whatever the caller adds (``extra``:
                  training data summary, thresholds, ...)

Why safetensors: loading it cannot execute code, unlike a pickle, and the
bytes depend only on the tensors and the header, so the same model gives the
same sha256. A truncated, tampered or foreign file raises a
:class:`~tabad.errors.ModelFileError` naming it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import torch
from torch import nn

from tabad.errors import TabadError

FORMAT = "tabad-model/1"
HEADER_KEY = "tabad"


class ModelFileError(TabadError):
    """A model file cannot be read: missing, truncated, tampered with, or not a tabad model."""


def _bad(path: Path, problem: str) -> ModelFileError:
    return ModelFileError(f"{path}: {problem}")


def config_to_dict(config) -> dict:
    """A config dataclass as JSON-able values (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def config_from_dict(config_class: type, values: dict):
    """The inverse of :func:`config_to_dict`: lists become tuples, as the configs declare them."""
    known = {f.name for f in fields(config_class)}
    return config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known})


def build_header(model: nn.Module, extra: dict | None = None) -> dict:
    from tabad.version import __version__
    header = {
        "format": FORMAT,
        "method": model.name,
        "kind": model.kind,
        "config": config_to_dict(model.config),
        "backbone": model.backbone_description(),
        "normalisation": None if model.normalisation is None else model.normalisation.to_dict(),
        "fitted": model.fitted_state(),
        "tabad_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
    }
    header.update(extra or {})
    return header


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    from tabad.backbones.weights import state_dict_sha256

    return state_dict_sha256(tensors)


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory; a plain CPU copy of each is always accepted.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_model(model: nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``model`` (fitted) to ``path`` atomically; returns the path."""
    from safetensors.torch import save

    from tabad.files import atomic_write_bytes

    tensors = model_tensors(model)
    header = build_header(model, extra)
    # Detects tensors changed after saving: safetensors itself has no checksum.
    header["tensors_sha256"] = tensors_sha256(tensors)
    data = save(tensors, metadata={HEADER_KEY: json.dumps(header, sort_keys=True, default=str)})
    return atomic_write_bytes(path, data)


def read_model_file(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(header, tensors) of a model file, with errors that name the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise _bad(path, "model file not found")
    raw = path.read_bytes()
    try:
        tensors = load(raw)
        # safetensors.torch.load does not return the metadata: read it from the format's JSON header.
        n = int.from_bytes(raw[:8], "little")
        meta = json.loads(raw[8 : 8 + n]).get("__metadata__") or {}
    except (SafetensorError, ValueError, OSError, RuntimeError) as exc:
        raise _bad(path, f"not a readable tabad model file (truncated or damaged?): {exc}") from exc
    if HEADER_KEY not in meta:
        raise _bad(path, "a safetensors file without a tabad header: not a tabad model (weights for --weights?)")
    try:
        header = json.loads(meta[HEADER_KEY])
    except ValueError as exc:
        raise _bad(path, f"damaged tabad header: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _bad(path, f"unsupported model format {header.get('format') if isinstance(header, dict) else header!r}; "
                         f"this tabad reads {FORMAT}")
    if header.get("tensors_sha256") != tensors_sha256(tensors):
        raise _bad(path, "tensors do not match the checksum in the header: the file was modified after saving")
    return header, tensors


def read_header(path: str | Path) -> dict:
    """The JSON header alone (cheap: the tensors are neither read nor checked; loading checks them)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            meta = json.loads(f.read(n)).get("__metadata__") or {}
        header = json.loads(meta[HEADER_KEY])
    except FileNotFoundError:
        raise _bad(path, "model file not found") from None
    except (OSError, ValueError, KeyError, AttributeError, MemoryError, OverflowError):
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        return read_model_file(path)[0]  # raises the precise error
    return header


def _fit_buffers(module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    # Buffers of fitted statistics (PaDiM's means, PatchCore's memory bank) are empty until fit:
    # give them the stored shapes so the strict load below can fill them.
    for key, value in tensors.items():
        owner_name, _, attr = key.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        buf = owner._buffers.get(attr) if hasattr(owner, "_buffers") else None
        if buf is not None and buf.shape != value.shape:
            owner._buffers[attr] = torch.empty(value.shape, dtype=value.dtype, device=buf.device)


def load_as(cls: type, path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The fitted ``cls`` model stored in ``path``; its outputs equal the saved model's bit for bit.

    ``tabad.methods.load_model(path)`` finds ``cls`` from the header's method name.
    """
    from tabad.backbones import get_family
    from tabad.backbones.base import FeatureExtractor
    from tabad.backbones.weights import WeightsInfo

    path = Path(path)
    header, tensors = read_model_file(path)
    if header.get("method") != cls.name:
        raise _bad(path, f"holds a {header.get('method')} model, not {cls.name}")
    try:
        config = config_from_dict(cls.config_class, header["config"])
        backbone = None
        if header.get("backbone"):
            b = header["backbone"]
            family = get_family(b["family"])
            with torch.random.fork_rng(devices=[]):  # the random init is overwritten below
                net = family.new_model(b["arch"])
            backbone = FeatureExtractor(family, net, WeightsInfo(**b["weights"]), memory_format=b["memory_format"])
        model = cls(backbone, config)
        _fit_buffers(model, tensors)
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except (KeyError, TypeError, AttributeError, RuntimeError, TabadError) as exc:
        raise _bad(path, f"header does not describe a model this tabad can build: {exc!r}") from exc
    if missing or unexpected:
        raise _bad(path, f"tensors do not fit a {header['method']} model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    model.restore_fitted_state(header.get("fitted") or {})
    model.header = header
    return model.to(device).eval()
