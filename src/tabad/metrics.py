"""Exact anomaly-detection metrics (methods.md §7, "Metrics").

Pure functions: arrays in, Python floats out.  Every input may be a numpy
array, anything ``np.asarray`` accepts, or a torch tensor (converted through
``.detach().cpu()``; torch itself is never imported here).

All metrics are computed *exactly* from one sort of the scores instead of
from a sampled set of thresholds.  Ties are collapsed the way scikit-learn
and the official MVTec AD evaluation code collapse them: all samples with the
same score cross the threshold together, so a curve point is only kept at the
last index of each distinct score.

A metric that is undefined for the data (one class only, no anomalous region,
no negative pixel) returns ``None`` rather than NaN, so that a missing number
cannot silently enter an average.

Public functions:
    image_auroc(labels, scores)
    image_f1max(labels, scores)    (alias of f1_max)
    f1_max(labels, scores)
    pixel_auroc(masks, maps)
    pixel_f1max(masks, maps)
    aupro(masks, maps, fpr_limit=0.3)
    evaluate(labels, scores, masks=None, maps=None)
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "image_auroc",
    "image_f1max",
    "f1_max",
    "pixel_auroc",
    "pixel_f1max",
    "aupro",
    "evaluate",
]


# ---------------------------------------------------------------------------
# Input conversion and validation
# ---------------------------------------------------------------------------


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if x is None:
        raise ValueError(f"{name} is None")
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        # A torch tensor; detach() because np.asarray refuses tensors that
        # require grad, cpu() because it refuses CUDA tensors.
        x = x.detach().cpu()
    elif isinstance(x, (list, tuple)) and x and hasattr(x[0], "cpu"):
        x = [_to_numpy(item, name) for item in x]
    try:
        arr = np.asarray(x)
    except ValueError as exc:  # ragged lists, e.g. maps of different sizes
        raise ValueError(f"{name} cannot be converted to one array: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric (bool, int or float), got dtype {arr.dtype}")
    return arr


def _check_finite(arr: np.ndarray, name: str) -> None:
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        raise ValueError(
            f"{name} contains non-finite values ({n_nan} NaN, {n_inf} inf); "
            "metrics are undefined for them"
        )


def _as_binary(arr: np.ndarray, name: str) -> np.ndarray:
    """Return ``arr`` as bool, insisting that it really is binary.

    Anything other than {0, 1} is rejected instead of thresholded: 0/255 PNG
    masks and soft masks from bilinear resizing (methods.md §7, item 7 of the
    "commonly wrong" list) should be binarised knowingly by the caller.
    """
    if arr.dtype.kind == "b":
        return arr
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        values = np.unique(arr[bad])[:5]
        raise ValueError(
            f"{name} must be binary (0/1 or bool); found other values such as "
            f"{values.tolist()}. Binarise first, e.g. `{name} > 0` for 0/255 "
            "masks or VisA component-index masks"
        )
    return arr.astype(bool)


def _labels_and_scores(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _to_numpy(labels, "labels")
    s = _to_numpy(scores, "scores")
    # (N, 1) columns, as models often return, are accepted; true 2-D data is not.
    if y.ndim != 1 and y.size != max(y.shape, default=0):
        raise ValueError(f"labels must be one-dimensional, got shape {y.shape}")
    if s.ndim != 1 and s.size != max(s.shape, default=0):
        raise ValueError(f"scores must be one-dimensional, got shape {s.shape}")
    y = y.ravel()
    s = s.ravel()
    if y.shape != s.shape:
        raise ValueError(
            f"labels and scores must have the same length, got {y.shape[0]} labels "
            f"and {s.shape[0]} scores"
        )
    _check_finite(s, "scores")
    return _as_binary(y, "labels"), s


def _masks_and_maps(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    m = _to_numpy(masks, "masks")
    a = _to_numpy(maps, "maps")
    if m.shape != a.shape:
        raise ValueError(
            f"masks and maps must have identical shapes, got masks {m.shape} and "
            f"maps {a.shape} (resize the anomaly maps to the mask resolution first)"
        )
    _check_finite(a, "maps")
    # The caller's dtype is kept on purpose: casting float32 maps to float64
    # would double the memory of a pixel-level evaluation, and ties must be
    # judged on the values the model produced.
    return _as_binary(m, "masks"), a


def _image_stack(arr: np.ndarray, name: str) -> np.ndarray:
    """Bring masks/maps to (N, H, W); connected components need the image axes."""
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim == 3:
        return arr
    if arr.ndim == 4 and arr.shape[1] == 1:  # (N, 1, H, W) as produced by torch models
        return arr[:, 0]
    raise ValueError(f"{name} must have shape (N, H, W), (N, 1, H, W) or (H, W), got {arr.shape}")


# ---------------------------------------------------------------------------
# Shared exact curve
# ---------------------------------------------------------------------------


def _descending(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Descending sort order of ``s`` and the last index of each run of equal scores.

    The one expensive step of every threshold-free metric; :func:`evaluate`
    computes it once for the pixel metrics and shares it.
    """
    order = np.argsort(s)[::-1]
    s_sorted = s[order]
    last = np.append(np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s_sorted.size - 1)
    return order, last


