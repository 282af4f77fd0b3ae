"""RD4AD: reverse distillation from a one-class embedding.

Deng & Li, "Anomaly Detection via Reverse Distillation from One-Class
Embedding", CVPR 2022, as specified in methods.md §2 (official code
hq-deng/RD4AD; cross-checked against anomalib's ReverseDistillation):

* **Teacher E (paper §3.1)**: the frozen :class:`tabad.backbones.Backbone`
  (``eval()``, ``no_grad``), features of ``layer1``–``layer3``.
* **One-class bottleneck embedding (paper §3.2)**, trainable:

  - multi-scale feature fusion (MFF): layer1 → two 3×3 stride-2 conv + BN +
    ReLU (64e → 128e → 256e), layer2 → one (128e → 256e), concatenated with
    layer3 → 3·256e channels on the layer3 grid;
  - one-class embedding (OCE): one ResNet stage of planes 512, first block
    stride 2 with a 1×1 stride-2 conv + BN shortcut — 2 BasicBlocks for
    ResNet18 (512×8×8 at 256 px), 3 Bottlenecks of width_per_group 128 for
    WideResNet50-2 (2048×8×8). e = block expansion (1 / 4).
* **Student D (paper §3.1)**: a mirrored ResNet trained from scratch: three
  stages of planes 256, 128, 64 (depths [2, 2, 2] for ResNet18, [3, 4, 6]
  with width_per_group 128 for WideResNet50-2). Each stage's first block
  upsamples with a 2×2 stride-2 ``ConvTranspose2d`` (in place of the 3×3
  conv of a BasicBlock / of a Bottleneck's middle conv) and its residual
  branch is a 2×2 stride-2 ``ConvTranspose2d`` + BN. Its outputs, reordered,
  have the shapes of E's layer1, layer2, layer3.
* Initialisation as the official code: Kaiming-normal (fan_out, ReLU) for
  every ``Conv2d``, BN weight 1 / bias 0; the ``ConvTranspose2d`` layers keep
  PyTorch's default initialisation (they are not ``Conv2d`` instances there
  either). The weights are drawn from torch's global generator, like the
  official code (the benchmark seeds it with ``--seed`` before building).
* **Training (paper §3.1 Eq. 1–2, §4 implementation details)**: Adam over
  the OCBE and student parameters only, lr 0.005, betas (0.5, 0.999), no
  weight decay or schedule, batch 16, 200 epochs, OCBE and D in ``train()``,
  the last epoch's weights are kept (no model selection on test data). Loss
  (``Rd4adConfig.loss``):

  - ``"flat"`` (default; official code and anomalib, methods.md §2 and issue
    hq-deng/RD4AD#22): Σ_k mean_batch(1 − cos(vec(E_k), vec(D_k))), each
    C×H×W map flattened into one vector per image;
  - ``"pixel"`` (paper Eq. 1–2): Σ_k mean over batch and positions of the
    channel-wise cosine distance M_k(h, w).
* **Scoring (paper §3.3 Eq. 3)**: per scale M_k = 1 − channel cosine,
  bilinear upsampling to the input size (``align_corners=True``), sum of the
  three (``map_mode="add"``, the official evaluation; ``"mul"`` multiplies),
  scipy-equivalent Gaussian blur σ = 4 (``blur_padding="symmetric"``, the
  official edge-repeating border; ``"reflect"`` is anomalib's torch 'reflect'
  border, for like-for-like comparisons); image score = max of the map.

Deviations from the official code, none changing the model's function:

* E runs under ``no_grad`` (the official code builds a graph through E but
  never steps it); on CUDA its forward pass runs in bfloat16 autocast
  (``amp``; its features are cast back to float32 before OCBE, loss and
  maps; OCBE and D stay float32). On a CPU everything is float32.
* The OCBE's unused ``conv4``/``bn4`` (a dead 1×1 conv, 8 M parameters for
  WideResNet50-2) are not built.
* The final short batch of an epoch is dropped (``drop_last``; the official
  ``DataLoader`` keeps it), so BatchNorm never sees a batch of one.
* Batch order comes from :meth:`tabad.datasets.loader.Batches.epoch`
  (seeded by ``(seed, epoch)``) so an interrupted run resumes exactly; the
  official code uses a shuffled ``DataLoader`` after ``setup_seed(111)``.
* Evaluation maps are not min-max normalised (monotone: no metric changes),
  and the official per-image AUPRO is not used (tabad.metrics is the
  official MVTec definition, methods.md §7).

Inputs must have a height and width divisible by 32 (the paper: 256×256,
no crop; ``tabad benchmark --resize 256 --crop 256``); non-square inputs
work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from tabad.backbones.base import FeatureExtractor
from tabad.datasets.loader import Batches
from tabad.datasets.transforms import Geometry
from tabad.errors import ConfigError, TabadError
from tabad.methods.base import AnomalyModel, AnomalyOutput, FitContext
from tabad.methods.common import BLUR_PADDINGS, gaussian_blur, upsample
from tabad.methods.training import autocast, run_epochs

LOSSES = ("flat", "pixel")
MAP_MODES = ("add", "mul")
LAYERS = ("layer1", "layer2", "layer3")

#: arch -> (encoder block of the OCE, OCE depth, student stage depths, width_per_group)
ARCHS: dict[str, tuple[type, int, tuple[int, int, int], int]] = {
    "resnet18": (BasicBlock, 2, (2, 2, 2), 64),
    "wide_resnet50_2": (Bottleneck, 3, (3, 4, 6), 128),
}


@dataclass(frozen=True)
class Rd4adConfig:
    """RD4AD hyperparameters; defaults are the official code's (methods.md §2)."""

    #: the official input: 256 x 256, no crop.
    paper_geometry: ClassVar[Geometry] = Geometry(256, None)

    #: teacher layers; the architecture is built for exactly layer1-3.
    layers: tuple[str, ...] = LAYERS
    epochs: int = 200
    batch_size: int = 16
    lr: float = 0.005
    betas: tuple[float, float] = (0.5, 0.999)
    #: Gaussian smoothing of the summed map.
    sigma: float = 4.0
    #: "flat" (official: one cosine per flattened C×H×W map) or "pixel" (paper Eq. 1-2).
    loss: str = "flat"
    #: how the per-scale maps combine: "add" (official evaluation) or "mul".
    map_mode: str = "add"
    #: border of the σ blur: "symmetric" (official, scipy 'reflect') or "reflect" (anomalib, torch 'reflect').
    blur_padding: str = "symmetric"
    #: bfloat16 autocast of the teacher's forward pass on CUDA (no effect on a CPU).
    amp: bool = True

    def __post_init__(self):
        def bad(msg: str) -> None:
            raise ConfigError(f"rd4ad: {msg}")

        object.__setattr__(self, "layers", tuple(self.layers))
        if self.layers != LAYERS:
            bad(f"layers={self.layers!r}: the OCBE is built for exactly {LAYERS}")
        try:
            betas = tuple(float(b) for b in self.betas)
        except (TypeError, ValueError):
            betas = ()
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            bad(f"betas={self.betas!r} must be two numbers in [0, 1)")
        object.__setattr__(self, "betas", betas)
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "epochs" else 1):
                bad(f"{name}={v!r} must be a {'non-negative' if name == 'epochs' else 'positive'} integer")
        if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool) or not self.lr > 0:
            bad(f"lr={self.lr!r} must be > 0")
        if not isinstance(self.sigma, (int, float)) or isinstance(self.sigma, bool) or self.sigma < 0:
            bad(f"sigma={self.sigma!r} must be >= 0")
        if self.loss not in LOSSES:
            bad(f"loss={self.loss!r}; choose one of {LOSSES}")
        if self.map_mode not in MAP_MODES:
            bad(f"map_mode={self.map_mode!r}; choose one of {MAP_MODES}")
        if self.blur_padding not in BLUR_PADDINGS:
            bad(f"blur_padding={self.blur_padding!r}; choose one of {BLUR_PADDINGS}")
        if not isinstance(self.amp, bool):
            bad(f"amp={self.amp!r} must be true or false")


