"""Fixtures of the compression tests: tiny fp32 ONNX classifiers (helpers in tiny_onnx.py)."""

from __future__ import annotations

import pytest
import torch
from tiny_onnx import BERT_INPUTS, LSTM_INPUTS, TinyLSTMClassifier, export, tiny_bert


@pytest.fixture(scope="session")
def tiny_bert_onnx(tmp_path_factory) -> str:
    """fp32 ONNX file of :func:`tiny_bert` (seed 0); inputs int64 [B, T] x 3, logits [B, 2]."""
    torch.manual_seed(0)
    return export(tiny_bert(), BERT_INPUTS, tmp_path_factory.mktemp("bert") / "model.onnx")


@pytest.fixture(scope="session")
def tiny_lstm_onnx(tmp_path_factory) -> str:
    """fp32 ONNX file of :class:`TinyLSTMClassifier` (seed 0); inputs int64 [B, T] x 2, logits [B, 2]."""
    torch.manual_seed(0)
    return export(TinyLSTMClassifier().eval(), LSTM_INPUTS, tmp_path_factory.mktemp("lstm") / "model.onnx")
