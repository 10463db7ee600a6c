"""Attentive multi-task LSTM student of Liu et al. (2019), "Attentive Student Meets Multi-Task
Teacher: Improved Knowledge Distillation for Pretrained Models" (MKD).

Shared by every task: the embedding table, the BiLSTM encoder (:class:`students.bilstm.BiLSTMEncoder`)
and an additive attention layer that pools the encoder's tokens into a sentence vector. One head
per task:

    sentence: h = attend(BiLSTM(x)) [B, 2H]                          -> MLP -> logits [B, C_task]
    pair:     [h1; h2; h1 * h2; |h1 - h2|] [B, 8H] (siamese, as Tang et al. 2019) -> MLP -> logits [B, C_task]
    token:    BiLSTM(x) [B, T, 2H]                                   -> MLP per token -> logits [B, T, C_task]

Attention is additive (Bahdanau et al. 2015): ``a = softmax_t(v^T tanh(W h_t + b))`` over
real tokens, ``s = sum_t a_t h_t``, with ``W`` of ``attention_dim`` rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

import torch
from pydantic import Field
from torch import nn

from students.base import BuildInputs, Student, StudentOutput
from students.bilstm import (BiLSTMEncoder, LSTMConfig, MLPHead, build_lstm_student, featurize_texts, pair_features,
                             read_weights, real_positions, save_folder)
from students.vocab import Vocabulary, encode_words, load_vocabulary

TaskKind = Literal["sentence", "pair", "token"]
TASK_KINDS: tuple[str, ...] = get_args(TaskKind)


class MultiTaskLSTMConfig(LSTMConfig):
    """``train.student`` of the attentive multi-task LSTM of Liu et al. (2019): shared embeddings and
    BiLSTM encoder with attention, and one head per task (sentence classification or tagging)."""

    family: Literal["multitask_lstm"] = "multitask_lstm"
    attention_dim: int = Field(default=128, gt=0)


class Task(NamedTuple):
    """One task of a multi-task student: its head kind and its number of labels C_task."""

    kind: TaskKind
    num_labels: int


class AttentionPooling(nn.Module):
    """Additive attention pooling over real tokens: float [B, T, D] -> [B, D].

    Args:
        dim: D, the encoder's output size. attention_dim: rows of the projection W.
    """

    def __init__(self, dim: int, attention_dim: int):
        super().__init__()
        self.project = nn.Linear(dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1, bias=False)

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Attention-weighted sum of ``states`` [B, T, D] over the mask's tokens [B, T]; float [B, D]."""
        scores = self.score(torch.tanh(self.project(states))).squeeze(-1)  # [B, T]
        scores = scores.masked_fill(~real_positions(attention_mask), float("-inf"))
        weights = torch.softmax(scores, dim=-1).unsqueeze(-1)  # [B, T, 1]
        return (weights * states).sum(dim=1)  # [B, D]


def check_tasks(tasks: dict[str, tuple[str, int]]) -> dict[str, Task]:
    """Validate a task table ``{name: (kind, num_labels)}``.

    Raises:
        ValueError: no tasks, a name that cannot be a module name, an unknown kind, or fewer than 1 label.
    """
    if not tasks:
        raise ValueError("a multi-task student needs at least one task")
    checked = {}
    for name, (kind, num_labels) in tasks.items():
        if not name or "." in name:
            raise ValueError(f"task name {name!r} must be non-empty and contain no '.'")
        if kind not in TASK_KINDS:
            raise ValueError(f"task {name!r} has kind {kind!r}; choose from {list(TASK_KINDS)}")
        if num_labels < 1:
            raise ValueError(f"task {name!r} has {num_labels} labels; it needs at least 1")
        checked[name] = Task(kind, int(num_labels))
    return checked


