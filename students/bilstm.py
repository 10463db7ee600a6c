"""BiLSTM student of Tang et al. (2019), "Distilling Task-Specific Knowledge from BERT into
Simple Neural Networks", with its siamese variant for sentence pairs.

    single: input_ids [B, T] -> embedding [B, T, E] -> BiLSTM (packed) [B, T, 2H] -> max over real tokens h [B, 2H]
            -> dropout -> Linear(2H, H) -> ReLU -> Linear(H, C) -> logits [B, C]
    pairs:  h1, h2 from the same encoder -> [h1; h2; h1 * h2; |h1 - h2|] [B, 8H] -> the same MLP -> logits [B, C]

Tang et al. feed the MLP the concatenated last forward and backward hidden states; max-pooling
the BiLSTM outputs over time instead scored 1-3 points higher on SST-2 dev in a check here
(8,000 training rows, 3 epochs, CE only: 0.81 vs 0.79-0.80 with the MiniLM embeddings, 0.74-0.76
vs 0.72-0.73 from random embeddings), so this student max-pools.

The student reads the teacher's WordPiece ids (``vocab: teacher``; with
``init_from_teacher_embeddings`` the teacher's word-embedding matrix seeds the student's, reduced
by PCA when narrower: :mod:`students.teacher_embeddings`) or a
SentencePiece vocabulary trained on the transfer set (``vocab: sentencepiece``, see
:mod:`students.vocab`).

The encoder, pooling, pair features, MLP head, teacher-embedding copy and folder format here are
shared with the multi-task student (:mod:`students.multitask`). A saved student is a folder with
``model.safetensors``, ``student.json`` and the vocabulary's files; no pickles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from pydantic import Field
from transformers import AutoConfig

from core.artifacts import atomic_dir
from core.config import Section
from core.errors import ArtifactError
from students.base import BuildInputs, Student, StudentOutput, write_meta
from students.teacher_embeddings import check_embeddings_fit, copy_teacher_embeddings, teacher_word_embeddings
from students.vocab import Vocabulary, build_vocabulary, load_vocabulary

WEIGHTS_FILE = "model.safetensors"
"""Name of the weights file in an LSTM student folder."""



class LSTMConfig(Section):
    """The vocabulary and encoder fields of the families built on :class:`BiLSTMEncoder` (``bilstm``
    and ``multitask_lstm``)."""

    vocab: Literal["teacher", "sentencepiece"] = Field(
        default="teacher", description="teacher: the teacher's WordPiece ids; sentencepiece: a unigram "
                                       "vocabulary of vocab_size pieces trained on the transfer set")
    vocab_size: int = Field(default=8000, gt=100, description="pieces, with vocab: sentencepiece")
    embed_dim: int = Field(default=300, gt=0)
    hidden_dim: int = Field(default=300, gt=0)
    num_layers: int = Field(default=1, gt=0)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    max_length: int = Field(default=64, gt=0, description="tokens; longer inputs are truncated; left out of a "
                                                           "single-task run config, it follows teacher.max_length")
    init_from_teacher_embeddings: bool = Field(
        default=False, description="seed the table with the teacher's word embeddings, reduced to their "
                                   "leading principal components when embed_dim is narrower; needs "
                                   "vocab: teacher (students.teacher_embeddings)")


class BiLSTMStudentConfig(LSTMConfig):
    """``train.student`` of the BiLSTM student (Tang et al. 2019) over the teacher's WordPiece
    vocabulary, or over a SentencePiece vocabulary trained on the transfer set (``vocab: sentencepiece``)."""

    family: Literal["bilstm"] = "bilstm"


LSTMStudent = TypeVar("LSTMStudent", bound=Student)


def real_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that pooling and packing treat as tokens: the mask's, plus position 0 always.

    Position 0 counts so that an empty row (mask all 0) still has one step to pool over (its
    padding embedding) instead of giving -inf or NaN.

    Args:
        attention_mask: int64 [B, T], 1 on real tokens, right-padded.

    Returns:
        bool [B, T].
    """
    real = attention_mask.bool().clone()
    real[:, :1] = True
    return real


