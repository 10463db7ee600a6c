"""Config types of the distillation loss terms (``train.loss.<term>``) and of the loss as a whole.

The term types are shared by the terms of :data:`students.terms.TERMS`; the ``train.loss``
section itself (:class:`students.terms.LossConfig`) is generated from that table on top of
:class:`LossConfigBase`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from core.config import Section


class ScheduleConfig(Section):
    """A linear multiplier of a loss weight over training progress p (0 at the first step, 1 at the last).

    ``linear_warmup``: ``min(1, p / over)``, rising from 0. ``linear_decay``:
    ``1 - (1 - final) * min(1, p / over)``, falling from 1 to ``final``.
    """

    kind: Literal["linear_warmup", "linear_decay"]
    over: float = Field(default=1.0, gt=0, le=1, description="fraction of training the ramp lasts")
    final: float = Field(default=0.0, ge=0, description="multiplier at the end of a decay")


class TermConfig(Section):
    """One named loss term: its weight and optional schedule."""

    weight: float = Field(default=1.0, ge=0)
    schedule: ScheduleConfig | None = None


class LogitTermConfig(TermConfig):
    """Logit KD: ``tau^2 * KL(softmax(t / tau) || softmax(s / tau))`` (Hinton et al. 2015) or the
    MSE between raw logits (Tang et al. 2019)."""

    kind: Literal["kl", "mse"] = "kl"
    background_weight: float = Field(
        default=1.0, gt=0,
        description="weight of the positions whose teacher's top class is class 0 (a tag task's O, which must be "
                    "labels[0]) against 1 for the rest; below 1 the student learns the teacher's names more than "
                    "its background, for a tagger whose KD recall trails its precision")


class LayerTermConfig(TermConfig):
    """An intermediate-layer term with its teacher-to-student layer map: ``{teacher_layer: student_layer}``.

    Hidden-state layers count as in Hugging Face's ``hidden_states`` (0 = embedding output);
    attention layers from 1. The teacher layers must be emitted by the label stage (``label.emit``).
    """

    layer_map: dict[int, int] = Field(min_length=1)
    first_layer: ClassVar[int] = 0

    @model_validator(mode="after")
    def _layers_in_range(self) -> "LayerTermConfig":
        bad = {t: s for t, s in self.layer_map.items() if min(t, s) < self.first_layer}
        if bad:
            raise ValueError(f"layer_map entries {bad} name a layer below {self.first_layer}, the first one "
                             f"this term can use")
        return self


class AttentionTermConfig(LayerTermConfig):
    """Attention-map loss (TinyBERT: MSE; MiniLM-style: KL over each row of the map).

    Layers count from 1 on both sides (the embedding output has no attention map).
    """

    kind: Literal["kl", "mse"] = "mse"
    first_layer: ClassVar[int] = 1


class LossConfigBase(Section):
    """What ``train.loss`` has besides its terms: the KD temperature and its schedule.

    Every field of a subclass whose value is a :class:`TermConfig` is a term; None turns it off.
    """

    temperature: float = Field(default=2.0, gt=0)
    final_temperature: float | None = Field(default=None, gt=0, description="linear schedule of the temperature")

    @classmethod
    def term_names(cls) -> list[str]:
        """The names of the term fields, in their fixed order."""
        return [name for name in cls.model_fields if name not in LossConfigBase.model_fields]

    @model_validator(mode="after")
    def _some_term(self) -> "LossConfigBase":
        if not self.terms():
            raise ValueError(f"every loss term is off; give at least one of {', '.join(self.term_names())}")
        return self

    def terms(self) -> dict[str, TermConfig]:
        """The enabled terms by name, in a fixed order."""
        return {name: getattr(self, name) for name in self.term_names() if getattr(self, name) is not None}

    def ce_only(self) -> "LossConfigBase":
        """This loss with every teacher term removed and CE at weight 1: the CE-only twin's."""
        return type(self)(**{**{name: None for name in self.term_names()}, "ce": TermConfig(weight=1.0)})
