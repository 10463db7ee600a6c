"""Between words and word pieces: word-level signals of a token-classification teacher.

A WordPiece teacher tags sub-tokens, a tagging student words. Following Izsak et al. (2019,
"Training Compact Models for Low Resource Entity Tagging using Pre-trained Language Models")
and the usual BERT practice (Devlin et al. 2019, section 5.3), a word is represented by its
*first* sub-token, both ways:

* teacher -> student: a word's logits are those of its first sub-token (:func:`words_logits`);
* word tags -> teacher fine-tuning: the first sub-token carries the word's tag, every other
  position (later sub-tokens, ``[CLS]``, ``[SEP]``, padding) the ignore index -100 that
  ``torch.nn.CrossEntropyLoss`` and Hugging Face models skip (:func:`subtoken_labels`).

The mapping comes from a fast tokenizer's ``word_ids()`` (:func:`encode_words`): for each
position, the index of the word it belongs to, or None for special tokens and padding. It holds
for WordPiece (BERT, MPNet, DistilBERT) and byte-level BPE (RoBERTa) tokenizers alike; the latter
get a prefix space before every word (:func:`words_tokenizer`).

A word can have no sub-token at all: the teacher's ``max_length`` cut it off, or the tokenizer
dropped it (BERT's cleanup removes e.g. a lone zero-width space). Such a word gets zero logits
(a uniform distribution after softmax) and ``has_signal`` False, so the caller can count it and
leave it out of the distillation loss.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tokenizers import pre_tokenizers
from torch import nn
from transformers.modeling_outputs import TokenClassifierOutput

if TYPE_CHECKING:
    from transformers import BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase

IGNORE_INDEX = -100
"""Label of the positions a token-classification loss skips (PyTorch's and Hugging Face's default)."""

NO_SUBTOKEN = -1
"""First sub-token index of a word that has no sub-token (truncated or dropped by the tokenizer)."""


_SPACED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Byte-level tokenizer -> its copy with a prefix space (:func:`words_tokenizer`), made once."""


