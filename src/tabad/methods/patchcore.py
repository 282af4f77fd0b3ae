"""PatchCore: a memory bank of nominal patch features, nearest-neighbour distance as the score.

Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022,
as specified in methods.md §5 (official code: amazon-science/patchcore-inspection;
cross-checked against anomalib):

* **Locally aware patch features (paper §3.1)** of ``layer2`` and ``layer3``,
  aggregated over a 3×3 neighbourhood and brought onto the ``layer2`` grid.
  Two aggregations (``PatchCoreConfig.aggregation``):

  - ``"avgpool"`` (default; anomalib's variant): ``AvgPool2d(3, 1, 1)`` per
    layer, bilinear upsampling of layer3 to the layer2 grid, concatenation —
    384-d for ResNet18, 1536-d for WideResNet50-2, with no reduction.
  - ``"official"``: the official code's 3×3 unfold per layer, bilinear resize
    of the layer3 patches onto the layer2 grid, per-layer
    ``adaptive_avg_pool1d`` of the flattened C·9 vector to ``embed_dim`` (1024)
    and a final pool of the stacked layer vectors to ``embed_dim``.

  The default is ``"avgpool"`` because the official reduction was tuned for
  WideResNet50: with ResNet18 it maps 1152 / 2304 values to 1024, which barely
  pools and duplicates entries (methods.md §5), so it costs 2.7× the memory and
  search time of the 384-d features for no gain in locality.
* **Coreset-reduced memory bank (paper §3.2, Alg. 1)**: the approximate greedy
  k-center selection of the official code — a seeded random projection
  ``Linear(D → 128, bias=False)`` (PyTorch's default init), 10 random start
  points whose *mean* distance initialises every point's min-distance, then
  ``int(N·p)`` times: take the argmax, update the min-distances with the
  distance to the new centre. The chosen indices select full-dimensional rows.
  ``sampler="anomalib"`` is anomalib 2.7.0's variant of the same loop, kept as
  a named option for side-by-side runs: a very sparse random projection
  (Li et al. 2006; density 1/√D, ±√(√D/k) entries) to the Johnson-Lindenstrauss
  dimension k = ⌊4 ln N / (ε²/2 − ε³/3)⌋ with ε = ``jl_eps`` = 0.9 (≈ 270–300
  for PatchCore banks), and a single random start that is itself the first
  memory-bank row (then ``int(N·p) − 1`` greedy picks). Drawn from tabad's
  seeded generator, so it reproduces anomalib's algorithm, not its random
  numbers.
* **Anomaly detection (paper §3.3)**: per test patch the distance to its
  nearest bank entry; image score = maximum patch score, optionally reweighted
  by paper Eq. 7 as anomalib does (``s = (1 − softmax_j ‖m_test* − n_j‖ [m*]) ·
  s*``, N_b(m*) = the b = 9 nearest bank entries to m*, m* included). The
  official code does not reweight (``reweight=False``, issues #27/#54). The map
  is the patch scores bilinearly upsampled to the input (align_corners=False)
  and blurred with a scipy-equivalent Gaussian, σ = 4.

Implementation notes (no effect on the numbers beyond float rounding):

* Training features are gathered as float32 on the CPU; the coreset runs on
  the model's device (where ``.to(device)`` put it). No N×N matrix is ever
  formed: the projection runs in chunks and each greedy step is one
  (N × 128) matrix-vector product with the new centre. The projected points
  are stored 128 × N (feature-major), which makes that product about 3× faster
  on a CPU than the row-major layout.
* Nearest-neighbour search uses ``faiss.IndexFlatL2`` when faiss is installed
  and the bank is on the CPU, otherwise chunked ``‖a‖² − 2a·b + ‖b‖²`` blocks
  of at most ``chunk_size × chunk_size`` distances. While the model is being
  exported (``torch.export`` / ONNX, :func:`exporting`) the search is
  :func:`nearest_neighbors_graph`: the same blocks, all queries at once and
  the bank's blocks unrolled, so the graph has no data-dependent loop and any
  batch size (bit-identical to the chunked search in PyTorch when the
  queries fit one chunk; ONNX runtimes round the matrix products their own way).
* Eq. 7's neighbourhood (m* first, then the b − 1 nearest others) is built
  with a top-k over positions (:func:`star_first`), not a per-image Python
  loop, so it too exports; it selects the same indices.
* In ``"official"`` mode the per-layer pooling over the C·9 vector is applied
  *before* the bilinear resize of layer3; both are linear and act on different
  axes (features vs. positions), so they commute, and layer3 is resized at 1024
  instead of C·9 channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from tabad.backbones import LAYERS
from tabad.backbones.base import FeatureExtractor
from tabad.datasets.transforms import Geometry
from tabad.errors import ConfigError, TabadError
from tabad.methods.base import AnomalyModel, AnomalyOutput, FitContext
from tabad.methods.common import gaussian_blur, upsample

AGGREGATIONS = ("avgpool", "official")
CORESETS = ("greedy", "random", "none")
SAMPLERS = ("official", "anomalib")
DISTANCES = ("euclidean", "squared")


@dataclass(frozen=True)
class PatchCoreConfig:
    """PatchCore hyperparameters; defaults are the official IM224 run (methods.md §5)
    adapted to the backbone (see the module docstring for ``aggregation``)."""

    #: the official IM224 input: resize 256, centre crop 224.
    paper_geometry: ClassVar[Geometry] = Geometry(256, 224)

    layers: tuple[str, ...] = ("layer2", "layer3")
    #: neighbourhood size p of the locally aware features (paper §3.1).
    patch_size: int = 3
    #: "avgpool" (anomalib, default) or "official" (unfold + adaptive pooling).
    aggregation: str = "avgpool"
    #: target dimension of the "official" aggregation (pretrain = target = 1024).
    embed_dim: int = 1024
    #: fraction of training patches kept in the memory bank, in (0, 1].
    coreset_ratio: float = 0.1
    #: "greedy" (approximate greedy k-center, paper Alg. 1), "random" or "none".
    coreset: str = "greedy"
    #: greedy coreset variant: "official" (dense 128-d projection, mean distance to
    #: ``num_starts`` random points) or "anomalib" (sparse JL projection, one random start).
    sampler: str = "official"
    #: dimension of the random projection used by the "official" greedy coreset.
    projection_dim: int = 128
    #: random start points of the "official" approximate greedy coreset.
    num_starts: int = 10
    #: ε of the Johnson-Lindenstrauss dimension of the "anomalib" sampler's projection.
    jl_eps: float = 0.9
    #: b of paper Eq. 7 (|N_b(m*)|, m* included); 1 disables the reweighting.
    num_neighbors: int = 9
    #: paper Eq. 7 reweighting of the image score (anomalib); False = official code.
    reweight: bool = True
    #: patch score: "euclidean" (anomalib) or "squared" (official, faiss IndexFlatL2).
    distance: str = "euclidean"
    #: Gaussian smoothing of the upsampled map.
    sigma: float = 4.0
    #: seed of the projection, start points and random coreset.
    seed: int = 0
    batch_size: int = 32
    #: rows per block of the chunked distance computations (blocks ≤ chunk_size²).
    chunk_size: int = 4096

    def __post_init__(self):
        def bad(msg: str) -> None:
            raise ConfigError(f"patchcore: {msg}")

        if not self.layers or any(layer not in LAYERS for layer in self.layers):
            bad(f"layers={self.layers!r} must be a non-empty subset of {LAYERS}")
        if not (isinstance(self.patch_size, int) and self.patch_size >= 1 and self.patch_size % 2 == 1):
            bad(f"patch_size={self.patch_size!r} must be an odd positive integer")
        if self.aggregation not in AGGREGATIONS:
            bad(f"aggregation={self.aggregation!r}; choose one of {AGGREGATIONS}")
        if self.coreset not in CORESETS:
            bad(f"coreset={self.coreset!r}; choose one of {CORESETS}")
        if self.sampler not in SAMPLERS:
            bad(f"sampler={self.sampler!r}; choose one of {SAMPLERS}")
        if not isinstance(self.jl_eps, (int, float)) or not 0.0 < self.jl_eps < 1.0:
            bad(f"jl_eps={self.jl_eps!r} must be in (0, 1)")
        if self.distance not in DISTANCES:
            bad(f"distance={self.distance!r}; choose one of {DISTANCES}")
        try:
            ratio_ok = 0.0 < float(self.coreset_ratio) <= 1.0
        except (TypeError, ValueError):
            ratio_ok = False
        if not ratio_ok:
            bad(f"coreset_ratio={self.coreset_ratio!r} must be in (0, 1]")
        for name in ("embed_dim", "projection_dim", "num_starts", "num_neighbors", "batch_size", "chunk_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(f"{name}={v!r} must be a positive integer")
        if not isinstance(self.seed, int):
            bad(f"seed={self.seed!r} must be an integer")
        if not isinstance(self.sigma, (int, float)) or self.sigma < 0:
            bad(f"sigma={self.sigma!r} must be >= 0")


# --------------------------------------------------------------------------- features (paper §3.1)


def aggregate_patches(feats: dict[str, torch.Tensor], layers, patch_size: int = 3, aggregation: str = "official",
                      embed_dim: int = 1024) -> torch.Tensor:
    """Backbone maps ``{layer: (B, C, h, w)}`` -> (B, D, h, w) locally aware patch features.

    Every layer is aggregated over its ``patch_size``² neighbourhood and brought
    onto the grid of ``layers[0]`` (module docstring: ``"avgpool"`` concatenates
    384 / 1536 channels, ``"official"`` pools to ``embed_dim``). Shared with
    SimpleNet, whose feature extractor is this "official" pipeline (methods.md §3).
    Computed in float32 whatever the dtype of ``feats``.
    """
    size = feats[layers[0]].shape[-2:]
    p = patch_size
    parts = []
    for name in layers:
        f = feats[name].float().contiguous()
        b, c, h, w = f.shape
        if aggregation == "avgpool":
            # anomalib: AvgPool2d(3, 1, 1), zero padding counted (count_include_pad=True).
            f = F.avg_pool2d(f, p, stride=1, padding=p // 2)
        else:
            # official: unfold (C, p, p) per position, flatten channel-major, pool to embed_dim.
            u = F.unfold(f, kernel_size=p, padding=p // 2).transpose(1, 2)  # (B, h·w, C·p²)
            u = F.adaptive_avg_pool1d(u.reshape(b * h * w, 1, c * p * p), embed_dim)
            f = u.reshape(b, h, w, embed_dim).permute(0, 3, 1, 2)
        if f.shape[-2:] != size:
            f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        parts.append(f)
    if aggregation == "avgpool":
        return torch.cat(parts, dim=1)
    b, _, h, w = parts[0].shape
    # (B, h, w, L, D): the layer vectors one after the other, as the official Aggregator flattens them.
    stacked = torch.stack(parts, dim=1).permute(0, 3, 4, 1, 2)
    pooled = F.adaptive_avg_pool1d(stacked.reshape(b * h * w, 1, -1), embed_dim)
    return pooled.reshape(b, h, w, embed_dim).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------- coreset (paper §3.2)


def random_projection(features: torch.Tensor, dim: int, generator: torch.Generator,
                      chunk_size: int = 4096, device=None) -> torch.Tensor:
    """``Linear(D → dim, bias=False)`` with PyTorch's default init, seeded; returns (dim, N).

    The weight is drawn from ``generator`` (CPU) so the global random state is
    untouched; the rows are projected ``chunk_size`` at a time and written
    feature-major (dim × N) on ``device``.
    """
    weight = torch.empty(dim, features.shape[1])
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)  # = nn.Linear's init
    return project_rows(features, weight, chunk_size, device)


def project_rows(features: torch.Tensor, weight: torch.Tensor, chunk_size: int = 4096, device=None) -> torch.Tensor:
    """``weight @ features.T`` (dim, N) on ``device``, ``chunk_size`` rows of the (N, D) features at a time."""
    device = features.device if device is None else torch.device(device)
    weight = weight.to(device)
    out = torch.empty(weight.shape[0], features.shape[0], device=device)
    for lo in range(0, features.shape[0], chunk_size):
        out[:, lo : lo + chunk_size] = weight @ features[lo : lo + chunk_size].to(device).T
    return out


def sparse_projection_matrix(n_features: int, n_components: int, generator: torch.Generator) -> torch.Tensor:
    """Very sparse random projection (Li et al., KDD 2006), as anomalib's ``SparseRandomProjection``.

    (n_components, n_features): each row has Binomial(D, 1/√D) non-zeros at
    uniformly drawn columns, each ±√(√D) / √k with equal odds; D = 1 is dense ±1/√k.
    """
    d, k = n_features, n_components
    density = 1.0 / math.sqrt(d)
    signs = torch.randint(0, 2, (k, d), generator=generator).float().mul_(2).sub_(1)
    if density == 1.0:
        return signs / math.sqrt(k)
    nnz = torch.binomial(torch.full((k,), float(d)), torch.full((k,), density), generator=generator)
    ranks = torch.rand(k, d, generator=generator).argsort(dim=1).argsort(dim=1)  # a uniform permutation per row
    keep = ranks < nnz[:, None]
    return signs.mul_(keep).mul_(math.sqrt(1.0 / density) / math.sqrt(k))


def johnson_lindenstrauss_dim(n_samples: int, eps: float) -> int:
    """``⌊4 ln n / (ε²/2 − ε³/3)⌋``, the "safe" projection size anomalib (and scikit-learn) use."""
    return int(4 * math.log(n_samples) / (eps**2 / 2 - eps**3 / 3))


def _distances_to(points_t: torch.Tensor, sq: torch.Tensor, idx: int, out: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (N,) of every point to point ``idx``, as ‖a‖² − 2a·c + ‖c‖² (clamped, rooted)."""
    torch.mv(points_t.T, points_t[:, idx], out=out)  # (N, dim) view of the (dim, N) storage: a fast gemv on CPU
    return out.mul_(-2.0).add_(sq).add_(sq[idx]).clamp_(min=0).sqrt_()


