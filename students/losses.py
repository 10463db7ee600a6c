"""The distillation loss: named terms, each a pure function, summed by :class:`DistillationLoss`.

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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import LayerTermConfig, LossConfig, ScheduleConfig
from core.schema import NO_LABEL  # a row (or word) without a hard label gets no CE term
from students.base import StudentOutput


ATTENTION_EPS = 1e-12
"""Floor of the student's attention probabilities inside the log of the KL attention term."""


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is True (broadcast), 0 when nothing is; float32 scalar."""
    mask = mask.expand_as(values)
    total = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
    return total / mask.sum().clamp(min=1)


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
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Soft-label distillation on logits, averaged over the valid positions.

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
    return _masked_mean(per_position, valid)


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
    """Multiplier of a term's weight at training progress ``p`` (see :class:`~pipeline.config.ScheduleConfig`).

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


def temperature_at(loss_cfg: LossConfig, progress: float) -> float:
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


@dataclass(frozen=True)
class LossTerms:
    """One step's loss.

    Attributes:
        total: float32 scalar to back-propagate: ``sum_name weights[name] * terms[name]``.
        terms: the unweighted float32 scalar of every enabled term, by config name (for logging).
        weights: the effective weight of every enabled term at this progress
            (``weight * schedule_multiplier``).
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    weights: dict[str, float]


class DistillationLoss(nn.Module):
    """The configured weighted sum of loss terms, with the learned projections it needs.

    ``total = sum_{enabled terms} weight * schedule_multiplier(schedule, p) * term``. A layer
    term (hidden, attention, embedding_cosine, pkd) is the mean over its ``layer_map`` entries,
    so its weight does not grow with the number of mapped layers.

    Projections: when the student and teacher widths differ, ``hidden`` and ``pkd`` each own one
    ``nn.Linear(D_s, D_t)`` shared by all their mapped layers (TinyBERT's ``W_h``, one matrix as in
    its code); with equal widths there is none, so a student initialised from teacher layers
    starts aligned. ``embedding_cosine`` is never projected (DistilBERT's students share the
    teacher's width; a learned projection could meet the cosine target on its own), so it needs
    equal widths. Put this module's parameters in the optimizer with the student's.

    Args:
        loss_cfg: the ``train.loss`` section.
        student_hidden_size: ``D_s``, or None for a family without hidden states.
        teacher_hidden_size: ``D_t``, or None when unknown (logit terms only).

    Raises:
        ValueError: a hidden-state term is enabled without both widths, or embedding_cosine
            with different widths.
    """

    def __init__(self, loss_cfg: LossConfig, student_hidden_size: int | None, teacher_hidden_size: int | None):
        super().__init__()
        self.loss_cfg = loss_cfg
        self.projections = nn.ModuleDict()
        for name in ("hidden", "embedding_cosine", "pkd"):
            if getattr(loss_cfg, name) is None:
                continue
            if student_hidden_size is None or teacher_hidden_size is None:
                raise ValueError(f"train.loss.{name} needs hidden states, but the student or teacher width is "
                                 f"unknown (student {student_hidden_size}, teacher {teacher_hidden_size}); "
                                 f"use a transformer student or remove train.loss.{name}")
            if student_hidden_size != teacher_hidden_size:
                if name == "embedding_cosine":
                    raise ValueError(f"train.loss.embedding_cosine needs equal widths, got student "
                                     f"{student_hidden_size} and teacher {teacher_hidden_size}; set "
                                     f"train.student.hidden_size: {teacher_hidden_size} or use train.loss.hidden")
                self.projections[name] = nn.Linear(student_hidden_size, teacher_hidden_size)

    def forward(self, student: StudentOutput, teacher: Mapping[str, torch.Tensor], labels: torch.Tensor,
                mask: torch.Tensor | None, progress: float) -> LossTerms:
        """The loss of one batch.

        Args:
            student: the student's output; logits [B, C] or [B, W, C], and for the layer terms
                ``hidden_states`` (index l = layer l, 0 = embeddings) and ``attentions`` (index l - 1).
            teacher: the batch's teacher signals, on the student's device: ``logits`` like the
                student's, ``hidden_{l}`` [B, T, D_t], ``attention_{l}`` [B, H, T, T] and ``mask``
                [B, T] bool (real tokens of the token signals). Empty for a CE-only batch.
            labels: int64 [B] or [B, W], -1 where there is no hard label.
            mask: bool [B] or [B, W], the logit positions to distil (padding words of a tagger
                are False); None = all.
            progress: fraction of training done, in [0, 1], for schedules and temperature.

        Returns:
            :class:`LossTerms`.

        Raises:
            ValueError: a teacher signal a term needs is missing from the batch (the message
                names the term and the ``label.emit`` setting that produces it), a student layer
                named by a ``layer_map`` does not exist, or the shapes disagree.
        """
        cfg = self.loss_cfg
        enabled = cfg.terms()
        terms: dict[str, torch.Tensor] = {}
        for name in enabled:
            if name == "ce":
                terms[name] = ce_loss(student.logits, labels)
            elif name == "kd":
                teacher_logits = _signal(teacher, "logits", "kd", "logits are always emitted; rerun the label stage")
                terms[name] = logit_kd_loss(student.logits, teacher_logits, temperature_at(cfg, progress),
                                            cfg.kd.kind, mask)
            else:
                terms[name] = self._layer_term(name, student, teacher)
        weights = {name: term.weight * schedule_multiplier(term.schedule, progress)
                   for name, term in enabled.items()}
        total = sum(weights[name] * value for name, value in terms.items())
        return LossTerms(total=total, terms=terms, weights=weights)

    def _layer_term(self, name: str, student: StudentOutput, teacher: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Mean over ``layer_map`` of one token-level term (hidden, attention, embedding_cosine or pkd)."""
        term_cfg: LayerTermConfig = getattr(self.loss_cfg, name)
        signal, emit = ("attention", "attention_layers") if name == "attention" else ("hidden", "hidden_layers")
        # PKD reads position 0 only; the other terms average over the real tokens.
        token_mask = None if name == "pkd" else _signal(teacher, "mask", name, f"it comes with label.emit.{emit}")
        values = []
        for teacher_layer, student_layer in term_cfg.layer_map.items():
            s = _student_layer(student, name, student_layer)
            t = _signal(teacher, f"{signal}_{teacher_layer}", name, f"add {teacher_layer} to label.emit.{emit}")
            if name == "attention":
                values.append(attention_loss(s, t, token_mask, term_cfg.kind))
            elif name == "hidden":
                values.append(hidden_mse_loss(self._project(name, s), t, token_mask))
            elif name == "embedding_cosine":
                values.append(embedding_cosine_loss(s, t, token_mask))
            else:
                values.append(pkd_loss(self._project(name, s[:, 0]), t[:, 0]))  # [CLS] = position 0
        return torch.stack(values).mean()

    def _project(self, name: str, states: torch.Tensor) -> torch.Tensor:
        """Student states [..., D_s] through the term's ``W_h`` to [..., D_t]; unchanged when widths match."""
        return self.projections[name](states) if name in self.projections else states


def _signal(teacher: Mapping[str, torch.Tensor], key: str, term: str, fix: str) -> torch.Tensor:
    """``teacher[key]``, or a ValueError naming the config term that needs it and how to emit it."""
    if key not in teacher:
        raise ValueError(f"train.loss.{term} needs the teacher signal {key!r}, which this batch lacks "
                         f"({fix}); present: {sorted(teacher) or 'none'}")
    return teacher[key]


def _student_layer(student: StudentOutput, term: str, layer: int) -> torch.Tensor:
    """The student's state of ``layer`` for ``term`` (attention maps for "attention", else hidden
    states), or a ValueError naming the ``layer_map`` entry that points past the student."""
    if term == "attention":
        layers, first, kind = student.attentions, 1, "attention maps"
    else:
        layers, first, kind = student.hidden_states, 0, "hidden states"
    if not layers:
        raise ValueError(f"train.loss.{term} needs the student's {kind}, which this student family does not return")
    if not first <= layer < first + len(layers):
        raise ValueError(f"train.loss.{term}.layer_map names student layer {layer}, but the student's {kind} "
                         f"cover layers {first}..{first + len(layers) - 1}")
    return layers[layer - first]
