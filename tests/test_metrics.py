"""Tests for tabad.metrics (methods.md §7, "Metrics").

The AUPRO reference below is deliberately naive: a Python loop over
thresholds that follows the official MVTec AD algorithm step by step, so that
the vectorised, tie-collapsing implementation is checked against something
written differently.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

from tabad import metrics
from tabad.metrics import aupro, evaluate, f1_max, image_auroc, pixel_auroc, pixel_f1max


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def reference_aupro(masks, maps, thresholds, fpr_limit=0.3, structure=None):
    """Literal MVTec AD AUPRO over the given thresholds (pixel positive iff score >= t)."""
    structure = np.ones((3, 3), dtype=int) if structure is None else structure
    regions = []  # boolean mask of each region, with its image index
    for i, m in enumerate(masks):
        labeled, n = ndimage.label(m, structure=structure)
        for k in range(1, n + 1):
            regions.append((i, labeled == k))
    negatives = ~masks.astype(bool)
    n_neg = negatives.sum()

    fprs, pros = [0.0], [0.0]
    for t in sorted(thresholds, reverse=True):
        above = maps >= t
        fprs.append((above & negatives).sum() / n_neg)
        overlaps = [above[i][r].sum() / r.sum() for i, r in regions]
        pros.append(float(np.mean(overlaps)))
    fprs, pros = np.array(fprs), np.array(pros)

    # Trapezoid up to fpr_limit, interpolating the point exactly at the limit.
    k = int(np.sum(fprs <= fpr_limit))
    area = 0.0
    for j in range(1, k):
        area += 0.5 * (pros[j] + pros[j - 1]) * (fprs[j] - fprs[j - 1])
    if fprs[k - 1] < fpr_limit:
        x0, y0, x1, y1 = fprs[k - 1], pros[k - 1], fprs[k], pros[k]
        y_at = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_at) * (fpr_limit - x0)
    return area / fpr_limit


def blob_dataset(rng, n_images=12, size=32, n_normal=4, quantise=None):
    """Random disc/ellipse masks plus noisy maps that roughly follow them."""
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n_images, size, size), dtype=bool)
    for i in range(n_normal, n_images):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, 2)
            ry, rx = rng.uniform(1.0, 6.0, 2)
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    maps = rng.normal(size=masks.shape) + 1.5 * masks
    maps = ndimage.gaussian_filter(maps, sigma=(0, 1, 1))
    if quantise is not None:
        lo, hi = maps.min(), maps.max()
        maps = np.round((maps - lo) / (hi - lo) * quantise) / quantise
    return masks, maps


class FakeTensor:
    """Duck-typed stand-in for a CUDA torch tensor (no torch import needed)."""

    def __init__(self, arr):
        self.arr = np.asarray(arr)
        self.calls = []

    def detach(self):
        self.calls.append("detach")
        return self

    def cpu(self):
        self.calls.append("cpu")
        return self

    def __array__(self, dtype=None, copy=None):
        if "cpu" not in self.calls:
            raise TypeError("can't convert cuda tensor to numpy")
        return self.arr if dtype is None else self.arr.astype(dtype)


# ---------------------------------------------------------------------------
# Image AUROC
# ---------------------------------------------------------------------------


def test_image_auroc_hand_computed():
    # Positive pairs ranked correctly: (0.35>0.1), (0.8>0.1), (0.8>0.4); wrong: (0.35<0.4) -> 3/4.
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75, abs=1e-15)


def test_image_auroc_ties_count_half():
    # Pairs: (0.5 vs 0.5) tie -> 0.5, (0.9 vs 0.5) -> 1, (0.5 vs 0.2) -> 1, (0.9 vs 0.2) -> 1.
    assert image_auroc([0, 0, 1, 1], [0.5, 0.2, 0.5, 0.9]) == pytest.approx(3.5 / 4, abs=1e-15)


def test_image_auroc_constant_scores_is_half():
    assert image_auroc([0, 1, 0, 1, 1], [3.0] * 5) == 0.5


def test_image_auroc_perfect_and_inverted():
    assert image_auroc([0, 0, 1], [0.0, 0.1, 0.2]) == 1.0
    assert image_auroc([0, 0, 1], [0.3, 0.4, 0.2]) == 0.0


def test_image_auroc_one_class_is_none():
    assert image_auroc([1, 1, 1], [0.1, 0.2, 0.3]) is None
    assert image_auroc([0, 0], [0.1, 0.2]) is None
    assert image_auroc([], []) is None


def test_image_auroc_matches_sklearn_random():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 200)
        s = np.round(rng.normal(size=200), 1)  # many ties
        assert image_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_image_auroc_returns_python_float():
    assert type(image_auroc([0, 1], [0.1, 0.2])) is float


# ---------------------------------------------------------------------------
# F1-max
# ---------------------------------------------------------------------------


def test_f1max_hand_computed():
    # Thresholds 0.8: P=1 R=.5 F=.667; 0.4: P=.5 R=.5 F=.5; 0.35: P=2/3 R=1 F=.8; 0.1: P=.5 R=1 F=.667.
    assert f1_max([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8, abs=1e-12)


def test_f1max_no_positives_is_none():
    assert f1_max([0, 0, 0], [0.1, 0.2, 0.3]) is None


def test_f1max_only_positives_is_one():
    assert f1_max([1, 1], [0.1, 0.9]) == pytest.approx(1.0)


def test_f1max_matches_sklearn_random():
    rng = np.random.default_rng(1)
    for _ in range(20):
        y = rng.integers(0, 2, 150)
        s = np.round(rng.normal(size=150), 1)
        p, r, _ = precision_recall_curve(y, s)
        with np.errstate(invalid="ignore", divide="ignore"):
            f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
        assert f1_max(y, s) == pytest.approx(f.max(), abs=1e-12)


def test_image_f1max_alias():
    assert metrics.image_f1max is f1_max


# ---------------------------------------------------------------------------
# Pixel AUROC / F1-max
# ---------------------------------------------------------------------------


def test_pixel_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(2)
    masks, maps = blob_dataset(rng, quantise=20)
    assert len(np.unique(maps)) <= 21
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)
    # float32 maps are used as they are (ties judged in float32).
    maps32 = maps.astype(np.float32)
    assert pixel_auroc(masks, maps32) == pytest.approx(
        roc_auc_score(masks.ravel(), maps32.ravel()), abs=1e-12
    )


def test_pixel_f1max_matches_sklearn():
    rng = np.random.default_rng(3)
    masks, maps = blob_dataset(rng, quantise=50)
    p, r, _ = precision_recall_curve(masks.ravel(), maps.ravel())
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    assert pixel_f1max(masks, maps) == pytest.approx(f.max(), abs=1e-12)


def test_pixel_metrics_none_without_anomalous_or_normal_pixels():
    maps = np.random.default_rng(4).random((2, 4, 4))
    assert pixel_auroc(np.zeros((2, 4, 4)), maps) is None
    assert pixel_f1max(np.zeros((2, 4, 4)), maps) is None
    assert pixel_auroc(np.ones((2, 4, 4)), maps) is None


def test_torch_like_input_goes_through_cpu():
    masks = np.zeros((1, 2, 2), dtype=bool)
    masks[0, 0, 0] = True
    maps = np.array([[[0.9, 0.1], [0.2, 0.3]]])
    t_masks, t_maps = FakeTensor(masks), FakeTensor(maps)
    assert pixel_auroc(t_masks, t_maps) == 1.0
    assert "cpu" in t_maps.calls and "detach" in t_maps.calls


# ---------------------------------------------------------------------------
# AUPRO
# ---------------------------------------------------------------------------


def _hand_case():
    # Two 1x4 images.  Regions: A = image 0 pixels 0-1 (size 2), B = image 1
    # pixel 3 (size 1).  Negatives: 5 pixels, so each adds 0.2 to the FPR.
    masks = np.array([[[1, 1, 0, 0]], [[0, 0, 0, 1]]], dtype=bool)
    maps = np.array([[[0.9, 0.4, 0.7, 0.1]], [[0.2, 0.3, 0.4, 0.8]]])
    return masks, maps


def test_aupro_hand_computed_with_tie():
    # Descending: 0.9(A) 0.8(B) 0.7(neg) {0.4 neg, 0.4 A} 0.3 0.2 0.1 (neg).
    # Curve: (0,0) (0,.25) (0,.75) (.2,.75) (.4,1) ... The negative and the A
    # pixel at 0.4 move together, giving a diagonal segment.
    # Area to 0.3: .2*.75 = .15, then y(.3) = .875, .5*(.75+.875)*.1 = .08125.
    # Total .23125 / .3.
    masks, maps = _hand_case()
    assert aupro(masks, maps) == pytest.approx(0.23125 / 0.3, abs=1e-12)
    # Had the tie been broken (A first / negative first) the result would be
    # .25/.3 or .225/.3 -- both far from the exact value.


def test_aupro_hand_computed_full_range():
    # fpr_limit=1: .15 (to .2) + .5*(.75+1)*.2 (to .4) + .6*1 = .925.
    masks, maps = _hand_case()
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(0.925, abs=1e-12)


def test_aupro_perfect_map_is_one():
    rng = np.random.default_rng(5)
    masks, _ = blob_dataset(rng)
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0, abs=1e-12)


def test_aupro_constant_map_is_diagonal():
    # One threshold only: the curve jumps from (0,0) to (1,1); area to .3 is
    # .045, divided by .3 -> .15.
    rng = np.random.default_rng(6)
    masks, _ = blob_dataset(rng)
    assert aupro(masks, np.full(masks.shape, 0.5)) == pytest.approx(0.15, abs=1e-12)
    assert aupro(masks, np.zeros(masks.shape, dtype=np.float32)) == pytest.approx(0.15, abs=1e-12)


def test_aupro_matches_reference_exact_thresholds():
    # Quantised maps: looping over every distinct score is the exact curve,
    # so agreement must be to rounding error.
    rng = np.random.default_rng(7)
    masks, maps = blob_dataset(rng, quantise=60)
    ref = reference_aupro(masks, maps, np.unique(maps))
    assert aupro(masks, maps) == pytest.approx(ref, abs=1e-9)
    ref_half = reference_aupro(masks, maps, np.unique(maps), fpr_limit=0.05)
    assert aupro(masks, maps, fpr_limit=0.05) == pytest.approx(ref_half, abs=1e-9)


def test_aupro_matches_reference_5000_sampled_thresholds():
    # As in the MVTec description: 5000 equidistant positions in the sorted
    # scores of the negative pixels (plus the maximum so the curve starts at
    # FPR 0).  Continuous maps, so the sampled curve is only close.
    rng = np.random.default_rng(8)
    masks, maps = blob_dataset(rng, n_images=16, size=40, n_normal=5)
    neg_sorted = np.sort(maps[~masks])
    idx = np.linspace(0, neg_sorted.size - 1, 5000).round().astype(int)
    thresholds = np.append(neg_sorted[idx], maps.max())
    ref = reference_aupro(masks, maps, thresholds)
    got = aupro(masks, maps)
    assert 0.2 < got < 0.99  # a non-trivial case
    assert got == pytest.approx(ref, abs=1e-3)


def test_aupro_uses_8_connectivity():
    # Regions under 8-connectivity: R1 = {(0,0), (1,1)} (diagonal), R2 = {(1,3)}.
    # 4-connectivity would split R1 in two.
    masks = np.zeros((1, 3, 4), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 1, 3] = True
    maps = np.full((1, 3, 4), 0.5)
    maps[0, 0, 0] = maps[0, 1, 3] = 1.0
    maps[0, 1, 1] = 0.0
    # Curve: (0,0) -> (0, PRO at t=1) -> (1, same) -> (1, 1); AUPRO = PRO at t=1.
    # 8-conn: mean(1/2, 1) = .75.   4-conn: mean(1, 0, 1) = 2/3.
    assert aupro(masks, maps) == pytest.approx(0.75, abs=1e-12)
    four = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    assert reference_aupro(masks, maps, np.unique(maps), structure=four) == pytest.approx(2 / 3)


def test_aupro_no_anomalous_pixels_is_none():
    maps = np.random.default_rng(9).random((3, 8, 8))
    assert aupro(np.zeros((3, 8, 8)), maps) is None


def test_aupro_no_negative_pixels_is_none():
    maps = np.random.default_rng(10).random((2, 8, 8))
    assert aupro(np.ones((2, 8, 8)), maps) is None


def test_aupro_normal_images_count_as_negatives():
    rng = np.random.default_rng(11)
    masks, maps = blob_dataset(rng, n_normal=0, quantise=100)
    base = aupro(masks, maps)
    # A normal image whose scores beat everything: its pixels are false
    # positives at every threshold, so the curve shifts right.
    hot = np.full((1,) + maps.shape[1:], maps.max() + 1.0)
    more_masks = np.concatenate([masks, np.zeros_like(masks[:1])])
    more_maps = np.concatenate([maps, hot])
    worse = aupro(more_masks, more_maps)
    assert worse < base - 0.05
    ref = reference_aupro(more_masks, more_maps, np.unique(more_maps))
    assert worse == pytest.approx(ref, abs=1e-9)


def test_aupro_is_dataset_level_not_per_image_mean():
    # Image 0: one big region found at a low FPR; image 1: one region missed.
    # The per-image average (RD4AD style) differs from the dataset curve.
    rng = np.random.default_rng(12)
    masks, maps = blob_dataset(rng, n_images=6, n_normal=2)
    per_image = [aupro(m[None], a[None]) for m, a in zip(masks, maps) if m.any()]
    assert abs(np.mean(per_image) - aupro(masks, maps)) > 1e-4


def test_aupro_accepts_single_image_and_channel_axis():
    masks, maps = _hand_case()
    expected = aupro(masks, maps)
    assert aupro(masks[:, None], maps[:, None]) == pytest.approx(expected)
    single = aupro(masks[0], maps[0])
    assert single == pytest.approx(aupro(masks[:1], maps[:1]))


def test_aupro_rejects_bad_fpr_limit():
    masks, maps = _hand_case()
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(masks, maps, fpr_limit=0.0)
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(masks, maps, fpr_limit=1.5)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same length"):
        image_auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="same length"):
        f1_max([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="identical shapes"):
        pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="identical shapes"):
        aupro(np.zeros((2, 4, 4)), np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="identical shapes"):
        pixel_f1max(np.zeros((2, 4, 4)), np.zeros((2, 16)))


def test_non_finite_scores_raise():
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="inf"):
        f1_max([0, 1], [0.1, np.inf])
    maps = np.zeros((1, 2, 2))
    maps[0, 1, 1] = -np.inf
    with pytest.raises(ValueError, match="non-finite"):
        aupro(np.eye(2)[None], maps)


def test_non_binary_masks_and_labels_raise():
    with pytest.raises(ValueError, match="binary"):
        pixel_auroc(np.full((1, 2, 2), 255), np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="binary"):
        image_auroc([0, 2], [0.1, 0.2])


def test_non_numeric_raises():
    with pytest.raises(ValueError, match="numeric"):
        image_auroc(["a", "b"], [0.1, 0.2])


# ---------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------


def test_evaluate_image_only():
    out = evaluate([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert out == {
        "image_auroc": pytest.approx(0.75),
        "image_f1max": pytest.approx(0.8),
        "pixel_auroc": None,
        "pixel_f1max": None,
        "aupro": None,
    }


def test_evaluate_with_masks():
    rng = np.random.default_rng(13)
    masks, maps = blob_dataset(rng)
    labels = masks.reshape(len(masks), -1).any(1).astype(int)
    scores = maps.reshape(len(maps), -1).max(1)
    out = evaluate(labels, scores, masks, maps)
    assert set(out) == {"image_auroc", "image_f1max", "pixel_auroc", "pixel_f1max", "aupro"}
    assert out["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert out["aupro"] == pytest.approx(aupro(masks, maps))
    assert all(isinstance(v, float) for v in out.values())


def test_evaluate_all_normal_masks_gives_none_pixel_metrics():
    maps = np.random.default_rng(14).random((4, 8, 8))
    out = evaluate([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], np.zeros((4, 8, 8)), maps)
    assert out["image_auroc"] == 1.0
    assert out["pixel_auroc"] is None and out["pixel_f1max"] is None and out["aupro"] is None


def test_evaluate_validates_pixel_inputs():
    with pytest.raises(ValueError, match="together"):
        evaluate([0, 1], [0.1, 0.2], masks=np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="images"):
        evaluate([0, 1], [0.1, 0.2], np.zeros((3, 4, 4)), np.zeros((3, 4, 4)))


def test_module_does_not_import_torch():
    import os
    import subprocess
    import sys
    from pathlib import Path

    import tabad

    src = str(Path(tabad.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    code = "import sys, tabad.metrics; print('torch' in sys.modules)"
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert res.stdout.strip() == "False"