def greedy_kcenter(points_t: torch.Tensor, k: int, starts: torch.Tensor, include_start: bool = False) -> torch.Tensor:
    """Approximate greedy k-center on feature-major points (dim, N); memory O(N).

    Official code (``include_start=False``): the initial min-distance of each
    point is its mean Euclidean distance to the ``starts``; then ``k`` times:
    select the argmax and lower the min-distances to the distance to it.
    anomalib (``include_start=True``, one start): the start is the first centre
    and ``k − 1`` greedy picks follow. Distances use ‖a‖² − 2a·c + ‖c‖²
    (clamped at 0, square-rooted) as the official code does.
    """
    dim, n = points_t.shape
    sq = (points_t * points_t).sum(0)  # (N,)
    buf = torch.empty(n, device=points_t.device)
    chosen = torch.empty(k, dtype=torch.long)
    if include_start:
        if len(starts) != 1:
            raise ValueError(f"include_start takes exactly one start point, got {len(starts)}")
        first = int(starts[0])
        chosen[0] = first
        mind = _distances_to(points_t, sq, first, torch.empty(n, device=points_t.device))
        mind[first] = 0.0
        done = 1
    else:
        mind = torch.zeros(n, device=points_t.device)
        for s in starts.tolist():  # one pass per start: never an N × 10 matrix of copies
            mind += _distances_to(points_t, sq, s, buf)
        mind /= len(starts)
        done = 0
    for i in range(done, k):
        idx = int(torch.argmax(mind))
        chosen[i] = idx
        torch.minimum(mind, _distances_to(points_t, sq, idx, buf), out=mind)
        mind[idx] = 0.0  # the expansion's rounding must never leave a chosen point selectable again
    return chosen


