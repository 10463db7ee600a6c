"""Which teacher layers a transformer student starts from (``train.student.layer_init``).

The layer-dropping strategies follow Sajjad et al. (2020), "On the Effect of Dropping Layers of
Pre-trained Transformer Models"; ``uniform`` is TinyBERT's layer map (Jiao et al. 2020). The
prune stage drops a teacher's layers by the same strategies (:func:`compress.slicing.layers_to_drop`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, get_args

import torch

from core.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

LayerInit = Literal["drop_top", "drop_bottom", "drop_alternate", "drop_symmetric", "drop_contribution", "uniform",
                    "random"]
"""The type of ``train.student.layer_init``."""

LAYER_INIT_STRATEGIES: tuple[str, ...] = get_args(LayerInit)
"""The values of ``train.student.layer_init``."""


def check_layer_count(strategy: str, teacher_layers: int, student_layers: int, source: str = "teacher") -> None:
    """Fail when ``layer_init`` ``strategy`` copies teacher layers into more student layers than
    the teacher has (L_s > L_t); ``random`` copies none and takes any count. ``source`` names
    where the layers come from in the message: ``teacher``, or ``checkpoint`` for a student of
    ``train.student.init_checkpoint``.

    Raises:
        ConfigError: naming ``train.student.num_layers``, the source's count and the fix.
    """
    if strategy != "random" and not 0 < student_layers <= teacher_layers:
        raise ConfigError(f"train.student.num_layers: layer_init {strategy!r} copies {source} layers, so it needs "
                          f"1 to {teacher_layers} layers (the {source}'s); got {student_layers}. "
                          "Use fewer layers or layer_init: random")


def selected_teacher_layers(strategy: str, teacher_layers: int, student_layers: int,
                            similarities: Sequence[float] | None = None) -> list[int]:
    """The teacher layers a student's layers are copied from, in order (1-based; [] for ``random``).

    Student layer i (1-based) is initialised from the i-th id of the result. With K =
    ``teacher_layers - student_layers`` layers to drop (Sajjad et al. 2020, section 3):

    - ``drop_top``: drop the top K layers, keep ``1..L_s``.
    - ``drop_bottom``: drop the bottom K layers, keep ``K+1..L_t``.
    - ``drop_alternate``: drop odd-numbered layers from the top down (12 layers, K = 4: drop
      11, 9, 7, 5; the paper's odd-alternate dropping). When K exceeds the odd layers, the pass
      repeats on the remaining layers, numbered 1.. again (12 -> 4 keeps 2, 4, 8, 12).
    - ``drop_symmetric``: drop the middle K layers, keeping the bottom ceil(L_s / 2) and the top
      floor(L_s / 2) (12 layers, K = 4: drop 5-8). The extra layer of an odd L_s goes to the
      bottom, which the paper found the most important.
    - ``drop_contribution``: drop the K layers whose output is most similar to their input
      (highest ``similarities``); ties drop the higher layer first.
    - ``uniform``: TinyBERT's map, student layer i from teacher layer ceil(i * L_t / L_s).
    - ``random``: no layer is copied.

    Args:
        strategy: one of :data:`LAYER_INIT_STRATEGIES`.
        teacher_layers: L_t, the teacher's encoder layers.
        student_layers: L_s, the student's encoder layers.
        similarities: for ``drop_contribution``, float per teacher layer, index l - 1 for layer
            l: the mean cosine similarity of the layer's input and output
            (:func:`layer_similarities`); higher means the layer changes its input less.

    Returns:
        ``L_s`` distinct teacher layer ids in increasing order, or [] for ``random``.

    Raises:
        ValueError: an unknown strategy, or ``drop_contribution`` without ``L_t`` similarities.
        ConfigError: a copying strategy with more student layers than the teacher has.
    """
    if strategy not in LAYER_INIT_STRATEGIES:
        raise ValueError(f"unknown layer_init {strategy!r}; choose from {list(LAYER_INIT_STRATEGIES)}")
    if strategy == "random":
        return []
    check_layer_count(strategy, teacher_layers, student_layers)
    drop = teacher_layers - student_layers
    layers = list(range(1, teacher_layers + 1))
    if strategy == "drop_top":
        return layers[:student_layers]
    if strategy == "drop_bottom":
        return layers[drop:]
    if strategy == "drop_alternate":
        while drop:
            odd_from_top = [layer for position, layer in enumerate(layers, start=1) if position % 2][::-1]
            dropped = set(odd_from_top[:drop])
            layers = [layer for layer in layers if layer not in dropped]
            drop -= len(dropped)
        return layers
    if strategy == "drop_symmetric":
        bottom = (student_layers + 1) // 2
        return layers[:bottom] + layers[teacher_layers - (student_layers - bottom):]
    if strategy == "drop_contribution":
        if similarities is None or len(similarities) != teacher_layers:
            raise ValueError(f"drop_contribution needs one similarity per teacher layer ({teacher_layers}); "
                             f"got {None if similarities is None else len(similarities)}")
        most_similar_first = sorted(layers, key=lambda layer: (-similarities[layer - 1], -layer))
        dropped = set(most_similar_first[:drop])
        return [layer for layer in layers if layer not in dropped]
    return [-(-i * teacher_layers // student_layers) for i in range(1, student_layers + 1)]  # uniform: ceil


@torch.inference_mode()
def layer_similarities(encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str],
                       max_length: int, batch_size: int = 32) -> torch.Tensor:
    """How little each encoder layer changes its input (Sajjad et al. 2020, contribution-based dropping).

    For layer l, the cosine similarity between its input ``hidden_states[l - 1]`` and its output
    ``hidden_states[l]`` at every real (unpadded) token, averaged over all tokens of ``texts``.

    Args:
        encoder: the teacher's base model (``BertModel``, ``MPNetModel``, ...), in eval mode.
        tokenizer: its tokenizer.
        texts: a small sample of input sentences (a few hundred suffice).
        max_length: tokens per text; longer texts are truncated.
        batch_size: texts per forward pass.

    Returns:
        float32 [L_t], index l - 1 for layer l; values in [-1, 1], higher = less contribution.

    Raises:
        ValueError: ``texts`` is empty.
    """
    if not texts:
        raise ValueError("layer_similarities needs at least one sample text")
    totals = torch.zeros(encoder.config.num_hidden_layers, dtype=torch.float64)
    tokens = 0
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], truncation=True, max_length=max_length,
                          padding=True, return_tensors="pt")
        hidden = encoder(**batch, output_hidden_states=True).hidden_states  # L_t + 1 x [B, T, D]
        stacked = torch.stack(hidden).float()  # [L_t + 1, B, T, D]
        cosine = torch.nn.functional.cosine_similarity(stacked[:-1], stacked[1:], dim=-1)  # [L_t, B, T]
        mask = batch["attention_mask"].bool()  # [B, T]
        totals += cosine[:, mask].sum(dim=1).double()  # [L_t, real tokens] -> [L_t]
        tokens += int(mask.sum())
    return (totals / tokens).float()
