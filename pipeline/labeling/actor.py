"""The label stage's Ray actor: loads the teacher once and labels whole shards.

Kept apart from :mod:`pipeline.stages.label` so that an actor process imports only what labeling
needs (torch, transformers' model classes, DeepSpeed, pyarrow and the teacher's inference
code), not the config and student modules the driver loads: a process on each node pays these
imports before its first shard. Each shard's index entry records when the actor's process
started, when its constructor began (imports done) and when its teachers were loaded, from which
:func:`pipeline.stages.label.startup` tells where the stage's start-up went, and the actor's peak
resident set size after the shard (:func:`compress.latency.peak_rss_mb`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from compress.latency import peak_rss_mb
from core.artifacts import atomic_path, sha256_file
from core.precision import select_precision
from core.schema import (LENGTH, LOGITS, NUM_WORDS, TEXT, TEXT_PAIR, TOKENS, TOPK_INDICES, TOPK_VALUES, WORD_MASK,
                         TaskKind, is_per_token_signal)
from pipeline.artifacts import RunDir
from teachers.ensemble import combine_logits
from teachers.signals import SignalsConfig

log = logging.getLogger(__name__)


class ShardLabeler:
    """Ray Data callable class: labels whole shards with the teacher and writes them.

    Args:
        teacher_dir: the fine-tuned teacher (Hugging Face folder).
        transfer_file: Parquet transfer set (the columns of ``kind``, see :mod:`core.schema`).
        run_root: the run directory; shards go where :meth:`RunDir.shard_file` says.
        max_length: teacher tokens per row.
        label: the label section (``LabelConfig.model_dump()``, a plain dict so that the actor need
            not import the config module): precision, batching, signals, DeepSpeed engine, combine mode.
        extra_teacher_dirs: absolute folders of ``label.teachers``; they emit logits only.
        kind: the task's kind; ``token`` labels the words of ``tokens`` rows with a token classifier.
    """

    def __init__(self, teacher_dir: str, transfer_file: str, run_root: str, max_length: int, label: dict[str, Any],
                 extra_teacher_dirs: list[str], kind: TaskKind = TaskKind.SENTENCE):
        init_at = time.time()
        import torch

        from teachers.inference import TeacherInference

        began = time.perf_counter()
        torch.set_num_threads(label["cpus_per_actor"])
        precision = select_precision(label["precision"], "label")
        emit = SignalsConfig(**label["emit"])
        engine = (label["engine"], label["offload"], label["nvme_path"], label["deepspeed_config"],
                  label["tensor_parallel"])
        self.teacher = TeacherInference(
            Path(teacher_dir), precision, max_length, label["max_batch_size"], label["max_batch_tokens"], emit,
            *engine, "token" if kind is TaskKind.TOKEN else "sequence")
        self.kind = kind
        self.extra_teachers = [TeacherInference(
            Path(folder), precision, max_length, label["max_batch_size"], label["max_batch_tokens"], SignalsConfig(),
            *engine) for folder in extra_teacher_dirs]
        self.combine = label["combine"]
        self.top_k = emit.logits_top_k
        self.transfer = pq.read_table(transfer_file)
        self.run_dir = RunDir(Path(run_root))
        self.timeline = {"actor_started_at": psutil.Process().create_time(), "actor_init_at": init_at,
                         "actor_ready_at": time.time()}
        log.info("label: actor ready in %.1f s (teacher load and DeepSpeed engine), %d torch threads",
                 time.perf_counter() - began, torch.get_num_threads())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Label the shards in ``batch`` (columns ``shard, start, stop``); returns their index entries."""
        entries = [self.label_shard(int(s), int(a), int(b))
                   for s, a, b in zip(batch["shard"], batch["start"], batch["stop"])]
        return {key: np.asarray([e[key] for e in entries]) for key in entries[0]}

    def label_shard(self, shard: int, start: int, stop: int) -> dict[str, Any]:
        """Write one shard atomically and return its index entry; ``peak_rss_mb`` is the actor
        process's peak resident set size so far (MB, 10^6 bytes): teachers, engine and shards."""
        rows = self.transfer.slice(start, stop - start)
        began_at = time.time()
        began = time.perf_counter()
        base = self.kind.base_columns
        if self.kind is TaskKind.TOKEN:
            outputs = self.teacher.word_logits(rows.column(TOKENS).to_pylist())
            columns = word_signal_columns(outputs)
            num_labels = self.teacher.num_labels
        else:
            texts = rows.column(TEXT).to_pylist()
            pairs = rows.column(TEXT_PAIR).to_pylist() if self.kind is TaskKind.PAIR else None
            outputs = self.teacher.outputs(texts, pairs)
            if self.extra_teachers:
                outputs["logits"] = combine_logits(
                    [outputs["logits"], *(t.logits(texts, pairs) for t in self.extra_teachers)], self.combine)
            columns = signal_columns(outputs, self.top_k)
            num_labels = outputs["logits"].shape[1]
        seconds = time.perf_counter() - began
        table = rows.select(base)
        for name, column in columns.items():
            table = table.append_column(name, column)
        path = self.run_dir.shard_file(shard)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        signal_bytes = {name: table.column(name).nbytes for name in table.column_names[len(base):]}
        return {"shard": shard, "start": start, "stop": stop, "rows": stop - start,
                "sha256": sha256_file(path), "num_labels": num_labels, "label_seconds": seconds,
                "began_at": began_at, "ended_at": time.time(), "signal_bytes": json.dumps(signal_bytes),
                "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "peak_rss_mb": peak_rss_mb(), **self.timeline}


def signal_columns(outputs: dict[str, np.ndarray | list[np.ndarray]], top_k: int | None) -> dict[str, pa.Array]:
    """Arrow columns of one shard from :meth:`TeacherInference.outputs` (see the module docstring)."""
    logits = outputs["logits"]  # [n, C] float32
    if top_k is None:
        columns = {LOGITS: pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), logits.shape[1])}
    else:
        k = min(top_k, logits.shape[1])
        indices = np.argsort(-logits, axis=1, kind="stable")[:, :k]  # [n, k], largest first
        values = np.take_along_axis(logits, indices, axis=1)  # [n, k]
        columns = {TOPK_VALUES: pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), k),
                   TOPK_INDICES: pa.FixedSizeListArray.from_arrays(pa.array(indices.astype(np.int32).reshape(-1)), k)}
    if LENGTH in outputs:
        columns[LENGTH] = pa.array(outputs[LENGTH], type=pa.int32())
    for name, per_row in outputs.items():
        if is_per_token_signal(name):
            columns[name] = pa.array([a.reshape(-1) for a in per_row], type=pa.list_(pa.from_numpy_dtype(per_row[0].dtype)))
    return columns


def word_signal_columns(outputs: dict[str, list[np.ndarray]]) -> dict[str, pa.Array]:
    """Arrow columns of one token-task shard from :meth:`TeacherInference.word_logits`: flat
    ``logits`` (row-major [W, C]), ``num_words`` and ``word_mask`` (see the module docstring)."""
    return {LOGITS: pa.array([row.reshape(-1) for row in outputs["logits"]], type=pa.list_(pa.float32())),
            NUM_WORDS: pa.array([len(mask) for mask in outputs["word_mask"]], type=pa.int32()),
            WORD_MASK: pa.array(outputs["word_mask"], type=pa.list_(pa.bool_()))}
