"""The student families: one explicit table that builds, loads and documents them.

Adding a family is one module (its config section, its :class:`~students.base.Student` subclass
and a builder ``build(cfg, BuildInputs) -> Student``) and one line in :data:`FAMILIES`. The run
config's ``train.student`` union, the token-task checks and the README's family table all read
this table; nothing registers itself on import.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import Section
from core.errors import ArtifactError, ConfigError
from students.base import META_FILE, BuildInputs, Student
from students.bilstm import BiLSTMStudent, BiLSTMStudentConfig, build_bilstm_student, check_embeddings_fit
from students.cnn_lstm import CNNLSTMTagger, CNNLSTMTaggerConfig, build_cnn_lstm_tagger, seeds_from_teacher
from students.multitask import MultiTaskLSTMConfig, MultiTaskLSTMStudent, build_multitask_student
from students.transformer import (TransformerStudent, TransformerStudentConfig, build_transformer_student,
                                  check_fits_teacher)

if TYPE_CHECKING:
    from transformers import PretrainedConfig


@dataclass(frozen=True)
class Family:
    """One student family.

    Attributes:
        config: its ``train.student`` section type; a ``family: Literal[name]`` field tags it.
        build: ``build(cfg, inputs) -> Student``, a freshly initialised student in train mode on the CPU.
        load: ``load(folder, meta) -> Student``, rebuilds a saved student (``meta`` = ``student.json``).
        summary: one line for the docs.
        tags_tokens: the student tags words (logits [B, W, C]) for ``data.task: token``; else it
            classifies sentences (logits [B, C]).
        layer_outputs: it returns hidden states and attention maps token-aligned with a BERT
            teacher's, so the layer loss terms (``hidden``, ``attention``, ...) apply.
        multi_task: it learns several finished runs' tasks at once (a config with ``tasks``),
            never a single run's task.
        fits_teacher: ``fits_teacher(cfg, teacher_config)`` raises a ConfigError when ``build``
            would fail on this teacher for reasons its config (``config.json``) already shows;
            the run config's rules call it before any stage (:mod:`pipeline.config.rules`).
            None when the family reads nothing of the teacher that can conflict; what it returns
            is ignored.
    """

    config: type[Section]
    build: Callable[[Any, BuildInputs], Student]
    load: Callable[[Path, dict[str, Any]], Student]
    summary: str
    tags_tokens: bool = False
    layer_outputs: bool = False
    multi_task: bool = False
    fits_teacher: Callable[[Any, PretrainedConfig], object] | None = None


FAMILIES: dict[str, Family] = {
    "bilstm": Family(BiLSTMStudentConfig, build_bilstm_student, BiLSTMStudent.load,
                     "max-pooled BiLSTM of Tang et al. (2019), siamese for sentence pairs",
                     fits_teacher=check_embeddings_fit),
    "transformer": Family(TransformerStudentConfig, build_transformer_student, TransformerStudent.load,
                          "small BERT initialised from teacher layers (TinyBERT, Sajjad et al. 2020)",
                          layer_outputs=True, fits_teacher=check_fits_teacher),
    "cnn_lstm": Family(CNNLSTMTaggerConfig, build_cnn_lstm_tagger, CNNLSTMTagger.load,
                       "character-CNN + word BiLSTM tagger of Izsak et al. (2019)", tags_tokens=True,
                       fits_teacher=seeds_from_teacher),
    "multitask_lstm": Family(MultiTaskLSTMConfig, build_multitask_student, MultiTaskLSTMStudent.load,
                             "attentive multi-task LSTM of Liu et al. (2019), one head per task", multi_task=True,
                             fits_teacher=check_embeddings_fit),
}
"""Every student family by its ``train.student.family`` name."""


def family(name: str) -> Family:
    """The registry entry of family ``name``.

    Raises:
        ConfigError: no such family (the message lists the choices).
    """
    if name not in FAMILIES:
        raise ConfigError(f"train.student.family: unknown student family {name!r}; choose from {sorted(FAMILIES)}")
    return FAMILIES[name]


def build_student(cfg: Section, inputs: BuildInputs) -> Student:
    """A freshly initialised student of the family ``cfg.family`` (see :class:`Family`).

    Args:
        cfg: the ``train.student`` section, one of the :data:`FAMILIES` config types.
        inputs: what the family's builder reads (labels or tasks, the teacher, the transfer set).

    Raises:
        ConfigError: an unknown family, or a config that does not fit the teacher (see each
            family's builder).
        ValueError: inputs the family needs are missing (see each family's builder).
    """
    return family(cfg.family).build(cfg, inputs)


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
    name = meta.get("family")
    if name not in FAMILIES:
        raise ArtifactError(meta_file, f"names student family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name].load(directory, meta).eval()
