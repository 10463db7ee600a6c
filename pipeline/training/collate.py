"""Collation of Ray Data batches into the student's inputs, hard labels and the teacher's
padded signals (see :mod:`core.schema` for the stored layout).

Per-token teacher signals (``hidden_{l}``, ``attention_{l}``) are cut to each row's real
tokens in the shards and padded per batch here. Token tasks train a tagger on rows of words
(``tokens``): hard tags [B, W] padded with -1, the teacher's word logits [B, W, C] and a
distillation mask [B, W] that leaves out padding words and words the teacher never saw (cut
by its ``max_length``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from core.errors import ArtifactError
from core.schema import (LABEL, LENGTH, LOGITS, NO_LABEL, NUM_WORDS, TAGS, TEXT, TEXT_PAIR, TOKENS, WORD_MASK,
                         TaskKind, attention_column, hidden_column)
from students.base import Student


@dataclass
class Batch:
    """One collated batch.

    Attributes:
        features: the student's inputs (see :meth:`Student.featurize`), int64 tensors, and the
            ``task`` name (a str) for a multi-task student.
        teacher: the teacher's signals: ``logits`` [B, C] float32, or [B, W, C] for a tagger
            (KD rows only), and with layer terms ``hidden_{l}`` [B, T, D], ``attention_{l}``
            [B, H, T, T] and ``mask`` [B, T].
        labels: int64 [B], or [B, W] for a tagger; -1 for rows (words) without a hard label.
        mask: bool [B, W], a tagger's words to distil (real words the teacher saw); None = all rows.
    """

    features: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor]
    labels: torch.Tensor
    mask: torch.Tensor | None = None

    def to(self, device: torch.device) -> "Batch":
        """The batch with every tensor on ``device`` (non-blocking copies)."""
        move = lambda d: {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v  # noqa: E731
                          for k, v in d.items()}
        return Batch(move(self.features), move(self.teacher), self.labels.to(device, non_blocking=True),
                     None if self.mask is None else self.mask.to(device, non_blocking=True))


class Collate:
    """Featurise a Ray Data batch for the student and pad the teacher's per-token signals to it.

    Args:
        student: the student whose :meth:`Student.featurize` tokenizes the texts.
        layers: ``(hidden_layers, attention_layers)`` of the teacher that the loss reads.
        kind: the task's kind: sentences, sentence pairs or tagged words.
        task: the task name a multi-task student is called with (``features["task"]``), or None.
    """

    def __init__(self, student: Student, layers: tuple[list[int], list[int]], kind: TaskKind,
                 task: str | None = None):
        self.student = student
        self.hidden_layers, self.attention_layers = layers
        self.kind = kind
        self.task = task

    def __call__(self, batch: dict[str, np.ndarray]) -> Batch:
        """A Ray Data batch -> :class:`Batch`, with the task name among the features."""
        collated = self.tagged(batch) if self.kind is TaskKind.TOKEN else self.sentences(batch)
        if self.task is not None:
            collated.features["task"] = self.task
        return collated

    def sentences(self, batch: dict[str, np.ndarray]) -> Batch:
        """Columns ``text`` [B] (``text_pair`` [B]), ``label`` [B] and the teacher's signals -> :class:`Batch`."""
        pairs = list(batch[TEXT_PAIR]) if self.kind is TaskKind.PAIR else None
        features = self.student.featurize(list(batch[TEXT]), pairs)
        teacher: dict[str, torch.Tensor] = {}
        if LOGITS in batch:  # KD rows; the CE-only twin's rows have none
            teacher["logits"] = torch.from_numpy(np.stack(batch[LOGITS]).astype(np.float32))  # [B, C]
        if self.hidden_layers or self.attention_layers:
            mask = features["attention_mask"]  # [B, T]
            lengths = np.asarray(batch[LENGTH], dtype=np.int64)
            if not np.array_equal(lengths, mask.sum(dim=1).numpy()):
                raise ArtifactError(Path("label"), "the student's tokens differ from the teacher's stored ones; "
                                                   "use the teacher's tokenizer and max_length for layer terms")
            teacher["mask"] = mask
            for layer in self.hidden_layers:
                teacher[hidden_column(layer)] = pad_matrices(batch[hidden_column(layer)], lengths, mask.shape[1])
            for layer in self.attention_layers:
                teacher[attention_column(layer)] = pad_attention(batch[attention_column(layer)], lengths,
                                                                 mask.shape[1])
        return Batch(features, teacher, torch.as_tensor(np.asarray(batch[LABEL], dtype=np.int64)))

    def tagged(self, batch: dict[str, np.ndarray]) -> Batch:
        """Columns ``tokens`` [B] (word lists), ``tags`` [B] (per-word lists, empty or None when
        unlabeled) and, on KD rows, ``logits``/``num_words``/``word_mask`` -> :class:`Batch` with
        labels [B, W] (-1 on padding and unlabeled words), teacher ``logits`` [B, W, C] and the
        distillation mask [B, W] (real words that the teacher saw)."""
        features = self.student.featurize([[str(word) for word in words] for words in batch[TOKENS]])
        real = self.student.word_mask(features)  # [B, W]
        width = real.shape[1]
        labels = pad_words(batch[TAGS], width, NO_LABEL)  # [B, W]
        teacher, mask = {}, None
        if LOGITS in batch:  # KD rows
            teacher["logits"] = pad_matrices(batch[LOGITS], np.asarray(batch[NUM_WORDS]), width)  # [B, W, C]
            mask = pad_words(batch[WORD_MASK], width, False) & real  # [B, W]
        return Batch(features, teacher, labels, mask)


