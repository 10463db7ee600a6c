"""A classifier hundreds of times heavier than the tests' tiny models, as an ONNX file, so a latency
harness can be checked on an ordering that holds on any machine, however busy."""

from __future__ import annotations

import torch
from torch import nn

LAYERS, WIDTH = 200, 256


class MatMulChain(nn.Module):
    """Token ids (mod 1000) -> Embedding [1000, 256] -> 200 times tanh(x W + b), one W [256, 256]
    -> mean over tokens -> Linear to 2 logits [B, 2]. 26 MFLOP a token: about 800x the tiny
    BiLSTM (hidden 32) and 650x the tiny 2-layer BERT (hidden 32) of the tests, in 1.3 MB.
    ``attention_mask`` and ``token_type_ids`` are taken, as a classifier's, and not used."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(1000, WIDTH)
        self.layer = nn.Linear(WIDTH, WIDTH)
        self.head = nn.Linear(WIDTH, 2)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        x = self.embedding(input_ids % 1000)  # [B, T, 256]
        for _ in range(LAYERS):
            x = torch.tanh(self.layer(x))
        return self.head(x.mean(1))  # [B, 2]


def export_matmul_chain(path, input_names: list[str]) -> str:
    """Export a seed-0 :class:`MatMulChain` called with ``input_names`` (int64 [B, T], batch and
    length dynamic; ``input_ids`` first) to ``path``, output ``logits`` [B, 2]; returns the path.
    The graph's only input is ``input_ids``: the exporter drops the unused ones (predictors
    ignore extra features)."""
    torch.manual_seed(0)
    example = tuple(torch.ones(2, 8, dtype=torch.long) for _ in input_names)
    axes = {name: {0: "batch", 1: "length"} for name in input_names} | {"logits": {0: "batch"}}
    torch.onnx.export(MatMulChain().eval(), example, str(path), input_names=input_names, output_names=["logits"],
                      dynamic_axes=axes, opset_version=17, dynamo=False)
    return str(path)
