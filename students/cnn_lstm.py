"""CNN-LSTM tagger of Izsak et al. (2019), "Training Compact Models for Low Resource Entity
Tagging using Pre-trained Language Models": one label per word.

    char_ids [B, W, L] -> char embedding [B, W, L, E_c] -> Conv1d over the L characters [B, W, L, F]
                       -> max over each word's real characters [B, W, F]
    word_ids [B, W]    -> word embedding [B, W, E_w]
    concat [B, W, E_w + F] -> dropout -> BiLSTM (packed) [B, W, 2H] -> dropout -> Linear(2H, C) -> logits [B, W, C]

The character CNN is Ma & Hovy's (2016): a linear convolution with "same" padding, then max-pooling
over the word's characters; padding characters are excluded from the max, so a word's features
do not depend on how far it is padded.

The student reads words, not word pieces, and owns two vocabularies built from the transfer set
(:func:`build_cnn_lstm_tagger`): the ``word_vocab_size`` most frequent lower-cased words, and
every character seen (case kept, so capitalisation reaches the CNN). Both reserve id 0 for
padding and id 1 for unknown entries.

Its word embeddings start from the teacher's (``init_from_teacher_embeddings``, on by default
when they fit): each word's row is the mean of the teacher's input embeddings of the word's
pieces, reduced to ``word_embed_dim`` by PCA as the BiLSTM's table is
(:mod:`students.teacher_embeddings`). Random vectors leave a tagger trained on a few thousand
sentences to learn every word's meaning from them; Izsak et al. start from pretrained vectors too.

A saved student is a folder with ``model.safetensors``, ``student.json`` (family, config, label
count) and the vocabularies as JSON lists (``words.json``, ``chars.json``; an entry's id is its
position); no pickles.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig

from core.artifacts import atomic_dir
from core.config import Section
from core.errors import ArtifactError, ConfigError
from core.hf_checkpoint import load_tokenizer
from students.base import BuildInputs, Student, StudentOutput, write_meta
from students.teacher_embeddings import (embed_dim_mismatch, reduced_to_width, teacher_embedding_width,
                                         teacher_word_embeddings, word_piece_means)

if TYPE_CHECKING:
    from transformers import PretrainedConfig

PAD, UNK = "<pad>", "<unk>"
"""Entries 0 and 1 of both vocabularies."""
PAD_ID, UNK_ID = 0, 1

WEIGHTS_FILE = "model.safetensors"
WORDS_FILE = "words.json"
CHARS_FILE = "chars.json"


class CNNLSTMTaggerConfig(Section):
    """``train.student`` of the sequence tagger of Izsak et al. (2019): character CNN + word
    embeddings + BiLSTM, one label per word."""

    family: Literal["cnn_lstm"] = "cnn_lstm"
    word_embed_dim: int = Field(default=100, gt=0)
    word_vocab_size: int = Field(default=20000, gt=1, description="most frequent words of the transfer set")
    char_embed_dim: int = Field(default=30, gt=0)
    char_filters: int = Field(default=50, gt=0)
    char_kernel: int = Field(default=3, gt=0)
    max_word_chars: int = Field(default=20, gt=0)
    hidden_dim: int = Field(default=200, gt=0)
    num_layers: int = Field(default=1, gt=0)
    dropout: float = Field(default=0.5, ge=0, lt=1)
    word_dropout: float = Field(
        default=0.0, ge=0, lt=1, description="training only: the probability that a word is read as <unk> "
                                             "(Lample et al. 2016), so that the tagger learns to tag words it has "
                                             "not seen from their characters and context")
    init_from_teacher_embeddings: bool | Literal["auto"] = Field(
        default="auto", description="seed each word's row with the mean of its pieces' teacher input embeddings, "
                                    "reduced by PCA to word_embed_dim; auto: when word_embed_dim is at most the "
                                    "teacher's embedding width (students.teacher_embeddings)")


class CNNLSTMTagger(Student):
    """Character-CNN + word-embedding BiLSTM tagger (see the module docstring).

    Args:
        cfg: sizes and dropout: ``word_embed_dim`` E_w, ``char_embed_dim`` E_c, ``char_filters``
            F, ``char_kernel`` (odd, so that "same" padding is symmetric), ``max_word_chars`` L,
            ``hidden_dim`` H per direction, ``num_layers``.
        num_labels: C, the tags.
        words: the word vocabulary, lower-cased, ``[PAD, UNK, ...]``.
        chars: the character vocabulary, ``[PAD, UNK, ...]``.
    """

    family = "cnn_lstm"

    def __init__(self, cfg: CNNLSTMTaggerConfig, num_labels: int, words: list[str], chars: list[str]):
        super().__init__()
        if cfg.char_kernel % 2 == 0:
            raise ValueError(f"train.student.char_kernel is {cfg.char_kernel}; use an odd width so that the "
                             f"convolution keeps every character position")
        if words[:2] != [PAD, UNK] or chars[:2] != [PAD, UNK]:
            raise ValueError(f"vocabularies must start with {[PAD, UNK]}; build them with build_cnn_lstm_tagger")
        self.cfg = cfg
        self.num_labels = num_labels
        self.words = words
        self.chars = chars
        self.word_index = {word: i for i, word in enumerate(words)}
        self.char_index = {char: i for i, char in enumerate(chars)}
        self.word_embedding = nn.Embedding(len(words), cfg.word_embed_dim, padding_idx=PAD_ID)
        self.char_embedding = nn.Embedding(len(chars), cfg.char_embed_dim, padding_idx=PAD_ID)
        self.char_cnn = nn.Conv1d(cfg.char_embed_dim, cfg.char_filters, cfg.char_kernel, padding=cfg.char_kernel // 2)
        self.lstm = nn.LSTM(cfg.word_embed_dim + cfg.char_filters, cfg.hidden_dim, num_layers=cfg.num_layers,
                            batch_first=True, bidirectional=True, dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(2 * cfg.hidden_dim, num_labels)

    def featurize(self, texts: list[list[str]], pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Model inputs of a batch of pre-split sentences, right-padded to the longest one.

        Args:
            texts: B sentences, each a non-empty list of words.
            pairs: not supported by a tagger; must be None.

        Returns:
            int64 tensors: ``word_ids`` [B, W] (lower-cased lookup, UNK for rare words),
            ``char_ids`` [B, W, L] (each word's first L = ``max_word_chars`` characters),
            ``attention_mask`` [B, W] (1 on words, 0 on padding), and ``input_ids``, the same
            tensor as ``word_ids``, for the common student contract.

        Raises:
            ValueError: ``pairs`` is given, a sentence is a string rather than a word list, or is empty.
        """
        if pairs is not None:
            raise ValueError("the cnn_lstm tagger reads single sentences; pairs must be None")
        for row, words in enumerate(texts):
            if isinstance(words, str) or len(words) == 0:
                raise ValueError(f"sentence {row} is {words!r}; the tagger needs a non-empty list of words")
        width, chars_per_word = max(len(words) for words in texts), self.cfg.max_word_chars
        word_ids = torch.full((len(texts), width), PAD_ID, dtype=torch.int64)
        char_ids = torch.full((len(texts), width, chars_per_word), PAD_ID, dtype=torch.int64)
        attention_mask = torch.zeros((len(texts), width), dtype=torch.int64)
        for row, words in enumerate(texts):
            word_ids[row, :len(words)] = torch.tensor([self.word_index.get(w.lower(), UNK_ID) for w in words])
            attention_mask[row, :len(words)] = 1
            for column, word in enumerate(words):
                ids = [self.char_index.get(c, UNK_ID) for c in word[:chars_per_word]]
                char_ids[row, column, :len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return {"input_ids": word_ids, "word_ids": word_ids, "char_ids": char_ids, "attention_mask": attention_mask}

    def forward(self, word_ids: torch.Tensor, char_ids: torch.Tensor, attention_mask: torch.Tensor,
                input_ids: torch.Tensor | None = None) -> StudentOutput:
        """Tag logits of a padded batch.

        Args:
            word_ids: int64 [B, W] word ids, right-padded with 0.
            char_ids: int64 [B, W, L] character ids, 0 after each word's end and on padding words.
            attention_mask: int64 [B, W], 1 on words and 0 on padding.
            input_ids: ``featurize`` repeats ``word_ids`` under this name; if given it must equal them.

        Returns:
            StudentOutput with float32 ``logits`` [B, W, C]; rows past a sentence's end hold the
            classifier's bias only and are to be masked with ``attention_mask``. In training mode
            each real word is read as ``<unk>`` with probability ``word_dropout``.

        Raises:
            ValueError: ``input_ids`` is given and differs from ``word_ids``.
        """
        if input_ids is not None and input_ids is not word_ids and not torch.equal(input_ids, word_ids):
            raise ValueError("input_ids and word_ids differ; pass the output of featurize unchanged")
        batch, width, length = char_ids.shape
        if self.training and self.cfg.word_dropout > 0:
            drawn = torch.rand(word_ids.shape, device=word_ids.device)  # [B, W]
            word_ids = word_ids.masked_fill((drawn < self.cfg.word_dropout) & (word_ids != PAD_ID), UNK_ID)
        chars = self.char_embedding(char_ids.reshape(batch * width, length))  # [B*W, L, E_c]
        filters = self.char_cnn(chars.transpose(1, 2))  # [B*W, F, L]
        is_char = (char_ids != PAD_ID).reshape(batch * width, 1, length)  # [B*W, 1, L]
        pooled = filters.masked_fill(~is_char, float("-inf")).max(dim=2).values  # [B*W, F]
        pooled = pooled.masked_fill(~is_char.any(dim=2), 0.0)  # padding words: 0 instead of -inf
        features = torch.cat([self.word_embedding(word_ids), pooled.view(batch, width, -1)], dim=2)  # [B, W, E_w+F]
        lengths = attention_mask.sum(dim=1).clamp(min=1).cpu()  # [B], on the CPU as packing requires
        packed = nn.utils.rnn.pack_padded_sequence(self.dropout(features), lengths, batch_first=True,
                                                   enforce_sorted=False)
        outputs, _ = self.lstm(packed)
        outputs, _ = nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True, total_length=width)  # [B, W, 2H]
        return StudentOutput(logits=self.classifier(self.dropout(outputs)).float())  # [B, W, C]

    def save(self, directory: str | Path) -> Path:
        """Write the student folder atomically (files: see the module docstring); returns it."""
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            weights = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}
            save_file(weights, str(tmp / WEIGHTS_FILE))
            (tmp / WORDS_FILE).write_text(json.dumps(self.words, ensure_ascii=False) + "\n", encoding="utf-8")
            (tmp / CHARS_FILE).write_text(json.dumps(self.chars, ensure_ascii=False) + "\n", encoding="utf-8")
            write_meta(tmp, self.family, self.cfg.model_dump(), num_labels=self.num_labels)
        return directory

    @classmethod
    def load(cls, directory: Path, meta: dict[str, Any]) -> "CNNLSTMTagger":
        """Rebuild a tagger saved by :meth:`save`; ``meta`` is its parsed ``student.json``.

        Raises:
            ArtifactError: the weights or a vocabulary file is missing.
        """
        for name in (WEIGHTS_FILE, WORDS_FILE, CHARS_FILE):
            if not (directory / name).is_file():
                raise ArtifactError(directory / name, "missing; rerun the train stage")
        words = json.loads((directory / WORDS_FILE).read_text(encoding="utf-8"))
        chars = json.loads((directory / CHARS_FILE).read_text(encoding="utf-8"))
        model = cls(CNNLSTMTaggerConfig.model_validate(meta["student"]), meta["num_labels"], words, chars)
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        return model


