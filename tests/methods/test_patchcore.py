"""PatchCore (methods.md §5) against literal references of the official code and anomalib."""

from __future__ import annotations

from dataclasses import FrozenInstanceError

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from tabad.backbones import build_backbone
from tabad.errors import ConfigError, TabadError
from tabad.methods import REGISTRY, create_method, method_names
from tabad.methods.patchcore import (PatchCore, PatchCoreConfig, coreset_indices, greedy_kcenter,
                                     johnson_lindenstrauss_dim, nearest_neighbors, nearest_neighbors_graph,
                                     sparse_projection_matrix, star_first)


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("resnet18", "random", seed=0)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 3, 32, 32, generator=g), torch.randn(3, 3, 32, 32, generator=g)


@pytest.fixture(scope="module")
def fitted(backbone, data):
    return create_method("patchcore", backbone, {"coreset_ratio": 0.25}).fit([data[0][:3], data[0][3:]])


def _covering_radius(points: torch.Tensor, centres: torch.Tensor) -> float:
    return float(torch.cdist(points.double(), centres.double()).min(dim=1).values.max())


# --------------------------------------------------------------------------- coreset


def _reference_greedy(points: torch.Tensor, k: int, starts: list[int]) -> list[int]:
    """The official approximate greedy loop, written out with a full float64 distance matrix."""
    d = torch.cdist(points.double(), points.double())
    mind = d[:, starts].mean(dim=1)
    out = []
    for _ in range(k):
        i = int(mind.argmax())
        out.append(i)
        mind = torch.minimum(mind, d[:, i])
    return out


def test_greedy_matches_reference():
    g = torch.Generator().manual_seed(3)
    pts = torch.randn(300, 16, generator=g)
    starts = torch.randperm(300, generator=g)[:10]
    got = greedy_kcenter(pts.T.contiguous(), 40, starts)
    assert got.tolist() == _reference_greedy(pts, 40, starts.tolist())


def _reference_anomalib_greedy(points: torch.Tensor, k: int, start: int) -> list[int]:
    """anomalib 2.7.0's KCenterGreedy loop written out: the start is the first centre, k - 1 picks follow."""
    d = torch.cdist(points.double(), points.double())
    mind, out = d[:, start].clone(), [start]
    for _ in range(k - 1):
        i = int(mind.argmax())
        out.append(i)
        mind = torch.minimum(mind, d[:, i])
        mind[i] = 0.0
    return out


def test_greedy_with_start_included_matches_anomalib_loop():
    g = torch.Generator().manual_seed(4)
    pts = torch.randn(300, 16, generator=g)
    got = greedy_kcenter(pts.T.contiguous(), 40, torch.tensor([17]), include_start=True)
    assert got.tolist() == _reference_anomalib_greedy(pts, 40, 17)
    with pytest.raises(ValueError, match="one start"):
        greedy_kcenter(pts.T.contiguous(), 4, torch.tensor([1, 2]), include_start=True)


def test_johnson_lindenstrauss_dim():
    # 4 ln n / (eps^2/2 - eps^3/3), floored; eps = 0.9 gives the denominator 0.405 - 0.243 = 0.162
    assert johnson_lindenstrauss_dim(50176, 0.9) == int(4 * np.log(50176) / 0.162) == 267
    assert johnson_lindenstrauss_dim(1000, 0.1) == 5920  # scikit-learn's documented example


def test_sparse_projection_matrix_is_very_sparse_and_scaled():
    d, k = 384, 267
    w = sparse_projection_matrix(d, k, torch.Generator().manual_seed(0))
    scale = np.sqrt(np.sqrt(d)) / np.sqrt(k)
    assert w.shape == (k, d)
    assert set(np.round(w.unique().numpy() / scale, 6).tolist()) == {-1.0, 0.0, 1.0}
    nnz = (w != 0).sum(1).float()
    assert abs(nnz.mean().item() - np.sqrt(d)) < 1.5  # Binomial(d, 1/sqrt(d)) non-zeros per row
    assert nnz.std().item() > 1.0  # row counts vary, they are not fixed at sqrt(d)
    signs = w[w != 0]
    assert abs((signs > 0).float().mean().item() - 0.5) < 0.05
    w2 = sparse_projection_matrix(d, k, torch.Generator().manual_seed(0))
    assert torch.equal(w, w2)
    assert torch.equal(sparse_projection_matrix(1, 3, torch.Generator()).abs(), torch.full((3, 1), 3 ** -0.5))


