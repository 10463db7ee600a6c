"""Vocabularies of the LSTM students: the teacher's WordPiece tokenizer, or a SentencePiece
unigram model (Kudo & Richardson 2018) trained on the transfer set.

Both implement :class:`Vocabulary`, so a student embeds ids without knowing which one it reads::

    vocab = build_vocabulary(cfg, teacher_dir, transfer_texts)   # cfg.vocab: teacher | sentencepiece
    input_ids, attention_mask = vocab.encode(texts, max_length)  # int64 [B, T], right-padded
    vocab.save(folder); vocab = load_vocabulary(folder, cfg.vocab)

A SentencePiece vocabulary of ``vocab_size`` pieces gives an embedding table of
``vocab_size x E`` instead of the teacher's 30,522 x E, which dominates a small student's size.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import ClassVar, Literal, Protocol

import sentencepiece as spm
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from core.errors import ArtifactError, ConfigError

VocabKind = Literal["teacher", "sentencepiece"]
"""The ``train.student.vocab`` values."""

SENTENCEPIECE_FILE = "sentencepiece.model"
"""Name of the serialised SentencePiece model in a student folder."""

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
"""Special ids of a trained SentencePiece vocabulary (set explicitly, not left to the library)."""


class Vocabulary(Protocol):
    """What a student needs from its vocabulary."""

    kind: ClassVar[VocabKind]

    @property
    def size(self) -> int:
        """Number of ids, i.e. rows of the embedding table."""

    @property
    def pad_id(self) -> int:
        """Id of the padding token; its embedding row gets no gradient."""

    def encode(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids of a batch, truncated to ``max_length`` and right-padded to the longest row.

        Returns:
            ``(input_ids, attention_mask)``, both int64 [B, T] on the CPU; the mask is 1 on real
            tokens and 0 on padding.
        """

    def word_pieces(self, words: list[str]) -> tuple[list[list[int]], list[int], list[int]]:
        """Ids of each word on its own, and the ids a sentence starts and ends with.

        Returns:
            ``(pieces, prefix, suffix)``: one id list per word (no special ids), and the special
            ids before and after a sentence (``[CLS]`` and ``[SEP]`` for WordPiece, none for
            SentencePiece), as :meth:`encode` adds them.
        """

    def save(self, directory: Path) -> None:
        """Write the vocabulary's files into ``directory``."""


class WordPieceVocabulary:
    """The teacher's own (WordPiece) tokenizer; ids include its ``[CLS]`` and ``[SEP]``.

    Args:
        tokenizer: a Hugging Face tokenizer with a pad token.
    """

    kind: ClassVar[VocabKind] = "teacher"

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        if tokenizer.pad_token_id is None:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no pad token")
        self.tokenizer = tokenizer

    @property
    def size(self) -> int:
        return len(self.tokenizer)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def encode(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """See :meth:`Vocabulary.encode`."""
        batch = self.tokenizer(texts, truncation=True, max_length=max_length, padding=True,
                               return_token_type_ids=False, return_tensors="pt")
        return batch["input_ids"].long(), batch["attention_mask"].long()

    def word_pieces(self, words: list[str]) -> tuple[list[list[int]], list[int], list[int]]:
        """See :meth:`Vocabulary.word_pieces`."""
        pieces = self.tokenizer(list(words), add_special_tokens=False)["input_ids"]
        return pieces, [self.tokenizer.cls_token_id], [self.tokenizer.sep_token_id]

    def save(self, directory: Path) -> None:
        """Write the tokenizer's files (``save_pretrained``)."""
        self.tokenizer.save_pretrained(directory)

    @classmethod
    def load(cls, directory: Path) -> "WordPieceVocabulary":
        """Read a tokenizer written by :meth:`save` (or any Hugging Face checkpoint folder)."""
        return cls(AutoTokenizer.from_pretrained(str(directory)))


class SentencePieceVocabulary:
    """A SentencePiece model; pad 0, unk 1, bos 2, eos 3 (bos/eos are reserved, not added).

    Args:
        model_proto: the serialised model, as written by :meth:`train` or read from a folder.
    """

    kind: ClassVar[VocabKind] = "sentencepiece"

    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        self.processor = spm.SentencePieceProcessor(model_proto=model_proto)

    @property
    def size(self) -> int:
        return self.processor.get_piece_size()

    @property
    def pad_id(self) -> int:
        return self.processor.pad_id()

    @classmethod
    def train(cls, texts: list[str], vocab_size: int) -> "SentencePieceVocabulary":
        """Train a unigram model on ``texts`` in memory, deterministically (one thread, no sampling).

        Args:
            texts: the transfer-set sentences.
            vocab_size: number of pieces, the four special ids included.

        Raises:
            ValueError: ``texts`` is empty.
            ConfigError: the texts hold fewer distinct pieces than ``vocab_size``; names
                ``train.student.vocab_size`` and the largest value they allow.
        """
        if not texts:
            raise ValueError("no transfer-set texts to train the SentencePiece vocabulary on")
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts), model_writer=model, model_type="unigram", vocab_size=vocab_size,
                pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, num_threads=1,
                input_sentence_size=0, shuffle_input_sentence=False, minloglevel=2)
        except RuntimeError as exc:
            allowed = re.search(r"value <= (\d+)", str(exc))
            if allowed is None:
                raise
            raise ConfigError(f"train.student.vocab_size is {vocab_size} but the {len(texts)} transfer-set texts "
                              f"allow at most {allowed.group(1)} SentencePiece pieces; set "
                              f"train.student.vocab_size <= {allowed.group(1)} or use more transfer data") from None
        return cls(model.getvalue())

    def encode(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """See :meth:`Vocabulary.encode`. An empty text gives a row of padding (mask all 0)."""
        rows = [ids[:max_length] for ids in self.processor.encode(list(texts))]
        width = max((len(ids) for ids in rows), default=0)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)  # [B, T]
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # [B, T]
        for i, ids in enumerate(rows):
            input_ids[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, :len(ids)] = 1
        return input_ids, attention_mask

    def word_pieces(self, words: list[str]) -> tuple[list[list[int]], list[int], list[int]]:
        """See :meth:`Vocabulary.word_pieces`."""
        return self.processor.encode(list(words)), [], []

    def save(self, directory: Path) -> None:
        """Write ``sentencepiece.model``."""
        (directory / SENTENCEPIECE_FILE).write_bytes(self.model_proto)

    @classmethod
    def load(cls, directory: Path) -> "SentencePieceVocabulary":
        """Read the ``sentencepiece.model`` of a student folder.

        Raises:
            ArtifactError: the file is missing.
        """
        path = directory / SENTENCEPIECE_FILE
        if not path.is_file():
            raise ArtifactError(path, "missing; rerun the train stage")
        return cls(path.read_bytes())