def build_cnn_lstm_tagger(cfg: CNNLSTMTaggerConfig, inputs: BuildInputs) -> CNNLSTMTagger:
    """A freshly initialised tagger with vocabularies built from the transfer set.

    Args:
        cfg: the ``train.student`` section.
        inputs: ``num_labels`` C (the tags), ``transfer_texts``, the transfer set's sentences
            as word lists, and ``teacher_dir``, whose word embeddings and tokenizer seed the
            word table unless ``init_from_teacher_embeddings`` is false.

    Returns:
        The tagger, in training mode, on the CPU. Its word vocabulary holds the
        ``cfg.word_vocab_size`` most frequent lower-cased words (ties: first seen first), its
        character vocabulary every character of those sentences, in order of frequency.

    Raises:
        ConfigError: ``init_from_teacher_embeddings`` is true and ``word_embed_dim`` exceeds the
            teacher's embedding width.
        ValueError: no ``num_labels``.
    """
    transfer_tokens = inputs.transfer_texts
    word_counts = Counter(word.lower() for sentence in transfer_tokens for word in sentence)
    char_counts = Counter(char for sentence in transfer_tokens for word in sentence for char in word)
    words = [PAD, UNK] + [word for word, _ in word_counts.most_common(cfg.word_vocab_size) if word not in (PAD, UNK)]
    chars = [PAD, UNK] + [char for char, _ in char_counts.most_common()]
    tagger = CNNLSTMTagger(cfg, inputs.label_count(), words, chars)
    if cfg.init_from_teacher_embeddings is not False and \
            seeds_from_teacher(cfg, AutoConfig.from_pretrained(str(inputs.teacher_dir))):
        seed_word_embeddings(tagger, inputs.teacher_dir)
    return tagger