def test_anomalib_sampler_coreset():
    feats = torch.randn(503, 24, generator=torch.Generator().manual_seed(1))
    cfg = PatchCoreConfig(sampler="anomalib", coreset_ratio=0.1, seed=3)
    state = torch.random.get_rng_state()
    idx = coreset_indices(feats, cfg)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert idx.numel() == 50 and idx.unique().numel() == 50
    assert torch.equal(idx, coreset_indices(feats, cfg))
    assert not torch.equal(idx, coreset_indices(feats, PatchCoreConfig(sampler="anomalib", seed=4)))
    assert not torch.equal(idx, coreset_indices(feats, PatchCoreConfig(coreset_ratio=0.1, seed=3)))
    # the random start is in the bank, first; the rest are greedy picks in the JL-projected space
    g = torch.Generator().manual_seed(3)
    w = sparse_projection_matrix(24, johnson_lindenstrauss_dim(503, 0.9), g)
    start = int(torch.randint(503, (1,), generator=g))
    assert idx.tolist() == _reference_anomalib_greedy(feats @ w.T, 50, start)


@pytest.mark.parametrize("kind", ["greedy", "random"])
@pytest.mark.parametrize("ratio", [0.1, 0.37, 0.5])
def test_coreset_size_and_unique(kind, ratio):
    feats = torch.randn(503, 24, generator=torch.Generator().manual_seed(1))
    idx = coreset_indices(feats, PatchCoreConfig(coreset=kind, coreset_ratio=ratio, projection_dim=8))
    assert idx.numel() == int(503 * ratio)
    assert idx.unique().numel() == idx.numel() and 0 <= idx.min() and idx.max() < 503


def test_coreset_none_and_full_ratio_keep_everything():
    feats = torch.randn(50, 8)
    assert coreset_indices(feats, PatchCoreConfig(coreset="none")).tolist() == list(range(50))
    assert coreset_indices(feats, PatchCoreConfig(coreset_ratio=1.0)).tolist() == list(range(50))
    assert coreset_indices(feats, PatchCoreConfig(coreset_ratio=0.001)).numel() == 1  # never empty


def test_coreset_is_seeded_and_keeps_global_rng():
    feats = torch.randn(400, 32, generator=torch.Generator().manual_seed(2))
    state = torch.random.get_rng_state()
    a = coreset_indices(feats, PatchCoreConfig(seed=5))
    b = coreset_indices(feats, PatchCoreConfig(seed=5))
    c = coreset_indices(feats, PatchCoreConfig(seed=6))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_greedy_covers_better_than_random_on_clusters():
    # One big cluster and 19 small, far-apart ones: k-center must visit every cluster,
    # a random subset of the same size almost surely misses some small ones.
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(20, 16, generator=g) * 50
    sizes = [900] + [5] * 19
    pts = torch.cat([c + torch.randn(n, 16, generator=g) for c, n in zip(centres, sizes)])
    cfg = PatchCoreConfig(coreset_ratio=0.03)
    greedy = coreset_indices(pts, cfg)
    rand = coreset_indices(pts, PatchCoreConfig(coreset_ratio=0.03, coreset="random"))
    assert greedy.numel() == rand.numel() == int(len(pts) * 0.03)
    r_greedy, r_rand = _covering_radius(pts, pts[greedy]), _covering_radius(pts, pts[rand])
    assert r_greedy <= r_rand and r_greedy < 0.5 * r_rand
    assert r_greedy < 10  # every cluster visited: the radius is intra-cluster (~ a few σ), not inter-cluster


def test_coreset_chunking_does_not_change_selection():
    feats = torch.randn(700, 48, generator=torch.Generator().manual_seed(4))
    a = coreset_indices(feats, PatchCoreConfig(chunk_size=37))
    b = coreset_indices(feats, PatchCoreConfig(chunk_size=100_000))
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- nearest neighbours


@pytest.mark.parametrize("chunk", [5, 64, 100_000])
@pytest.mark.parametrize("k", [1, 4])
def test_nearest_neighbors_match_brute_force(chunk, k):
    g = torch.Generator().manual_seed(7)
    q, bank = torch.randn(130, 20, generator=g), torch.randn(90, 20, generator=g)
    d2, idx = nearest_neighbors(q, bank, k=k, chunk_size=chunk, use_faiss=False)
    want_d, want_i = torch.cdist(q.double(), bank.double()).topk(k, dim=1, largest=False)
    torch.testing.assert_close(d2.double(), want_d**2, rtol=1e-4, atol=1e-4)
    assert torch.equal(idx, want_i)


