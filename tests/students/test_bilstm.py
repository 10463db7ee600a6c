"""The BiLSTM student: shapes, gradients, padding invariance, pairs, save/load, vocabularies, teacher embeddings."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel

from core.errors import ConfigError
from students.base import BuildInputs
from students.bilstm import BiLSTMStudent, BiLSTMStudentConfig, build_bilstm_student, max_pool, pair_features
from students.registry import load_student
from students.teacher_embeddings import principal_components

TEACHER_HIDDEN = 32  # tests/conftest.py's tiny teacher
SENTENCES = ["a good film", "a bad , bad and boring film that goes on", "fine"]
SECONDS = ["it was fine", "no", "a good , good film"]


def small(**overrides) -> BiLSTMStudentConfig:
    return BiLSTMStudentConfig(**{"embed_dim": 16, "hidden_dim": 8, "max_length": 16, "vocab_size": 150, **overrides})


def build(tiny_teacher_dir, transfer_texts, num_labels=3, sentence_pairs=False, **overrides) -> BiLSTMStudent:
    torch.manual_seed(0)
    return build_bilstm_student(small(**overrides), BuildInputs(tiny_teacher_dir, transfer_texts or (), num_labels,
                                                                sentence_pairs))


@pytest.mark.parametrize("vocab", ["teacher", "sentencepiece"])
def test_forward_shapes_and_backward(tiny_teacher_dir, transfer_texts, vocab):
    model = build(tiny_teacher_dir, transfer_texts, vocab=vocab, num_layers=2)
    features = model.featurize(SENTENCES)
    assert sorted(features) == ["attention_mask", "input_ids"]
    assert all(t.dtype == torch.int64 for t in features.values())
    output = model(**features)
    width = features["input_ids"].shape[1]
    assert output.logits.shape == (3, 3) and output.logits.dtype == torch.float32
    assert [tuple(h.shape) for h in output.hidden_states] == [(3, width, 16), (3, width, 16), (3, width, 16)]
    assert output.attentions == ()
    output.logits.sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())
    pad = model.vocab.pad_id
    assert grads["encoder.embedding.weight"][pad].abs().sum() == 0  # padding_idx gets no gradient


def test_sentencepiece_table_is_much_smaller_than_wordpiece(tiny_teacher_dir, transfer_texts):
    sentencepiece = build(tiny_teacher_dir, transfer_texts, vocab="sentencepiece")
    wordpiece = build(tiny_teacher_dir, transfer_texts, vocab="teacher")
    assert sentencepiece.encoder.embedding.weight.shape == (150, 16)
    assert wordpiece.encoder.embedding.weight.shape == (30522, 16)


@pytest.mark.parametrize("vocab", ["teacher", "sentencepiece"])
def test_padding_does_not_change_logits(tiny_teacher_dir, transfer_texts, vocab):
    model = build(tiny_teacher_dir, transfer_texts, vocab=vocab).eval()
    alone = model(**model.featurize([SENTENCES[2]])).logits
    padded = model(**model.featurize(SENTENCES)).logits[2:]  # same row, padded to the longest sentence
    torch.testing.assert_close(alone, padded)


def test_empty_sentencepiece_row_gives_finite_logits(tiny_teacher_dir, transfer_texts):
    model = build(tiny_teacher_dir, transfer_texts, vocab="sentencepiece").eval()
    assert torch.isfinite(model(**model.featurize(["", "ka lo"])).logits).all()


def test_max_pool_ignores_padding():
    states = torch.tensor([[[1.0, -5.0], [3.0, -2.0], [9.0, 9.0]]])  # [1, 3, 2]; position 2 is padding
    assert max_pool(states, torch.tensor([[1, 1, 0]])).tolist() == [[3.0, -2.0]]


def test_pair_features_value():
    first, second = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 4.0]])
    assert pair_features(first, second).tolist() == [[1.0, -2.0, 3.0, 4.0, 3.0, -8.0, 2.0, 6.0]]


def test_sentence_pairs(tiny_teacher_dir, transfer_texts):
    model = build(tiny_teacher_dir, transfer_texts, num_labels=2, sentence_pairs=True).eval()
    features = model.featurize(SENTENCES, SECONDS)
    assert sorted(features) == ["attention_mask", "input_ids", "pair_attention_mask", "pair_input_ids"]
    output = model(**features)
    assert output.logits.shape == (3, 2) and output.hidden_states == ()
    assert model.head.hidden.in_features == 4 * 2 * 8  # [h1; h2; h1 * h2; |h1 - h2|]
    # each pair is encoded on its own: padding from other rows does not change it
    alone = model(**model.featurize(SENTENCES[2:], SECONDS[2:])).logits
    torch.testing.assert_close(alone, output.logits[2:])
    swapped = model(**model.featurize(SECONDS, SENTENCES)).logits
    assert not torch.allclose(swapped, output.logits)  # order matters through [h1; h2]
    with pytest.raises(ValueError, match="pairs missing"):
        model.featurize(SENTENCES)
    with pytest.raises(ValueError, match="pairs given"):
        build(tiny_teacher_dir, transfer_texts).featurize(SENTENCES, SECONDS)
    with pytest.raises(ValueError, match="3 texts but 2 pairs"):
        model.featurize(SENTENCES, SECONDS[:2])


@pytest.mark.parametrize(("vocab", "sentence_pairs"), [("teacher", False), ("sentencepiece", False),
                                                        ("sentencepiece", True)])
def test_save_then_load_gives_identical_outputs(tiny_teacher_dir, transfer_texts, tmp_path, vocab, sentence_pairs):
    model = build(tiny_teacher_dir, transfer_texts, vocab=vocab, dropout=0.3, sentence_pairs=sentence_pairs).eval()
    folder = model.save(tmp_path / "student")
    assert {"model.safetensors", "student.json"} <= {p.name for p in folder.iterdir()}
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folder left behind
    meta = json.loads((folder / "student.json").read_text())
    assert (meta["family"], meta["num_labels"], meta["sentence_pairs"]) == ("bilstm", 3, sentence_pairs)
    assert meta["student"] == model.cfg.model_dump()

    loaded = load_student(folder)
    assert isinstance(loaded, BiLSTMStudent) and not loaded.training
    features = loaded.featurize(SENTENCES, SECONDS if sentence_pairs else None)
    expected = model.featurize(SENTENCES, SECONDS if sentence_pairs else None)
    assert all(torch.equal(features[k], expected[k]) for k in expected)
    assert torch.equal(loaded(**features).logits, model(**expected).logits)


def test_embeddings_copied_from_teacher(tiny_teacher_dir, transfer_texts):
    model = build(tiny_teacher_dir, transfer_texts, embed_dim=TEACHER_HIDDEN, init_from_teacher_embeddings=True)
    expected = AutoModel.from_pretrained(tiny_teacher_dir).get_input_embeddings().weight
    assert torch.equal(model.encoder.embedding.weight, expected)


def test_a_narrower_table_takes_the_teacher_embeddings_leading_principal_components(tiny_teacher_dir, transfer_texts):
    model = build(tiny_teacher_dir, transfer_texts, embed_dim=TEACHER_HIDDEN // 2, init_from_teacher_embeddings=True)
    teacher = AutoModel.from_pretrained(tiny_teacher_dir).get_input_embeddings().weight.detach()
    table = model.encoder.embedding.weight.detach()
    assert torch.allclose(table, principal_components(teacher, TEACHER_HIDDEN // 2))
    variances = table.var(dim=0)
    assert torch.all(variances[:-1] >= variances[1:] - 1e-6)  # ordered by the variance they keep


def test_a_wider_table_than_the_teacher_names_the_field(tiny_teacher_dir, transfer_texts):
    with pytest.raises(ConfigError, match=rf"train\.student\.embed_dim is 64 but the teacher's word embeddings are "
                                          rf"{TEACHER_HIDDEN} wide; set train\.student\.embed_dim to at most "
                                          rf"{TEACHER_HIDDEN}"):
        build(tiny_teacher_dir, transfer_texts, embed_dim=2 * TEACHER_HIDDEN, init_from_teacher_embeddings=True)


def test_teacher_embeddings_need_the_teacher_vocabulary(tiny_teacher_dir):
    with pytest.raises(ConfigError, match=r"init_from_teacher_embeddings needs train\.student\.vocab=teacher"):
        build(tiny_teacher_dir, None, vocab="sentencepiece", embed_dim=TEACHER_HIDDEN,
              init_from_teacher_embeddings=True)
