"""SimpleNet: a feature adaptor and a discriminator of Gaussian-noised features.

Liu et al., "SimpleNet: A Simple Network for Image Anomaly Detection and
Localization", CVPR 2023, as specified in methods.md §3 (official code:
DonaldRR/SimpleNet, ``simplenet.py`` with the settings of ``run.sh``):

* **Feature extractor (paper §3.1)**: frozen ``layer2`` + ``layer3`` maps,
  unfolded into 3×3 neighbourhoods, layer3 resized bilinearly onto the layer2
  grid, every layer's flattened C·9 vector pooled to ``embed_dim`` with
  ``adaptive_avg_pool1d`` and the stacked layer vectors pooled again to
  ``embed_dim`` — PatchCore's "official" aggregation (methods.md §5), so it is
  :func:`tabad.methods.patchcore.aggregate_patches` itself.
* **Feature adaptor G (§3.2)**: one ``Linear(D, D)`` with bias, Xavier-normal
  weight, no activation (the official ``pre_proj 1``); AdamW, lr 1e-4
  (0.1 × 1e-3), default weight decay 0.01.
* **Anomalous feature generator (§3.3)**: q̃ = G(f) + ε, ε ~ N(0, σ²I) i.i.d. per
  element, σ = ``noise_std`` = 0.015 (``mix_noise 1``: a single σ). Gradients
  reach G through both branches.
* **Discriminator D (§3.4)**: ``dsc_layers − 1`` blocks Linear(·, 1024) +
  BatchNorm1d + LeakyReLU(0.2), then Linear(1024, 1, bias=False), Xavier-normal
  weights; Adam, lr 2e-4, weight decay 1e-5, no schedule (``cos_lr`` is off in
  the official run). BatchNorm sees every true and fake patch of the batch.
* **Loss (§3.5)**: truncated L1, ``mean(max(0, th − D(q))) +
  mean(max(0, th + D(q̃)))`` with th = ``dsc_margin`` = 0.5. ``p_true`` / ``p_fake``
  are the fractions of true patches scored ≥ th and of fakes scored < −th, each
  epoch reporting the unweighted mean over its batches, as the official log.
* **Inference (§3.6)**: patch score s = −D(G(f)); image score = max of the raw
  patch scores (before upsampling and smoothing); map = the patch scores on the
  feature grid, bilinear upsampling to the input size (align_corners=False),
  Gaussian blur σ = 4 (scipy-equivalent).

The official run trains 40 meta-epochs × 4 discriminator epochs = 160 epochs of
batch 8 (``epochs`` counts the discriminator epochs, so ``tabad benchmark
--epochs N`` sets it). ``embed_dim`` (the official pretrain = target embed
dimension) is 1536 for WideResNet50-2 as in ``run.sh``. The official code has
no ResNet18 recipe; there layer2 gives only 128·9 = 1152 values per position,
and pooling 1152 values *up* to 1536 merely duplicates entries (methods.md §3
R18 note), so the default is 1024 (the PatchCore reduction), and in general
``min(1536 or 1024, smallest C·p²)`` of the tapped layers.

Deviations from the official code (none changes the method):

* **No model selection on the test set.** The official loop scores the test set
  after every meta-epoch and keeps the best state (its published numbers are
  best-epoch numbers, issue DonaldRR/SimpleNet#7); here the state after the
  *last* epoch is used, and no test data is seen during training.
* **Cached features.** The backbone is frozen and the official run has no
  augmentation, so the pre-adaptor features of every training image are
  computed once per fit and kept on the model's device (N·h·w·D float32 values:
  about 8 MB per 288 px image with WRN50, 3 MB per 224 px image with ResNet18);
  the official code recomputes them every step — identical math, far fewer
  backbone passes.
* **Seeded randomness.** The parameters are (re)initialised at ``fit`` from
  ``seed``, each epoch's image order and noise come from generators derived
  from ``(seed, epoch)``; the global RNG is never used, so a fit is
  deterministic and a resumed run (:func:`tabad.methods.training.run_epochs`)
  equals an uninterrupted one. The official code draws noise on the CPU from
  the global generator.
* **bfloat16 backbone** on CUDA only when ``amp=True`` (off by default: the
  features are computed once per fit, so AMP saves little, and bfloat16
  rounding (~0.2 % relative) is not negligible next to the σ = 0.015 noise
  the discriminator must separate). The default gives the official float32
  features.
* Per-layer pooling happens before the bilinear resize of layer3 (both linear,
  on different axes, so they commute; see :mod:`tabad.methods.patchcore`).
* Maps and scores are not min-max normalised over the test set (monotone).

σ = 0.015 is relative to the scale of WRN50 features; another backbone
(ResNet18, a TAB checkpoint) changes the effective noise level
(methods.md §3 pitfalls), so ``fit`` logs the standard deviation of the cached
training features (``feature_std``) and of the adapted ones (``adapted_std``)
in every epoch's log entry.

Scoring uses D's BatchNorm running statistics (eval mode, as the official
code). With momentum 0.1 they need a few tens of steps to settle, so a very
short run (``--epochs 4`` on 28 images = 16 steps of batch 8) scores
unreliably; the official run takes 160 × ⌈N/8⌉ steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar, Iterable

import numpy as np
import torch
from torch import nn

from tabad.backbones import LAYERS
from tabad.backbones.base import FeatureExtractor
from tabad.datasets.transforms import Geometry
from tabad.errors import ConfigError, TabadError
from tabad.methods.base import AnomalyModel, AnomalyOutput, FitContext
from tabad.methods.common import gaussian_blur, upsample
from tabad.methods.patchcore import aggregate_patches
from tabad.methods.training import autocast, run_epochs

#: Default embed dimension per architecture (the official 1536 for WRN50; see the module docstring).
DEFAULT_EMBED_DIM = {"wide_resnet50_2": 1536, "resnet18": 1024}

# Independent random streams derived from the fit seed.
_INIT, _ORDER, _NOISE = 0, 1, 2


@dataclass(frozen=True)
class SimpleNetConfig:
    """SimpleNet hyperparameters; defaults are the official ``run.sh`` (methods.md §3)."""

    #: the official input: resize 329, centre crop 288.
    paper_geometry: ClassVar[Geometry] = Geometry(329, 288)

    layers: tuple[str, ...] = ("layer2", "layer3")
    #: neighbourhood size of the locally aware features.
    patch_size: int = 3
    #: pretrain = target embed dimension; None: 1536 (WRN50) / 1024 (ResNet18), see the module docstring.
    embed_dim: int | None = None
    #: discriminator epochs in all (official: meta_epochs 40 × gan_epochs 4).
    epochs: int = 160
    batch_size: int = 8
    #: σ of the Gaussian noise added to the adapted features.
    noise_std: float = 0.015
    #: Linear layers of the discriminator (dsc_layers − 1 hidden blocks + the output layer).
    dsc_layers: int = 2
    dsc_hidden: int = 1024
    #: th of the truncated L1 loss.
    dsc_margin: float = 0.5
    #: AdamW of the adaptor (lr = 0.1 × 1e-3; PyTorch's default weight decay).
    adaptor_lr: float = 1e-4
    adaptor_weight_decay: float = 0.01
    #: Adam of the discriminator.
    dsc_lr: float = 2e-4
    dsc_weight_decay: float = 1e-5
    #: Gaussian smoothing of the upsampled map.
    sigma: float = 4.0
    #: bfloat16 autocast of the frozen backbone on CUDA (off: see the module docstring).
    amp: bool = False

    def __post_init__(self):
        problems = []
        if not self.layers or any(layer not in LAYERS for layer in self.layers):
            problems.append(f"layers={self.layers!r} must be a non-empty subset of {LAYERS}")
        positive_ints = ("patch_size", "epochs", "batch_size", "dsc_layers", "dsc_hidden")
        dims = positive_ints + (("embed_dim",) if self.embed_dim is not None else ())
        for name in dims:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.append(f"{name}={v!r} must be a positive integer")
        if isinstance(self.patch_size, int) and self.patch_size % 2 == 0:
            problems.append(f"patch_size={self.patch_size!r} must be odd")
        for name in ("noise_std", "dsc_margin", "adaptor_lr", "adaptor_weight_decay", "dsc_lr",
                     "dsc_weight_decay", "sigma"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                problems.append(f"{name}={v!r} must be a finite number >= 0")
        if problems:
            raise ConfigError("simplenet: " + "; ".join(problems))


def default_embed_dim(arch: str, channels: Iterable[int], patch_size: int = 3) -> int:
    """1536 (WRN50, official) or 1024 (ResNet18), capped at the smallest per-layer C·p²."""
    return min(DEFAULT_EMBED_DIM.get(arch, 1536), min(c * patch_size**2 for c in channels))


def stream_seed(seed: int, stream: int, epoch: int = 0) -> int:
    """A well-mixed 63-bit seed for one random stream of one epoch of a fit."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stream, epoch]).generate_state(2, np.uint64)[0] >> 1)