def coreset_indices(features: torch.Tensor, config: PatchCoreConfig, device=None) -> torch.Tensor:
    """Indices of the memory-bank rows chosen from (N, D) ``features`` (CPU long tensor).

    Size ``max(1, int(N·ratio))``; ratio 1 or ``coreset="none"`` keeps every row
    (the official sampler returns the features unchanged at 100 %).
    """
    n = features.shape[0]
    k = max(1, int(n * config.coreset_ratio))
    if config.coreset == "none" or k >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(config.seed)
    if config.coreset == "random":
        return torch.randperm(n, generator=g)[:k]
    if config.sampler == "anomalib":
        w = sparse_projection_matrix(features.shape[1], johnson_lindenstrauss_dim(n, config.jl_eps), g)
        points_t = project_rows(features, w, config.chunk_size, device)
        start = torch.randint(n, (1,), generator=g)
        return greedy_kcenter(points_t, k, start, include_start=True)
    if features.shape[1] == config.projection_dim:  # the official code skips an identity-sized projection
        device = features.device if device is None else device
        points_t = features.to(device).T.contiguous()
    else:
        points_t = random_projection(features, config.projection_dim, g, config.chunk_size, device)
    starts = torch.randperm(n, generator=g)[: min(config.num_starts, n)]
    return greedy_kcenter(points_t, k, starts)


