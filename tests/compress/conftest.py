"""Fixtures of the compress tests: a tiny random BERT classifier, random inputs for it, and tiny
fp32 ONNX classifiers (helpers in tiny_onnx.py)."""

from __future__ import annotations

import pytest
import torch
import tiny_onnx
from tiny_onnx import BERT_INPUTS, LSTM_INPUTS, TinyLSTMClassifier, export
from transformers import BertConfig, BertForSequenceClassification


def tiny_bert(seed: int = 0, layers: int = 3) -> BertForSequenceClassification:
    """A random BERT classifier (hidden 32, 4 heads of 8, FFN 64, 2 labels, vocabulary 100) in eval mode."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2, initializer_range=0.2)
    return BertForSequenceClassification(config).eval()


def random_inputs(seed: int = 1, batch: int = 3, length: int = 7) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask (last row half padding) / token_type_ids, int64 [B, T], vocabulary 100."""
    generator = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[-1, length // 2:] = 0
    return {"input_ids": torch.randint(0, 100, (batch, length), generator=generator),
            "attention_mask": attention_mask,
            "token_type_ids": torch.randint(0, 2, (batch, length), generator=generator)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on one thread: on a shared 2-core machine more threads make them ~40x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def bert() -> BertForSequenceClassification:
    """A fresh 3-layer :func:`tiny_bert`."""
    return tiny_bert()


@pytest.fixture
def inputs() -> dict[str, torch.Tensor]:
    """:func:`random_inputs` of 3 rows of 7 tokens."""
    return random_inputs()


@pytest.fixture
def transfer_batches() -> list[dict[str, torch.Tensor]]:
    """Two transfer-set batches of 3 rows: soft labels (teacher_logits float [3, 2]), then hard
    labels only (labels int64 [3])."""
    generator = torch.Generator().manual_seed(5)
    return [{**random_inputs(seed=1), "teacher_logits": 3 * torch.randn(3, 2, generator=generator)},
            {**random_inputs(seed=2), "labels": torch.tensor([0, 1, 1])}]


@pytest.fixture(scope="session")
def tiny_bert_onnx(tmp_path_factory) -> str:
    """fp32 ONNX file of :func:`tiny_bert` (seed 0); inputs int64 [B, T] x 3, logits [B, 2]."""
    torch.manual_seed(0)
    return export(tiny_onnx.tiny_bert(), BERT_INPUTS, tmp_path_factory.mktemp("bert") / "model.onnx")


@pytest.fixture(scope="session")
def tiny_lstm_onnx(tmp_path_factory) -> str:
    """fp32 ONNX file of :class:`TinyLSTMClassifier` (seed 0); inputs int64 [B, T] x 2, logits [B, 2]."""
    torch.manual_seed(0)
    return export(TinyLSTMClassifier().eval(), LSTM_INPUTS, tmp_path_factory.mktemp("lstm") / "model.onnx")
