"""Threshold rules on score distributions with known answers (tabad.inspection.thresholds)."""

from __future__ import annotations

import numpy as np
import pytest

from tabad.inspection.thresholds import (calibrate, calibrate_labelled, false_positive_rate, normalise,
                                         threshold_at_fpr, threshold_at_recall, threshold_f1max)


def test_fpr_rule_on_integers():
    s = np.arange(100)  # 0..99
    assert threshold_at_fpr(s, 0.05) == 94  # 95..99 lie above: 5 of 100
    assert threshold_at_fpr(s, 0.0) == 99  # nothing above the largest
    assert threshold_at_fpr(s, 0.049) == 95  # floor(4.9) = 4 allowed
    assert false_positive_rate(s, threshold_at_fpr(s, 0.05)) == pytest.approx(0.05)


def test_fpr_rule_is_exact_at_boundaries_and_with_ties():
    # 0.05 * 20 = 1.0000000000000002 or 0.9999999999999999 in floats: one false positive is allowed.
    s = np.linspace(0, 1, 20)
    assert false_positive_rate(s, threshold_at_fpr(s, 0.05)) == pytest.approx(1 / 20)
    ties = np.array([1, 2, 3, 3, 3, 3])
    t = threshold_at_fpr(ties, 0.5)  # 3 allowed above: but four 3s tie, so none of them may be flagged
    assert t == 3 and false_positive_rate(ties, t) == 0.0


@pytest.mark.parametrize("fpr", [0.01, 0.05, 0.2])
def test_fpr_rule_on_a_known_distribution(fpr):
    # Calibrated on many normal draws, the FPR on fresh draws is the target (the Gaussian quantile).
    rng = np.random.default_rng(0)
    t = threshold_at_fpr(rng.normal(size=200_000), fpr)
    fresh = rng.normal(size=200_000)
    assert false_positive_rate(fresh, t) == pytest.approx(fpr, abs=0.003)
    from statistics import NormalDist

    assert t == pytest.approx(NormalDist().inv_cdf(1 - fpr), abs=0.02)


def test_fpr_rule_rejects_bad_input():
    with pytest.raises(ValueError):
        threshold_at_fpr([], 0.1)
    with pytest.raises(ValueError):
        threshold_at_fpr([1.0, np.nan], 0.1)
    with pytest.raises(ValueError):
        threshold_at_fpr([1.0], 1.0)


def test_f1max_on_separable_scores_splits_the_classes():
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1])
    t = threshold_f1max(scores, labels)
    assert 0.3 <= t < 0.8
    assert ((scores > t) == labels.astype(bool)).all()


def test_f1max_known_answer_with_overlap():
    # Flag {0.9, 0.7}: tp 1, fp 1 -> F1 0.5; flag {0.9, 0.7, 0.6, 0.5}: tp 3, fp 1 -> F1 6/7 (best);
    # flag everything: tp 3, fp 3 -> F1 2/3.
    scores = np.array([0.9, 0.7, 0.6, 0.5, 0.2, 0.1])
    labels = np.array([1, 0, 1, 1, 0, 0])
    t = threshold_f1max(scores, labels)
    assert t == 0.2  # s > 0.2 flags exactly the first four


def test_recall_rule_takes_the_highest_threshold():
    scores = np.array([0.9, 0.7, 0.6, 0.5, 0.2, 0.1])
    labels = np.array([1, 0, 1, 1, 0, 0])
    assert threshold_at_recall(scores, labels, 1 / 3) == 0.7  # only 0.9 flagged
    assert threshold_at_recall(scores, labels, 0.6) == 0.5  # 0.9 and 0.6: two of three
    assert threshold_at_recall(scores, labels, 1.0) == 0.2
    assert threshold_at_recall(np.array([0.3, 0.1]), np.array([0, 1]), 1.0) < 0.1  # flag everything


def test_labelled_rules_need_anomalies():
    with pytest.raises(ValueError, match="no anomalous"):
        threshold_f1max([0.1, 0.2], [0, 0])
    t = calibrate_labelled([0.1, 0.2, 0.9], [0, 0, 1], "recall", recall=1.0)
    assert t.rule == "recall" and t.achieved == 1.0 and t.low == 0.1


def test_normalisation_puts_the_threshold_at_one_half():
    normal = np.array([1.0, 2.0, 3.0, 4.0])
    c = calibrate(normal, 0.0)
    assert c.value == 4.0 and c.low == 1.0 and c.n == 4 and c.achieved == 0.0
    z = normalise(np.array([1.0, 4.0, 7.0, 100.0, -5.0]), c.value, c.low)
    assert z.tolist() == [0.0, 0.5, 1.0, 1.0, 0.0]
    assert (np.diff(normalise(np.linspace(0, 10, 50), 4.0, 1.0)) >= 0).all()  # monotone