# --------------------------------------------------------------------------- nearest neighbours


def exporting() -> bool:
    """True while the model is traced for export (``torch.export``, the ONNX exporters, ``torch.jit.trace``)."""
    return bool(torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing())


def _faiss():
    try:
        import faiss  # type: ignore[import-not-found]
    except Exception:
        return None
    return faiss


def nearest_neighbors(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, chunk_size: int = 4096,
                      bank_sq: torch.Tensor | None = None, use_faiss: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared L2 distances (Q, k) and indices (Q, k) of the ``k`` nearest bank rows, ascending.

    faiss ``IndexFlatL2`` when available for CPU tensors; otherwise exact chunked
    torch search over blocks of ``chunk_size`` queries × ``chunk_size`` bank rows.
    """
    k = min(k, bank.shape[0])
    faiss = _faiss() if use_faiss and queries.device.type == "cpu" and bank.device.type == "cpu" else None
    if faiss is not None:
        index = faiss.IndexFlatL2(bank.shape[1])
        index.add(bank.contiguous().numpy())
        d, i = index.search(queries.contiguous().numpy(), k)
        return torch.from_numpy(d).clamp_(min=0), torch.from_numpy(i).long()
    if bank_sq is None:
        bank_sq = (bank * bank).sum(1)
    out_d = torch.empty(queries.shape[0], k, device=queries.device)
    out_i = torch.empty(queries.shape[0], k, dtype=torch.long, device=queries.device)
    for qlo in range(0, queries.shape[0], chunk_size):
        q = queries[qlo : qlo + chunk_size]
        q_sq = (q * q).sum(1, keepdim=True)
        best_d = best_i = None
        for blo in range(0, bank.shape[0], chunk_size):
            b = bank[blo : blo + chunk_size]
            d = torch.addmm(q_sq, q, b.T, alpha=-2.0).add_(bank_sq[blo : blo + chunk_size])
            if k == 1:
                d, i = d.min(dim=1, keepdim=True)
            else:
                d, i = torch.topk(d, min(k, d.shape[1]), dim=1, largest=False)
            i += blo
            if best_d is None:
                best_d, best_i = d, i
            elif k == 1:
                better = d < best_d  # strict: the first of equal distances wins, as in one block
                best_d, best_i = torch.where(better, d, best_d), torch.where(better, i, best_i)
            else:
                best_d, j = torch.topk(torch.cat([best_d, d], 1), k, dim=1, largest=False)
                best_i = torch.cat([best_i, i], 1).gather(1, j)
        out_d[qlo : qlo + chunk_size] = best_d.clamp_(min=0)
        out_i[qlo : qlo + chunk_size] = best_i
    return out_d, out_i


def nearest_neighbors_graph(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, chunk_size: int = 4096,
                            bank_sq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`nearest_neighbors` without faiss and without a loop over the queries: exportable, any batch size.

    Every query against one block of ``chunk_size`` bank rows at a time (the
    bank is fixed, so the loop over its blocks unrolls to a fixed graph), the
    blocks merged as in :func:`nearest_neighbors` (first of equal distances
    wins). Memory: queries × ``chunk_size`` distances. With at most
    ``chunk_size`` queries it computes exactly what :func:`nearest_neighbors`
    computes without faiss.
    """
    k = min(k, bank.shape[0])
    if bank_sq is None:
        bank_sq = (bank * bank).sum(1)
    q_sq = (queries * queries).sum(1, keepdim=True)
    best_d = best_i = None
    for blo in range(0, bank.shape[0], chunk_size):
        b = bank[blo : blo + chunk_size]
        d = torch.addmm(q_sq, queries, b.T, alpha=-2.0) + bank_sq[blo : blo + chunk_size]
        if k == 1:
            d, i = d.min(dim=1, keepdim=True)
        else:
            d, i = torch.topk(d, min(k, d.shape[1]), dim=1, largest=False)
        i = i + blo
        if best_d is None:
            best_d, best_i = d, i
        elif k == 1:
            better = d < best_d
            best_d, best_i = torch.where(better, d, best_d), torch.where(better, i, best_i)
        else:
            best_d, j = torch.topk(torch.cat([best_d, d], 1), k, dim=1, largest=False)
            best_i = torch.cat([best_i, i], 1).gather(1, j)
    return best_d.clamp(min=0), best_i


def star_first(support: torch.Tensor, star: torch.Tensor, b: int) -> torch.Tensor:
    """Rows (B, b): ``star`` then the first b − 1 entries of ``support`` (B, ≥ b) that are not ``star``, in order.

    Eq. 7's N_b(m*) with m* in front. Equal to the per-row
    ``torch.cat([star, row[row != star][: b - 1]])`` whenever every row keeps
    b − 1 entries (``support`` holds distinct indices, as k-NN results do), but
    vectorised: entries equal to ``star`` get a key past every position and a
    top-k of the (distinct) keys picks the first b − 1 others, in order.
    """
    n = support.shape[1]
    pos = torch.arange(n, device=support.device).expand_as(support)
    key = torch.where(support == star[:, None], pos + n, pos)
    order = torch.topk(key, b - 1, dim=1, largest=False, sorted=True).indices
    return torch.cat([star[:, None], support.gather(1, order)], dim=1)


# --------------------------------------------------------------------------- the method


class PatchCore(AnomalyModel):
    """PatchCore on a frozen backbone: ``fit`` then ``model(x)`` (:mod:`tabad.methods.base`)."""

    name = "patchcore"
    config_class = PatchCoreConfig
    fitted_attributes = ("grid", "n_patches")

    def __init__(self, backbone: FeatureExtractor, config: PatchCoreConfig = PatchCoreConfig()):
        super().__init__(backbone, config)
        self.register_buffer("memory_bank", torch.empty(0))
        self.register_buffer("_bank_sq", torch.empty(0), persistent=False)
        self.grid: tuple[int, int] | None = None
        self.n_patches: int | None = None
        self.use_faiss = True
        #: search with :func:`nearest_neighbors_graph` (always so while exporting).
        self.graph_search = False

    def after_load(self) -> None:
        self._bank_sq = (self.memory_bank * self.memory_bank).sum(1)

    @property
    def is_fitted(self) -> bool:
        return self.memory_bank.numel() > 0

    def summary(self) -> dict:
        """Recorded with each benchmark result."""
        return {"memory_bank": list(self.memory_bank.shape), "n_training_patches": self.n_patches}

    @property
    def embed_dim(self) -> int:
        """Dimension D of the patch features."""
        if self.config.aggregation == "official":
            return self.config.embed_dim
        return sum(self.backbone.channels(self.config.layers))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D, h, w) locally aware patch features on the first layer's grid (§3.1)."""
        cfg = self.config
        return aggregate_patches(self.backbone(x, cfg.layers), cfg.layers, cfg.patch_size, cfg.aggregation,
                                 cfg.embed_dim)

    @staticmethod
    def _rows(e: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B·h·w, D), patches of an image in row-major order."""
        return e.permute(0, 2, 3, 1).reshape(-1, e.shape[1])

    @torch.no_grad()
    def fit(self, data: Iterable[torch.Tensor], context: FitContext | None = None) -> "PatchCore":
        """Collect every training patch (float32, CPU), keep a coreset as the memory bank (§3.2)."""
        chunks = []
        for x in data:
            e = self.embed(x)
            self.grid = tuple(e.shape[-2:])
            chunks.append(self._rows(e).to("cpu", torch.float32))
        if not chunks:
            raise TabadError("PatchCore needs at least 1 training image, got 0")
        features = torch.cat(chunks)
        self.n_patches = int(features.shape[0])
        del chunks
        device = self.memory_bank.device
        idx = coreset_indices(features, self.config, device=device)
        bank = features if idx.numel() == features.shape[0] else features[idx]
        del features
        self.memory_bank = bank.to(device).contiguous()
        self._bank_sq = (self.memory_bank * self.memory_bank).sum(1)
        return self

    def _nn(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        sq = self._bank_sq if self._bank_sq.numel() == self.memory_bank.shape[0] else None
        if self.graph_search or exporting():
            return nearest_neighbors_graph(queries, self.memory_bank, k, self.config.chunk_size, sq)
        return nearest_neighbors(queries, self.memory_bank, k, self.config.chunk_size, sq, self.use_faiss)

    @torch.no_grad()
    def patch_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Patch scores (B, h, w), nearest bank index (B, h·w) and patch features (B, h·w, D)."""
        if not self.is_fitted:
            raise RuntimeError("call fit() before predict()")
        e = self.embed(x).to(self.memory_bank.device)
        b, d, h, w = e.shape
        if (h, w) != tuple(self.grid):
            raise ValueError(f"input gives a {h}x{w} feature grid but the model was fitted on {self.grid}")
        rows = self._rows(e)
        dist2, idx = self._nn(rows, 1)
        scores = dist2[:, 0] if self.config.distance == "squared" else dist2[:, 0].sqrt()
        return scores.reshape(b, h, w), idx[:, 0].reshape(b, h * w), rows.reshape(b, h * w, d)

    @torch.no_grad()
    def reweight_weights(self, scores: torch.Tensor, nn_idx: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Paper Eq. 7 weights (B,) in (0, 1] for the maximal patch of each image (anomalib).

        w = 1 − softmax_j(‖m_test* − n_j‖)[m*] over n_j ∈ N_b(m*), the b nearest
        bank entries to m* with m* itself first. b = 1 (or a one-entry bank)
        gives w = 1, as anomalib returns the raw score then.
        """
        b = min(self.config.num_neighbors, self.memory_bank.shape[0])
        flat = scores.flatten(1)
        if b == 1:
            return torch.ones(flat.shape[0], device=flat.device)
        arange = torch.arange(flat.shape[0], device=flat.device)
        star = flat.argmax(dim=1)
        m_test = rows[arange, star]  # (B, D) the most anomalous test patches
        m_star = nn_idx[arange, star]  # (B,) their nearest bank entries
        _, support = self._nn(self.memory_bank[m_star], b)  # (B, b)
        # N_b(m*) includes m* itself, in front (a duplicate bank row could otherwise tie with it).
        support = star_first(support, m_star, b)
        dist = (m_test[:, None, :] - self.memory_bank[support]).norm(dim=-1)  # Euclidean, as in Eq. 7
        return 1.0 - torch.softmax(dist, dim=1)[:, 0]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> AnomalyOutput:
        """Image scores (B,) and smoothed anomaly maps (B, H, W) at the input size (§3.3)."""
        grid, nn_idx, rows = self.patch_scores(x)
        scores = grid.flatten(1).amax(dim=1)
        if self.config.reweight:
            scores = scores * self.reweight_weights(grid, nn_idx, rows)
        maps = upsample(grid, tuple(x.shape[-2:]), align_corners=False)
        maps = gaussian_blur(maps, self.config.sigma)
        return AnomalyOutput(scores, maps)
