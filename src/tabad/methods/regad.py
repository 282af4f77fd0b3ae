"""RegAD: registration-based few-shot anomaly detection (Huang et al., ECCV 2022).

Follows the official code (MediaBrain-SJTU/RegAD) as specified in methods.md §4;
the few-shot protocol around it (leave-one-category-out training, K support
images per round, 10 rounds) is :mod:`tabad.fewshot`.

Model (paper §3.2, "Feature registration"):

* a *fine-tuned* copy of the backbone's torchvision ResNet, conv1 .. layer3
  (no layer4), with a spatial transformer (STN) after layer1, layer2 and
  layer3. Each STN is a localisation net, conv3×3(C→64)+BN+ReLU+maxpool,
  conv3×3(64→16)+BN+ReLU+maxpool, and a head FC(16·s²→1024), ReLU,
  FC(1024→n_params) whose last layer starts at zero weight and identity
  bias, so every STN is the identity at initialisation. The default
  ``stn_mode="rotation_scale"`` builds θ = [[sx·cos a, −sin a, 0],
  [sin a, sy·cos a, 0]]: the scales multiply only the cosine terms (a quirk of
  the official code, kept). The feature map is warped with ``affine_grid`` +
  ``grid_sample`` (reflection padding) and continues down the network;
* for scoring, each stage's output is mapped back to the input frame by the
  inverses of its own and all preceding θ (the official ``stn1/2/3_output``);
* Siamese heads on the layer3 STN output (paper §3.3, Eq. 1-2): encoder
  3× conv1×1 (BN+ReLU after the first two), predictor conv1×1+BN+ReLU,
  conv1×1; loss ½·D(p_q, sg(z_s)) + ½·D(p_s, sg(z_q)) with D the negative
  channel cosine averaged over positions and batch (SimSiam stop-gradient),
  the support feature being the mean of the K supports' features.

Training (paper §3.3, §4.1): each step is a batch of ``batch_size`` queries
of ONE category with ``shots`` random supports per query from the same
category (never the query itself); the pairing is redrawn every epoch. SGD
(lr 1e-4, momentum 0.9) over the network and both heads, cosine decay set at
the start of every epoch, ``lr·½(1 + cos(π·e/E))`` for epochs e = 1..E (so
the last epoch runs at lr 0, as in the official code). The state after the
last epoch is kept: no model selection on the test set.

Normal model (paper §3.4): the K support images are augmented 22× (original,
rotations ±π/16, ±π/8, ±3π/16, ±π/4, translations (±0.2, ±0.2) and
(±0.1, ±0.1) in normalised grid units, horizontal flip, grayscale, rot90
×{1, 2, 3}); their inverse-registered layer1-3 features are concatenated at
layer1 resolution (coarser maps replicated, as PaDiM's ``embedding_concat``),
all channels kept (448 for ResNet18), and a Gaussian is fitted per position:
mean and unbiased covariance (``torch.cov``) + ε·I, ε = 0.01. Score:
Mahalanobis distance, bilinear upsampling to the input size, Gaussian blur
σ = 4, image score = max. The Siamese cosine map is not part of the score
(the official code computes it at test time and discards it).

Deviations from the official code, none of which changes what is computed:

* the Gaussian is stored in an exact low-rank form. With N = 22·K samples and
  d = 448 channels, N < d, so Σ = XᵀX/(N−1) + εI (X the centred samples)
  is inverted by the Woodbury identity,
  δᵀΣ⁻¹δ = (|δ|² − |L⁻¹Xδ|²)/ε with LLᵀ = XXᵀ + ε(N−1)I, in float64:
  the same distances as ``torch.linalg.inv(torch.cov(..) + εI)`` with
  O(N·d) instead of O(d²) memory per position (2.5 GB for the dense
  precision matrices at 224 px) and a batched instead of a per-pixel loop;
* support sets are drawn by the caller with a seeded generator instead of
  the official ``support_set/<cls>/<K>_10.pt`` files (:mod:`tabad.fewshot`);
* the training pairing comes from a generator seeded by (seed, epoch) rather
  than Python's global ``random``, so a resumed run repeats it exactly; the
  22×K augmented supports are not shuffled (their order does not change a
  mean or a covariance); maps are not min-max normalised over the test set
  (monotone: no metric changes);
* inputs are in [0, 1] without ImageNet normalisation, as in the official
  code (``input_normalisation=False``). The torchvision and TAB weights were
  trained on normalised inputs; ``input_normalisation=True`` feeds them
  ImageNet-normalised images instead (supports are augmented in [0, 1] and
  normalised afterwards). Record which one a result used;
* the official code supports ResNet18 only; here the STN and head widths
  follow the backbone, so WideResNet50-2 runs too (an extension, with
  1024-channel heads and 1792-d Gaussians).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from tabad.backbones.base import FeatureExtractor, Normalisation
from tabad.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, Geometry
from tabad.errors import ConfigError, TabadError
from tabad.methods.base import FEW_SHOT, AnomalyModel, AnomalyOutput, FitContext
from tabad.methods.common import gaussian_blur, upsample
from tabad.methods.training import run_epochs

#: Identity parameters of each STN mode (the official initial bias of the last FC).
STN_IDENTITY: dict[str, tuple[float, ...]] = {
    "affine": (1, 0, 0, 0, 1, 0),
    "translation": (0, 0),
    "rotation": (0,),
    "scale": (1, 1),
    "shear": (0, 0),
    "rotation_scale": (0, 1, 1),
    "translation_scale": (0, 0, 1, 1),
    "rotation_translation": (0, 0, 0),
    "rotation_translation_scale": (0, 0, 0, 1, 1),
}

#: Test-time support augmentation (paper §3.4): rotation angles and translations (grid units).
ROTATIONS = tuple(s * k * math.pi / 16 for k in (4, 3, 2, 1) for s in (-1, 1))
TRANSLATIONS = ((0.2, 0.2), (-0.2, 0.2), (-0.2, -0.2), (0.2, -0.2),
                (0.1, 0.1), (-0.1, 0.1), (-0.1, -0.1), (0.1, -0.1))
#: Views per support image: original, 8 rotations, 8 translations, hflip, grayscale, 3 rot90.
N_AUGMENTED = 1 + len(ROTATIONS) + len(TRANSLATIONS) + 1 + 1 + 3


@dataclass(frozen=True)
class RegADConfig:
    """RegAD hyperparameters; defaults are the official code's."""

    #: the official input: Resize(224), no crop (methods.md §4).
    paper_geometry: ClassVar[Geometry] = Geometry(224, None)

    epochs: int = 50
    #: queries per training step (all of one category).
    batch_size: int = 32
    lr: float = 1e-4
    momentum: float = 0.9
    stn_mode: str = "rotation_scale"
    #: supports per query during training (the official code trains with the evaluated K).
    shots: int = 4
    #: the 22x test-time augmentation of the support images.
    augment: bool = True
    epsilon: float = 0.01
    sigma: float = 4.0
    #: False: [0, 1] inputs (official); True: ImageNet mean/std (what torchvision/TAB weights expect).
    input_normalisation: bool = False
    #: input size (H, W) or S; the STN heads' FC sizes depend on it (official: 224).
    image_size: int | tuple[int, int] = 224


