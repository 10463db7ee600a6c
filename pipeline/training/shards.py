"""The label stage's shards as the train stage reads them: verified against ``shards.json``,
checked for the signals the loss needs, and the columns to stream (see :mod:`core.schema`)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from core.artifacts import read_json, sha256_file
from core.errors import ArtifactError
from core.schema import LENGTH, LOGITS, NUM_WORDS, WORD_MASK, TaskKind, attention_column, hidden_column
from pipeline.artifacts import RunDir
from students.terms import LossConfig, teacher_layers


def layers_needed(loss: LossConfig) -> tuple[list[int], list[int]]:
    """Teacher ``(hidden_layers, attention_layers)`` that the loss's layer maps read, sorted."""
    layers = teacher_layers(loss)
    return layers["hidden"], layers["attention"]


def training_columns(kind: TaskKind, loss: LossConfig) -> list[str]:
    """The columns of a training file that the loss reads (texts, labels, logits and layer or word signals)."""
    hidden, attention = layers_needed(loss)
    columns = [*kind.text_columns, kind.label_column]
    if loss.kd is not None:
        columns.append(LOGITS)
        if kind is TaskKind.TOKEN:
            columns += [NUM_WORDS, WORD_MASK]
    if hidden or attention:
        columns += [LENGTH, *map(hidden_column, hidden), *map(attention_column, attention)]
    return columns


def soft_label_files(run_dir: RunDir, num_labels: int, loss: LossConfig) -> list[Path]:
    """The label stage's shards, checked against ``shards.json`` and against what the loss reads.

    Raises:
        ArtifactError: the index is missing, a shard is missing or altered, lacks a signal the
            loss needs (full logits, a hidden-state or attention layer: the message names the
            ``label.emit`` setting), or the shards hold logits for a different number of classes
            than ``data.labels``.
    """
    index = read_json(run_dir.shard_index)
    if index["num_labels"] != num_labels:
        raise ArtifactError(run_dir.shard_index, f"soft labels have {index['num_labels']} classes but data.labels "
                                                 f"has {num_labels}; rerun the label stage")
    files = []
    for shard in index["shards"]:
        path = require_file(run_dir.stage_dir("label") / shard["file"])
        if sha256_file(path) != shard["sha256"]:
            raise ArtifactError(path, "checksum differs from shards.json; rerun the label stage")
        files.append(path)
    if not files:
        raise ArtifactError(run_dir.shard_index, "lists no shards; rerun the label stage")
    check_signals_present(files[0], loss)
    return files


def check_signals_present(shard: Path, loss: LossConfig) -> None:
    """Raise an :class:`ArtifactError` naming the ``label.emit`` fix when a shard lacks a signal the loss reads."""
    names = set(pq.read_schema(shard).names)
    if loss.kd is not None and LOGITS not in names:
        raise ArtifactError(shard, "holds top-k logits only, and the KD loss needs every class's logit; "
                                   "set label.emit.logits_top_k: null and rerun the label stage")
    hidden, attention = layers_needed(loss)
    for signal, column, layers in (("hidden", hidden_column, hidden), ("attention", attention_column, attention)):
        missing = [layer for layer in layers if column(layer) not in names]
        if missing:
            raise ArtifactError(shard, f"has no {signal} layer(s) {missing}, which train.loss reads; add them to "
                                       f"label.emit.{signal}_layers and rerun the label stage")


def require_file(path: Path) -> Path:
    """``path`` if it is a file, else an :class:`ArtifactError` naming the stage to run."""
    if not path.is_file():
        raise ArtifactError(path, "missing; run the upstream stage that writes it first")
    return path
