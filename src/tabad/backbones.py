"""CNN backbones, their weight sources, and layer taps.

A *weights source* is a string a user types on the command line:

``random`` / ``random:SEED``
    torchvision's own initialisation, seeded (by ``--seed`` unless a seed is
    given after the colon). Useful as the floor any pre-training must beat.
``imagenet``
    torchvision's ``IMAGENET1K_V1`` weights, the ones the PaDiM, PatchCore and
    TAB papers used (methods.md §0). They are read from torch's hub cache and
    never downloaded unless ``allow_download=True``; when the file is missing
    the error says which file to put where.
``PATH``
    a torchvision-keyed state dict (``torch.save(model.state_dict())``), e.g. a
    TAB checkpoint. Loaded with ``strict=True``; a mismatch lists the missing
    and unexpected keys.

Features are taken at the outputs of ``layer1`` .. ``layer4`` (methods.md §0).
The backbone always runs in ``eval()`` mode (BatchNorm uses its running
statistics) and without gradients.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from tabad.errors import TabadError, WeightsError

if TYPE_CHECKING:
    import torch
    from torch import nn

LAYERS = ("layer1", "layer2", "layer3", "layer4")

#: Output channels of layer1..layer4 per architecture (methods.md §0 table).
ARCHITECTURES: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (64, 128, 256, 512),
    "wide_resnet50_2": (256, 512, 1024, 2048),
}

# torchvision weight enums holding the IMAGENET1K_V1 weights the papers used.
_IMAGENET_ENUMS = {
    "resnet18": "ResNet18_Weights",
    "wide_resnet50_2": "Wide_ResNet50_2_Weights",
}


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


def _new_model(arch: str) -> "nn.Module":
    import torchvision.models as tvm

    if arch not in ARCHITECTURES:
        raise WeightsError(f"unknown backbone {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return getattr(tvm, arch)(weights=None)


def imagenet_weights_file(arch: str) -> tuple[Path, str]:
    """Where torch's hub cache keeps the IMAGENET1K_V1 file, and its URL."""
    import torch
    import torchvision.models as tvm

    enum = getattr(tvm, _IMAGENET_ENUMS[arch]).IMAGENET1K_V1
    url = enum.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url), url


def _read_state_dict(path: Path) -> dict:
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


def _strict_load(model: "nn.Module", state_dict: dict, origin: str, arch: str) -> None:
    missing, unexpected, wrong_shape = [], [], []
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    for k in sorted(set(own) & set(state_dict)):
        if tuple(own[k].shape) != tuple(state_dict[k].shape):
            wrong_shape.append(f"{k}: file {tuple(state_dict[k].shape)} vs {arch} {tuple(own[k].shape)}")
    if missing or unexpected or wrong_shape:
        def show(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" … (+{len(items) - 8} more)" if len(items) > 8 else "")

        lines = [f"{origin}: does not fit a torchvision {arch} (strict load)."]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {show(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {show(unexpected)}")
        if wrong_shape:
            lines.append(f"  wrong shapes ({len(wrong_shape)}): {show(wrong_shape)}")
        lines.append("  Is it a checkpoint of another architecture (see --backbone)?")
        raise WeightsError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)


def load_weights(arch: str, source: str, seed: int = 0, allow_download: bool = False) -> tuple["nn.Module", WeightsInfo]:
    """Build a torchvision ``arch`` and fill it from ``source`` (module docstring)."""
    import torch

    label = weights_label(source)
    if source == "random" or source.startswith("random:"):
        if source.startswith("random:"):
            try:
                seed = int(source.split(":", 1)[1])
            except ValueError:
                raise WeightsError(f"bad weights source {source!r}: expected random:SEED with an integer seed") from None
        # Seed only this construction: other code's random streams stay untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _new_model(arch)
        info = WeightsInfo(label, source, arch, state_dict_sha256(model.state_dict()), None,
                           f"torchvision default initialisation, torch.manual_seed({seed})")
    elif source == "imagenet":
        model = _new_model(arch)
        path, url = imagenet_weights_file(arch)
        if not path.is_file():
            if not allow_download:
                raise WeightsError(
                    f"ImageNet weights for {arch} are not in the torch hub cache and tabad does not download them.\n"
                    f"  Place the file {path.name} at {path}\n"
                    f"  (get it from {url} on a machine with internet access),\n"
                    f"  or set TORCH_HOME to a folder holding hub/checkpoints/{path.name},\n"
                    f"  or pass the file itself as the weights source: --weights /path/to/{path.name}"
                )
            torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True)
        _strict_load(model, _read_state_dict(path), str(path), arch)
        from tabad.files import sha256_file

        info = WeightsInfo(label, source, arch, sha256_file(path), str(path), "torchvision IMAGENET1K_V1")
    else:
        model = _new_model(arch)
        path = Path(source).expanduser()
        state = _read_state_dict(path)
        _strict_load(model, state, str(path), arch)
        from tabad.files import sha256_file

        sha = sha256_file(path)
        trained_on = pretraining_record(path, sha)
        description = "state dict file"
        if trained_on:
            description = (f"TAB pre-training ({trained_on['loss']} loss, {trained_on['synthetic']} anomalies, "
                           f"{trained_on['prompts']} prompts, text encoder {trained_on['text_encoder']}, "
                           f"{trained_on['epochs']} epochs from {trained_on['init']}) on "
                           f"{', '.join(trained_on['data_roots'])} [{', '.join(trained_on['categories'])}]")
        info = WeightsInfo(label, source, arch, sha, str(path.resolve()), description, trained_on)
    return model, info


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


