"""Vocabularies: SentencePiece training (deterministic, sized, special ids), encoding, save/load, errors."""

from __future__ import annotations

import pytest
import torch

from core.errors import ArtifactError, ConfigError
from students.vocab import (SENTENCEPIECE_FILE, SentencePieceVocabulary, WordPieceVocabulary, build_vocabulary,
                            encode_words, load_vocabulary)

VOCAB_SIZE = 200


@pytest.fixture(scope="module")
def sentencepiece(transfer_texts) -> SentencePieceVocabulary:
    return SentencePieceVocabulary.train(transfer_texts, VOCAB_SIZE)


def test_sentencepiece_training_is_deterministic(transfer_texts, sentencepiece):
    again = SentencePieceVocabulary.train(transfer_texts, VOCAB_SIZE)
    assert again.model_proto == sentencepiece.model_proto
    assert torch.equal(again.encode(transfer_texts[:20], 32)[0], sentencepiece.encode(transfer_texts[:20], 32)[0])


def test_sentencepiece_size_and_special_ids(sentencepiece):
    assert sentencepiece.size == VOCAB_SIZE and sentencepiece.pad_id == 0
    assert [sentencepiece.processor.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]


def test_sentencepiece_encode_pads_right_and_truncates(transfer_texts, sentencepiece):
    texts = [transfer_texts[0], "ka", ""]
    ids, mask = sentencepiece.encode(texts, max_length=6)
    lengths = [min(len(sentencepiece.processor.encode(t)), 6) for t in texts]
    assert ids.dtype == mask.dtype == torch.int64 and ids.shape == mask.shape == (3, max(lengths))
    assert mask.sum(dim=1).tolist() == lengths and lengths[2] == 0
    assert ids[0].tolist() == sentencepiece.processor.encode(texts[0])[:6]
    assert ids[1, lengths[1]:].eq(0).all() and ids[2].eq(0).all()  # padding is pad id 0
    assert ids.ge(4).logical_or(mask.eq(0)).all()  # no bos/eos added; known pieces only


def test_sentencepiece_save_then_load_encodes_the_same(tmp_path, transfer_texts, sentencepiece):
    sentencepiece.save(tmp_path)
    assert (tmp_path / SENTENCEPIECE_FILE).is_file()
    loaded = load_vocabulary(tmp_path, "sentencepiece")
    for got, expected in zip(loaded.encode(transfer_texts[:10], 16), sentencepiece.encode(transfer_texts[:10], 16)):
        assert torch.equal(got, expected)


def test_too_small_transfer_set_names_the_field_and_its_maximum(transfer_texts):
    with pytest.raises(ConfigError, match=r"train\.student\.vocab_size is 5000 .* at most (\d+) .*<= \1"):
        SentencePieceVocabulary.train(transfer_texts[:50], 5000)


def test_missing_inputs_are_errors(tmp_path, tiny_teacher_dir):
    with pytest.raises(ValueError, match="no transfer-set texts"):
        SentencePieceVocabulary.train([], VOCAB_SIZE)
    with pytest.raises(ValueError, match="needs the transfer-set texts"):
        build_vocabulary("sentencepiece", VOCAB_SIZE, tiny_teacher_dir, None)
    with pytest.raises(ArtifactError, match=SENTENCEPIECE_FILE):
        load_vocabulary(tmp_path, "sentencepiece")


def test_wordpiece_encodes_like_the_teacher_tokenizer(wordpiece, tiny_teacher_dir):
    assert isinstance(build_vocabulary("teacher", VOCAB_SIZE, tiny_teacher_dir, None), WordPieceVocabulary)
    assert wordpiece.size == 30522 and wordpiece.pad_id == 0
    ids, mask = wordpiece.encode(["a good film", "fine"], max_length=16)
    expected = wordpiece.tokenizer(["a good film", "fine"])["input_ids"]
    assert ids.dtype == mask.dtype == torch.int64 and ids.shape == (2, len(expected[0]))
    assert ids[0].tolist() == expected[0] and ids[1, :3].tolist() == expected[1] and ids[1, 3:].eq(0).all()
    assert mask.tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert wordpiece.encode(["word " * 50], max_length=8)[0].shape == (1, 8)


def test_wordpiece_words_start_at_their_first_sub_token(wordpiece):
    words = [["unbelievably", "good", "film"], ["fine"]]
    features = encode_words(wordpiece, words, max_length=16)
    ids, starts, mask = features["input_ids"], features["word_starts"], features["word_mask"]
    expected = wordpiece.tokenizer(words, is_split_into_words=True)
    assert ids[0].tolist() == expected["input_ids"][0]  # [CLS] pieces [SEP], as the tokenizer joins words
    first = [expected.word_ids(0).index(w) for w in range(3)]
    assert starts[0].tolist() == first and mask.tolist() == [[True] * 3, [True, False, False]]
    assert first[1] - first[0] > 1  # "unbelievably" is several pieces
    assert features["attention_mask"].sum(dim=1).tolist() == [len(expected["input_ids"][0]), 3]


def test_words_cut_off_by_max_length_are_masked(wordpiece, sentencepiece):
    words = [["good"] * 10]
    cut = encode_words(wordpiece, words, max_length=6)  # [CLS] + 4 words + [SEP]
    assert cut["input_ids"].shape == (1, 6) and cut["input_ids"][0, -1] == wordpiece.tokenizer.sep_token_id
    assert cut["word_mask"][0].tolist() == [True] * 4 + [False] * 6
    assert cut["word_starts"][0, :4].tolist() == [1, 2, 3, 4] and cut["word_starts"][0, 4:].eq(0).all()
    pieces = encode_words(sentencepiece, [["ka", "ka"]], max_length=32)
    per_word = sentencepiece.processor.encode(["ka"])[0]
    assert pieces["word_starts"][0].tolist() == [0, len(per_word)]  # no specials in SentencePiece
