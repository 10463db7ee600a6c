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

from pipeline.errors import ArtifactError

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

    def featurize(self, texts: list[str] | list[list[str]], pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Model inputs of a batch: sentences (or word lists for taggers), with optional second sentences.

        Returns:
            int64 tensors on the CPU, at least ``input_ids [B, T]`` and ``attention_mask [B, T]``.
        """
        raise NotImplementedError

    def save(self, directory: str | Path) -> Path:
        """Write the student folder atomically; returns it."""
        raise NotImplementedError

    @classmethod
    def load(cls, directory: Path, meta: dict[str, Any]) -> "Student":
        """Rebuild a student from its folder; ``meta`` is the parsed ``student.json``."""
        raise NotImplementedError


FAMILY_MODULES: tuple[str, ...] = ("students.bilstm", "students.multitask")
"""Modules that define (and register) student families; :func:`load_student` imports them."""

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


def import_families() -> None:
    """Import every module of :data:`FAMILY_MODULES` that exists, so its families are registered.

    A module that is absent is skipped; an import error inside a present module propagates.
    """
    for module in FAMILY_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


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
    import_families()
    family = meta.get("family", "bilstm")
    if family not in FAMILIES:
        raise ArtifactError(meta_file, f"names student family {family!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[family].load(directory, meta).eval()