#: Tensor layouts a :class:`Backbone` can run in (``Backbone(memory_format=...)``).
MEMORY_FORMATS = ("channels_last", "contiguous")


class Backbone:
    """A frozen torchvision ResNet that returns the requested layer outputs.

    Only the stages up to the deepest requested layer run, so PaDiM (layers
    1-3) never pays for layer4.
    """

    def __init__(self, model: "nn.Module", info: WeightsInfo, memory_format: str = "channels_last"):
        import torch

        # channels_last lets oneDNN / cuDNN pick their fast convolution kernels:
        # about 2.5x faster on a 2-core CPU for ResNet18, equal results up to float
        # rounding. "contiguous" (torch's default layout) gives bit-identical
        # features to another library's contiguous ResNet, for side-by-side runs.
        if memory_format not in MEMORY_FORMATS:
            raise TabadError(f"memory_format={memory_format!r}; choose one of {MEMORY_FORMATS}")
        self.memory_format = memory_format
        self._layout = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
        self.model = model.eval().to(memory_format=self._layout)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.info = info
        self.arch = info.arch
        self._torch = torch

    def channels(self, layers: Sequence[str]) -> list[int]:
        return [ARCHITECTURES[self.arch][LAYERS.index(layer)] for layer in layers]

    def to(self, device) -> "Backbone":
        self.model.to(device)
        return self

    def __call__(self, x: "torch.Tensor", layers: Sequence[str]) -> dict[str, "torch.Tensor"]:
        unknown = [layer for layer in layers if layer not in LAYERS]
        if unknown:
            raise ValueError(f"unknown layers {unknown}; choose from {LAYERS}")
        m = self.model
        deepest = max(LAYERS.index(layer) for layer in layers)
        out: dict[str, torch.Tensor] = {}
        with self._torch.no_grad():
            x = x.contiguous(memory_format=self._layout)
            h = m.maxpool(m.relu(m.bn1(m.conv1(x))))
            for i, name in enumerate(LAYERS[: deepest + 1]):
                h = getattr(m, name)(h)
                if name in layers:
                    out[name] = h
        return out


def build_backbone(arch: str, source: str, seed: int = 0, allow_download: bool = False,
                   memory_format: str = "channels_last") -> Backbone:
    model, info = load_weights(arch, source, seed=seed, allow_download=allow_download)
    return Backbone(model, info, memory_format=memory_format)