def seeds_from_teacher(cfg: CNNLSTMTaggerConfig, teacher: PretrainedConfig) -> bool:
    """Whether the builder seeds the word table from a teacher of config ``teacher``: never when
    ``init_from_teacher_embeddings`` is false; with ``auto`` when ``word_embed_dim`` is at most
    the teacher's embedding width (:func:`students.teacher_embeddings.teacher_embedding_width`).
    Reads only the teacher's config, so the run config's rules call it before any stage
    (:attr:`students.registry.Family.fits_teacher`).

    Raises:
        ConfigError: ``init_from_teacher_embeddings`` is true and ``word_embed_dim`` is wider.
    """
    fits = cfg.word_embed_dim <= teacher_embedding_width(teacher)
    if cfg.init_from_teacher_embeddings is True and not fits:
        raise ConfigError(embed_dim_mismatch(cfg.word_embed_dim, teacher_embedding_width(teacher), "word_embed_dim"))
    return cfg.init_from_teacher_embeddings is not False and fits


def seed_word_embeddings(tagger: CNNLSTMTagger, teacher_dir: Path) -> None:
    """Overwrite the tagger's word rows with the teacher's: each word the mean of its pieces'
    input embeddings reduced to ``word_embed_dim`` (:func:`students.teacher_embeddings.word_piece_means`);
    the unknown word gets the teacher's unknown piece (the mean row without one); padding stays 0.
    All rows are scaled by one factor to a standard deviation of 1, the scale of the N(0, 1) rows
    they replace, beside which the learning rate, dropout and the character features were set: a
    teacher's reduced embeddings are far smaller (the packaged MiniLM's 100 leading components:
    std 0.08 over its 30,522 rows), which left the words almost indistinguishable at the start of
    a short training.

    Args:
        tagger: its ``word_embedding`` [V_w, E_w] is overwritten in place.
        teacher_dir: the teacher's checkpoint folder (tokenizer and word embeddings).

    Raises:
        ConfigError: ``word_embed_dim`` exceeds the teacher's embedding width.
    """
    table = reduced_to_width(teacher_word_embeddings(teacher_dir), tagger.cfg.word_embed_dim, "word_embed_dim")
    tokenizer = load_tokenizer(teacher_dir)
    unknown = table[tokenizer.unk_token_id] if tokenizer.unk_token_id is not None else table.mean(dim=0)
    rows = torch.cat([unknown[None], word_piece_means(tagger.words[UNK_ID + 1:], tokenizer, table, unknown)])
    with torch.no_grad():
        tagger.word_embedding.weight[UNK_ID:] = rows / rows.std()  # [V_w - 1, E_w]