# --------------------------------------------------------------------------- geometry


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Sample ``x`` (B, C, H, W) on the grid of the affine maps ``theta`` (B, 2, 3), reflection padding."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def invert_affine(theta: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) affine maps -> their inverses (B, 2, 3)."""
    last = theta.new_tensor([0.0, 0.0, 1.0]).expand(theta.shape[0], 1, 3)
    return torch.linalg.inv(torch.cat([theta, last], dim=1))[:, :2]


def stn_theta(params: torch.Tensor, mode: str) -> torch.Tensor:
    """The official code's θ (B, 2, 3) from the STN head's output (B, n_params)."""
    if mode == "affine":
        return params.view(-1, 2, 3)
    p = params
    one, zero = p.new_ones(len(p)), p.new_zeros(len(p))
    a00, a01, a02, a10, a11, a12 = one, zero, zero, zero, one, zero
    if mode.startswith("rotation"):
        cos, sin = torch.cos(p[:, 0]), torch.sin(p[:, 0])
        a00, a01, a10, a11 = cos, -sin, sin, cos
    if mode.startswith("translation"):
        a02, a12 = p[:, 0], p[:, 1]
    elif mode.startswith("rotation_translation"):
        a02, a12 = p[:, 1], p[:, 2]
    if mode.endswith("scale"):
        # The quirk: scales multiply only the diagonal (the cosine terms), not the sines.
        a00, a11 = a00 * p[:, -2], a11 * p[:, -1]
    if mode == "shear":
        a01, a10 = p[:, 0], p[:, 1]
    return torch.stack([a00, a01, a02, a10, a11, a12], dim=1).view(-1, 2, 3)


