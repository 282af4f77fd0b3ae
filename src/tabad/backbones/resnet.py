"""torchvision ResNet18 and WideResNet50-2 (the papers' backbones; methods.md §0).

Taps are the outputs of ``layer1`` .. ``layer4`` (strides 4, 8, 16, 32).
Inputs use the ImageNet mean and std. ``imagenet`` weights are torchvision's
``IMAGENET1K_V1``, the ones the PaDiM, PatchCore and TAB papers used; they are
read from torch's hub cache and never downloaded unless ``allow_download=True``,
and a missing file gets an error saying which file to put where.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from tabad.backbones.base import IMAGENET_NORMALISATION, LAYERS, Family, Normalisation, Tap
from tabad.backbones.weights import WeightsInfo, load_file, read_state_dict, seeded_random, strict_load, weights_label
from tabad.errors import WeightsError

#: Output channels of layer1..layer4 per architecture (methods.md §0 table).
CHANNELS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (64, 128, 256, 512),
    "wide_resnet50_2": (256, 512, 1024, 2048),
}

# torchvision weight enums holding the IMAGENET1K_V1 weights the papers used.
_IMAGENET_ENUMS = {"resnet18": "ResNet18_Weights", "wide_resnet50_2": "Wide_ResNet50_2_Weights"}


def imagenet_weights_file(arch: str) -> tuple[Path, str]:
    """Where torch's hub cache keeps the IMAGENET1K_V1 file, and its URL."""
    import torchvision.models as tvm

    url = getattr(tvm, _IMAGENET_ENUMS[arch]).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url), url


class ResNetFamily(Family):
    name = "resnet"
    layout = "torchvision"

    def architectures(self) -> tuple[str, ...]:
        return tuple(CHANNELS)

    def taps(self, arch: str) -> dict[str, Tap]:
        self.check(arch)
        return {name: Tap(name, c, 4 * 2 ** i) for i, (name, c) in enumerate(zip(LAYERS, CHANNELS[arch]))}

    def normalisation(self, arch: str) -> Normalisation:
        return IMAGENET_NORMALISATION

    def new_model(self, arch: str) -> nn.Module:
        import torchvision.models as tvm

        if arch not in CHANNELS:
            raise WeightsError(f"unknown backbone {arch!r}; choose one of {', '.join(CHANNELS)}")
        return getattr(tvm, arch)(weights=None)

    def load(self, arch: str, source: str, seed: int = 0, allow_download: bool = False) -> tuple[nn.Module, WeightsInfo]:
        if source == "random" or source.startswith("random:"):
            return seeded_random(lambda: self.new_model(arch), arch, source, seed, "torchvision default initialisation")
        model = self.new_model(arch)
        if source != "imagenet":
            return model, load_file(model, arch, source, self.layout)
        path, url = imagenet_weights_file(arch)
        if not path.is_file():
            if not allow_download:
                raise WeightsError(
                    f"ImageNet weights for {arch} are not in the torch hub cache and tabad does not download them.\n"
                    f"  Place the file {path.name} at {path}\n"
                    f"  (get it from {url} on a machine with internet access),\n"
                    f"  or set TORCH_HOME to a folder holding hub/checkpoints/{path.name},\n"
                    f"  or pass the file itself as the weights source: --weights /path/to/{path.name}\n"
                    f"  or pass allow_download=True to let torchvision download it",
                    option="allow_download",
                )
            torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True)
        strict_load(model, read_state_dict(path), str(path), arch, self.layout)
        from tabad.files import sha256_file

        return model, WeightsInfo(weights_label(source), source, arch, sha256_file(path), str(path),
                                  "torchvision IMAGENET1K_V1")

    def tap_forward(self, model: nn.Module, x: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        deepest = max(LAYERS.index(t) for t in taps)
        out: dict[str, torch.Tensor] = {}
        h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        for name in LAYERS[: deepest + 1]:
            h = getattr(model, name)(h)
            if name in taps:
                out[name] = h
        return out

    def pooled(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        h = self.tap_forward(model, x, ("layer4",))["layer4"]
        return torch.flatten(model.avgpool(h), 1)

    def pooled_dim(self, arch: str) -> int:
        self.check(arch)
        return CHANNELS[arch][-1]

    def classifier(self, model: nn.Module) -> nn.Module:
        return model.fc


RESNET = ResNetFamily()
