"""Tiny fp32 classifiers (a BERT and an LSTM), their ONNX export and random int64 features.

The ONNX files are written with a few lines of ``torch.onnx.export`` (TorchScript exporter, the
graph the transformer optimizer's fusions match) until compress.onnx_export lands.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

VOCAB = 1000
SEQ_LEN = 12


class TinyLSTMClassifier(nn.Module):
    """Embedding [1000, 32] -> BiLSTM (hidden 32) -> masked mean -> Linear to 2 logits."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 32)
        self.lstm = nn.LSTM(32, 32, batch_first=True, bidirectional=True)
        self.head = nn.Linear(64, 2)

    def forward(self, input_ids, attention_mask):
        states, _ = self.lstm(self.embedding(input_ids))  # [B, T, 64]
        mask = attention_mask.unsqueeze(-1).float()  # [B, T, 1]
        return self.head((states * mask).sum(1) / mask.sum(1).clamp(min=1))  # [B, 2]


def tiny_bert() -> nn.Module:
    """A random BertForSequenceClassification: hidden 64, 4 heads, 2 layers, vocab 1000, 2 labels."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64, num_labels=2,
                        attn_implementation="eager")
    return BertForSequenceClassification(config).eval()


def random_features(rows: int, input_names: list[str], seed: int = 0, seq_len: int = SEQ_LEN) -> dict[str, np.ndarray]:
    """Random int64 features [rows, seq_len]: token ids in [1, VOCAB), each row padded after a
    random length in [3, seq_len] (mask 0 and id 0 on the padding), token types 0."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, seq_len + 1, size=rows)
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int64)
    features = {"input_ids": rng.integers(1, VOCAB, size=(rows, seq_len)) * mask, "attention_mask": mask,
                "token_type_ids": np.zeros((rows, seq_len), dtype=np.int64)}
    return {name: features[name] for name in input_names}


def export(model: nn.Module, input_names: list[str], path) -> str:
    """Export ``model`` to ``path`` with dynamic batch and length axes; returns the path."""
    example = tuple(torch.from_numpy(a) for a in random_features(2, input_names).values())
    axes = {name: {0: "batch", 1: "length"} for name in input_names} | {"logits": {0: "batch"}}
    torch.onnx.export(model, example, str(path), input_names=input_names, output_names=["logits"],
                      dynamic_axes=axes, opset_version=17, dynamo=False)
    return str(path)


BERT_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
LSTM_INPUTS = ["input_ids", "attention_mask"]
