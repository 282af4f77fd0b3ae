"""The anomaly-text-aware loss on hand-checked toy batches (paper Eq. 4-6)."""

import math

import pytest
import torch
import torch.nn.functional as F

from tabad.pretrain.loss import tab_loss


def _ce(logits, target):
    """Cross-entropy written out: -log softmax, averaged over the batch."""
    total = 0.0
    for row, t in zip(logits, target):
        total += -(row[t] - math.log(sum(math.exp(v) for v in row)))
    return total / len(target)


# Two classes, 2-d text space: T_n and T_a are orthonormal axes.
T_N = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
T_A = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
F_N = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
F_A = torch.tensor([[0.0, 1.0], [0.8, 0.6]])
Y = torch.tensor([0, 1])


def test_tab_loss_hand_checked():
    scale = 2.0
    out = tab_loss(F_N, F_A, Y, "tab", T_N, T_A, scale)
    # normal logits: rows [2, 0] and [1.2, 1.6]; abnormal logits: [2, 0] and [1.2, 1.6]
    ln = [[2.0, 0.0], [1.2, 1.6]]
    la = [[2.0, 0.0], [1.2, 1.6]]
    expected = (_ce(ln, [0, 1]) + _ce(la, [0, 1])) / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.loss_normal == pytest.approx(_ce(ln, [0, 1]), abs=1e-6)
    assert out.acc_normal == 1.0 and out.acc_abnormal == 1.0


def test_tab_loss_scores_each_branch_against_its_own_text():
    # Swapping the abnormal text for the normal one must change the loss.
    a = tab_loss(F_N, F_A, Y, "tab", T_N, T_A, 2.0).loss.item()
    b = tab_loss(F_N, F_A, Y, "tab", T_N, T_N, 2.0).loss.item()
    assert a != pytest.approx(b)


def test_joint_loss_uses_2c_rows_and_shifted_targets():
    scale = 3.0
    out = tab_loss(F_N, F_A, Y, "joint", T_N, T_A, scale)
    both = torch.cat([T_N, T_A])
    ln = (scale * F_N @ both.T).tolist()
    la = (scale * F_A @ both.T).tolist()
    expected = (_ce(ln, [0, 1]) + _ce(la, [2, 3])) / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-5)
    assert out.logits_normal.shape == (2, 4)


def test_normal_only_ignores_synthetic_images():
    out = tab_loss(F_N, None, Y, "normal-only", T_N, T_A, 2.0)
    assert out.loss.item() == pytest.approx(_ce([[2.0, 0.0], [1.2, 1.6]], [0, 1]), abs=1e-6)
    assert math.isnan(out.loss_abnormal)


def test_classification_baseline_is_2c_way_ce():
    logits_n = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.5]])
    logits_a = torch.tensor([[0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    out = tab_loss(logits_n, logits_a, Y, "classification")
    expected = (F.cross_entropy(logits_n, Y) + F.cross_entropy(logits_a, Y + 2)).item() / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.acc_abnormal == 1.0


def test_loss_gradient_flows_to_features():
    f_n = F_N.clone().requires_grad_(True)
    tab_loss(f_n, F_A, Y, "tab", T_N, T_A, 2.0).loss.backward()
    assert f_n.grad is not None and f_n.grad.abs().sum() > 0


def test_unknown_loss():
    with pytest.raises(ValueError):
        tab_loss(F_N, F_A, Y, "nope", T_N, T_A, 1.0)
