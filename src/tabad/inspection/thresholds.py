"""Threshold rules and score normalisation: pure functions on numpy arrays.

A part is **anomalous when its score is strictly above the threshold**.

* :func:`threshold_at_fpr`: needs only normal images. The smallest threshold
  whose false-positive rate on the given normal scores is at most ``fpr``:
  with n scores, at most ⌊fpr·n⌋ of them lie above it. With 20 held-out
  images and fpr 0.01 that is the largest normal score: the measured FPR on
  new normal parts is then about 1/(n+1), so hold out enough images for the
  rate you ask for (the fit record says how many were used).
* :func:`threshold_f1max`: needs labelled anomalies: the threshold of the best F1.
* :func:`threshold_at_recall`: needs labelled anomalies: the largest threshold
  that still flags at least ``recall`` of them (fewest false alarms at that recall).

:func:`normalise` maps raw scores so that the threshold is 0.5: the lowest
normal calibration score goes to 0, the threshold to 0.5, and a score as far
above the threshold as the threshold is above that minimum to 1 (clipped to
[0, 1]). It is monotone, so it changes no ranking and no verdict.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

RULES = ("fpr", "f1", "recall")


def _scores(values, name: str = "scores") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"{name}: no values")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: non-finite values")
    return arr


def threshold_at_fpr(normal_scores, fpr: float) -> float:
    """Smallest t with #{s > t} <= floor(fpr * n) over the normal scores."""
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"fpr={fpr} must be in [0, 1)")
    s = np.sort(_scores(normal_scores, "normal scores"))
    n = s.size
    k = int(math.floor(fpr * n + 1e-9))  # allowed false positives (the epsilon absorbs 0.05 * 20 = 0.99999...)
    return float(s[n - 1 - k])


def false_positive_rate(normal_scores, threshold: float) -> float:
    s = _scores(normal_scores, "normal scores")
    return float(np.mean(s > threshold))


def _sweep(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Distinct candidate thresholds (descending) with true and false positives when flagging s > t."""
    s, y = _scores(scores), np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if not y.any():
        raise ValueError("no anomalous samples: use the false-positive-rate rule (threshold_at_fpr)")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each run of equal scores
    tp, fp = np.cumsum(y)[distinct], np.cumsum(~y)[distinct]
    # Flagging s >= s[i] equals flagging s > the next lower distinct value (or -inf at the end).
    lower = np.r_[s[distinct][1:], -np.inf]
    return lower, tp, fp, int(y.sum())


def threshold_f1max(scores, labels) -> float:
    """The threshold of the best F1 (ties: the higher threshold, fewer false alarms)."""
    t, tp, fp, pos = _sweep(scores, labels)
    f1 = 2 * tp / (tp + fp + pos)
    best = int(np.argmax(f1))  # the first maximum = the highest threshold reaching it
    return _finite(t[best], scores)


def threshold_at_recall(scores, labels, recall: float) -> float:
    """The largest threshold flagging at least ``recall`` of the anomalous samples."""
    if not 0.0 < recall <= 1.0:
        raise ValueError(f"recall={recall} must be in (0, 1]")
    t, tp, _fp, pos = _sweep(scores, labels)
    best = int(np.argmax(tp >= recall * pos - 1e-9))
    return _finite(t[best], scores)


def _finite(t: float, scores) -> float:
    # "Flag everything" has no finite lower neighbour: any value below the minimum does.
    return float(t) if np.isfinite(t) else float(np.min(scores)) - 1.0


def normalise(raw, threshold: float, low: float) -> np.ndarray:
    """Scores in [0, 1] with the threshold at 0.5 and ``low`` (the lowest normal score) at 0."""
    spread = max(threshold - low, 1e-12)
    return np.clip(0.5 + 0.5 * (np.asarray(raw, dtype=np.float64) - threshold) / spread, 0.0, 1.0)


@dataclass(frozen=True)
class Threshold:
    """One calibrated threshold and how it was chosen."""

    value: float
    #: "fpr", "f1" or "recall".
    rule: str
    #: the lowest normal calibration score (0 after normalisation).
    low: float
    #: the rule's target (the FPR or the recall); None for f1.
    target: float | None = None
    #: how many values it was chosen on (images, or pixels).
    n: int = 0
    #: the rate achieved on the calibration data (false positives on normals; recall on anomalies).
    achieved: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Threshold":
        return cls(**d)


def calibrate(normal_scores, fpr: float) -> Threshold:
    """The default rule: target false-positive rate on held-out normal scores."""
    s = _scores(normal_scores, "normal scores")
    t = threshold_at_fpr(s, fpr)
    return Threshold(t, "fpr", float(s.min()), fpr, int(s.size), false_positive_rate(s, t))


def calibrate_labelled(scores, labels, rule: str, recall: float | None = None) -> Threshold:
    """F1-max or target recall on a labelled validation set (normal scores give ``low``)."""
    s, y = _scores(scores), np.asarray(labels).ravel().astype(bool)
    if rule == "f1":
        t, target = threshold_f1max(s, y), None
    elif rule == "recall":
        if recall is None:
            raise ValueError("the recall rule needs a target recall")
        t, target = threshold_at_recall(s, y, recall), recall
    else:
        raise ValueError(f"rule={rule!r}; choose one of {RULES}")
    low = float(s[~y].min()) if (~y).any() else float(s.min())
    return Threshold(t, rule, low, target, int(s.size), float(np.mean(s[y] > t)))