def truncated_l1(true_scores: torch.Tensor, fake_scores: torch.Tensor, th: float = 0.5) -> torch.Tensor:
    """Paper §3.5 (th⁺ = th⁻ = th): ``mean(max(0, th − D(q))) + mean(max(0, th + D(q̃)))``."""
    return (th - true_scores).clamp(min=0).mean() + (fake_scores + th).clamp(min=0).mean()


class Discriminator(nn.Sequential):
    """``layers − 1`` blocks Linear + BatchNorm1d + LeakyReLU(0.2), then Linear(·, 1, bias=False)."""

    def __init__(self, dim: int, layers: int = 2, hidden: int = 1024):
        blocks: list[nn.Module] = []
        width = dim
        for _ in range(layers - 1):
            blocks += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2)]
            width = hidden
        super().__init__(*blocks, nn.Linear(width, 1, bias=False))


class SimpleNet(AnomalyModel):
    """SimpleNet on a frozen backbone: ``fit`` then ``model(x)`` (:mod:`tabad.methods.base`)."""

    name = "simplenet"
    config_class = SimpleNetConfig
    trains = True
    fitted_attributes = ("grid", "is_fitted", "feature_std")

    def __init__(self, backbone: FeatureExtractor, config: SimpleNetConfig = SimpleNetConfig()):
        if config.embed_dim is None:  # resolved, so results record the dimension actually used
            channels = backbone.channels(config.layers)
            config = replace(config, embed_dim=default_embed_dim(backbone.arch, channels, config.patch_size))
        super().__init__(backbone, config)
        self.embed_dim: int = config.embed_dim
        with torch.random.fork_rng(devices=[]):  # the default init is overwritten by reset_parameters
            self.adaptor = nn.Linear(self.embed_dim, self.embed_dim)
            self.discriminator = Discriminator(self.embed_dim, config.dsc_layers, config.dsc_hidden)
        self.reset_parameters(0)
        self.is_fitted = False
        self.grid: tuple[int, int] | None = None
        self.feature_std: float | None = None
        self._seed = 0
        self._cache: torch.Tensor | None = None  # (N, h·w, D) pre-adaptor training features

    @property
    def device(self) -> torch.device:
        return self.adaptor.weight.device

    # ------------------------------------------------------------------ parameters and optimisers

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """Xavier-normal weights (PyTorch's default bias init) drawn from ``seed``; fresh optimisers."""
        g = torch.Generator().manual_seed(stream_seed(seed, _INIT))
        for m in [self.adaptor, *self.discriminator]:
            if isinstance(m, nn.Linear):
                w = torch.empty(m.weight.shape)
                m.weight.copy_(nn.init.xavier_normal_(w, generator=g))
                if m.bias is not None:
                    bound = 1.0 / math.sqrt(m.in_features)
                    m.bias.copy_(nn.init.uniform_(torch.empty(m.bias.shape), -bound, bound, generator=g))
            elif isinstance(m, nn.BatchNorm1d):
                m.reset_parameters()
        cfg = self.config
        self.adaptor_opt = torch.optim.AdamW(self.adaptor.parameters(), lr=cfg.adaptor_lr,
                                             weight_decay=cfg.adaptor_weight_decay)
        self.discriminator_opt = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.dsc_lr,
                                                  weight_decay=cfg.dsc_weight_decay)

    def training_state(self) -> dict[str, object]:
        return {"adaptor": self.adaptor, "discriminator": self.discriminator,
                "adaptor_opt": self.adaptor_opt, "discriminator_opt": self.discriminator_opt}

    # ------------------------------------------------------------------ features

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D, h, w) pre-adaptor patch features on the first layer's grid (float32)."""
        cfg = self.config
        with autocast(x.device, cfg.amp):
            feats = self.backbone(x, cfg.layers)
        return aggregate_patches(feats, cfg.layers, cfg.patch_size, "official", self.embed_dim)

    @torch.no_grad()
    def extract(self, batches: Iterable[torch.Tensor]) -> torch.Tensor:
        """Pre-adaptor features of every training image, in order: (N, h·w, D) on the model's device."""
        chunks = []
        for x in batches:
            e = self.embed(x)
            self.grid = tuple(e.shape[-2:])
            chunks.append(e.flatten(2).transpose(1, 2).to(self.device))
        if not chunks:
            raise TabadError("SimpleNet needs at least 1 training image, got 0")
        return torch.cat(chunks)

    # ------------------------------------------------------------------ training

    def train_epoch(self, batches, epoch: int) -> dict[str, float]:
        """One pass over the (cached) training features in a ``(seed, epoch)``-shuffled order."""
        if self._cache is None:
            self._build_cache(batches)
        cache, cfg = self._cache, self.config
        n = cache.shape[0]
        order = torch.randperm(n, generator=torch.Generator().manual_seed(stream_seed(self._seed, _ORDER, epoch)))
        noise_gen = torch.Generator(device=self.device).manual_seed(stream_seed(self._seed, _NOISE, epoch))
        self.adaptor.train()
        self.discriminator.train()
        totals = torch.zeros(4, dtype=torch.float64)
        steps = 0
        for lo in range(0, n, cfg.batch_size):
            idx = order[lo : lo + cfg.batch_size].to(cache.device)
            f = cache.index_select(0, idx).reshape(-1, cache.shape[-1])
            self.adaptor_opt.zero_grad(set_to_none=True)
            self.discriminator_opt.zero_grad(set_to_none=True)
            true_feats = self.adaptor(f)
            noise = torch.randn(true_feats.shape, generator=noise_gen, device=self.device) * cfg.noise_std
            scores = self.discriminator(torch.cat([true_feats, true_feats + noise]))
            true_scores, fake_scores = scores[: len(f)], scores[len(f) :]
            loss = truncated_l1(true_scores, fake_scores, cfg.dsc_margin)
            loss.backward()
            self.adaptor_opt.step()
            self.discriminator_opt.step()
            with torch.no_grad():
                totals += torch.stack([loss.detach(), (true_scores >= cfg.dsc_margin).float().mean(),
                                       (fake_scores < -cfg.dsc_margin).float().mean(),
                                       true_feats.detach().std()]).double().cpu()
            steps += 1
        loss, p_true, p_fake, adapted_std = (totals / max(steps, 1)).tolist()
        return {"loss": loss, "p_true": p_true, "p_fake": p_fake, "feature_std": self.feature_std,
                "adapted_std": adapted_std}

    def _build_cache(self, batches) -> None:
        self._cache = self.extract(batches)
        self.feature_std = float(self._cache.std())

    def fit(self, data, context: FitContext | None = None) -> "SimpleNet":
        """Train G and D for ``config.epochs`` epochs (resumable, see :func:`run_epochs`); keep the last state."""
        ctx = context or FitContext()
        self._seed = int(ctx.seed)
        self.reset_parameters(self._seed)
        self._build_cache(data)
        try:
            self.train_log = run_epochs(self, data, self.config.epochs, checkpoint=ctx.checkpoint, key=ctx.key,
                                        progress=ctx.progress, desc="simplenet")
        finally:
            self._cache = None  # frees N·h·w·D floats
        self.eval()
        self.is_fitted = True
        return self

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def patch_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Raw patch scores −D(G(f)) on the feature grid, (B, h, w)."""
        if not self.is_fitted:
            raise RuntimeError("call fit() before predict()")
        self.eval()  # BatchNorm with its running statistics, as the official _predict
        e = self.embed(x)
        b, d, h, w = e.shape
        rows = e.permute(0, 2, 3, 1).reshape(-1, d).to(self.device)
        return -self.discriminator(self.adaptor(rows)).reshape(b, h, w)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> AnomalyOutput:
        """Image scores (B,) = max raw patch score, and smoothed anomaly maps (B, H, W) at the input size."""
        grid = self.patch_scores(x)
        scores = grid.flatten(1).amax(dim=1)
        maps = gaussian_blur(upsample(grid, tuple(x.shape[-2:]), align_corners=False), self.config.sigma)
        return AnomalyOutput(scores, maps)