def test_faiss_matches_torch_if_installed():
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(8)
    q, bank = torch.randn(50, 16, generator=g), torch.randn(40, 16, generator=g)
    a = nearest_neighbors(q, bank, k=3, use_faiss=True)
    b = nearest_neighbors(q, bank, k=3, use_faiss=False)
    torch.testing.assert_close(a[0], b[0], rtol=1e-4, atol=1e-4)
    assert torch.equal(a[1], b[1])


def test_patch_scores_are_brute_force_nn_distance(fitted, data):
    grid, nn_idx, rows = fitted.patch_scores(data[1])
    assert grid.shape == (3, 4, 4) and rows.shape == (3, 16, 384)
    d = torch.cdist(rows.reshape(-1, 384).double(), fitted.memory_bank.double())
    torch.testing.assert_close(grid.flatten().double(), d.min(dim=1).values, rtol=1e-4, atol=1e-4)
    assert torch.equal(nn_idx.flatten(), d.argmin(dim=1))


def test_squared_distance_option(backbone, data, fitted):
    sq = create_method("patchcore", backbone, {"coreset_ratio": 0.25, "distance": "squared"})
    sq.fit([data[0][:3], data[0][3:]])
    torch.testing.assert_close(sq.patch_scores(data[1])[0], fitted.patch_scores(data[1])[0] ** 2,
                               rtol=1e-4, atol=1e-4)


