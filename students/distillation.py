"""The configured distillation loss: the weighted sum of the enabled terms of :data:`students.terms.TERMS`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from students.base import StudentOutput
from students.loss_config import LayerTermConfig, LossConfigBase
from students.losses import schedule_multiplier, temperature_at
from students.terms import TERMS, LogitBatch, teacher_signal, width_problem


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
    term (one with a ``layer_map``) is the mean over its ``layer_map`` entries, so its weight
    does not grow with the number of mapped layers.

    Projections: when the student and teacher widths differ, each term of width ``projected``
    (``hidden``, ``pkd``) owns one ``nn.Linear(D_s, D_t)`` shared by all its mapped layers
    (TinyBERT's ``W_h``, one matrix as in its code); with equal widths there is none, so a
    student initialised from teacher layers starts aligned. A term of width ``equal``
    (``embedding_cosine``) is never projected (DistilBERT's students share the teacher's width;
    a learned projection could meet the cosine target on its own). Put this module's parameters
    in the optimizer with the student's.

    Args:
        loss_cfg: the ``train.loss`` section.
        student_hidden_size: ``D_s``, or None for a family without hidden states.
        teacher_hidden_size: ``D_t``, or None when unknown (logit terms only).

    Raises:
        ValueError: a hidden-state term is enabled without both widths, or a term of width
            ``equal`` with different widths.
    """

    def __init__(self, loss_cfg: LossConfigBase, student_hidden_size: int | None, teacher_hidden_size: int | None):
        super().__init__()
        self.loss_cfg = loss_cfg
        self.projections = nn.ModuleDict()
        for name in loss_cfg.terms():
            problem = width_problem(name, student_hidden_size, teacher_hidden_size)
            if problem:
                raise ValueError(problem)
            if TERMS[name].width == "projected" and student_hidden_size != teacher_hidden_size:
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
        enabled = self.loss_cfg.terms()
        batch = LogitBatch(student, teacher, labels, mask, temperature_at(self.loss_cfg, progress))
        terms = {name: (self._layer_term(name, term_cfg, student, teacher) if TERMS[name].needs_layer_map
                        else TERMS[name].loss(term_cfg, batch))
                 for name, term_cfg in enabled.items()}
        weights = {name: term.weight * schedule_multiplier(term.schedule, progress)
                   for name, term in enabled.items()}
        total = sum(weights[name] * value for name, value in terms.items())
        return LossTerms(total=total, terms=terms, weights=weights)

    def _layer_term(self, name: str, term_cfg: LayerTermConfig, student: StudentOutput,
                    teacher: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Mean over ``layer_map`` of one layer term's value per mapped layer."""
        term = TERMS[name]
        emit = f"label.emit.{term.signal}_layers"
        token_mask = teacher_signal(teacher, "mask", name, f"it comes with {emit}") if term.token_mask else None
        values = []
        for teacher_layer, student_layer in term_cfg.layer_map.items():
            s = _student_layer(student, name, student_layer)
            t = teacher_signal(teacher, f"{term.signal}_{teacher_layer}", name, f"add {teacher_layer} to {emit}")
            values.append(term.loss(term_cfg, s, t, token_mask, lambda states: self._project(name, states)))
        return torch.stack(values).mean()

    def _project(self, name: str, states: torch.Tensor) -> torch.Tensor:
        """Student states [..., D_s] through the term's ``W_h`` to [..., D_t]; unchanged when widths match."""
        return self.projections[name](states) if name in self.projections else states


def _student_layer(student: StudentOutput, term: str, layer: int) -> torch.Tensor:
    """The student's state of ``layer`` for ``term`` (attention maps or hidden states, as the term's
    signal), or a ValueError naming the ``layer_map`` entry that points past the student."""
    if TERMS[term].signal == "attention":
        layers, kind = student.attentions, "attention maps"
    else:
        layers, kind = student.hidden_states, "hidden states"
    first = TERMS[term].first_layer
    if not layers:
        raise ValueError(f"train.loss.{term} needs the student's {kind}, which this student family does not return")
    if not first <= layer < first + len(layers):
        raise ValueError(f"train.loss.{term}.layer_map names student layer {layer}, but the student's {kind} "
                         f"cover layers {first}..{first + len(layers) - 1}")
    return layers[layer - first]
