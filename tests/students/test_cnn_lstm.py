"""Tests of students/cnn_lstm.py: the CNN-LSTM tagger of Izsak et al. (2019)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from students.base import BuildInputs
from transformers import AutoConfig, AutoModel, AutoTokenizer

from core.errors import ConfigError
from students.cnn_lstm import (PAD, UNK, UNK_ID, CNNLSTMTagger, CNNLSTMTaggerConfig, build_cnn_lstm_tagger,
                               seeds_from_teacher)
from students.registry import FAMILIES, load_student

TRANSFER = [["Peter", "Blackburn"], ["EU", "rejects", "German", "call"], ["the", "The", "THE"]]
CFG = CNNLSTMTaggerConfig(word_embed_dim=8, word_vocab_size=3, char_embed_dim=4, char_filters=6, char_kernel=3,
                          max_word_chars=5, hidden_dim=7, dropout=0.5, init_from_teacher_embeddings=False)
NUM_LABELS = 9


@pytest.fixture
def tagger():
    torch.manual_seed(0)
    return build_cnn_lstm_tagger(CFG, BuildInputs(Path("unused"), TRANSFER, NUM_LABELS))


def test_vocabularies_keep_the_most_frequent_lower_cased_words(tagger):
    assert FAMILIES["cnn_lstm"].config is CNNLSTMTaggerConfig and FAMILIES["cnn_lstm"].tags_tokens
    # "the" occurs 3 times; the rest once each, ties kept in order of first occurrence
    assert tagger.words == [PAD, UNK, "the", "peter", "blackburn"]
    assert tagger.chars[:3] == [PAD, UNK, "e"]  # "e" is the most frequent character (7 times)
    assert sorted(tagger.chars[2:]) == sorted(set("".join(w for s in TRANSFER for w in s)))


def test_featurize_pads_words_and_truncates_characters(tagger):
    features = tagger.featurize([["The", "Blackburns"], ["EU", "Müller", "peter"]])
    assert features["word_ids"].tolist() == [[2, 1, 0], [1, 1, 3]]
    assert features["input_ids"] is features["word_ids"]
    assert features["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    index = tagger.char_index
    assert features["char_ids"].shape == (2, 3, 5)
    assert features["char_ids"][0, 0].tolist() == [index["T"], index["h"], index["e"], 0, 0]
    assert features["char_ids"][0, 1].tolist() == [index[c] for c in "Black"]  # cut to max_word_chars
    assert features["char_ids"][0, 2].tolist() == [0] * 5
    assert features["char_ids"][1, 1].tolist() == [UNK_ID, UNK_ID, index["l"], index["l"], index["e"]]  # "Mülle"
    assert all(t.dtype == torch.int64 for t in features.values())


def test_forward_shapes_and_gradients(tagger):
    features = tagger.featurize([["EU", "rejects", "German", "call"], ["Peter"]])
    logits = tagger(**features).logits
    assert logits.shape == (2, 4, NUM_LABELS) and logits.dtype == torch.float32
    logits[features["attention_mask"].bool()].sum().backward()
    for name, parameter in tagger.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    assert tagger.word_embedding.weight.grad[0].abs().sum() == 0  # the padding rows learn nothing
    assert tagger.char_embedding.weight.grad[0].abs().sum() == 0


def test_word_dropout_reads_words_as_unknown_in_training_only():
    cfg = CFG.model_copy(update={"word_dropout": 0.5, "dropout": 0.0})
    torch.manual_seed(0)
    tagger = build_cnn_lstm_tagger(cfg, BuildInputs(Path("unused"), TRANSFER, NUM_LABELS))
    features = tagger.featurize([["the"] * 400 + ["Peter"], ["the"]])
    # the rows read in training show in the word table's gradient: <unk> and "the", about half of 401 each
    tagger(**features).logits[features["attention_mask"].bool()].sum().backward()
    read = tagger.word_embedding.weight.grad.abs().sum(dim=1)  # [V_w]
    assert read[UNK_ID] > 0 and read[tagger.word_index["the"]] > 0
    assert read[0] == 0  # padding is never dropped to <unk>
    tagger.eval()  # no dropout at inference: the same logits twice, and <unk> is not read
    torch.testing.assert_close(tagger(**features).logits, tagger(**features).logits, rtol=0, atol=0)
    tagger.zero_grad()
    tagger(**features).logits.sum().backward()
    assert tagger.word_embedding.weight.grad[UNK_ID].abs().sum() == 0


def test_padding_does_not_change_a_sentence_logits(tagger):
    tagger.eval()
    sentence = ["Peter", "rejects", "x"]
    alone = tagger(**tagger.featurize([sentence])).logits[0]
    batched = tagger(**tagger.featurize([["EU", "rejects", "German", "call", "the", "Blackburn"], sentence])).logits
    torch.testing.assert_close(batched[1, :3], alone, atol=1e-6, rtol=0)


def test_save_and_load_give_identical_outputs(tagger, tmp_path):
    tagger.eval()
    folder = tagger.save(tmp_path / "student")
    assert sorted(p.name for p in folder.iterdir()) == ["chars.json", "model.safetensors", "student.json", "words.json"]
    loaded = load_student(folder)
    assert isinstance(loaded, CNNLSTMTagger) and not loaded.training
    assert loaded.cfg == CFG and loaded.words == tagger.words and loaded.chars == tagger.chars
    features = tagger.featurize([["Peter", "Müller", "rejects"], ["EU"]])
    assert torch.equal(loaded.featurize([["Peter", "Müller", "rejects"], ["EU"]])["char_ids"], features["char_ids"])
    torch.testing.assert_close(loaded(**features).logits, tagger(**features).logits, atol=0, rtol=0)


def test_bad_inputs_are_refused(tagger):
    with pytest.raises(ValueError, match="pairs must be None"):
        tagger.featurize([["EU"]], pairs=["x"])
    with pytest.raises(ValueError, match="sentence 0 is 'EU rejects'"):
        tagger.featurize(["EU rejects"])
    with pytest.raises(ValueError, match="sentence 1 is \\[\\]"):
        tagger.featurize([["EU"], []])
    features = tagger.featurize([["EU"]])
    with pytest.raises(ValueError, match="input_ids and word_ids differ"):
        tagger(word_ids=features["word_ids"], char_ids=features["char_ids"],
               attention_mask=features["attention_mask"], input_ids=features["word_ids"] + 1)
    with pytest.raises(ValueError, match="char_kernel is 4"):
        build_cnn_lstm_tagger(CFG.model_copy(update={"char_kernel": 4}), BuildInputs(Path("unused"), TRANSFER, NUM_LABELS))


def test_word_rows_start_as_the_projected_mean_of_the_teachers_piece_embeddings(tiny_teacher_dir):
    cfg = CFG.model_copy(update={"word_vocab_size": 20, "init_from_teacher_embeddings": "auto"})
    tagger = build_cnn_lstm_tagger(cfg, BuildInputs(tiny_teacher_dir, TRANSFER + [["Zxqvbnk"]], NUM_LABELS))
    table = AutoModel.from_pretrained(tiny_teacher_dir).get_input_embeddings().weight.detach()  # [V_t, 32]
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    centre = table.mean(dim=0)
    directions = torch.linalg.svd(table - centre, full_matrices=False)[2][:8]  # [8, 32], by variance
    pieces = tokenizer(tagger.words[2:], add_special_tokens=False)["input_ids"]
    assert max(len(ids) for ids in pieces) > 1  # a word of several pieces is averaged
    unknown = (table[tokenizer.unk_token_id] - centre) @ directions.T  # [8]
    expected = torch.stack([unknown] + [(table[ids].mean(dim=0) - centre) @ directions.T for ids in pieces])
    rows = tagger.word_embedding.weight.detach()  # [V_w, 8]
    torch.testing.assert_close(rows[UNK_ID:], expected / expected.std(), atol=1e-5, rtol=1e-4)  # one scale: std 1
    assert rows[0].abs().sum() == 0  # padding


def test_teacher_rows_are_skipped_when_too_narrow_on_auto_and_refused_when_asked_for(tiny_teacher_dir):
    wide = CFG.model_copy(update={"word_embed_dim": 64})  # the tiny teacher's embeddings are 32 wide
    teacher = AutoConfig.from_pretrained(tiny_teacher_dir)
    assert not seeds_from_teacher(wide, teacher)
    assert not seeds_from_teacher(wide.model_copy(update={"init_from_teacher_embeddings": "auto"}), teacher)
    assert seeds_from_teacher(CFG.model_copy(update={"init_from_teacher_embeddings": "auto"}), teacher)
    torch.manual_seed(0)
    auto = build_cnn_lstm_tagger(wide.model_copy(update={"init_from_teacher_embeddings": "auto"}),
                                 BuildInputs(tiny_teacher_dir, TRANSFER, NUM_LABELS))
    torch.manual_seed(0)
    random_rows = build_cnn_lstm_tagger(wide, BuildInputs(tiny_teacher_dir, TRANSFER, NUM_LABELS))
    assert torch.equal(auto.word_embedding.weight, random_rows.word_embedding.weight)
    with pytest.raises(ConfigError, match="train.student.word_embed_dim is 64 but the teacher's word embeddings "
                                          "are 32 wide"):
        FAMILIES["cnn_lstm"].fits_teacher(wide.model_copy(update={"init_from_teacher_embeddings": True}), teacher)
