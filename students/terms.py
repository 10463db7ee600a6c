"""The distillation loss terms: one explicit table that configures, computes and documents them.

Adding a term is one loss function (in :mod:`students.losses` or its own module) and one line in
:data:`TERMS`. The ``train.loss`` section (:class:`LossConfig`), the layers the label stage must
emit, the student checks and :class:`students.distillation.DistillationLoss` all read this table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import create_model

from students.base import StudentOutput
from students.loss_config import (AttentionTermConfig, LayerTermConfig, LogitTermConfig, LossConfigBase,
                                  TermConfig)
from students.losses import (attention_loss, ce_loss, embedding_cosine_loss, hidden_mse_loss, logit_kd_loss,
                             pkd_loss)


@dataclass(frozen=True)
class LogitBatch:
    """What a logit term reads from one batch (see :meth:`students.distillation.DistillationLoss.forward`)."""

    student: StudentOutput
    teacher: Mapping[str, torch.Tensor]
    labels: torch.Tensor
    mask: torch.Tensor | None
    temperature: float


Projection = Callable[[torch.Tensor], torch.Tensor]
"""Student states [..., D_s] -> [..., D_t] through the term's learned ``W_h`` (identity when widths match)."""


@dataclass(frozen=True)
class Term:
    """One loss term of ``train.loss``.

    Attributes:
        config: its section type (a :class:`~students.loss_config.LayerTermConfig` for layer terms).
        loss: for a logit term ``loss(cfg, batch: LogitBatch) -> float32 scalar``; for a layer term
            ``loss(cfg, student [B, ...], teacher [B, ...], token_mask [B, T] | None, project)``,
            the value of one ``layer_map`` entry (the term is their mean).
        summary: one line for the docs.
        default: its value when ``train.loss`` leaves it out (None = off).
        signal: what it compares: ``logits`` (a logit term), or the ``hidden`` states or
            ``attention`` maps of the layers in its ``layer_map``.
        width: ``projected``: a learned projection maps the student's width to the teacher's when
            they differ; ``equal``: the widths must match; ``any``: widths play no part.
        token_mask: a layer term reads the teacher's real-token mask [B, T].
    """

    config: type[TermConfig]
    loss: Callable[..., torch.Tensor]
    summary: str
    default: TermConfig | None = None
    signal: Literal["logits", "hidden", "attention"] = "logits"
    width: Literal["any", "equal", "projected"] = "any"
    token_mask: bool = True

    @property
    def needs_layer_map(self) -> bool:
        """Whether it reads teacher layers named by a ``layer_map`` (and so needs ``label.emit``)."""
        return self.signal != "logits"

    @property
    def first_layer(self) -> int:
        """The lowest layer its ``layer_map`` may name (0 = embedding output; attention maps from 1)."""
        return getattr(self.config, "first_layer", 0)


def teacher_signal(teacher: Mapping[str, torch.Tensor], key: str, term: str, fix: str) -> torch.Tensor:
    """``teacher[key]``, or a ValueError naming the config term that needs it and how to emit it."""
    if key not in teacher:
        raise ValueError(f"train.loss.{term} needs the teacher signal {key!r}, which this batch lacks "
                         f"({fix}); present: {sorted(teacher) or 'none'}")
    return teacher[key]


def _kd(cfg: LogitTermConfig, batch: LogitBatch) -> torch.Tensor:
    teacher_logits = teacher_signal(batch.teacher, "logits", "kd", "logits are always emitted; rerun the label stage")
    return logit_kd_loss(batch.student.logits, teacher_logits, batch.temperature, cfg.kind, batch.mask,
                         cfg.background_weight)


TERMS: dict[str, Term] = {
    "ce": Term(TermConfig, lambda cfg, batch: ce_loss(batch.student.logits, batch.labels),
               "hard-label cross-entropy (labeled rows only)", default=TermConfig(weight=0.5)),
    "kd": Term(LogitTermConfig, _kd, "logit distillation: tau^2 KL (Hinton et al. 2015) or MSE (Tang et al. 2019)",
               default=LogitTermConfig(weight=0.5)),
    "hidden": Term(LayerTermConfig, lambda cfg, s, t, mask, project: hidden_mse_loss(project(s), t, mask),
                   "hidden-state MSE through a learned projection (TinyBERT)", signal="hidden", width="projected"),
    "attention": Term(AttentionTermConfig, lambda cfg, s, t, mask, project: attention_loss(s, t, mask, cfg.kind),
                      "attention maps, MSE (TinyBERT) or KL (MiniLM)", signal="attention"),
    "embedding_cosine": Term(LayerTermConfig, lambda cfg, s, t, mask, project: embedding_cosine_loss(s, t, mask),
                             "cosine between hidden vectors (DistilBERT)", signal="hidden", width="equal"),
    "pkd": Term(LayerTermConfig, lambda cfg, s, t, mask, project: pkd_loss(project(s[:, 0]), t[:, 0]),
                "normalised [CLS] states (Sun et al. 2019, Patient KD)", signal="hidden", width="projected",
                token_mask=False),
}
"""Every loss term by its ``train.loss`` name, in the order they are computed and logged."""


LossConfig = create_model(
    "LossConfig", __base__=LossConfigBase, __module__=__name__,
    __doc__="The ``train.loss`` section: a weighted sum of the named terms of :data:`TERMS`, each optional "
            "(None = off), each logged on its own; ``temperature`` may be scheduled linearly to "
            "``final_temperature`` over training.",
    **{name: (term.config | None, term.default) for name, term in TERMS.items()})


def teacher_layers(loss: LossConfigBase) -> dict[str, list[int]]:
    """The teacher layers the loss's layer maps read, sorted: ``{"hidden": [...], "attention": [...]}``."""
    layers: dict[str, set[int]] = {"hidden": set(), "attention": set()}
    for name, term_cfg in loss.terms().items():
        if TERMS[name].needs_layer_map:
            layers[TERMS[name].signal] |= set(term_cfg.layer_map)
    return {signal: sorted(found) for signal, found in layers.items()}


def layer_terms(loss: LossConfigBase) -> list[str]:
    """The enabled terms that read teacher layers (see :attr:`Term.needs_layer_map`), in order."""
    return [name for name in loss.terms() if TERMS[name].needs_layer_map]



def width_problem(name: str, student_width: int | None, teacher_width: int | None) -> str | None:
    """Why term ``name`` cannot compare the student's hidden states (width ``D_s``) with the
    teacher's (``D_t``), as ``field: problem; fix``; None when it can (or reads no hidden states).

    A term of width ``projected`` takes any two widths (a learned ``W_h`` maps D_s to D_t); one of
    width ``equal`` (``embedding_cosine``) needs D_s == D_t; either needs both widths known.
    """
    width = TERMS[name].width
    if width == "any":
        return None
    if student_width is None or teacher_width is None:
        return (f"train.loss.{name} needs hidden states, but the student or teacher width is unknown (student "
                f"{student_width}, teacher {teacher_width}); use a transformer student or remove train.loss.{name}")
    if width == "equal" and student_width != teacher_width:
        return (f"train.loss.{name} needs equal widths, got student {student_width} and teacher {teacher_width}; "
                f"set train.student.hidden_size: {teacher_width} or use train.loss.hidden")
    return None
