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
from transformers import AutoModel

from core.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase
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


def teacher_embedding_width(teacher: PretrainedConfig) -> int:
    """Width D of a teacher's word embeddings: ``embedding_size`` where its config has one
    (ALBERT), else ``hidden_size``."""
    return getattr(teacher, "embedding_size", None) or teacher.hidden_size


def embed_dim_mismatch(embed_dim: int, teacher_dim: int, field: str = "embed_dim") -> str:
    """The error line for a student table of width ``embed_dim`` (the ``train.student.<field>``
    setting) wider than the teacher's word embeddings (width ``teacher_dim``)."""
    return (f"train.student.{field} is {embed_dim} but the teacher's word embeddings are {teacher_dim} wide; set "
            f"train.student.{field} to at most {teacher_dim} (a narrower table takes their leading principal "
            f"components) or train.student.init_from_teacher_embeddings=false")


def check_embeddings_fit(cfg: LSTMConfig, teacher: PretrainedConfig) -> None:
    """Fail before any work when ``init_from_teacher_embeddings`` cannot seed the student's table
    from the teacher's word embeddings; reads only the teacher's config, so the run config's rules
    check it too (:mod:`pipeline.config.rules`).

    Args:
        cfg: the ``train.student`` section of an LSTM family.
        teacher: the teacher's transformers config (:func:`teacher_embedding_width`).

    Raises:
        ConfigError: the copy is asked for with a SentencePiece vocabulary, or ``embed_dim``
            exceeds the teacher's embedding width.
    """
    if not cfg.init_from_teacher_embeddings:
        return
    if cfg.vocab != "teacher":
        raise ConfigError(f"train.student.init_from_teacher_embeddings needs train.student.vocab=teacher "
                          f"(it is {cfg.vocab!r}); set one of them")
    teacher_dim = teacher_embedding_width(teacher)
    if cfg.embed_dim > teacher_dim:
        raise ConfigError(embed_dim_mismatch(cfg.embed_dim, teacher_dim))


def reduced_to_width(teacher_embeddings: torch.Tensor, width: int, field: str = "embed_dim") -> torch.Tensor:
    """The teacher's word embeddings at a student table's width: as they are when the widths
    match, else their leading principal components (:func:`principal_components`).

    Args:
        teacher_embeddings: float [V_t, D] (see :func:`teacher_word_embeddings`).
        width: E, the student table's width.
        field: the ``train.student`` field that sets ``width``, for the error line.

    Returns:
        float32 [V_t, E].

    Raises:
        ConfigError: ``E`` exceeds ``D``.
    """
    teacher_dim = teacher_embeddings.shape[1]
    if width > teacher_dim:
        raise ConfigError(embed_dim_mismatch(width, teacher_dim, field))
    return teacher_embeddings if width == teacher_dim else principal_components(teacher_embeddings, width)


def copy_teacher_embeddings(embedding: nn.Embedding, teacher_embeddings: torch.Tensor) -> None:
    """Overwrite a student's embedding table with the teacher's word embeddings, reduced to their
    leading principal components when the table is narrower (:func:`reduced_to_width`).

    Args:
        embedding: the student's table, [V, E].
        teacher_embeddings: float [V_t, D] (see :func:`teacher_word_embeddings`).

    Raises:
        ConfigError: ``E`` exceeds the teacher's width ``D``, or ``V`` differs from the teacher's
            vocabulary size.
    """
    if teacher_embeddings.shape[0] != embedding.num_embeddings:
        raise ConfigError(f"the teacher has {teacher_embeddings.shape[0]} word embeddings but its tokenizer "
                          f"{embedding.num_embeddings} ids; set train.student.init_from_teacher_embeddings=false")
    reduced = reduced_to_width(teacher_embeddings, embedding.embedding_dim)
    with torch.no_grad():
        embedding.weight.copy_(reduced)


def word_piece_means(words: list[str], tokenizer: PreTrainedTokenizerBase, table: torch.Tensor,
                     fallback: torch.Tensor) -> torch.Tensor:
    """Each word's vector as the mean of the rows of its pieces: a word-level student's table
    seeded from the teacher's sub-word table (for the CNN-LSTM tagger,
    :func:`students.cnn_lstm.build_cnn_lstm_tagger`).

    With ``table`` the teacher's word embeddings reduced by :func:`reduced_to_width`, the mean of
    the reduced pieces is the reduction of the pieces' mean (the projection is affine), so the
    result is the teacher's mean piece vector, projected to the student's width.

    Args:
        words: N words, each tokenised on its own (no special tokens).
        tokenizer: the teacher's tokenizer; its ids index ``table``.
        table: float32 [V_t, E] rows by piece id.
        fallback: float32 [E], the vector of a word with no pieces (the tokenizer drops it).

    Returns:
        float32 [N, E].
    """
    rows = table.new_zeros((len(words), table.shape[1]))
    for row, ids in enumerate(tokenizer(words, add_special_tokens=False)["input_ids"] if words else []):
        rows[row] = table[ids].mean(dim=0) if ids else fallback
    return rows
