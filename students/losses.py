"""The distillation loss terms, each a pure function; :data:`students.terms.TERMS` names them and
:class:`students.distillation.DistillationLoss` sums them.

One loss path serves every student: the terms read a :class:`~students.base.StudentOutput`
(logits, hidden states, attention maps) and the teacher signals of the batch, so a BiLSTM
trained on logits alone and a transformer trained on every signal share this code.

Each term function computes in float32 whatever the dtype of its inputs (fp16 teacher
signals from storage, bf16/fp16 activations under autocast), averages over the valid
positions only (padding never changes a value) and returns a float32 scalar that is 0, not
NaN, when no position is valid.

    term               function                       paper
    ce                 :func:`ce_loss`                -
    kd                 :func:`logit_kd_loss`          Hinton et al. 2015 (kl), Tang et al. 2019 (mse)
    hidden             :func:`hidden_mse_loss`        Jiao et al. 2020, TinyBERT
    attention          :func:`attention_loss`         TinyBERT (mse), Wang et al. 2020, MiniLM (kl)
    embedding_cosine   :func:`embedding_cosine_loss`  Sanh et al. 2019, DistilBERT
    pkd                :func:`pkd_loss`               Sun et al. 2019, Patient KD
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from students.loss_config import LossConfigBase, ScheduleConfig
from core.schema import NO_LABEL  # a row (or word) without a hard label gets no CE term


ATTENTION_EPS = 1e-12
"""Floor of the student's attention probabilities inside the log of the KL attention term."""


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is True (broadcast), 0 when nothing is; float32 scalar.

    With ``weights`` (same shape as ``values``) it is the weighted mean ``sum(w * v) / sum(w)``
    over those positions.
    """
    mask = mask.expand_as(values)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    if weights is None:
        return torch.where(mask, values, zero).sum() / mask.sum().clamp(min=1)
    weights = torch.where(mask, weights.to(values.dtype), zero)
    return torch.where(mask, values * weights, zero).sum() / weights.sum().clamp(min=torch.finfo(values.dtype).tiny)


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Hard-label cross-entropy, averaged over the labeled positions.

    ``CE = (1 / N) * sum_{i: y_i != -1} -log softmax(s_i)[y_i]``, N the number of labeled positions.

    Args:
        logits: float [B, C] (sentences) or [B, W, C] (taggers, W words); any float dtype.
        labels: int64 [B] or [B, W]; -1 (:data:`NO_LABEL`) marks a position without a label
            (an unlabeled transfer-set row, a padding word).

    Returns:
        float32 scalar; 0 (not NaN, with a finite zero gradient) when no position is labeled.
    """
    s = logits.float().reshape(-1, logits.shape[-1])  # [N, C]
    y = labels.reshape(-1)  # [N]
    labeled = y != NO_LABEL
    per_position = F.cross_entropy(s, y.clamp(min=0), reduction="none")  # [N]; -1 -> dummy class 0, masked out
    return _masked_mean(per_position, labeled)