def _binary_curve(y: np.ndarray, s: np.ndarray, presorted=None) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (tp, fp) counts at each distinct score, highest score first.

    Same points as sklearn's ``_binary_clf_curve``: a sample is predicted
    positive when its score is >= the threshold, and tied samples enter
    together.  Counts are int64, so everything downstream can stay exact.
    """
    order, last = presorted if presorted is not None else _descending(s)
    tps = np.cumsum(y[order], dtype=np.int64)[last]
    fps = (last + 1) - tps
    return tps, fps


def _auroc(y: np.ndarray, s: np.ndarray, presorted=None) -> float | None:
    n_pos = int(np.count_nonzero(y))
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    tps, fps = _binary_curve(y, s, presorted)
    # Trapezoidal area under the ROC step curve, which is what sklearn's
    # roc_auc_score integrates.  Doubled so it is an integer: the sum is at
    # most 2*P*N, which fits in int64 for up to ~4e9 samples, so the result
    # is exact up to the final division.
    tp_prev = np.concatenate(([0], tps[:-1]))
    fp_prev = np.concatenate(([0], fps[:-1]))
    twice_area = int(np.sum((fps - fp_prev) * (tps + tp_prev)))
    return twice_area / (2.0 * n_pos * n_neg)


def _f1max(y: np.ndarray, s: np.ndarray, presorted=None) -> float | None:
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0:
        return None
    tps, fps = _binary_curve(y, s, presorted)
    # 2PR/(P+R) with P = tp/(tp+fp), R = tp/n_pos simplifies to
    # 2tp/(tp+fp+n_pos); the denominator is never 0 because n_pos > 0, and the
    # 0/0 -> 0 convention (tp = 0) yields 0 by itself.  The extra
    # (precision=1, recall=0) point that precision_recall_curve appends has
    # F1 = 0 and therefore cannot be the maximum.
    f1 = 2.0 * tps / (tps + fps + n_pos)
    return float(f1.max())


# ---------------------------------------------------------------------------
# Public metrics
# ---------------------------------------------------------------------------


def image_auroc(labels: Any, scores: Any) -> float | None:
    """Image-level AUROC (methods.md §7), equal to sklearn's ``roc_auc_score``.

    ``labels`` are 0/1 (1 = anomalous), ``scores`` higher = more anomalous.
    Ties count one half, as in sklearn.  Returns None when only one class is
    present (sklearn raises there; a None is easier to skip when averaging).
    """
    y, s = _labels_and_scores(labels, scores)
    return _auroc(y, s)


def f1_max(labels: Any, scores: Any) -> float | None:
    """Maximum F1 over all thresholds (methods.md §7, "F1-max").

    Same points as sklearn's ``precision_recall_curve``: max of 2PR/(P+R)
    with 0/0 -> 0.  Returns None when there is no positive sample (recall is
    undefined).
    """
    y, s = _labels_and_scores(labels, scores)
    return _f1max(y, s)


image_f1max = f1_max


def pixel_auroc(masks: Any, maps: Any) -> float | None:
    """Pixel-level AUROC over all pixels of all images (methods.md §7).

    ``masks`` (N, H, W) binary ground truth, ``maps`` anomaly maps of the same
    shape; normal images are included, their pixels are all negatives.  Equal
    to ``roc_auc_score(masks.ravel(), maps.ravel())`` but computed with one
    argsort and integer counts, so ~10M pixels need a few hundred MB at most.
    Returns None when there is no anomalous or no normal pixel.
    """
    m, a = _masks_and_maps(masks, maps)
    return _auroc(m.ravel(), a.ravel())


def pixel_f1max(masks: Any, maps: Any) -> float | None:
    """F1-max over the flattened pixels of all images (methods.md §7).

    Returns None when there is no anomalous pixel.
    """
    m, a = _masks_and_maps(masks, maps)
    return _f1max(m.ravel(), a.ravel())


def aupro(masks: Any, maps: Any, fpr_limit: float = 0.3, _presorted=None) -> float | None:
    """Normalised area under the PRO curve, official MVTec AD definition (methods.md §7).

    1. Ground-truth regions are the connected components of each image's
       mask with 8-connectivity (3x3 structuring element), as in the MVTec
       code; diagonal neighbours belong to the same region.
    2. FPR = fraction of *all* negative pixels of *all* images (normal images
       included) whose score is >= the threshold.
    3. PRO = mean over *all* regions of the dataset of the fraction of the
       region's pixels whose score is >= the threshold.  Not per image:
       averaging per-image curves (RD4AD's code) weights regions differently.
    4. The curve is integrated over FPR in [0, fpr_limit] with the trapezoidal
       rule; the point at exactly ``fpr_limit`` is linearly interpolated
       between its neighbours.
    5. The area is divided by ``fpr_limit`` (not by the largest FPR kept,
       which inflates results), so a perfect map gives 1.0 and a constant map,
       whose curve is the diagonal, gives fpr_limit / 2 (0.15 at 0.3).

    Every distinct score is a threshold, which is what the MVTec AD
    ``compute_pro`` does too (sampled thresholds only approximate it): after
    sorting all pixels by descending score, each negative pixel adds
    1/n_neg to the FPR and each pixel of region r adds 1/(|r| * n_regions) to
    the PRO; a curve point is kept only at the last pixel of each distinct
    score, so tied pixels move together.

    Args:
        masks: (N, H, W) binary ground truth (also (H, W) or (N, 1, H, W)).
        maps: anomaly maps, same shape, higher = more anomalous.
        fpr_limit: upper integration limit in (0, 1].

    Returns:
        The normalised area in [0, 1], or None when there is no anomalous
        region or no negative pixel.
    """
    if not 0.0 < float(fpr_limit) <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr_limit = float(fpr_limit)
    m, a = _masks_and_maps(masks, maps)
    m = _image_stack(m, "masks")
    a = _image_stack(a, "maps")

    from scipy import ndimage  # deferred: keep `import tabad.metrics` cheap

    structure = np.ones((3, 3), dtype=int)
    region = np.zeros(m.shape, dtype=np.int32)  # 0 = negative, k > 0 = global region id
    n_regions = 0
    for i in range(m.shape[0]):
        labeled, n = ndimage.label(m[i], structure=structure)
        if n:
            region[i] = np.where(labeled > 0, labeled + n_regions, 0)
            n_regions += n
    region = region.ravel()
    n_neg = int(np.count_nonzero(region == 0))
    if n_regions == 0 or n_neg == 0:
        return None

    sizes = np.bincount(region, minlength=n_regions + 1)
    # Per-pixel PRO increment, looked up by region id; index 0 (negatives) adds 0.
    weight = np.zeros(n_regions + 1, dtype=np.float64)
    weight[1:] = 1.0 / (sizes[1:].astype(np.float64) * n_regions)

    order, last = _presorted if _presorted is not None else _descending(a.ravel())
    r_sorted = region[order]
    del order

    fp = np.cumsum(r_sorted == 0, dtype=np.int64)[last]
    fprs = fp / float(n_neg)
    # Only the prefix up to the first point beyond the limit is needed.
    stop = int(np.searchsorted(fprs, fpr_limit, side="right")) + 1
    stop = min(stop, fprs.size)
    fprs = fprs[:stop]
    pros = np.cumsum(weight[r_sorted[: last[stop - 1] + 1]])[last[:stop]]
    # Summation error could push the last point a hair above 1.
    np.clip(pros, None, 1.0, out=pros)

    # The curve starts at (0, 0): the threshold above every score.
    fprs = np.concatenate(([0.0], fprs))
    pros = np.concatenate(([0.0], pros))

    inside = fprs <= fpr_limit  # a prefix, since fprs is non-decreasing
    k = int(np.count_nonzero(inside))
    x, y = fprs[:k], pros[:k]
    area = float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])))
    if x[-1] < fpr_limit:
        # fprs ends at 1 >= fpr_limit, so a point beyond the limit exists.
        x1, y1 = fprs[k], pros[k]
        y_at = y[-1] + (y1 - y[-1]) * (fpr_limit - x[-1]) / (x1 - x[-1])
        area += 0.5 * (y_at + y[-1]) * (fpr_limit - x[-1])
    return area / fpr_limit


def evaluate(
    labels: Any,
    scores: Any,
    masks: Any = None,
    maps: Any = None,
    fpr_limit: float = 0.3,
) -> dict[str, float | None]:
    """All metrics of methods.md §7 for one class.

    Returns a dict with keys ``image_auroc``, ``image_f1max``,
    ``pixel_auroc``, ``pixel_f1max`` and ``aupro``.  The pixel metrics are
    None when ``masks`` is None (e.g. MixedWM38, which has no pixel masks) or
    when no pixel is anomalous.  ``masks``/``maps`` must hold one entry per
    image of ``labels``.
    """
    out: dict[str, float | None] = {
        "image_auroc": image_auroc(labels, scores),
        "image_f1max": f1_max(labels, scores),
        "pixel_auroc": None,
        "pixel_f1max": None,
        "aupro": None,
    }
    if masks is None and maps is None:
        return out
    if masks is None or maps is None:
        raise ValueError("masks and maps must be given together (or both left out)")
    m, a = _masks_and_maps(masks, maps)
    n_images = _to_numpy(labels, "labels").size
    m_stack = _image_stack(m, "masks")
    if m_stack.shape[0] != n_images:
        raise ValueError(
            f"masks/maps hold {m_stack.shape[0]} images but labels hold {n_images}"
        )
    y, flat = m.ravel(), a.ravel()
    presorted = _descending(flat)  # one sort of all pixels serves all three pixel metrics
    out["pixel_auroc"] = _auroc(y, flat, presorted)
    out["pixel_f1max"] = _f1max(y, flat, presorted)
    out["aupro"] = aupro(m, a, fpr_limit=fpr_limit, _presorted=presorted)
    return out