class MultiTaskLSTMStudent(Student):
    """Shared embeddings, BiLSTM encoder and attention; one MLP head per task (Liu et al. 2019).

    Args:
        cfg: sizes, dropout, ``attention_dim``, vocabulary kind and ``max_length``.
        vocab: the vocabulary it reads.
        tasks: ``{name: (kind, num_labels)}`` with kind ``sentence``, ``pair`` or ``token``.
    """

    family = "multitask_lstm"

    def __init__(self, cfg: MultiTaskLSTMConfig, vocab: Vocabulary, tasks: dict[str, tuple[str, int]]):
        super().__init__()
        self.cfg, self.vocab, self.tasks = cfg, vocab, check_tasks(tasks)
        self.encoder = BiLSTMEncoder.from_config(cfg, vocab)
        sentence_dim = 2 * cfg.hidden_dim
        self.attention = AttentionPooling(sentence_dim, cfg.attention_dim)
        self.heads = nn.ModuleDict({
            name: MLPHead(4 * sentence_dim if task.kind == "pair" else sentence_dim, cfg.hidden_dim,
                          task.num_labels, cfg.dropout)
            for name, task in self.tasks.items()})

    def featurize(self, texts: list[str] | list[list[str]], pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Sentences: see :func:`students.bilstm.featurize_texts` (give ``pairs`` for ``pair``
        tasks). Word lists, for ``token`` tasks: see :func:`students.vocab.encode_words`
        (``input_ids``, ``attention_mask`` [B, T], ``word_starts``, ``word_mask`` [B, W])."""
        if texts and not isinstance(texts[0], str):
            return encode_words(self.vocab, [list(words) for words in texts], self.cfg.max_length)
        return featurize_texts(self.vocab, self.cfg.max_length, texts, pairs)

    def word_mask(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """The real words [B, W] of a batch of word lists (``features["word_mask"]``)."""
        return features["word_mask"]

    def task(self, name: str) -> Task:
        """The task called ``name``.

        Raises:
            KeyError: no such task; the message lists the known ones.
        """
        if name not in self.tasks:
            raise KeyError(f"unknown task {name!r}; choose from {sorted(self.tasks)}")
        return self.tasks[name]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task: str,
                pair_input_ids: torch.Tensor | None = None, pair_attention_mask: torch.Tensor | None = None,
                word_starts: torch.Tensor | None = None, word_mask: torch.Tensor | None = None) -> StudentOutput:
        """Logits of ``task`` for a right-padded batch.

        Args:
            input_ids, attention_mask: int64 [B, T] (first) sentences.
            task: a name from the task table.
            pair_input_ids, pair_attention_mask: int64 [B, T2] second sentences; required by, and
                only by, ``pair`` tasks.
            word_starts: int64 [B, W], for ``token`` tasks on word lists: the token position of
                each word's first piece, whose state is tagged. ``word_mask`` [B, W] is not read
                (the loss and the scores mask the words).

        Returns:
            ``logits`` float32 [B, C_task] (sentence, pair), [B, W, C_task] (token, with
            ``word_starts``) or [B, T, C_task] (token, per piece); padding positions hold logits
            too, to be masked by the loss; ``hidden_states`` the encoder's (``[B, T, E]`` then
            ``[B, T, 2H]`` per layer) except for pairs.

        Raises:
            KeyError: unknown task. ValueError: pair inputs missing or unexpected.
        """
        kind = self.task(task).kind
        if (pair_input_ids is not None) != (kind == "pair"):
            raise ValueError(f"pair inputs {'missing' if pair_input_ids is None else 'given'} for {kind} task {task!r}")
        head = self.heads[task]
        states = self.encoder(input_ids, attention_mask)
        if kind == "token":
            tokens = states[-1]  # [B, T, 2H]
            if word_starts is not None:
                tokens = tokens.gather(1, word_starts.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))  # [B, W, 2H]
            return StudentOutput(logits=head(tokens), hidden_states=states)  # [B, W or T, C]
        sentence = self.attention(states[-1], attention_mask)  # [B, 2H]
        if kind == "sentence":
            return StudentOutput(logits=head(sentence), hidden_states=states)  # [B, C]
        second = self.attention(self.encoder(pair_input_ids, pair_attention_mask)[-1], pair_attention_mask)
        return StudentOutput(logits=head(pair_features(sentence, second)))  # [B, 8H] -> [B, C]

    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors``, ``student.json`` (with the task table) and the vocabulary."""
        return save_folder(self, self.cfg, self.vocab, directory,
                           tasks={name: task._asdict() for name, task in self.tasks.items()})

    @classmethod
    def load(cls, directory: Path, meta: dict[str, Any]) -> "MultiTaskLSTMStudent":
        """Rebuild a student written by :meth:`save`."""
        cfg = MultiTaskLSTMConfig.model_validate(meta["student"])
        tasks = {name: (task["kind"], task["num_labels"]) for name, task in meta["tasks"].items()}
        student = cls(cfg, load_vocabulary(directory, cfg.vocab), tasks)
        student.load_state_dict(read_weights(directory))
        return student


def build_multitask_student(cfg: MultiTaskLSTMConfig, inputs: BuildInputs) -> MultiTaskLSTMStudent:
    """A freshly initialised multi-task student; see :func:`students.bilstm.build_bilstm_student`.

    Args:
        cfg: the ``train.student`` section.
        inputs: ``tasks`` ``{name: (kind, num_labels)}``; ``teacher_dir``, the teacher's
            checkpoint folder; ``transfer_texts``, sentences of all tasks, for ``vocab: sentencepiece``.

    Raises:
        ConfigError, ValueError: as :func:`students.bilstm.build_bilstm_student`, and
            :func:`check_tasks` (no ``tasks`` included).
    """
    tasks = dict(inputs.tasks)
    check_tasks(tasks)
    return build_lstm_student(lambda vocab: MultiTaskLSTMStudent(cfg, vocab, tasks), cfg, inputs.teacher_dir,
                              list(inputs.transfer_texts))