def test_chunked_and_unchunked_predictions_agree(backbone, data):
    a = create_method("patchcore", backbone, {"chunk_size": 7}).fit([data[0]])
    b = create_method("patchcore", backbone, {"chunk_size": 100_000}).fit([data[0]])
    assert torch.equal(a.memory_bank, b.memory_bank)
    sa, ma = a.predict(data[1])
    sb, mb = b.predict(data[1])
    # ‖a‖² − 2a·b + ‖b‖² over other GEMM block shapes rounds differently (seen: 4.5e-5 on maps ≈ 2)
    torch.testing.assert_close(sa, sb, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ma, mb, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- scoring (paper §3.3, Eq. 7)


def _reference_eq7(bank: torch.Tensor, rows: torch.Tensor, b: int) -> torch.Tensor:
    """anomalib's compute_anomaly_score with brute-force distances (float64), one image at a time."""
    out = []
    bank = bank.double()
    for r in rows.double():
        d = torch.cdist(r, bank)
        nn_d, nn_i = d.min(dim=1)
        star = int(nn_d.argmax())
        m_star = int(nn_i[star])
        support = torch.cdist(bank[m_star : m_star + 1], bank)[0].argsort()[:b]
        assert int(support[0]) == m_star
        dist = torch.cdist(r[star : star + 1], bank[support])[0]
        out.append((1 - torch.softmax(dist, 0)[0]) * nn_d[star])
    return torch.stack(out)


def test_reweighting_is_eq7(fitted, data):
    scores, maps = fitted.predict(data[1])
    want = _reference_eq7(fitted.memory_bank, fitted.patch_scores(data[1])[2], 9)
    torch.testing.assert_close(scores.double(), want, rtol=1e-4, atol=1e-5)
    grid, nn_idx, rows = fitted.patch_scores(data[1])
    w = fitted.reweight_weights(grid, nn_idx, rows)
    assert ((w > 0) & (w <= 1)).all()
    torch.testing.assert_close(scores, w * grid.flatten(1).amax(1))


def test_no_reweighting_gives_raw_max(backbone, data, fitted):
    for overrides in ({"reweight": False}, {"num_neighbors": 1}):
        raw = create_method("patchcore", backbone, {"coreset_ratio": 0.25, **overrides})
        raw.fit([data[0][:3], data[0][3:]])
        scores, _ = raw.predict(data[1])
        assert torch.equal(scores, raw.patch_scores(data[1])[0].flatten(1).amax(1))
        assert (scores >= fitted.predict(data[1])[0]).all()


def _old_reweight_weights(model: PatchCore, scores, nn_idx, rows) -> torch.Tensor:
    """PatchCore.reweight_weights before the vectorised rewrite (per-image list comprehension), verbatim."""
    b = min(model.config.num_neighbors, model.memory_bank.shape[0])
    flat = scores.flatten(1)
    if b == 1:
        return torch.ones(flat.shape[0], device=flat.device)
    arange = torch.arange(flat.shape[0], device=flat.device)
    star = flat.argmax(dim=1)
    m_test = rows[arange, star]
    m_star = nn_idx[arange, star]
    _, support = model._nn(model.memory_bank[m_star], b)
    others = support.masked_fill(support == m_star[:, None], -1)
    keep = torch.stack([row[row >= 0][: b - 1] for row in others])
    support = torch.cat([m_star[:, None], keep], dim=1)
    dist = (m_test[:, None, :] - model.memory_bank[support]).norm(dim=-1)
    return 1.0 - torch.softmax(dist, dim=1)[:, 0]


def _old_star_first(support, star, b):
    others = support.masked_fill(support == star[:, None], -1)
    return torch.cat([star[:, None], torch.stack([row[row >= 0][: b - 1] for row in others])], dim=1)


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_eq7_support_equals_the_loop_with_duplicate_bank_rows(seed):
    """star_first (exportable) selects the indices of the old per-row loop, including where duplicate bank rows
    tie with m* (m* then may or may not be among its own k nearest)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(12, 6, generator=g)
    bank = torch.cat([base, base[:4], base[:4], base[2:3].repeat(9, 1)])  # 2-3 copies, one row 11 times
    bank = bank[torch.randperm(len(bank), generator=g)]
    for b in (2, 5, 9):
        queries = bank[torch.randint(len(bank), (40,), generator=g)]
        _, star = nearest_neighbors(queries, bank, 1, use_faiss=False)
        _, support = nearest_neighbors(bank[star[:, 0]], bank, b, use_faiss=False)
        assert torch.equal(star_first(support, star[:, 0], b), _old_star_first(support, star[:, 0], b))
        # and on arbitrary distinct-index rows, with and without the star among them
        rows = torch.stack([torch.randperm(len(bank), generator=g)[:b] for _ in range(30)])
        stars = torch.where(torch.rand(30, generator=g) < 0.5, rows[:, int(torch.randint(b, (1,), generator=g))],
                            torch.randint(len(bank), (30,), generator=g))
        assert torch.equal(star_first(rows, stars, b), _old_star_first(rows, stars, b))


@pytest.mark.parametrize("seed", range(3))
def test_vectorised_reweighting_is_bit_identical_to_the_loop(backbone, data, seed):
    model = create_method("patchcore", backbone, {"coreset_ratio": 0.5}).fit([data[0]])
    g = torch.Generator().manual_seed(seed)
    bank = model.memory_bank
    # Duplicate rows: every row of the bank twice, and one row many times.
    model.memory_bank = torch.cat([bank, bank, bank[:1].repeat(12, 1)])[torch.randperm(2 * len(bank) + 12,
                                                                                        generator=g)]
    model.after_load()
    x = torch.cat([data[1], torch.randn(2, 3, 32, 32, generator=g)])
    grid, nn_idx, rows = model.patch_scores(x)
    for b in (1, 2, 9):
        model.config = PatchCoreConfig(coreset_ratio=0.5, num_neighbors=b)
        new = model.reweight_weights(grid, nn_idx, rows)
        assert torch.equal(new, _old_reweight_weights(model, grid, nn_idx, rows))


def test_graph_search_equals_the_chunked_search(backbone, data):
    """The exportable search (all queries at once, bank blocks unrolled) is bit-identical to the chunked search
    while the queries fit one chunk, and agrees to rounding otherwise."""
    g = torch.Generator().manual_seed(3)
    q, bank = torch.randn(130, 20, generator=g), torch.randn(90, 20, generator=g)
    for k in (1, 4):
        for chunk in (30, 4096):
            d_old, i_old = nearest_neighbors(q[:25], bank, k, chunk_size=chunk, use_faiss=False)
            d_new, i_new = nearest_neighbors_graph(q[:25], bank, k, chunk_size=chunk)
            assert torch.equal(d_old, d_new) and torch.equal(i_old, i_new)
            d_old, i_old = nearest_neighbors(q, bank, k, chunk_size=chunk, use_faiss=False)
            d_new, i_new = nearest_neighbors_graph(q, bank, k, chunk_size=chunk)
            torch.testing.assert_close(d_new, d_old, rtol=1e-5, atol=1e-5)
            assert torch.equal(i_old, i_new)
    model = create_method("patchcore", backbone, {"coreset_ratio": 0.25}).fit([data[0]])
    model.use_faiss = False
    want = model(data[1])
    model.graph_search = True
    got = model(data[1])  # 3 images x 16 patches: one chunk
    assert torch.equal(want.scores, got.scores) and torch.equal(want.maps, got.maps)


def test_map_is_upsampled_blurred_patch_scores(fitted, data):
    _, maps = fitted.predict(data[1])
    grid = fitted.patch_scores(data[1])[0]
    up = F.interpolate(grid.double()[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    want = np.stack([ndimage.gaussian_filter(m, sigma=4) for m in up.numpy()])
    np.testing.assert_allclose(maps.numpy(), want, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- features (paper §3.1)


def _official_features(feats: list[torch.Tensor], dim: int = 1024, p: int = 3) -> torch.Tensor:
    """Literal port of the official PatchMaker.patchify + Preprocessing + Aggregator (methods.md §5)."""
    patches = []
    for f in feats:
        b, c, h, w = f.shape
        u = F.unfold(f, kernel_size=p, stride=1, padding=(p - 1) // 2, dilation=1)
        patches.append((u.reshape(b, c, p, p, -1).permute(0, 4, 1, 2, 3), (h, w)))
    ref_h, ref_w = patches[0][1]
    out = [patches[0][0]]
    for x, (h, w) in patches[1:]:
        b = x.shape[0]
        x = x.reshape(b, h, w, *x.shape[2:]).permute(0, 3, 4, 5, 1, 2)
        s = x.shape
        x = F.interpolate(x.reshape(-1, h, w).unsqueeze(1), size=(ref_h, ref_w), mode="bilinear",
                          align_corners=False).squeeze(1)
        x = x.reshape(*s[:-2], ref_h, ref_w).permute(0, 4, 5, 1, 2, 3)
        out.append(x.reshape(b, -1, *x.shape[-3:]))
    per_layer = [F.adaptive_avg_pool1d(x.reshape(-1, 1, x[0, 0].numel()), dim).squeeze(1) for x in out]
    stacked = torch.stack(per_layer, dim=1)
    return F.adaptive_avg_pool1d(stacked.reshape(len(stacked), 1, -1), dim).reshape(len(stacked), -1)


def test_official_aggregation_matches_reference(backbone, data):
    model = create_method("patchcore", backbone, {"aggregation": "official", "embed_dim": 200})
    x = data[1]
    feats = backbone(x, ("layer2", "layer3"))
    want = _official_features([feats["layer2"].float(), feats["layer3"].float()], dim=200)
    got = PatchCore._rows(model.embed(x))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert model.embed_dim == 200


def test_avgpool_aggregation_matches_anomalib(backbone, data):
    model = create_method("patchcore", backbone)
    x = data[1]
    feats = backbone(x, ("layer2", "layer3"))
    pool = torch.nn.AvgPool2d(3, 1, 1)
    l2, l3 = pool(feats["layer2"]), pool(feats["layer3"])
    want = torch.cat([l2, F.interpolate(l3, size=l2.shape[-2:], mode="bilinear")], 1)
    torch.testing.assert_close(model.embed(x), want, rtol=1e-5, atol=1e-5)
    assert model.embed_dim == 384


# --------------------------------------------------------------------------- the method end to end


@pytest.mark.parametrize("aggregation", ["avgpool", "official"])
def test_shapes_including_non_square(backbone, aggregation):
    g = torch.Generator().manual_seed(1)
    train, test = torch.randn(3, 3, 64, 32, generator=g), torch.randn(2, 3, 64, 32, generator=g)
    model = create_method("patchcore", backbone, {"aggregation": aggregation, "embed_dim": 64}).fit([train])
    n = 3 * 8 * 4
    assert model.grid == (8, 4)
    assert model.memory_bank.shape == (int(n * 0.1), 384 if aggregation == "avgpool" else 64)
    assert model.memory_bank.dtype == torch.float32
    scores, maps = model.predict(test)
    assert scores.shape == (2,) and maps.shape == (2, 64, 32)
    assert (scores > 0).all() and (maps >= 0).all()
    with pytest.raises(ValueError, match="feature grid"):
        model.predict(torch.randn(1, 3, 32, 32))


def test_fit_and_predict_are_deterministic(backbone, data):
    a = create_method("patchcore", backbone).fit([data[0]])
    b = create_method("patchcore", backbone).fit([data[0][:2], data[0][2:]])  # batching does not matter
    assert torch.equal(a.memory_bank, b.memory_bank)
    sa, ma = a.predict(data[1])
    sb, mb = b.predict(data[1])
    assert torch.equal(sa, sb) and torch.equal(ma, mb)
    s1, m1 = a.predict(data[1][1:2])  # alone vs in a batch: equal up to float rounding of the matmuls
    torch.testing.assert_close(s1, sa[1:2], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(m1, ma[1:2], rtol=1e-4, atol=1e-4)
    c = create_method("patchcore", backbone, {"seed": 1}).fit([data[0]])
    assert not torch.equal(a.memory_bank, c.memory_bank)


def test_bank_is_a_buffer_and_training_patches_score_zero(backbone, data):
    model = create_method("patchcore", backbone, {"coreset": "none"}).fit([data[0]])
    assert "memory_bank" in dict(model.named_buffers())
    assert model.memory_bank.shape == (6 * 16, 384)
    grid = model.patch_scores(data[0])[0]
    assert grid.max() < 1e-2 * model.patch_scores(data[1])[0].max()


def test_predict_before_fit_and_empty_fit(backbone, data):
    model = create_method("patchcore", backbone)
    assert not model.is_fitted
    with pytest.raises(RuntimeError, match="fit"):
        model.predict(data[1])
    with pytest.raises(TabadError, match="at least 1"):
        model.fit([])


def test_obvious_defect_scores_higher(backbone, tiny_mvtec):
    from tabad.metrics import image_auroc, pixel_auroc

    from tests.conftest import score_tiny_obj

    test, s, maps = score_tiny_obj("patchcore", backbone, tiny_mvtec)
    assert maps.shape == (len(test), 56, 56)
    assert image_auroc(test.labels, s) == 1.0
    assert s[test.labels == 1].min() > 2 * s[test.labels == 0].max()  # a wide margin (~3x), not luck
    assert pixel_auroc(test.masks.numpy(), maps.numpy()) > 0.9


# --------------------------------------------------------------------------- registry and config


def test_create_method_with_overrides(backbone):
    model = create_method("patchcore", backbone, {"coreset_ratio": 0.25, "distance": "squared", "sigma": 2.0})
    assert isinstance(model, PatchCore)
    assert model.config.coreset_ratio == 0.25 and model.config.distance == "squared"
    assert model.config.num_neighbors == 9 and model.config.seed == 0  # untouched defaults
    assert create_method("patchcore", backbone).config == PatchCoreConfig()
    assert "patchcore" in method_names() and method_names() == sorted(REGISTRY)


@pytest.mark.parametrize("overrides", [
    {"coreset_ratio": 0.0}, {"coreset_ratio": 1.5}, {"coreset_ratio": -0.1}, {"coreset_ratio": "x"},
    {"aggregation": "maxpool"}, {"coreset": "kmeans"}, {"distance": "cosine"},
    {"layers": ()}, {"layers": ("layer9",)}, {"patch_size": 2}, {"patch_size": 0},
    {"num_neighbors": 0}, {"projection_dim": 0}, {"chunk_size": 0}, {"batch_size": 0},
    {"embed_dim": 0}, {"sigma": -1.0}, {"num_starts": 0}, {"sampler": "sklearn"}, {"jl_eps": 1.0},
    {"jl_eps": 0},
])
def test_invalid_values_raise_config_error(backbone, overrides):
    with pytest.raises(ConfigError, match="patchcore"):
        create_method("patchcore", backbone, overrides)


def test_unknown_option(backbone):
    with pytest.raises(TabadError, match="no option"):
        create_method("patchcore", backbone, {"corset_ratio": 0.1})


def test_config_defaults():
    cfg = PatchCoreConfig()
    assert cfg.layers == ("layer2", "layer3") and cfg.patch_size == 3
    assert cfg.aggregation == "avgpool" and cfg.embed_dim == 1024
    assert cfg.coreset == "greedy" and cfg.coreset_ratio == 0.1 and cfg.projection_dim == 128
    assert cfg.num_starts == 10 and cfg.num_neighbors == 9 and cfg.reweight is True
    assert cfg.sampler == "official" and cfg.jl_eps == 0.9
    assert cfg.distance == "euclidean" and cfg.sigma == 4.0 and cfg.seed == 0 and cfg.batch_size == 32
    with pytest.raises(FrozenInstanceError):
        cfg.sigma = 1.0  # type: ignore[misc]