def logit_kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float, kind: Literal["kl", "mse"],
                  mask: torch.Tensor | None = None, background_weight: float = 1.0) -> torch.Tensor:
    """Soft-label distillation on logits, a weighted mean over the valid positions.

    Per position, with student logits ``s``, teacher logits ``t`` and temperature ``tau``::

        kl:  tau^2 * sum_c p_c (log p_c - log q_c),  p = softmax(t / tau), q = softmax(s / tau)
             (Hinton et al. 2015; tau^2 keeps the gradients on the scale of the CE term)
        mse: (1 / C) * sum_c (s_c - t_c)^2, raw logits, no temperature (Tang et al. 2019)

    Args:
        student: float [B, C] or [B, W, C].
        teacher: float, same shape as ``student``.
        temperature: ``tau`` > 0; unused by ``mse``.
        kind: "kl" or "mse".
        mask: bool [B] or [B, W], True at the positions to distil; None = every position.
        background_weight: weight of the positions whose teacher's top class is class 0 (a
            tagger's ``O``); the others weigh 1, and the mean divides by the weights' sum.

    Returns:
        float32 scalar; 0 when no position is valid.

    Raises:
        ValueError: on an unknown ``kind`` or different student and teacher shapes.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ")
    s, t = student.float(), teacher.float()  # [..., C]
    if kind == "kl":
        log_q = F.log_softmax(s / temperature, dim=-1)
        log_p = F.log_softmax(t / temperature, dim=-1)
        per_position = temperature**2 * (log_p.exp() * (log_p - log_q)).sum(dim=-1)  # [B] or [B, W]
    elif kind == "mse":
        per_position = (s - t).pow(2).mean(dim=-1)
    else:
        raise ValueError(f"unknown kind {kind!r}; choose from ['kl', 'mse']")
    valid = torch.ones_like(per_position, dtype=torch.bool) if mask is None else mask.bool()
    weights = None if background_weight == 1.0 else torch.where(t.argmax(dim=-1) == 0, background_weight, 1.0)
    return _masked_mean(per_position, valid, weights)


def _check_shapes(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, what: str) -> None:
    """ValueError unless student and teacher shapes match and ``mask`` is their [B, T] (dims 0 and -2)."""
    if student.shape != teacher.shape:
        raise ValueError(f"{what}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ; "
                         f"tokenise the student like the teacher (and project it to the teacher's width)")
    if tuple(mask.shape) != (teacher.shape[0], teacher.shape[-2]):
        raise ValueError(f"{what}: mask {tuple(mask.shape)} is not [B, T] of the states {tuple(teacher.shape)}")


def hidden_mse_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden-state MSE over real tokens and dimensions (TinyBERT, Jiao et al. 2020, eq. 7).

    ``L = (1 / (N * D)) * sum_{b, i: mask} sum_d (h^S W_h - h^T)_{b,i,d}^2``, N the number of real
    tokens. The projection ``W_h`` is applied by the caller (:class:`DistillationLoss` owns it).

    Args:
        student: float [B, T, D], already projected to the teacher's width.
        teacher: float [B, T, D].
        mask: bool [B, T], True at real tokens.

    Returns:
        float32 scalar; 0 when no token is real.

    Raises:
        ValueError: if the shapes differ (project the student first) or the mask is not [B, T].
    """
    _check_shapes(student, teacher, mask, "hidden_mse_loss")
    per_token = (student.float() - teacher.float()).pow(2).mean(dim=-1)  # [B, T]
    return _masked_mean(per_token, mask.bool())


def attention_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                   kind: Literal["kl", "mse"]) -> torch.Tensor:
    """Attention-map distillation between post-softmax maps, over real query/key positions.

    ``mse`` (TinyBERT, eq. 3): mean of ``(A^S - A^T)^2`` over heads and the (query, key) pairs
    where both tokens are real. ``kl`` (MiniLM, Wang et al. 2020, eq. 5 style): per head and
    real query row ``i``, ``sum_{k real} A^T_ik (log A^T_ik - log A^S_ik)``, averaged over heads
    and real rows. Maps are not renormalised over the real keys: a student masking its padding
    already puts (almost) no mass there. ``A^S`` is floored at :data:`ATTENTION_EPS` inside the
    log so that a zero probability gives a large finite loss, not inf.

    Args:
        student: float [B, H, T, T] (batch, heads, query, key), rows summing to 1.
        teacher: float [B, H, T, T], the same heads in the same order.
        mask: bool [B, T], True at real tokens.
        kind: "kl" or "mse".

    Returns:
        float32 scalar; 0 when no token is real.

    Raises:
        ValueError: on different head counts (label.emit.attention_heads may keep a subset),
            other shape differences, a mask that is not [B, T], or an unknown ``kind``.
    """
    if student.shape[1] != teacher.shape[1]:
        raise ValueError(f"attention_loss: the student has {student.shape[1]} heads and the teacher maps "
                         f"{teacher.shape[1]}; they must match (see label.emit.attention_heads)")
    _check_shapes(student, teacher, mask, "attention_loss")
    s, t = student.float(), teacher.float()  # [B, H, T, T]
    real = mask.bool()
    rows = real[:, None, :, None]  # [B, 1, T(query), 1]
    keys = real[:, None, None, :]  # [B, 1, 1, T(key)]
    if kind == "mse":
        return _masked_mean((s - t).pow(2), rows & keys)
    if kind == "kl":
        log_s = s.clamp(min=ATTENTION_EPS).log()
        pointwise = torch.xlogy(t, t) - t * log_s  # [B, H, T, T]; 0 where the teacher puts no mass
        per_row = torch.where(keys, pointwise, torch.zeros((), device=s.device)).sum(dim=-1)  # [B, H, T]
        return _masked_mean(per_row, real[:, None, :])
    raise ValueError(f"unknown kind {kind!r}; choose from ['kl', 'mse']")


