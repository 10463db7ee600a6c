"""What the teacher emits per transfer-set row besides its logits: the ``label.emit`` section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.config import Section
from core.errors import ConfigError


class SignalsConfig(Section):
    """What the teacher emits per transfer-set row, besides what the student needs at least.

    Layer numbers follow Hugging Face's ``hidden_states`` tuple: 0 is the embedding output,
    ``i`` the output of encoder layer ``i``; attention layers count from 1. Hidden states are
    stored as ``[T, D]`` and attention maps as ``[H, T, T]`` over the row's real tokens.
    """

    logits_top_k: int | None = Field(
        default=None, gt=0, description="store the k largest logits and their class ids instead of all C")
    hidden_layers: list[int] = Field(default_factory=list, description="0 = embedding output, i = layer i")
    attention_layers: list[int] = Field(default_factory=list, description="1..num_layers")
    attention_heads: list[int] | None = Field(default=None, description="head ids to keep; None = all heads")
    dtype: Literal["fp16", "fp32"] = Field(default="fp16", description="storage dtype of hidden states and attention maps")

    @property
    def needs_lengths(self) -> bool:
        """Whether per-token signals are stored (and with them each row's token count)."""
        return bool(self.hidden_layers or self.attention_layers)


def check_signals(signals: SignalsConfig, config) -> None:
    """Fail before any work when requested layers or heads do not exist in the teacher.

    Args:
        signals: the ``label.emit`` section.
        config: the teacher's transformers config (``num_hidden_layers``, ``num_attention_heads``).

    Raises:
        ConfigError: naming the field, the bad values and the valid range.
    """
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    checks = [("hidden_layers", signals.hidden_layers, range(0, layers + 1)),
              ("attention_layers", signals.attention_layers, range(1, layers + 1)),
              ("attention_heads", signals.attention_heads or [], range(0, heads))]
    for field, values, valid in checks:
        bad = [v for v in values if v not in valid]
        if bad:
            raise ConfigError(f"label.emit.{field}: {bad} do not exist in the teacher "
                              f"(valid: {valid.start}..{valid.stop - 1})")
