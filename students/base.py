"""The interface every student family implements (the registry that builds and loads them is
:mod:`students.registry`).

A student is an ``nn.Module`` that owns its input featurisation, so the train stage never
needs to know the family::

    features = student.featurize(texts)          # dict of int64 tensors, e.g. input_ids [B, T]
    output = student(**features)                 # StudentOutput
    folder = student.save(directory)             # weights + student.json + vocabulary files
    student = load_student(folder)               # any family, dispatched on student.json

A saved student is a folder with ``model.safetensors`` or a Hugging Face checkpoint (the
transformer family), ``student.json`` (family, config, label count) and the files of its
vocabulary; no pickles.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

META_FILE = "student.json"
"""Name of the file in a student folder that says which family loads it."""


@dataclass
class StudentOutput:
    """What a student's forward returns.

    Attributes:
        logits: float [B, C] for sentence classification, [B, W, C] for taggers (W words).
        hidden_states: per layer, float [B, T, D_s]; index 0 is the embedding output, index i
            the output of layer i (Hugging Face's convention). Empty for families without them.
        attentions: per layer, float [B, H, T, T] post-softmax attention maps; index i - 1 is
            layer i. Empty for families without them.
    """

    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] = ()
    attentions: tuple[torch.Tensor, ...] = ()


class Student(nn.Module):
    """Base class of the student families (see the module docstring for the contract).

    Subclasses set ``family`` (the ``train.student.family`` value) and implement
    :meth:`featurize`, ``forward``, :meth:`save` and :meth:`load`; an entry in
    :data:`students.registry.FAMILIES` lets ``build_student`` and ``load_student`` find them.
    """

    family: ClassVar[str]
    hidden_size: int | None = None
    """Width D_s of the hidden states that layer loss terms compare with the teacher's; None when
    the family has none comparable (every family but the transformer)."""

    def featurize(self, texts: list[str] | list[list[str]], pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Model inputs of a batch: sentences (or word lists for taggers), with optional second sentences.

        Returns:
            int64 tensors on the CPU, at least ``input_ids [B, T]`` and ``attention_mask [B, T]``.
        """
        raise NotImplementedError

    def word_mask(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """The real words [B, W] of a batch that :meth:`featurize` made from word lists: the
        attention mask of a word-level tagger; sub-word students override it."""
        return features["attention_mask"].bool()

    def save(self, directory: str | Path) -> Path:
        """Write the student folder atomically; returns it."""
        raise NotImplementedError

    @classmethod
    def load(cls, directory: Path, meta: dict[str, Any]) -> "Student":
        """Rebuild a student from its folder; ``meta`` is the parsed ``student.json``."""
        raise NotImplementedError


def write_meta(directory: Path, family: str, config: dict[str, Any], **extra: Any) -> None:
    """Write ``student.json``: the family, its config (``model_dump()``) and family-specific fields."""
    meta = {"family": family, "student": config, **extra}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class BuildInputs:
    """What a family's builder may read besides its ``train.student`` section.

    Attributes:
        teacher_dir: the fine-tuned teacher's checkpoint folder (tokenizer, embeddings or layers to copy).
        transfer_texts: the transfer set's sentences (word lists for taggers), for families that
            learn a vocabulary or score teacher layers; may be empty for the others.
        num_labels: classes C (tags for a tagger) of a single-task family.
        sentence_pairs: the task classifies sentence pairs (the BiLSTM then is siamese).
        tasks: ``{name: (kind, num_labels)}`` of a multi-task family.
        init_dir: the checkpoint folder that ``train.student.init_checkpoint`` names, a catalogue
            name already resolved to its installed folder (the pipeline resolves it, as it does
            ``teacher.model``); None when the student starts from the teacher.
    """

    teacher_dir: Path
    transfer_texts: Sequence[str] | Sequence[list[str]] = ()
    num_labels: int | None = None
    sentence_pairs: bool = False
    tasks: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    init_dir: Path | None = None

    def label_count(self) -> int:
        """``num_labels``.

        Raises:
            ValueError: it was not given (a single-task family needs it).
        """
        if self.num_labels is None:
            raise ValueError("this student family classifies into num_labels classes; give BuildInputs.num_labels")
        return self.num_labels