def embedding_cosine_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cosine embedding loss of DistilBERT (Sanh et al. 2019): mean over real tokens of ``1 - cos(h^S, h^T)``.

    Args:
        student: float [B, T, D].
        teacher: float [B, T, D], the same width: the loss aligns directions in one space.
        mask: bool [B, T], True at real tokens.

    Returns:
        float32 scalar in [0, 2]; 0 when no token is real.

    Raises:
        ValueError: if the shapes differ (widths included) or the mask is not [B, T].
    """
    _check_shapes(student, teacher, mask, "embedding_cosine_loss")
    per_token = 1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-8)  # [B, T]
    return _masked_mean(per_token, mask.bool())


def pkd_loss(student_cls: torch.Tensor, teacher_cls: torch.Tensor) -> torch.Tensor:
    """Patient-KD loss on [CLS] states (Sun et al. 2019, eq. 4), for one mapped layer.

    ``L = (1 / B) * sum_b || s_b / ||s_b|| - t_b / ||t_b|| ||_2^2``, in [0, 4].

    Args:
        student_cls: float [B, D], the student's [CLS] state projected to the teacher's width.
        teacher_cls: float [B, D].

    Returns:
        float32 scalar.

    Raises:
        ValueError: if the shapes differ.
    """
    if student_cls.shape != teacher_cls.shape:
        raise ValueError(f"pkd_loss: student [CLS] {tuple(student_cls.shape)} and teacher [CLS] "
                         f"{tuple(teacher_cls.shape)} differ; project the student state first")
    s = F.normalize(student_cls.float(), dim=-1)  # [B, D]
    t = F.normalize(teacher_cls.float(), dim=-1)
    return (s - t).pow(2).sum(dim=-1).mean()


def schedule_multiplier(schedule: ScheduleConfig | None, progress: float) -> float:
    """Multiplier of a term's weight at training progress ``p`` (see :class:`~students.loss_config.ScheduleConfig`).

    None: 1. ``linear_warmup``: ``min(1, p / over)``. ``linear_decay``: ``1 - (1 - final) * min(1, p / over)``.

    Raises:
        ValueError: if ``progress`` is outside [0, 1].
    """
    if not 0 <= progress <= 1:
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    if schedule is None:
        return 1.0
    ramp = min(1.0, progress / schedule.over)
    if schedule.kind == "linear_warmup":
        return ramp
    return 1.0 - (1.0 - schedule.final) * ramp


def temperature_at(loss_cfg: LossConfigBase, progress: float) -> float:
    """KD temperature at progress ``p``: ``temperature``, or linear to ``final_temperature`` over training.

    ``tau(p) = tau_0 + (tau_final - tau_0) * p``.

    Raises:
        ValueError: if ``progress`` is outside [0, 1].
    """
    if not 0 <= progress <= 1:
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    if loss_cfg.final_temperature is None:
        return loss_cfg.temperature
    return loss_cfg.temperature + (loss_cfg.final_temperature - loss_cfg.temperature) * progress
