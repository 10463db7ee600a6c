"""Tests of students/chars.py: the character vocabulary, ids and CNN features of Ma & Hovy (2016)."""

from __future__ import annotations

import pytest
import torch

from students.chars import PAD, UNK, UNK_ID, char_features, char_layers, char_vocabulary, check_vocabulary, encode_chars


def test_vocabulary_is_pad_unk_then_characters_by_frequency():
    assert char_vocabulary(["aab", "ba", "c"]) == [PAD, UNK, "a", "b", "c"]
    assert char_vocabulary([]) == [PAD, UNK]
    with pytest.raises(ValueError, match="character vocabulary must start with"):
        check_vocabulary(["a", PAD, UNK], "character")


def test_ids_pad_cut_and_mark_unknown_characters():
    index = {char: i for i, char in enumerate(char_vocabulary(["Abc"]))}
    ids = encode_chars(index, [["Abc", "cA"], ["bbbbbb", "x", "A"]], max_word_chars=4)
    assert ids.dtype == torch.int64 and ids.shape == (2, 3, 4)
    assert ids.tolist() == [[[2, 3, 4, 0], [4, 2, 0, 0], [0, 0, 0, 0]],
                            [[3, 3, 3, 3], [UNK_ID, 0, 0, 0], [2, 0, 0, 0]]]


def test_features_ignore_padding_and_zero_padding_words():
    torch.manual_seed(0)
    embedding, conv = char_layers(num_chars=6, embed_dim=4, filters=5, kernel=3)
    short = torch.tensor([[[2, 3, 0, 0]]])  # one word of 2 characters, padded to 4
    padded = torch.tensor([[[2, 3, 0, 0, 0, 0, 0], [0] * 7]])  # the same word padded to 7, then a padding word
    alone, both = char_features(embedding, conv, short), char_features(embedding, conv, padded)
    assert alone.shape == (1, 1, 5) and both.shape == (1, 2, 5)
    torch.testing.assert_close(alone[0, 0], both[0, 0])
    assert torch.equal(both[0, 1], torch.zeros(5))
    manual = conv(embedding(short[0]).transpose(1, 2))[0, :, :2].max(dim=1).values  # real characters only
    torch.testing.assert_close(alone[0, 0], manual)


def test_even_kernel_is_an_error():
    with pytest.raises(ValueError, match="char_kernel is 4"):
        char_layers(num_chars=6, embed_dim=4, filters=5, kernel=4)