def pad_matrices(rows: np.ndarray, lengths: np.ndarray, width: int) -> torch.Tensor:
    """Flat per-row matrices (each ``T_i * D`` values: hidden states, or a tagger's word
    logits with T_i words and D classes) -> zero-padded float32 [B, width, D].

    Padded by :func:`torch.nn.utils.rnn.pad_sequence` in the stored dtype (float16 for hidden
    states), then cast once: half the bytes of casting each row first.
    """
    dim = len(rows[0]) // int(lengths[0])
    with warnings.catch_warnings():  # Ray's arrays are read-only; pad_sequence only reads them
        warnings.simplefilter("ignore", UserWarning)
        matrices = [torch.from_numpy(np.asarray(row)).view(-1, dim) for row in rows]  # [T_i, D] each
    padded = pad_sequence(matrices, batch_first=True).float()  # [B, max T_i, D]
    return F.pad(padded, (0, 0, 0, width - padded.shape[1]))  # [B, width, D]


def pad_words(rows: np.ndarray, width: int, fill: int | bool) -> torch.Tensor:
    """Per-row word values (tags, or the word mask; None or empty for a row without them) ->
    [B, width] padded with ``fill``: int64 for an int fill, bool for a bool one."""
    out = torch.full((len(rows), width), fill)
    for i, row in enumerate(rows):
        if row is not None and len(row):
            out[i, :len(row)] = torch.from_numpy(np.array(row))  # a copy: Ray's arrays are read-only
    return out


def pad_attention(rows: np.ndarray, lengths: np.ndarray, width: int) -> torch.Tensor:
    """Flat per-row attention maps (each ``H * T_i * T_i`` values) -> zero-padded float32 [B, H, width, width].

    A loop, not ``pad_sequence``: each map is padded along two axes.
    """
    heads = len(rows[0]) // int(lengths[0]) ** 2
    out = torch.zeros(len(rows), heads, width, width)
    for i, (row, n) in enumerate(zip(rows, lengths)):
        out[i, :, :n, :n] = torch.from_numpy(np.asarray(row, dtype=np.float32).reshape(heads, n, n))
    return out
