"""A student's word-embedding table seeded from the teacher's, as Tang et al. (2019) seed their
BiLSTM from pretrained vectors: the teacher's WordPiece embedding matrix copied as is when the
widths match, or, for a narrower student table, reduced to its leading principal components.

Why the reduction: a 768-wide teacher (MPNet-base, BERT-base) has a 30,527 x 768 table, 23.4M
parameters, more than the whole BiLSTM around it. Projecting the centred table onto its top
``E`` principal directions (PCA through the SVD, as Raunak et al. (2019), "Effective Dimensionality
Reduction for Word Embeddings", reduce GloVe and word2vec) keeps the directions along which the
teacher's words differ most, in ``E / D`` of the parameters; the student then fine-tunes the
table with the rest of its weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig

from core.errors import ConfigError

if TYPE_CHECKING:
    from students.bilstm import LSTMConfig


def teacher_word_embeddings(teacher_dir: str | Path) -> torch.Tensor:
    """The word-embedding matrix of a Hugging Face teacher, float32 [V, D], detached on the CPU."""
    teacher = AutoModel.from_pretrained(teacher_dir)
    return teacher.get_input_embeddings().weight.detach().float().clone()


def principal_components(table: torch.Tensor, width: int) -> torch.Tensor:
    """``table`` centred and projected onto its ``width`` leading principal directions.

    Args:
        table: float32 [V, D] word embeddings.
        width: E, at most D.

    Returns:
        float32 [V, E]; column k holds the coordinates along the k-th direction of largest variance.

    Raises:
        ValueError: ``width`` exceeds D.
    """
    if width > table.shape[1]:
        raise ValueError(f"cannot reduce a {table.shape[1]}-wide table to {width} columns")
    centred = table - table.mean(dim=0, keepdim=True)
    _, _, directions = torch.linalg.svd(centred, full_matrices=False)  # rows: directions, by variance
    return centred @ directions[:width].T


def embed_dim_mismatch(embed_dim: int, teacher_dim: int) -> str:
    """The error line for a student table of width ``embed_dim`` wider than the teacher's word
    embeddings (width ``teacher_dim``)."""
    return (f"train.student.embed_dim is {embed_dim} but the teacher's word embeddings are {teacher_dim} wide; set "
            f"train.student.embed_dim to at most {teacher_dim} (a narrower table takes their leading principal "
            f"components) or train.student.init_from_teacher_embeddings=false")


def check_embeddings_fit(cfg: LSTMConfig, teacher: PretrainedConfig) -> None:
    """Fail before any work when ``init_from_teacher_embeddings`` cannot seed the student's table
    from the teacher's word embeddings; reads only the teacher's config, so the run config's rules
    check it too (:mod:`pipeline.config.rules`).

    Args:
        cfg: the ``train.student`` section of an LSTM family.
        teacher: the teacher's transformers config; its word embeddings are ``embedding_size``
            wide where the config has one (ALBERT), else ``hidden_size``.

    Raises:
        ConfigError: the copy is asked for with a SentencePiece vocabulary, or ``embed_dim``
            exceeds the teacher's embedding width.
    """
    if not cfg.init_from_teacher_embeddings:
        return
    if cfg.vocab != "teacher":
        raise ConfigError(f"train.student.init_from_teacher_embeddings needs train.student.vocab=teacher "
                          f"(it is {cfg.vocab!r}); set one of them")
    teacher_dim = getattr(teacher, "embedding_size", None) or teacher.hidden_size
    if cfg.embed_dim > teacher_dim:
        raise ConfigError(embed_dim_mismatch(cfg.embed_dim, teacher_dim))


def copy_teacher_embeddings(embedding: nn.Embedding, teacher_embeddings: torch.Tensor) -> None:
    """Overwrite a student's embedding table with the teacher's word embeddings, reduced to their
    leading principal components (:func:`principal_components`) when the table is narrower.

    Args:
        embedding: the student's table, [V, E].
        teacher_embeddings: float [V_t, D] (see :func:`teacher_word_embeddings`).

    Raises:
        ConfigError: ``E`` exceeds the teacher's width ``D``, or ``V`` differs from the teacher's
            vocabulary size.
    """
    vocab_size, teacher_dim = teacher_embeddings.shape
    if embedding.embedding_dim > teacher_dim:
        raise ConfigError(embed_dim_mismatch(embedding.embedding_dim, teacher_dim))
    if vocab_size != embedding.num_embeddings:
        raise ConfigError(f"the teacher has {vocab_size} word embeddings but its tokenizer {embedding.num_embeddings} "
                          f"ids; set train.student.init_from_teacher_embeddings=false")
    if embedding.embedding_dim < teacher_dim:
        teacher_embeddings = principal_components(teacher_embeddings, embedding.embedding_dim)
    with torch.no_grad():
        embedding.weight.copy_(teacher_embeddings)