def encode_words(vocab: Vocabulary, sentences: list[list[str]], max_length: int) -> dict[str, torch.Tensor]:
    """Ids of sentences given as words, with the position of each word's first piece, so that
    a sub-word encoder can tag words (the first-sub-token rule of BERT's CoNLL-2003 tagger).

    Each sentence is ``prefix + pieces of every word + suffix`` (see :meth:`Vocabulary.word_pieces`),
    cut to ``max_length`` ids (the suffix is kept). A word whose first piece is cut off, or
    that has no pieces at all, is left out of ``word_mask``.

    Returns:
        int64 ``input_ids`` and ``attention_mask`` [B, T] (T <= max_length), ``word_starts``
        [B, W] (index into T of each word's first piece; 0 where the word is left out or
        padding) and bool ``word_mask`` [B, W], W the most words in a sentence.
    """
    rows, starts = [], []
    for words in sentences:
        pieces, prefix, suffix = vocab.word_pieces(words)
        budget = max(max_length - len(prefix) - len(suffix), 0)
        ids, first = list(prefix), []
        for word in pieces:
            fits = bool(word) and len(ids) - len(prefix) < budget
            first.append(len(ids) if fits else -1)
            ids += word
        rows.append(ids[:len(prefix) + budget] + suffix)
        starts.append(first)
    width, num_words = max(len(ids) for ids in rows), max((len(first) for first in starts), default=0)
    input_ids = torch.full((len(rows), width), vocab.pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    word_starts = torch.zeros((len(rows), num_words), dtype=torch.long)
    word_mask = torch.zeros((len(rows), num_words), dtype=torch.bool)
    for i, (ids, first) in enumerate(zip(rows, starts)):
        input_ids[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, :len(ids)] = 1
        first = torch.tensor(first, dtype=torch.long)
        word_mask[i, :len(first)] = first >= 0
        word_starts[i, :len(first)] = first.clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "word_starts": word_starts,
            "word_mask": word_mask}


VOCABULARIES: dict[VocabKind, type[WordPieceVocabulary] | type[SentencePieceVocabulary]] = {
    "teacher": WordPieceVocabulary, "sentencepiece": SentencePieceVocabulary}
"""Vocabulary classes by ``train.student.vocab`` value."""


def build_vocabulary(kind: VocabKind, vocab_size: int, teacher_dir: str | Path,
                     transfer_texts: list[str] | None) -> WordPieceVocabulary | SentencePieceVocabulary:
    """The vocabulary a new student reads.

    Args:
        kind: ``teacher`` (the tokenizer in ``teacher_dir``) or ``sentencepiece`` (trained here).
        vocab_size: pieces of a SentencePiece vocabulary; unused for ``teacher``.
        teacher_dir: the teacher's Hugging Face checkpoint folder.
        transfer_texts: the sentences to train SentencePiece on; required for ``sentencepiece``.

    Raises:
        ValueError: ``sentencepiece`` without transfer texts.
        ConfigError: see :meth:`SentencePieceVocabulary.train`.
    """
    if kind == "teacher":
        return WordPieceVocabulary.load(Path(teacher_dir))
    if not transfer_texts:
        raise ValueError("vocab: sentencepiece needs the transfer-set texts to train on")
    return SentencePieceVocabulary.train(transfer_texts, vocab_size)


def load_vocabulary(directory: str | Path, kind: VocabKind) -> WordPieceVocabulary | SentencePieceVocabulary:
    """Read the vocabulary files that a student's ``save`` wrote into ``directory``."""
    if kind not in VOCABULARIES:
        raise KeyError(f"unknown vocabulary {kind!r}; choose from {sorted(VOCABULARIES)}")
    return VOCABULARIES[kind].load(Path(directory))
