"""Character features of words: the character CNN of Ma & Hovy (2016), "End-to-end Sequence
Labeling via Bi-directional LSTM-CNNs-CRF", shared by the CNN-LSTM tagger (:mod:`students.cnn_lstm`)
and the tagging heads of the multi-task student (:mod:`students.multitask`).

    char_ids [B, W, L] -> embedding [B, W, L, E_c] -> Conv1d over the L characters [B, W, L, F]
                       -> max over each word's real characters -> float [B, W, F]

The convolution is linear with "same" padding (an odd kernel width); padding characters are
left out of the max, so a word's features do not depend on how far it is padded. Characters keep
their case, which a lower-cased sub-word vocabulary loses and which is the strongest single cue
for named entities.

A character vocabulary is a list whose entry ``i`` is the character of id ``i``; ids 0 and 1 are
padding and unknown characters.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import torch
from torch import nn

PAD, UNK = "<pad>", "<unk>"
"""Entries 0 and 1 of a character (or word) vocabulary."""
PAD_ID, UNK_ID = 0, 1


def char_vocabulary(words: Iterable[str]) -> list[str]:
    """``[PAD, UNK]`` then every character of ``words``, most frequent first (ties: first seen first)."""
    counts = Counter(char for word in words for char in word)
    return [PAD, UNK] + [char for char, _ in counts.most_common()]


def check_vocabulary(entries: list[str], what: str) -> None:
    """Raise ValueError unless ``entries`` (a ``what`` vocabulary) starts with ``[PAD, UNK]``."""
    if entries[:2] != [PAD, UNK]:
        raise ValueError(f"the {what} vocabulary must start with {[PAD, UNK]}; build it with char_vocabulary")


def encode_chars(char_index: dict[str, int], sentences: list[list[str]], max_word_chars: int) -> torch.Tensor:
    """Character ids of word lists, right-padded: int64 [B, W, L].

    Args:
        char_index: character -> id (the inverse of a :func:`char_vocabulary` list); unknown
            characters get ``UNK_ID``.
        sentences: B word lists; W is the longest one's length.
        max_word_chars: L; each word keeps its first L characters.

    Returns:
        int64 [B, W, L], 0 after each word's end and on padding words.
    """
    width = max((len(words) for words in sentences), default=0)
    char_ids = torch.full((len(sentences), width, max_word_chars), PAD_ID, dtype=torch.int64)
    for row, words in enumerate(sentences):
        for column, word in enumerate(words):
            ids = [char_index.get(char, UNK_ID) for char in word[:max_word_chars]]
            char_ids[row, column, :len(ids)] = torch.tensor(ids, dtype=torch.int64)
    return char_ids


def char_layers(num_chars: int, embed_dim: int, filters: int, kernel: int) -> tuple[nn.Embedding, nn.Conv1d]:
    """The embedding [num_chars, E_c] and the "same"-padded convolution (E_c -> F channels) of the CNN.

    Raises:
        ValueError: ``kernel`` is even (the padding would not be symmetric).
    """
    if kernel % 2 == 0:
        raise ValueError(f"train.student.char_kernel is {kernel}; use an odd width so that the "
                         f"convolution keeps every character position")
    return (nn.Embedding(num_chars, embed_dim, padding_idx=PAD_ID),
            nn.Conv1d(embed_dim, filters, kernel, padding=kernel // 2))


def char_features(embedding: nn.Embedding, conv: nn.Conv1d, char_ids: torch.Tensor) -> torch.Tensor:
    """Max-pooled CNN features of each word: int64 [B, W, L] -> float [B, W, F]; padding words get 0.

    Args:
        embedding, conv: the layers of :func:`char_layers`.
        char_ids: from :func:`encode_chars`.
    """
    batch, width, length = char_ids.shape
    chars = embedding(char_ids.reshape(batch * width, length))  # [B*W, L, E_c]
    filters = conv(chars.transpose(1, 2))  # [B*W, F, L]
    is_char = (char_ids != PAD_ID).reshape(batch * width, 1, length)  # [B*W, 1, L]
    pooled = filters.masked_fill(~is_char, float("-inf")).max(dim=2).values  # [B*W, F]
    pooled = pooled.masked_fill(~is_char.any(dim=2), 0.0)  # padding words: 0 instead of -inf
    return pooled.view(batch, width, -1)  # [B, W, F]
