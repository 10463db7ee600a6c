"""The interface every student family implements, and the registry that builds and loads them.

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

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from core.errors import ArtifactError, ConfigError

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
    :meth:`featurize`, ``forward``, :meth:`save` and :meth:`load`; registering with
    :func:`register` lets :func:`load_student` find them.
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


FAMILIES: dict[str, type[Student]] = {}
"""Student classes by family name, filled by :func:`register`."""


def register(cls: type[Student]) -> type[Student]:
    """Class decorator adding a student family to :data:`FAMILIES`."""
    FAMILIES[cls.family] = cls
    return cls


def write_meta(directory: Path, family: str, config: dict[str, Any], **extra: Any) -> None:
    """Write ``student.json``: the family, its config (``model_dump()``) and family-specific fields."""
    meta = {"family": family, "student": config, **extra}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


FAMILY_MODULES = {"bilstm": "students.bilstm", "transformer": "students.transformer",
                  "cnn_lstm": "students.cnn_lstm", "multitask_lstm": "students.multitask"}
"""Module of each student family; imported on first use, which registers the family."""

SAMPLE_TEXTS = 256
"""Transfer-set texts given to builders that score teacher layers (contribution-based dropping)."""


def family_class(family: str) -> type[Student]:
    """The student class of a family, importing its module on first use.

    Raises:
        KeyError: ``family`` is not one of :data:`FAMILY_MODULES`.
    """
    if family not in FAMILIES:
        importlib.import_module(FAMILY_MODULES[family])
    return FAMILIES[family]


def build_student(cfg, num_labels: int, teacher_dir: Path, transfer_texts: list[str],
                  sentence_pairs: bool = False) -> Student:
    """A freshly initialised student of the family ``cfg.family``: a sentence classifier, or a
    word tagger (cnn_lstm) for token tasks.

    Args:
        cfg: the ``train.student`` section (one of the family configs of :mod:`pipeline.config`).
        num_labels: classes C (tags for a tagger).
        teacher_dir: the fine-tuned teacher (tokenizer, embeddings or layers to copy).
        transfer_texts: the transfer set's sentences, for families that learn a vocabulary
            (SentencePiece, the tagger's words: then word lists) or score teacher layers.
        sentence_pairs: the task classifies sentence pairs (the BiLSTM then is siamese).

    Raises:
        ConfigError: the family is not built by the train stage (multitask_lstm), or does not fit the teacher
            (see each family's builder).
    """
    if cfg.family == "bilstm":
        from students.bilstm import build_bilstm_student

        return build_bilstm_student(cfg, num_labels, teacher_dir, transfer_texts, sentence_pairs)
    if cfg.family == "transformer":
        from students.transformer import build_transformer_student

        return build_transformer_student(cfg, num_labels, teacher_dir, sample_texts=transfer_texts[:SAMPLE_TEXTS])
    if cfg.family == "cnn_lstm":
        from students.cnn_lstm import build_cnn_lstm_tagger

        return build_cnn_lstm_tagger(cfg, num_labels, transfer_texts)
    raise ConfigError(f"train.student.family {cfg.family!r} is not built by the train stage; "
                      f"use bilstm or transformer (sentence tasks) or cnn_lstm (token tasks)")


def load_student(directory: str | Path) -> Student:
    """Load any student folder written by a family's ``save``; the model is in eval mode on the CPU.

    Raises:
        ArtifactError: the folder has no ``student.json`` or names an unknown family.
    """
    directory = Path(directory)
    meta_file = directory / META_FILE
    if not meta_file.is_file():
        raise ArtifactError(meta_file, "missing; rerun the train stage")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    family = meta.get("family")
    if family not in FAMILY_MODULES:
        raise ArtifactError(meta_file, f"names student family {family!r}; known: {sorted(FAMILY_MODULES)}")
    return family_class(family).load(directory, meta).eval()
