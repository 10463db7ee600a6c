"""The blended KD loss against values computed by hand from its formula (plain Python math)."""

from __future__ import annotations

import math

import pytest
import torch

from students.losses import blended_kd_loss

STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]


def softmax(row: list[float], tau: float = 1.0) -> list[float]:
    exps = [math.exp(x / tau) for x in row]
    return [e / sum(exps) for e in exps]


def ce_by_hand(row: list[float], label: int) -> float:
    return -math.log(softmax(row)[label])


def kl_by_hand(student: list[float], teacher: list[float], tau: float) -> float:
    p, q = softmax(teacher, tau), softmax(student, tau)
    return tau**2 * sum(pc * math.log(pc / qc) for pc, qc in zip(p, q))


def mse_by_hand(student: list[float], teacher: list[float]) -> float:
    return sum((s - t) ** 2 for s, t in zip(student, teacher)) / len(student)


def loss(labels: list[int], **kwargs):
    return blended_kd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(labels), **kwargs)


def test_kl_matches_hand_computation():
    out = loss([1, 2], alpha=0.3, temperature=2.0, kd="kl")
    ce = [ce_by_hand(STUDENT[0], 1), ce_by_hand(STUDENT[1], 2)]
    kd = [kl_by_hand(s, t, 2.0) for s, t in zip(STUDENT, TEACHER)]
    assert out.ce.item() == pytest.approx(sum(ce) / 2, rel=1e-5)
    assert out.kd.item() == pytest.approx(sum(kd) / 2, rel=1e-5)
    assert out.total.item() == pytest.approx(sum(0.3 * c + 0.7 * k for c, k in zip(ce, kd)) / 2, rel=1e-5)


def test_mse_matches_hand_computation():
    # Row 0: (1-2)^2 + (2-0)^2 + (0.5-1)^2 = 5.25 -> 1.75; row 1: 1 + 4 + 4 = 9 -> 3.
    out = loss([0, 2], alpha=0.5, temperature=7.0, kd="mse")
    assert [mse_by_hand(s, t) for s, t in zip(STUDENT, TEACHER)] == [1.75, 3.0]
    assert out.kd.item() == pytest.approx((1.75 + 3.0) / 2)
    ce = [ce_by_hand(STUDENT[0], 0), ce_by_hand(STUDENT[1], 2)]
    assert out.total.item() == pytest.approx(sum(0.5 * c + 0.5 * k for c, k in zip(ce, [1.75, 3.0])) / 2, rel=1e-5)


def test_unlabeled_rows_get_kd_only():
    out = loss([1, -1], alpha=0.8, temperature=1.0, kd="kl")
    kd = [kl_by_hand(s, t, 1.0) for s, t in zip(STUDENT, TEACHER)]
    ce0 = ce_by_hand(STUDENT[0], 1)
    assert out.ce.item() == pytest.approx(ce0, rel=1e-5)  # mean over the one labeled row
    assert out.total.item() == pytest.approx((0.8 * ce0 + 0.2 * kd[0] + kd[1]) / 2, rel=1e-5)


def test_all_unlabeled_gives_zero_ce_not_nan():
    out = loss([-1, -1], alpha=0.5, temperature=2.0, kd="kl")
    assert out.ce.item() == 0.0
    assert out.total.item() == pytest.approx(out.kd.item())
    assert not math.isnan(out.total.item())
    student = torch.tensor(STUDENT, requires_grad=True)
    blended_kd_loss(student, torch.tensor(TEACHER), torch.tensor([-1, -1]), alpha=0.5, temperature=2.0,
                    kd="kl").total.backward()
    assert torch.isfinite(student.grad).all()


def test_alpha_one_and_zero_select_one_term():
    ce = [ce_by_hand(STUDENT[0], 0), ce_by_hand(STUDENT[1], 1)]
    kd = [kl_by_hand(s, t, 3.0) for s, t in zip(STUDENT, TEACHER)]
    assert loss([0, 1], alpha=1.0, temperature=3.0, kd="kl").total.item() == pytest.approx(sum(ce) / 2, rel=1e-5)
    assert loss([0, 1], alpha=0.0, temperature=3.0, kd="kl").total.item() == pytest.approx(sum(kd) / 2, rel=1e-5)


def test_tau_squared_scale():
    # Without tau^2, KL shrinks like 1/tau^2 at high temperature. With it, KD_i tends to
    # (1 / 2C) * sum_c (s_c - t_c)^2 on mean-centred logits (Hinton et al. 2015, section 2.1),
    # so at tau = 100 the KD term still sits on the scale of the logits' differences.
    tau = 100.0
    kd = loss([-1, -1], alpha=0.5, temperature=tau, kd="kl").kd.item()
    assert kd == pytest.approx(sum(kl_by_hand(s, t, tau) for s, t in zip(STUDENT, TEACHER)) / 2, rel=1e-3)

    def centred(row):
        return [x - sum(row) / len(row) for x in row]

    limit = sum(sum((a - b) ** 2 for a, b in zip(centred(s), centred(t))) / (2 * 3)
                for s, t in zip(STUDENT, TEACHER)) / 2
    assert kd == pytest.approx(limit, rel=1e-2)


def test_ce_only_without_teacher_logits():
    out = blended_kd_loss(torch.tensor(STUDENT), None, torch.tensor([2, 0]), alpha=1.0, temperature=2.0, kd="kl")
    assert out.total.item() == pytest.approx((ce_by_hand(STUDENT[0], 2) + ce_by_hand(STUDENT[1], 0)) / 2, rel=1e-5)
    assert out.kd.item() == 0.0
    with pytest.raises(ValueError, match="teacher logits are required"):
        blended_kd_loss(torch.tensor(STUDENT), None, torch.tensor([2, -1]), alpha=1.0, temperature=2.0, kd="kl")


def test_half_precision_logits_are_computed_in_fp32():
    out = blended_kd_loss(torch.tensor(STUDENT, dtype=torch.bfloat16), torch.tensor(TEACHER, dtype=torch.bfloat16),
                          torch.tensor([1, 2]), alpha=0.5, temperature=2.0, kd="kl")
    assert out.total.dtype == out.ce.dtype == out.kd.dtype == torch.float32


def test_unknown_kd_is_rejected():
    with pytest.raises(ValueError, match="unknown kd 'cosine'"):
        loss([0, 1], alpha=0.5, temperature=2.0, kd="cosine")
