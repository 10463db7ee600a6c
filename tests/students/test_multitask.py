"""The attentive multi-task LSTM: per-task head shapes, gradients, attention, padding, save/load, errors."""

from __future__ import annotations

import json

import pytest
import torch

from students.base import BuildInputs
from students.bilstm import BiLSTMEncoder
from students.multitask import (AttentionPooling, MultiTaskLSTMConfig, MultiTaskLSTMStudent, build_multitask_student,
                                check_tasks)
from students.registry import load_student

SENTENCES = ["a good film", "a bad , bad and boring film that goes on", "fine"]
SECONDS = ["it was fine", "no", "a good , good film"]
TASKS = {"sst2": ("sentence", 2), "ner": ("token", 5), "mnli": ("pair", 3)}


def build(tiny_teacher_dir, transfer_texts, **overrides) -> MultiTaskLSTMStudent:
    torch.manual_seed(0)
    cfg = MultiTaskLSTMConfig(**{"embed_dim": 16, "hidden_dim": 8, "attention_dim": 6, "max_length": 16,
                                 "vocab_size": 150, **overrides})
    return build_multitask_student(cfg, BuildInputs(tiny_teacher_dir, transfer_texts or (), tasks=TASKS))


def run_all(model) -> dict[str, torch.Tensor]:
    """Logits of every task on the same batch."""
    single, pairs = model.featurize(SENTENCES), model.featurize(SENTENCES, SECONDS)
    return {"sst2": model(**single, task="sst2").logits, "ner": model(**single, task="ner").logits,
            "mnli": model(**pairs, task="mnli").logits}


@pytest.mark.parametrize("vocab", ["teacher", "sentencepiece"])
def test_head_shapes_and_backward(tiny_teacher_dir, transfer_texts, vocab):
    model = build(tiny_teacher_dir, transfer_texts, vocab=vocab, num_layers=2)
    assert isinstance(model.encoder, BiLSTMEncoder)  # the BiLSTM student's encoder, shared by all tasks
    width = model.featurize(SENTENCES)["input_ids"].shape[1]
    logits = run_all(model)
    assert {name: tuple(t.shape) for name, t in logits.items()} == {"sst2": (3, 2), "ner": (3, width, 5),
                                                                    "mnli": (3, 3)}
    assert all(t.dtype == torch.float32 for t in logits.values())
    sum(t.sum() for t in logits.values()).backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())


def test_one_task_trains_only_the_shared_layers_and_its_head(tiny_teacher_dir, transfer_texts):
    model = build(tiny_teacher_dir, transfer_texts)
    model(**model.featurize(SENTENCES), task="sst2").logits.sum().backward()
    untouched = {name for name, p in model.named_parameters() if p.grad is None}
    assert untouched and untouched == {name for name, _ in model.named_parameters()
                                       if name.startswith(("heads.ner.", "heads.mnli."))}


def test_sentencepiece_table_is_vocab_size_by_embed_dim(tiny_teacher_dir, transfer_texts):
    assert build(tiny_teacher_dir, transfer_texts, vocab="sentencepiece").encoder.embedding.weight.shape == (150, 16)


def test_uniform_attention_is_the_mean_over_real_tokens():
    pooling = AttentionPooling(dim=2, attention_dim=3)
    torch.nn.init.zeros_(pooling.score.weight)  # every score 0 -> uniform weights over real tokens
    states = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]]])  # [1, 3, 2]; position 2 is padding
    assert pooling(states, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 4.0]]


def test_padding_does_not_change_logits(tiny_teacher_dir, transfer_texts):
    model = build(tiny_teacher_dir, transfer_texts).eval()
    alone = model.featurize(SENTENCES[2:])
    padded = model.featurize(SENTENCES)
    length = alone["input_ids"].shape[1]
    torch.testing.assert_close(model(**alone, task="sst2").logits, model(**padded, task="sst2").logits[2:])
    torch.testing.assert_close(model(**alone, task="ner").logits, model(**padded, task="ner").logits[2:, :length])


def test_unknown_task_and_wrong_inputs_are_errors(tiny_teacher_dir, transfer_texts):
    model = build(tiny_teacher_dir, transfer_texts)
    with pytest.raises(KeyError, match=r"unknown task 'qqp'; choose from \['mnli', 'ner', 'sst2'\]"):
        model(**model.featurize(SENTENCES), task="qqp")
    with pytest.raises(ValueError, match="pair inputs missing for pair task 'mnli'"):
        model(**model.featurize(SENTENCES), task="mnli")
    with pytest.raises(ValueError, match="pair inputs given for sentence task 'sst2'"):
        model(**model.featurize(SENTENCES, SECONDS), task="sst2")


@pytest.mark.parametrize(("tasks", "message"), [({}, "at least one task"), ({"a.b": ("sentence", 2)}, "no '.'"),
                                                ({"x": ("span", 2)}, "kind 'span'"), ({"x": ("token", 0)}, "0 labels")])
def test_bad_task_tables(tasks, message):
    with pytest.raises(ValueError, match=message):
        check_tasks(tasks)


@pytest.mark.parametrize("vocab", ["teacher", "sentencepiece"])
def test_save_then_load_gives_identical_outputs(tiny_teacher_dir, transfer_texts, tmp_path, vocab):
    model = build(tiny_teacher_dir, transfer_texts, vocab=vocab, dropout=0.3).eval()
    folder = model.save(tmp_path / "student")
    meta = json.loads((folder / "student.json").read_text())
    assert meta["family"] == "multitask_lstm" and meta["student"] == model.cfg.model_dump()
    assert meta["tasks"] == {"sst2": {"kind": "sentence", "num_labels": 2}, "ner": {"kind": "token", "num_labels": 5},
                             "mnli": {"kind": "pair", "num_labels": 3}}
    loaded = load_student(folder)
    assert isinstance(loaded, MultiTaskLSTMStudent) and not loaded.training and loaded.tasks == model.tasks
    expected, got = run_all(model), run_all(loaded)
    assert all(torch.equal(got[name], expected[name]) for name in TASKS)


def test_token_task_on_word_lists_tags_each_word_at_its_first_piece(tiny_teacher_dir, transfer_texts):
    model = build(tiny_teacher_dir, transfer_texts).eval()
    words = [sentence.split() for sentence in SENTENCES]
    features = model.featurize(words)
    assert torch.equal(model.word_mask(features), features["word_mask"])
    logits = model(**features, task="ner").logits
    assert logits.shape == (3, max(map(len, words)), 5)
    per_piece = model(input_ids=features["input_ids"], attention_mask=features["attention_mask"], task="ner").logits
    for i, row in enumerate(words):  # word j's logits are those of the piece where it starts
        torch.testing.assert_close(logits[i, :len(row)], per_piece[i, features["word_starts"][i, :len(row)]])
