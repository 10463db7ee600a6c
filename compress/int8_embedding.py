"""The int8 vocabulary table that the ExecuTorch and LiteRT int8 programs share.

    program_model = with_int8_vocabulary(model)   # a copy: its largest nn.Embedding stored as int8 rows

Only the vocabulary (words or word pieces, the largest table) turns int8. The tables whose rows are
added to every token (position, segment) stay fp32, and so do the small character tables: one
rounding of a position row is a bias on every sequence at that position. Measured on the SST-2 pruned
student (872 dev rows, batch 1, against its fp32 predictions): with every table int8 the int8
``.pte`` flipped 9 predictions and the int8 ``.tflite`` 10; with the vocabulary alone int8, 4 and 1,
for about 0.56 MB more.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from compress.vocabulary import RemappedEmbedding


class Int8Embedding(nn.Module):
    """An ``nn.Embedding`` stored as int8 rows with one fp32 scale each (symmetric, weight-only).

    Args:
        embedding: the fp32 table [V, D]; an all-0 padding row stays all 0. A pruned
            vocabulary's :class:`compress.vocabulary.RemappedEmbedding` keeps its id remap.

    The forward: int64 ids [...] -> float32 [..., D] = int8 row * its scale (|error| <= scale / 2
    per element, scale = max |row| / 127).
    """

    def __init__(self, embedding: nn.Embedding):
        from torchao.quantization.quant_primitives import MappingType, choose_qparams_affine, quantize_affine

        super().__init__()
        weight = embedding.weight.detach().float()  # [V, D]
        block = (1, weight.shape[1])
        scale, zero_point = choose_qparams_affine(weight, MappingType.SYMMETRIC, block, torch.int8)
        self.register_buffer("weight_int8", quantize_affine(weight, block, scale, zero_point, torch.int8))  # [V, D]
        self.register_buffer("scale", scale.reshape(-1, 1).float())  # [V, 1]
        self.register_buffer("remap", embedding.remap if isinstance(embedding, RemappedEmbedding) else None)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.remap is not None:
            ids = self.remap[ids]  # original vocabulary -> kept rows
        return F.embedding(ids, self.weight_int8).float() * F.embedding(ids, self.scale)


def with_int8_vocabulary(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose vocabulary table (its largest ``nn.Embedding``) is an
    :class:`Int8Embedding`; the other tables stay fp32 (see the module docstring)."""
    model = copy.deepcopy(model).eval()
    tables = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Embedding)]
    if tables:
        name, table = max(tables, key=lambda item: item[1].weight.numel())
        parent, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent), attribute, Int8Embedding(table))
    return model