class BiLSTMEncoder(nn.Module):
    """Embedding and stacked bidirectional LSTM layers over packed sequences.

    One ``nn.LSTM`` per layer, with dropout between layers as ``nn.LSTM(dropout=...)`` applies
    it, so that every layer's output is available as a hidden state.

    Args:
        vocab_size: rows V of the embedding table.
        pad_id: the vocabulary's pad id; its embedding row gets no gradient.
        embed_dim: E. hidden_dim: H per direction. num_layers: L. dropout: between LSTM layers.
    """

    def __init__(self, vocab_size: int, pad_id: int, embed_dim: int, hidden_dim: int, num_layers: int,
                 dropout: float):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.layers = nn.ModuleList(
            nn.LSTM(embed_dim if i == 0 else 2 * hidden_dim, hidden_dim, batch_first=True, bidirectional=True)
            for i in range(num_layers))
        self.dropout = nn.Dropout(dropout)

    @classmethod
    def from_config(cls, cfg: LSTMConfig, vocab: Vocabulary) -> "BiLSTMEncoder":
        """The encoder a student config asks for, over ``vocab``."""
        return cls(vocab.size, vocab.pad_id, cfg.embed_dim, cfg.hidden_dim, cfg.num_layers, cfg.dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Hidden states of a right-padded batch.

        Args:
            input_ids: int64 [B, T].
            attention_mask: int64 [B, T], 1 on real tokens and 0 on padding.

        Returns:
            ``(embedded [B, T, E], layer_1 [B, T, 2H], ..., layer_L [B, T, 2H])`` float32; LSTM
            outputs are 0 on padding (forward and backward halves concatenated on the last axis).
        """
        width = input_ids.shape[1]
        lengths = real_positions(attention_mask).sum(dim=1).cpu()  # [B], on the CPU as packing requires
        states = [self.embedding(input_ids)]  # [B, T, E]
        for i, lstm in enumerate(self.layers):
            inputs = self.dropout(states[-1]) if i > 0 else states[-1]
            packed = nn.utils.rnn.pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
            outputs, _ = lstm(packed)
            outputs, _ = nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True, total_length=width)  # [B, T, 2H]
            states.append(outputs)
        return tuple(states)


def max_pool(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Max over real positions (see :func:`real_positions`): float [B, T, D] -> [B, D]."""
    real = real_positions(attention_mask).unsqueeze(-1)  # [B, T, 1]
    return states.masked_fill(~real, float("-inf")).max(dim=1).values


def pair_features(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Siamese matching features of Tang et al. (2019, section 3.2): [h1; h2; h1 * h2; |h1 - h2|].

    Args:
        first, second: float [B, D] sentence encodings.

    Returns:
        float [B, 4D].
    """
    return torch.cat([first, second, first * second, (first - second).abs()], dim=-1)


class MLPHead(nn.Module):
    """dropout -> Linear(D, H) -> ReLU -> Linear(H, C); applies to the last axis of [..., D]."""

    def __init__(self, in_dim: int, hidden_dim: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.hidden = nn.Linear(in_dim, hidden_dim)
        self.classifier = nn.Linear(hidden_dim, num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """float [..., D] -> float32 logits [..., C]."""
        return self.classifier(torch.relu(self.hidden(self.dropout(features)))).float()


def featurize_texts(vocab: Vocabulary, max_length: int, texts: list[str],
                    pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Encode sentences, and second sentences when given, each on its own (for siamese encoding).

    Returns:
        int64 ``input_ids`` and ``attention_mask`` [B, T]; with ``pairs`` also
        ``pair_input_ids`` and ``pair_attention_mask`` [B, T2].

    Raises:
        ValueError: ``pairs`` is not as long as ``texts``.
    """
    input_ids, attention_mask = vocab.encode(texts, max_length)
    features = {"input_ids": input_ids, "attention_mask": attention_mask}
    if pairs is not None:
        if len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")
        features["pair_input_ids"], features["pair_attention_mask"] = vocab.encode(pairs, max_length)
    return features


def save_folder(student: Student, cfg: LSTMConfig, vocab: Vocabulary, directory: str | Path,
                **extra: Any) -> Path:
    """Write an LSTM student folder atomically: weights, ``student.json`` (with ``extra``) and vocabulary.

    Returns:
        ``directory`` as a Path.
    """
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        weights = {name: tensor.detach().cpu().contiguous() for name, tensor in student.state_dict().items()}
        save_file(weights, str(tmp / WEIGHTS_FILE))
        write_meta(tmp, student.family, cfg.model_dump(), **extra)
        vocab.save(tmp)
    return directory


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The state dict in a student folder's ``model.safetensors``.

    Raises:
        ArtifactError: the file is missing.
    """
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise ArtifactError(path, "missing; rerun the train stage")
    return load_file(str(path))


class BiLSTMStudent(Student):
    """Max-pooled BiLSTM classifier (Tang et al. 2019, figure 1), single sentences or siamese pairs.

    Args:
        cfg: sizes, dropout, vocabulary kind and ``max_length``.
        vocab: the vocabulary it reads (fixes V and the pad id).
        num_labels: number of classes C.
        sentence_pairs: classify sentence pairs with the siamese head instead of single sentences.
    """

    family = "bilstm"

    def __init__(self, cfg: BiLSTMStudentConfig, vocab: Vocabulary, num_labels: int, sentence_pairs: bool = False):
        super().__init__()
        self.cfg, self.vocab, self.num_labels, self.sentence_pairs = cfg, vocab, num_labels, sentence_pairs
        self.encoder = BiLSTMEncoder.from_config(cfg, vocab)
        sentence_dim = 2 * cfg.hidden_dim
        self.head = MLPHead(4 * sentence_dim if sentence_pairs else sentence_dim, cfg.hidden_dim, num_labels,
                            cfg.dropout)

    def featurize(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        """See :func:`featurize_texts`.

        Raises:
            ValueError: ``pairs`` given to a single-sentence student, or missing for a pair student.
        """
        if (pairs is not None) != self.sentence_pairs:
            raise ValueError(f"this student classifies {'sentence pairs' if self.sentence_pairs else 'single sentences'}"
                             f"; pairs {'missing' if pairs is None else 'given'}")
        return featurize_texts(self.vocab, self.cfg.max_length, texts, pairs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pair_input_ids: torch.Tensor | None = None,
                pair_attention_mask: torch.Tensor | None = None) -> StudentOutput:
        """Class logits of a right-padded batch.

        Args:
            input_ids, attention_mask: int64 [B, T] (first) sentences.
            pair_input_ids, pair_attention_mask: int64 [B, T2] second sentences; required by,
                and only by, a pair student.

        Returns:
            ``logits`` float32 [B, C]; for single sentences ``hidden_states`` are the encoder's
            (``[B, T, E]`` then ``[B, T, 2H]`` per layer), for pairs none.
        """
        if (pair_input_ids is not None) != self.sentence_pairs:
            raise ValueError(f"pair inputs {'missing' if pair_input_ids is None else 'given'} for a "
                             f"{'pair' if self.sentence_pairs else 'single-sentence'} student")
        states = self.encoder(input_ids, attention_mask)
        sentence = max_pool(states[-1], attention_mask)  # [B, 2H]
        if not self.sentence_pairs:
            return StudentOutput(logits=self.head(sentence), hidden_states=states)
        second = max_pool(self.encoder(pair_input_ids, pair_attention_mask)[-1], pair_attention_mask)  # [B, 2H]
        return StudentOutput(logits=self.head(pair_features(sentence, second)))  # [B, 8H] -> [B, C]

    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors``, ``student.json`` and the vocabulary's files atomically."""
        return save_folder(self, self.cfg, self.vocab, directory, num_labels=self.num_labels,
                           sentence_pairs=self.sentence_pairs)

    @classmethod
    def load(cls, directory: Path, meta: dict[str, Any]) -> "BiLSTMStudent":
        """Rebuild a student written by :meth:`save`."""
        cfg = BiLSTMStudentConfig.model_validate(meta["student"])
        student = cls(cfg, load_vocabulary(directory, cfg.vocab), meta["num_labels"], meta["sentence_pairs"])
        student.load_state_dict(read_weights(directory))
        return student


def build_lstm_student(make: Callable[[Vocabulary], LSTMStudent], cfg: LSTMConfig, teacher_dir: str | Path,
                       transfer_texts: list[str] | None) -> LSTMStudent:
    """Build the vocabulary ``cfg`` asks for, the student over it, and copy the teacher's embeddings if asked.

    Args:
        make: builds the student (with an ``encoder`` :class:`BiLSTMEncoder`) over a vocabulary.
        cfg: the ``train.student`` section of an LSTM family.
        teacher_dir: the teacher's checkpoint folder (its tokenizer and word embeddings).
        transfer_texts: sentences to train a SentencePiece vocabulary on; required with
            ``vocab: sentencepiece``, unused otherwise.

    Raises:
        ConfigError: embeddings that do not fit the student (:func:`check_embeddings_fit`, before
            any work), or as :func:`copy_teacher_embeddings` and :meth:`SentencePieceVocabulary.train`.
        ValueError: ``vocab: sentencepiece`` without transfer texts.
    """
    if cfg.init_from_teacher_embeddings:
        check_embeddings_fit(cfg, AutoConfig.from_pretrained(str(teacher_dir)))
    student = make(build_vocabulary(cfg.vocab, cfg.vocab_size, teacher_dir, transfer_texts))
    if cfg.init_from_teacher_embeddings:
        copy_teacher_embeddings(student.encoder.embedding, teacher_word_embeddings(teacher_dir))
    return student


def build_bilstm_student(cfg: BiLSTMStudentConfig, inputs: BuildInputs) -> BiLSTMStudent:
    """A freshly initialised BiLSTM student, in training mode on the CPU.

    Args:
        cfg: the ``train.student`` section.
        inputs: ``num_labels`` C; ``teacher_dir``, the teacher's checkpoint folder (its tokenizer
            and, with ``init_from_teacher_embeddings``, its word embeddings); ``transfer_texts``
            to train a SentencePiece vocabulary on (required with ``vocab: sentencepiece``);
            ``sentence_pairs`` builds the siamese pair classifier.

    Raises:
        ConfigError: embeddings copied into a SentencePiece vocabulary, ``embed_dim`` exceeds
            the teacher's embedding width, or ``vocab_size`` is too large for the transfer set.
        ValueError: ``vocab: sentencepiece`` without transfer texts, or no ``num_labels``.
    """
    num_labels = inputs.label_count()
    return build_lstm_student(lambda vocab: BiLSTMStudent(cfg, vocab, num_labels, inputs.sentence_pairs), cfg,
                              inputs.teacher_dir, inputs.transfer_texts)