def _halve(n: int) -> int:
    # Output size of a 3x3 / stride-2 / padding-1 convolution or max-pool (and of ResNet's 7x7 stem conv).
    return (n + 1) // 2


def _size2(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class STN(nn.Module):
    """Spatial transformer on a (C, h, w) feature map; the identity at initialisation."""

    def __init__(self, channels: int, size: tuple[int, int], mode: str):
        super().__init__()
        self.mode = mode
        self.localisation = nn.Sequential(
            nn.Conv2d(channels, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
            nn.Conv2d(64, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        h, w = (_halve(_halve(s)) for s in size)
        self.head = nn.Sequential(nn.Linear(16 * h * w, 1024), nn.ReLU(), nn.Linear(1024, len(STN_IDENTITY[mode])))
        nn.init.zeros_(self.head[2].weight)
        with torch.no_grad():
            self.head[2].bias.copy_(torch.tensor(STN_IDENTITY[mode]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        theta = stn_theta(self.head(self.localisation(x).flatten(1)), self.mode)
        return warp(x, theta), theta


class RegistrationNet(nn.Module):
    """ResNet conv1 .. layer3 with an STN after every stage (the official ``stn_net``)."""

    def __init__(self, resnet: nn.Module, channels: list[int], input_size: tuple[int, int], mode: str):
        super().__init__()
        self.input_size = input_size
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.stages = nn.ModuleList([resnet.layer1, resnet.layer2, resnet.layer3])
        size = [_halve(_halve(s)) for s in input_size]  # after the stem: stride 4
        stns = []
        for i, c in enumerate(channels):
            if i:
                size = [_halve(s) for s in size]  # layer2 and layer3 have stride 2
            stns.append(STN(c, tuple(size), mode))
        self.stns = nn.ModuleList(stns)

    def forward(self, x: torch.Tensor, register: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Layer3 STN output, and with ``register`` every stage's output mapped back to the input frame."""
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"RegAD was built for {self.input_size[0]}x{self.input_size[1]} inputs "
                             f"(config image_size), got {x.shape[-2]}x{x.shape[-1]}")
        h = self.stem(x)
        registered: list[torch.Tensor] = []
        inverses: list[torch.Tensor] = []  # innermost stage first
        for stage, stn in zip(self.stages, self.stns):
            h, theta = stn(stage(h))
            if register:
                inverses.insert(0, invert_affine(theta.detach().float()))
                r = h.detach()
                for inv in inverses:
                    r = warp(r, inv)
                registered.append(r)
        return h, registered


def _conv_bn_relu(c: int) -> list[nn.Module]:
    return [nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]


def siamese_heads(channels: int) -> tuple[nn.Module, nn.Module]:
    """The encoder (3 conv1x1, BN+ReLU after the first two) and predictor (conv1x1+BN+ReLU, conv1x1)."""
    encoder = nn.Sequential(*_conv_bn_relu(channels), *_conv_bn_relu(channels),
                            nn.Conv2d(channels, channels, 1, bias=False))
    predictor = nn.Sequential(*_conv_bn_relu(channels), nn.Conv2d(channels, channels, 1, bias=False))
    return encoder, predictor


def simsiam_loss(p_query: torch.Tensor, z_support: torch.Tensor, p_support: torch.Tensor,
                 z_query: torch.Tensor) -> torch.Tensor:
    """½·D(p_q, sg(z_s)) + ½·D(p_s, sg(z_q)); D = −cosine over channels, mean over positions and batch."""

    def d(p, z):
        return -F.cosine_similarity(p, z.detach(), dim=1).mean()

    return d(p_query, z_support) / 2 + d(p_support, z_query) / 2


# --------------------------------------------------------------------------- support augmentation


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1]; float images are taken to be in [0, 1] already."""
    return images.float().div(255.0) if images.dtype == torch.uint8 else images.float()


def _standardise(x: torch.Tensor, normalise: bool) -> torch.Tensor:
    """[0, 1] images -> the model's input convention."""
    if not normalise:
        return x
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def augment_support(x: torch.Tensor) -> torch.Tensor:
    """(K, 3, H, W) images in [0, 1] -> (22·K, 3, H, W), view-major (all originals first).

    Views: original; rotations by ±π/4, ±3π/16, ±π/8, ±π/16 and translations by
    (±0.2, ±0.2), (±0.1, ±0.1) grid units (``affine_grid`` + reflection
    padding); horizontal flip; grayscale (0.299 R + 0.587 G + 0.114 B, kornia's
    weights) on three channels; rotations by 90°, 180°, 270°.
    """
    k, _, h, w = x.shape
    if h != w:
        raise ConfigError(f"RegAD's support augmentation (rot90) needs square images, got {h}x{w}")
    thetas = [x.new_tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]) for a in ROTATIONS]
    thetas += [x.new_tensor([[1.0, 0.0, a], [0.0, 1.0, b]]) for a, b in TRANSLATIONS]
    grey = (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True).expand(-1, 3, -1, -1)
    views = [x] + [warp(x, t.expand(k, 2, 3)) for t in thetas] + [x.flip(-1), grey]
    views += [torch.rot90(x, r, dims=(-2, -1)) for r in (1, 2, 3)]
    return torch.cat(views)


# --------------------------------------------------------------------------- training episodes


@dataclass
class Episodes:
    """RegAD's training data: per step, queries of one category with K supports each.

    :meth:`epoch` shuffles every category, cuts it into batches of
    ``batch_size`` queries, draws ``shots`` supports per query uniformly among
    the *other* images of its category (with replacement across the K draws,
    as the official code) and visits the batches of all categories in random
    order. Everything depends only on ``(seed, epoch)``.
    """

    images: Mapping[str, torch.Tensor]  # category -> uint8 (N, 3, H, W)
    batch_size: int
    shots: int
    seed: int = 668
    device: object = "cpu"
    normalise: bool = False

    def __post_init__(self):
        small = [c for c, x in self.images.items() if len(x) < 2]
        if not self.images or small:
            raise TabadError(f"RegAD training needs categories with at least 2 images (a query and another "
                             f"image as support); too small: {small or 'no categories at all'}")

    @property
    def n_images(self) -> int:
        return sum(len(x) for x in self.images.values())

    def __len__(self) -> int:
        return sum(-(-len(x) // self.batch_size) for x in self.images.values())

    def pairing(self, epoch: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """The epoch's steps: (category, query indices (B,), support indices (B, K))."""
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(epoch))
        steps = []
        for name in sorted(self.images):
            n = len(self.images[name])
            for q in torch.randperm(n, generator=g).split(self.batch_size):
                r = torch.randint(0, n - 1, (len(q), self.shots), generator=g)
                steps.append((name, q, r + (r >= q[:, None]).long()))  # skips the query itself
        return [steps[i] for i in torch.randperm(len(steps), generator=g).tolist()]

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Model-ready (queries (B, 3, H, W), supports (B, K, 3, H, W)) for every step of the epoch."""
        for name, q, s in self.pairing(epoch):
            x = self.images[name]
            query = _standardise(_to_unit(x[q].to(self.device)), self.normalise)
            support = _standardise(_to_unit(x[s.flatten()].to(self.device)), self.normalise)
            yield query, support.view(*s.shape, *support.shape[1:])


# --------------------------------------------------------------------------- the Gaussian


def lowrank_gaussian(samples: torch.Tensor, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position Gaussian of (N, d, h, w) samples in Woodbury form: mean (P, d) and basis W (P, N, d).

    Σ = XᵀX/(N−1) + εI with X the centred samples (``torch.cov`` + εI); then
    δᵀΣ⁻¹δ = (|δ|² − |Wδ|²)/ε with W = L⁻¹X and LLᵀ = XXᵀ + ε(N−1)I.
    """
    n = samples.shape[0]
    if n < 2:
        raise TabadError(f"RegAD's Gaussian needs at least 2 support samples, got {n}")
    v = samples.flatten(2).permute(2, 0, 1).double()  # (P, N, d)
    mean = v.mean(dim=1)
    x = v - mean.unsqueeze(1)
    gram = torch.bmm(x, x.transpose(1, 2))
    gram.diagonal(dim1=-2, dim2=-1).add_(epsilon * (n - 1))
    basis = torch.linalg.solve_triangular(torch.linalg.cholesky(gram), x, upper=False)
    return mean.contiguous(), basis.contiguous()  # row-major, as a loaded model file has them


def lowrank_mahalanobis(e: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Mahalanobis distance (B, h, w) of features ``e`` (B, d, h, w) to :func:`lowrank_gaussian`'s model."""
    b, _, h, w = e.shape
    delta = e.flatten(2).permute(2, 0, 1).double() - mean.unsqueeze(1)  # (P, B, d)
    proj = torch.bmm(delta, basis.transpose(1, 2))  # (P, B, N)
    dist2 = (delta.square().sum(-1) - proj.square().sum(-1)).div_(epsilon).clamp_min_(0)
    return dist2.sqrt().T.reshape(b, h, w).float()


# --------------------------------------------------------------------------- the method


@dataclass
class FewShotData:
    """What RegAD's ``fit`` learns from: the K support images of the target, and (to train the
    registration network first) the normal images of the *other* categories."""

    #: uint8 (K, 3, H, W), or float in [0, 1].
    support: torch.Tensor
    #: category -> uint8 images (N, 3, H, W) or a LoadedSplit; None when the network is already trained.
    train_sets: Mapping[str, object] | None = None


class RegAD(AnomalyModel):
    """RegAD on a copy of ``backbone``'s network: ``fit_registration``, ``fit_support``, ``model(x)``.

    ``fit(FewShotData(support, train_sets))`` does both steps; the few-shot
    protocol calls them apart, to score many support draws with one trained network.
    """

    name = "regad"
    kind = FEW_SHOT
    trains = True
    config_class = RegADConfig
    fitted_attributes = ("grid",)

    def __init__(self, backbone: FeatureExtractor, config: RegADConfig = RegADConfig()):
        if backbone.family.name != "resnet":
            # The STNs sit between ResNet's stages (paper §3.2); other families have no such layout yet.
            raise TabadError(f"regad needs a ResNet backbone, not {backbone.arch!r}")
        super().__init__(None, config)
        self._backbone_description = backbone.describe()
        self._backbone_normalisation = backbone.normalisation
        if config.stn_mode not in STN_IDENTITY:
            raise ConfigError(f"stn_mode {config.stn_mode!r} is not one of {', '.join(STN_IDENTITY)}")
        if config.shots < 1 or config.batch_size < 1 or config.epochs < 0:
            raise ConfigError("RegAD needs shots >= 1, batch_size >= 1 and epochs >= 0")
        self.input_normalisation = bool(config.input_normalisation)
        resnet = copy.deepcopy(backbone.model).to(memory_format=torch.contiguous_format)
        channels = backbone.channels(("layer1", "layer2", "layer3"))
        self.net = RegistrationNet(resnet, channels, _size2(config.image_size), config.stn_mode)
        self.net.requires_grad_(True)
        self.encoder, self.predictor = siamese_heads(channels[-1])
        self.register_buffer("mean", torch.empty(0, dtype=torch.float64))
        self.register_buffer("basis", torch.empty(0, dtype=torch.float64))
        self.grid: tuple[int, int] | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._epochs = config.epochs
        self.eval()

    @property
    def normalisation(self) -> Normalisation | None:
        # The official RegAD feeds [0, 1] images (methods.md §4); input_normalisation=True standardises.
        return self._backbone_normalisation if self.input_normalisation else None

    def backbone_description(self) -> dict:
        return self._backbone_description

    def fit(self, data: FewShotData, context: FitContext | None = None) -> "RegAD":
        """Train the registration network on ``data.train_sets`` (if given), then fit the support Gaussian."""
        ctx = context or FitContext(seed=668)
        if data.train_sets is not None:
            self.fit_registration(data.train_sets, checkpoint=ctx.checkpoint, key=ctx.key, progress=ctx.progress,
                                  seed=ctx.seed)
        return self.fit_support(data.support)

    # ----------------------------------------------------------------- training

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        # Built on first use, after the module has been moved to its device.
        if self._optimizer is None:
            params = [*self.net.parameters(), *self.encoder.parameters(), *self.predictor.parameters()]
            self._optimizer = torch.optim.SGD(params, lr=self.config.lr, momentum=self.config.momentum)
        return self._optimizer

    def training_state(self) -> dict[str, object]:
        return {"net": self.net, "encoder": self.encoder, "predictor": self.predictor, "optimizer": self.optimizer}

    def learning_rate(self, epoch: int) -> float:
        """The official per-epoch cosine decay, for 0-based ``epoch`` of ``self._epochs``."""
        return self.config.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch + 1) / max(self._epochs, 1)))

    def train_epoch(self, episodes: Episodes, epoch: int) -> dict[str, float]:
        lr = self.learning_rate(epoch)
        opt = self.optimizer
        for group in opt.param_groups:
            group["lr"] = lr
        self.train()
        total, count = 0.0, 0
        try:
            for query, support in episodes.epoch(epoch):
                b, k = support.shape[:2]
                f_query, _ = self.net(query)
                f_support, _ = self.net(support.flatten(0, 1))
                f_support = f_support.view(b, k, *f_support.shape[1:]).mean(dim=1)
                z_query, z_support = self.encoder(f_query), self.encoder(f_support)
                loss = simsiam_loss(self.predictor(z_query), z_support, self.predictor(z_support), z_query)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * b
                count += b
        finally:
            self.eval()
        return {"loss": total / max(count, 1), "lr": lr}

    def fit_registration(self, train_sets: Mapping[str, object], *, epochs: int | None = None,
                         checkpoint: Path | None = None, key: str = "", progress: bool = False,
                         seed: int = 668) -> "RegAD":
        """Train the registration network and heads on normal images of several categories.

        ``train_sets`` maps a category to its uint8 images (N, 3, H, W) or a
        :class:`~tabad.datasets.loader.LoadedSplit`. With ``checkpoint`` the
        state is saved after every epoch under a key made of ``key``, the
        config, ``epochs`` and ``seed``, and an interrupted run resumes.
        """
        self._epochs = self.config.epochs if epochs is None else int(epochs)
        device = next(self.parameters()).device
        images = {c: getattr(v, "images", v) for c, v in train_sets.items()}
        episodes = Episodes(images, self.config.batch_size, self.config.shots, seed, device, self.input_normalisation)
        full_key = json.dumps({"key": key, "config": asdict(self.config), "epochs": self._epochs, "seed": seed,
                               "categories": {c: len(x) for c, x in sorted(images.items())}},
                              sort_keys=True, default=str)
        self.train_log = run_epochs(self, episodes, self._epochs, checkpoint=checkpoint, key=full_key,
                                    progress=progress, desc="regad train")
        return self

    # ----------------------------------------------------------------- normal model and scoring

    @property
    def is_fitted(self) -> bool:
        return self.mean.numel() > 0

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) model inputs -> (B, C, h, w) inverse-registered layer1-3 features on the layer1 grid."""
        self.eval()
        _, (f1, f2, f3) = self.net(x, register=True)
        size = f1.shape[-2:]
        # Nearest upsampling = the official embedding_concat (each coarse cell replicated).
        return torch.cat([f1] + [F.interpolate(f, size=size, mode="nearest") for f in (f2, f3)], dim=1)

    @torch.no_grad()
    def fit_support(self, support_images: torch.Tensor) -> "RegAD":
        """Fit the per-position Gaussian on K support images (uint8, or float in [0, 1]) of the target.

        The trained network is not changed (eval mode, no gradients).
        """
        device = self.mean.device
        x = _to_unit(support_images.to(device))
        if self.config.augment:
            x = augment_support(x)
        feats = torch.cat([self.embed(_standardise(chunk, self.input_normalisation))
                           for chunk in x.split(self.config.batch_size)])
        self.grid = tuple(feats.shape[-2:])
        self.mean, self.basis = lowrank_gaussian(feats, self.config.epsilon)
        return self

    @torch.no_grad()
    def distance_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance on the layer1 grid, (B, h, w)."""
        if not self.is_fitted:
            raise RuntimeError("call fit_support() before predict()")
        return lowrank_mahalanobis(self.embed(x), self.mean, self.basis, self.config.epsilon)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> AnomalyOutput:
        """Image scores (B,) and smoothed anomaly maps (B, H, W) of model inputs ``x``."""
        maps = upsample(self.distance_grid(x), tuple(x.shape[-2:]), align_corners=False)
        maps = gaussian_blur(maps, self.config.sigma)
        return AnomalyOutput(maps.flatten(1).amax(dim=1), maps)
