"""Random-initialised BERT teachers of a named size, for measuring teachers larger than memory.

``distill teacher random --shape bert-large --out DIR`` saves a ``BertForSequenceClassification``
whose weights are drawn as transformers initialises a new model (``_init_weights``: normal(0,
0.02) matrices and embeddings, zero biases, unit LayerNorm scales), with 2 labels and the
WordPiece tokenizer of the installed MiniLM-L6, so the folder serves as ``teacher.model`` of an
SST-2 config (the finetune stage adopts a classifier of the right label count as it is). Such a
teacher labels at random; it is for throughput and memory figures only.

The model is built on the meta device (no memory) and materialised one block at a time (the
embeddings, each encoder layer, the pooler, the classifier): each block is allocated, drawn,
written to its own safetensors shard and freed, and ``model.safetensors.index.json`` maps every
weight to its shard, as ``save_pretrained`` writes a sharded checkpoint. Making the 1.3B teacher
(5.1 GB of fp32 weights) so holds one layer (201 MB) at a time, never the whole model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertForSequenceClassification

from core.artifacts import atomic_dir
from core.hf_checkpoint import load_tokenizer
from teachers.checkpoint import DEFAULT_TEACHER, resolve_teacher

LABEL_NAMES = ("negative", "positive")
"""The classes of the saved head (SST-2's ``data.label_names``)."""


@dataclass(frozen=True)
class Shape:
    """A BERT encoder's size: layers, hidden width, attention heads and feed-forward width."""

    layers: int
    hidden: int
    heads: int
    ffn: int

    def resized(self, layers: int | None = None, hidden: int | None = None) -> "Shape":
        """This shape with another layer count and/or width; a new width keeps BERT's proportions
        (heads of 64 dimensions, or one head where the width is not a multiple of 64; feed-forward
        4x the width)."""
        if hidden is None:
            return Shape(layers or self.layers, self.hidden, self.heads, self.ffn)
        return Shape(layers or self.layers, hidden, hidden // 64 if hidden % 64 == 0 else 1, 4 * hidden)


SHAPES: dict[str, Shape] = {
    "bert-large": Shape(layers=24, hidden=1024, heads=16, ffn=4096),  # 335M parameters (Devlin et al. 2019)
    "1.3b": Shape(layers=24, hidden=2048, heads=32, ffn=8192),  # 1.27B parameters (GPT-3 XL's width, Brown et al. 2020)
}
"""Named shapes of ``distill teacher random --shape``."""


def bert_config(shape: Shape, vocab_size: int, max_positions: int = 512) -> BertConfig:
    """The ``BertConfig`` of a 2-class sequence classifier of ``shape`` (SST-2's label names)."""
    return BertConfig(vocab_size=vocab_size, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                      num_attention_heads=shape.heads, intermediate_size=shape.ffn,
                      max_position_embeddings=max_positions, num_labels=len(LABEL_NAMES),
                      id2label=dict(enumerate(LABEL_NAMES)), label2id={n: i for i, n in enumerate(LABEL_NAMES)},
                      architectures=["BertForSequenceClassification"])


def parameter_count(shape: Shape, vocab_size: int, max_positions: int = 512, num_labels: int = 2) -> int:
    """Parameters of a ``BertForSequenceClassification`` of ``shape``, by formula.

    Embeddings ``(V + P + 2) d`` (word, position, two segment types) and their LayerNorm ``2d``;
    per layer ``4(d^2 + d)`` (Q, K, V, output projections), ``2 d f + f + d`` (feed-forward) and
    ``4d`` (two LayerNorms); the pooler ``d^2 + d``; the head ``C d + C``.
    """
    d, f = shape.hidden, shape.ffn
    per_layer = 4 * (d * d + d) + 2 * d * f + f + d + 4 * d
    return ((vocab_size + max_positions + 2) * d + 2 * d + shape.layers * per_layer + d * d + d
            + num_labels * d + num_labels)


def save_random_teacher(out: Path, shape: Shape, seed: int = 0, max_positions: int = 512) -> Path:
    """Save a random-initialised BERT classifier of ``shape`` block by block (module docstring).

    Args:
        out: the folder to create (replaced atomically if it exists).
        shape: one of :data:`SHAPES`, or any other.
        seed: torch seed of the draws.
        max_positions: position embeddings (tokens per row at most).

    Returns:
        ``out``, holding ``config.json``, the tokenizer files, ``model-0000i-of-0000n.safetensors``
        (fp32) and ``model.safetensors.index.json``.

    Raises:
        ConfigError: the MiniLM package whose tokenizer is copied is not installed.
        ValueError: ``shape.hidden`` is not a multiple of ``shape.heads`` (from ``BertConfig``).
    """
    tokenizer = load_tokenizer(resolve_teacher(DEFAULT_TEACHER))
    config = bert_config(shape, len(tokenizer), max_positions)
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = BertForSequenceClassification(config)
    blocks = [("bert.embeddings.", model.bert.embeddings),
              *((f"bert.encoder.layer.{i}.", layer) for i, layer in enumerate(model.bert.encoder.layer)),
              ("bert.pooler.", model.bert.pooler), ("classifier.", model.classifier)]
    weight_map: dict[str, str] = {}
    total_bytes = 0
    with atomic_dir(out) as tmp:
        for number, (prefix, block) in enumerate(blocks, start=1):
            block.to_empty(device="cpu")
            block.apply(model._init_weights)
            tensors = {prefix + name: tensor.contiguous() for name, tensor in block.state_dict().items()}
            shard = f"model-{number:05d}-of-{len(blocks):05d}.safetensors"
            save_file(tensors, str(tmp / shard), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(tensors, shard))
            total_bytes += sum(t.numel() * t.element_size() for t in tensors.values())
            block.to("meta")  # free the block before the next one is drawn
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total_bytes}, "weight_map": weight_map}, indent=2))
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out