# --------------------------------------------------------------------------- networks


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _deconv2x2(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2, bias=False)


def _official_init(module: nn.Module) -> None:
    """Kaiming-normal for Conv2d, BN 1/0; ConvTranspose2d keeps PyTorch's default."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Ocbe(nn.Module):
    """One-class bottleneck embedding: multi-scale fusion (``fuse1``, ``fuse2``) + OCE stage (``oce``)."""

    def __init__(self, arch: str):
        super().__init__()
        if arch not in ARCHS:
            raise TabadError(f"rd4ad has no architecture for backbone {arch!r}; choose one of {sorted(ARCHS)}")
        block, depth, _, width = ARCHS[arch]
        e = block.expansion
        bn = nn.BatchNorm2d
        self.fuse1 = nn.Sequential(_conv3x3(64 * e, 128 * e, 2), bn(128 * e), nn.ReLU(inplace=True),
                                   _conv3x3(128 * e, 256 * e, 2), bn(256 * e), nn.ReLU(inplace=True))
        self.fuse2 = nn.Sequential(_conv3x3(128 * e, 256 * e, 2), bn(256 * e), nn.ReLU(inplace=True))
        cin, planes = 3 * 256 * e, 512
        shortcut = nn.Sequential(nn.Conv2d(cin, planes * e, kernel_size=1, stride=2, bias=False), bn(planes * e))
        blocks = [block(cin, planes, 2, shortcut, base_width=width)]
        blocks += [block(planes * e, planes, base_width=width) for _ in range(depth - 1)]
        self.oce = nn.Sequential(*blocks)
        _official_init(self)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        f1, f2, f3 = feats
        return self.oce(torch.cat([self.fuse1(f1), self.fuse2(f2), f3], dim=1))


class UpBasicBlock(nn.Module):
    """A BasicBlock run backwards: with ``stride=2`` its first conv is a 2×2 stride-2 deconvolution."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, upsample: nn.Module | None = None,
                 base_width: int = 64):
        super().__init__()
        self.conv1 = _deconv2x2(cin, planes) if stride == 2 else _conv3x3(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.upsample is None else self.upsample(x)
        return self.relu(out + skip)


class UpBottleneck(nn.Module):
    """A Bottleneck run backwards: with ``stride=2`` its middle conv is a 2×2 stride-2 deconvolution."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, upsample: nn.Module | None = None,
                 base_width: int = 64):
        super().__init__()
        width = int(planes * base_width / 64)
        self.conv1 = nn.Conv2d(cin, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _deconv2x2(width, width) if stride == 2 else _conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        skip = x if self.upsample is None else self.upsample(x)
        return self.relu(out + skip)


class DeResNet(nn.Module):
    """The student: three upsampling stages (planes 256, 128, 64) from the OCBE output.

    ``forward`` returns the stage outputs finest first, i.e. in the order and
    shapes of the teacher's layer1, layer2, layer3.
    """

    def __init__(self, arch: str):
        super().__init__()
        if arch not in ARCHS:
            raise TabadError(f"rd4ad has no architecture for backbone {arch!r}; choose one of {sorted(ARCHS)}")
        enc_block, _, depths, width = ARCHS[arch]
        block = UpBottleneck if enc_block is Bottleneck else UpBasicBlock
        cin = 512 * block.expansion
        stages = []
        for planes, depth in zip((256, 128, 64), depths):
            cout = planes * block.expansion
            up = nn.Sequential(_deconv2x2(cin, cout), nn.BatchNorm2d(cout))
            blocks = [block(cin, planes, 2, up, base_width=width)]
            blocks += [block(cout, planes, base_width=width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.ModuleList(stages)
        _official_init(self)

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            z = stage(z)
            outs.append(z)
        return outs[::-1]


# --------------------------------------------------------------------------- loss and maps


def distillation_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor],
                      mode: str = "flat") -> torch.Tensor:
    """Σ over scales of the mean cosine distance (module docstring; ``mode`` "flat" or "pixel")."""
    if mode not in LOSSES:
        raise ValueError(f"loss mode {mode!r}; choose one of {LOSSES}")
    total = None
    for t, s in zip(teacher, student, strict=True):
        if mode == "flat":
            d = 1 - F.cosine_similarity(t.flatten(1), s.flatten(1), dim=1)  # (B,)
        else:
            d = 1 - F.cosine_similarity(t, s, dim=1)  # (B, H, W)
        total = d.mean() if total is None else total + d.mean()
    return total


def anomaly_map(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], size: tuple[int, int],
                mode: str = "add") -> torch.Tensor:
    """Per scale 1 − channel cosine, bilinear (align_corners=True) to ``size``, summed or multiplied: (B, H, W)."""
    out = None
    for t, s in zip(teacher, student, strict=True):
        m = upsample(1 - F.cosine_similarity(t, s, dim=1), size, align_corners=True)
        if out is None:
            out = m
        else:
            out = out + m if mode == "add" else out * m
    return out


# --------------------------------------------------------------------------- method


class Rd4ad(AnomalyModel):
    """RD4AD on a frozen teacher backbone: ``fit`` then ``model(x)`` (:mod:`tabad.methods.base`)."""

    name = "rd4ad"
    config_class = Rd4adConfig
    trains = True

    def __init__(self, backbone: FeatureExtractor, config: Rd4adConfig = Rd4adConfig()):
        if backbone.arch not in ARCHS:
            # The student mirrors the teacher's ResNet stages (paper §3.2): other families have no de-ResNet.
            raise TabadError(f"rd4ad supports the backbones {sorted(ARCHS)}, not {backbone.arch!r}")
        super().__init__(backbone, config)  # the frozen teacher is saved with the model, never trained
        self.ocbe = Ocbe(backbone.arch)
        self.student = DeResNet(backbone.arch)
        self._optimizer: torch.optim.Optimizer | None = None
        self._seed = 0

    # ----------------------------------------------------------------- training
    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """Adam over OCBE + student, created on first use (after ``.to(device)``)."""
        if self._optimizer is None:
            params = list(self.ocbe.parameters()) + list(self.student.parameters())
            self._optimizer = torch.optim.Adam(params, lr=self.config.lr, betas=self.config.betas)
        return self._optimizer

    def teacher_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """E's layer1-3 features in float32 (bfloat16 autocast on CUDA when ``amp``)."""
        h, w = x.shape[-2:]
        if h % 32 or w % 32:
            raise ValueError(f"rd4ad needs an input height and width divisible by 32, got {h}x{w} "
                             "(the paper uses 256x256: --resize 256 --crop 256)")
        with autocast(x.device, self.config.amp):
            feats = self.backbone(x, self.config.layers)
        return [feats[name].float() for name in self.config.layers]

    def features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher and student features, (E_1..3, D_1..3)."""
        t = self.teacher_features(x)
        return t, self.student(self.ocbe(t))

    def train_epoch(self, batches, epoch: int) -> dict[str, float]:
        """One shuffled pass over ``batches`` (a :class:`~tabad.datasets.loader.Batches`)."""
        self.ocbe.train()
        self.student.train()
        opt = self.optimizer
        total, n = 0.0, 0
        for x in batches.epoch(epoch, seed=self._seed, drop_last=True):
            t, s = self.features(x)
            loss = distillation_loss(t, s, self.config.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            n += 1
        if n == 0:
            raise TabadError("rd4ad: no training images")
        return {"loss": total / n}

    def training_state(self) -> dict[str, object]:
        return {"ocbe": self.ocbe, "student": self.student, "optimizer": self.optimizer}

    def fit(self, data: Batches, context: FitContext | None = None) -> "Rd4ad":
        """Train OCBE + student for ``config.epochs`` epochs (resumable), then switch them to eval."""
        if not isinstance(data, Batches):
            raise TypeError("rd4ad.fit needs a re-iterable Batches (LoadedSplit.batches(...)), "
                            f"got {type(data).__name__}")
        ctx = context or FitContext()
        self._seed = int(ctx.seed)
        self.train_log = run_epochs(self, data, self.config.epochs, checkpoint=ctx.checkpoint, key=ctx.key,
                                    progress=ctx.progress, desc="rd4ad")
        self.ocbe.eval()
        self.student.eval()
        return self

    # ----------------------------------------------------------------- scoring
    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> AnomalyOutput:
        """Image scores (B,) and smoothed anomaly maps (B, H, W) at the input size."""
        self.ocbe.eval()
        self.student.eval()
        t, s = self.features(x)
        maps = anomaly_map(t, s, tuple(x.shape[-2:]), self.config.map_mode)
        maps = gaussian_blur(maps, self.config.sigma, padding=self.config.blur_padding)
        return AnomalyOutput(maps.flatten(1).amax(dim=1), maps)