def words_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The tokenizer that encodes pre-split words as they are encoded in running text.

    A byte-level BPE (RoBERTa, GPT-2) folds the space before a word into its first token
    (``"Ġgood"``). Given words one by one without ``add_prefix_space``, it encodes each as if it
    began a text (``"good"``), unlike any word but the first of its training text; transformers'
    RobertaTokenizer documentation asks for ``add_prefix_space=True`` with
    ``is_split_into_words=True``. WordPiece tokenizers split on spaces first and need nothing.

    Returns:
        ``tokenizer`` itself, or for a byte-level one without the prefix space a copy with it
        (made once per tokenizer).
    """
    pre_tokenizer = tokenizer.backend_tokenizer.pre_tokenizer
    if not isinstance(pre_tokenizer, pre_tokenizers.ByteLevel) or pre_tokenizer.add_prefix_space:
        return tokenizer
    if tokenizer not in _SPACED:
        spaced = copy.deepcopy(tokenizer)
        spaced.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(
            add_prefix_space=True, trim_offsets=pre_tokenizer.trim_offsets, use_regex=pre_tokenizer.use_regex)
        spaced.add_prefix_space = True
        _SPACED[tokenizer] = spaced
    return _SPACED[tokenizer]


def encode_words(tokenizer: PreTrainedTokenizerBase, sentences: list[list[str]], max_length: int,
                 pad: bool = True) -> BatchEncoding:
    """Tokenize pre-split sentences for the teacher, keeping the word of every sub-token.

    Args:
        tokenizer: a fast (Rust-backed) tokenizer; only those know ``word_ids()``. A byte-level
            BPE encodes with a prefix space before every word (:func:`words_tokenizer`).
        sentences: B sentences, each a list of words.
        max_length: sub-tokens per sentence, special tokens included; longer ones are truncated.
        pad: pad to the longest row and return tensors; False returns unpadded lists (for
            batching by length later).

    Returns:
        A BatchEncoding: ``input_ids``/``attention_mask`` (and ``token_type_ids`` where the
        tokenizer makes them: BERT, not MPNet, RoBERTa or DistilBERT),
        int64 [B, T] tensors padded to the longest row, or per-row lists with ``pad=False``;
        ``word_ids(i)`` gives row i's word index per position.

    Raises:
        ValueError: the tokenizer is not a fast one.
    """
    if not tokenizer.is_fast:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer, so it cannot map sub-tokens to "
                         f"words; load the teacher's tokenizer with use_fast=True (needs its tokenizer.json)")
    return words_tokenizer(tokenizer)(sentences, is_split_into_words=True, truncation=True, max_length=max_length,
                                      padding=pad, return_tensors="pt" if pad else None)


def first_subtoken_index(word_ids: Sequence[int | None], num_words: int) -> torch.Tensor:
    """Position of each word's first sub-token.

    Args:
        word_ids: per position of one encoded sentence, its word index or None (``encoding.word_ids(i)``).
        num_words: W, the words of the sentence before tokenization; words past the truncation
            point appear nowhere in ``word_ids``.

    Returns:
        int64 tensor [W]; :data:`NO_SUBTOKEN` (-1) for words without a sub-token.

    Raises:
        ValueError: ``word_ids`` names a word index >= ``num_words`` (sentence and encoding mismatch).
    """
    first = torch.full((num_words,), NO_SUBTOKEN, dtype=torch.int64)
    for position in reversed(range(len(word_ids))):  # backwards, so the earliest position is written last
        word = word_ids[position]
        if word is None:
            continue
        if word >= num_words:
            raise ValueError(f"position {position} belongs to word {word} but the sentence has {num_words} words; "
                             f"pass the encoding of this very sentence")
        first[word] = position
    return first


@dataclass
class WordLogits:
    """A teacher's logits per word of one sentence.

    Attributes:
        logits: float [W, C], the logits of each word's first sub-token; zeros where ``has_signal`` is False.
        has_signal: bool [W], False for words without a sub-token (cut by ``max_length`` or
            dropped by the tokenizer); leave those out of the distillation loss.
    """

    logits: torch.Tensor
    has_signal: torch.Tensor


def words_logits(token_logits: torch.Tensor, word_ids: Sequence[int | None], num_words: int) -> WordLogits:
    """Word-level teacher logits of one sentence from its sub-token logits (first sub-token rule).

    Args:
        token_logits: float [T, C], the teacher's logits over the sentence's positions (padding included).
        word_ids: length T, each position's word index or None (see :func:`first_subtoken_index`).
        num_words: W, the sentence's words.

    Returns:
        :class:`WordLogits` with logits [W, C] in ``token_logits``' dtype and the has-signal mask [W].

    Raises:
        ValueError: ``token_logits`` and ``word_ids`` differ in length, or word indices exceed W.
    """
    if token_logits.dim() != 2 or token_logits.shape[0] != len(word_ids):
        raise ValueError(f"token_logits has shape {tuple(token_logits.shape)}, expected [{len(word_ids)}, C] "
                         f"to match word_ids")
    first = first_subtoken_index(word_ids, num_words).to(token_logits.device)  # [W]
    has_signal = first != NO_SUBTOKEN  # [W]
    logits = token_logits[first.clamp(min=0)]  # [W, C]; rows without a sub-token are zeroed next
    logits = logits.masked_fill(~has_signal.unsqueeze(1), 0.0)
    return WordLogits(logits=logits, has_signal=has_signal)


def subtoken_labels(word_ids: Sequence[int | None], word_tags: Sequence[int]) -> list[int]:
    """Sub-token labels for fine-tuning a token classifier on word tags.

    Args:
        word_ids: length T, each position's word index or None (see :func:`first_subtoken_index`).
        word_tags: tag id of each of the sentence's W words.

    Returns:
        T labels: the word's tag on its first sub-token, :data:`IGNORE_INDEX` (-100) on later
        sub-tokens, special tokens and padding.

    Raises:
        ValueError: ``word_ids`` names a word index >= W.
    """
    labels = [IGNORE_INDEX] * len(word_ids)
    for word, position in enumerate(first_subtoken_index(word_ids, len(word_tags)).tolist()):
        if position != NO_SUBTOKEN:
            labels[position] = word_tags[word]
    return labels


def word_features(tokenizer: PreTrainedTokenizerBase, sentences: list[list[str]], max_length: int) -> dict[str, torch.Tensor]:
    """Inputs of a :class:`WordTagger`: the padded encoding and each word's first sub-token.

    Args:
        tokenizer: a fast tokenizer (see :func:`encode_words`).
        sentences: B sentences, each a list of words.
        max_length: sub-tokens per sentence, special tokens included.

    Returns:
        ``input_ids``/``attention_mask`` (and ``token_type_ids``) int64 [B, T], and
        ``first_subtoken`` int64 [B, W] (W the most words of a sentence; -1 for padding words
        and words without a sub-token).
    """
    encoded = encode_words(tokenizer, sentences, max_length)
    first = torch.full((len(sentences), max(len(words) for words in sentences)), NO_SUBTOKEN, dtype=torch.int64)
    for row, words in enumerate(sentences):
        first[row, :len(words)] = first_subtoken_index(encoded.word_ids(row), len(words))
    return {**encoded, "first_subtoken": first}


class WordTagger(nn.Module):
    """A token classifier seen as a word tagger: a word's logits are its first sub-token's,
    batched (the tensor form of :func:`words_logits`), so teacher and tagging students both
    return logits [B, W, C].

    Args:
        model: a Hugging Face token classifier.
    """

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, first_subtoken: torch.Tensor, **encoded: torch.Tensor) -> TokenClassifierOutput:
        """Word logits of a batch made by :func:`word_features`.

        Args:
            first_subtoken: int64 [B, W], -1 for padding words and words without a sub-token.
            encoded: the model's inputs, int64 [B, T].

        Returns:
            ``logits`` float [B, W, C]: zeros where ``first_subtoken`` is -1.
        """
        logits = self.model(**encoded).logits  # [B, T, C]
        index = first_subtoken.clamp(min=0).unsqueeze(-1).expand(-1, -1, logits.shape[-1])  # [B, W, C]
        words = logits.gather(1, index)  # [B, W, C]
        return TokenClassifierOutput(logits=words.masked_fill((first_subtoken == NO_SUBTOKEN).unsqueeze(-1), 0.0))
