"""``distill bench readback``: memory of the streamed read-back of soft-label shards into training.

Streams a run's label shards into training batches exactly as the train stage does (Ray Data
``read_parquet``, a per-worker shuffle buffer of :data:`pipeline.training.batching.LOCAL_SHUFFLE_ROWS`
rows, :class:`pipeline.training.collate.Collate` padding the per-token signals to float32 tensors) but
without a model step, once over a quarter of the shards and once over all of them. Each pass
runs in its own Ray task, so its peak resident set size is the consumer's alone.

Baseline: the size of what was streamed (bytes on disk, and the float32 tensors delivered).
Bounded memory shows as a peak that stays flat while the streamed data grows 4x and exceeds
it. Two peaks are reported: RSS (``ru_maxrss``), which also counts every page of Ray's
shared-memory object store that the consumer has mapped (it grows towards the store's size,
which Ray bounds, as blocks land in new places), and private memory (``RssAnon``, sampled
every batch), the consumer's own.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import ray
import torch

from core.schema import TaskKind
from pipeline.training.batching import LOCAL_SHUFFLE_ROWS, read_shards, shuffled_batches
from pipeline.training.collate import Collate
from pipeline.config.rules import init_checkpoint_dir
from pipeline.config.sections import task_kind
from pipeline.training.shards import layers_needed, soft_label_files, training_columns
from core.artifacts import atomic_write_json
from pipeline.artifacts import RunDir
from pipeline.config.sections import RunConfig
from pipeline.runner import start_ray
from students.base import BuildInputs
from students.registry import build_student, load_student

FRACTIONS = (0.25, 1.0)
"""Shares of the shards streamed, smallest first."""


@ray.remote(num_cpus=1)
def stream_batches(files: list[str], columns: list[str], layers: tuple[list[int], list[int]], kind: TaskKind,
                   student_dir: str, batch_size: int) -> dict[str, float]:
    """Stream ``files`` into collated training batches; returns rows, seconds, float32 bytes and peak RSS (MB)."""
    student = load_student(student_dir)
    collate = Collate(student, layers, kind)
    dataset = read_shards(files, columns=columns)
    rows = tensor_bytes = 0
    began = time.perf_counter()
    peak_private_mb = 0.0
    for batch in shuffled_batches(dataset, batch_size, seed=0, kind=kind):
        collated = collate(batch)
        rows += len(collated.labels)
        tensor_bytes += sum(t.numel() * t.element_size() for t in collated.teacher.values())
        peak_private_mb = max(peak_private_mb, private_memory_mb())
    return {"rows": rows, "seconds": time.perf_counter() - began, "teacher_tensor_bytes": tensor_bytes,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # ru_maxrss: KiB
            "peak_private_mb": peak_private_mb}


def private_memory_mb() -> float:
    """This process's resident anonymous memory (MB; psutil's ``rss - shared``, i.e. ``RssAnon`` on
    Linux): its own heap, without the pages of Ray's shared-memory object store that it has
    mapped (those count in RSS, are shared with every process, and are bounded by the store's
    size)."""
    memory = psutil.Process().memory_info()
    return (memory.rss - memory.shared) / 2**20


def bench_readback(cfg: RunConfig, out_file: Path) -> dict[str, Any]:
    """Stream a quarter of the run's shards, then all of them, and write the measurements as JSON.

    Args:
        cfg: the run config; its label stage must be done, with the signals ``train.loss`` reads.
        out_file: where the JSON result goes.

    Returns:
        ``{"passes": [{"shards", "rows", "disk_mb", "float32_mb", "rows_per_s", "peak_rss_mb"}, ...]}``.

    Raises:
        ArtifactError: the label stage is not done, or its shards lack a signal the loss reads.
    """
    run = RunDir(cfg.run_dir)
    run.require("label")
    kind = task_kind(cfg.data)
    files = soft_label_files(run, len(cfg.data.labels), cfg.train.loss)
    columns = training_columns(kind, cfg.train.loss)
    start_ray(cfg)
    passes = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(cfg.seed)
        student = build_student(cfg.train.student, BuildInputs(run.teacher_dir, ["a sentence"], len(cfg.data.labels),
                                                                  sentence_pairs=kind is TaskKind.PAIR,
                                                                  init_dir=init_checkpoint_dir(cfg.train.student)))
        student_dir = str(student.save(Path(tmp) / "student"))
        for fraction in FRACTIONS:
            subset = files[:max(1, round(fraction * len(files)))]
            measured = ray.get(stream_batches.remote([str(f.resolve()) for f in subset], columns,
                                                     layers_needed(cfg.train.loss), kind, student_dir,
                                                     cfg.train.batch_size))
            passes.append({"shards": len(subset), "rows": measured["rows"],
                           "disk_mb": round(sum(f.stat().st_size for f in subset) / 2**20, 3),
                           "float32_mb": round(measured["teacher_tensor_bytes"] / 2**20, 3),
                           "rows_per_s": round(measured["rows"] / measured["seconds"], 1),
                           "peak_rss_mb": round(measured["peak_rss_mb"], 1),
                           "peak_private_mb": round(measured["peak_private_mb"], 1)})
    result = {"run": str(run.root), "columns": columns, "shuffle_buffer_rows": LOCAL_SHUFFLE_ROWS,
              "batch_size": cfg.train.batch_size, "passes": passes}
    atomic_write_json(out_file, result)
    return result


def render(result: dict[str, Any]) -> str:
    """The result as a plain-text table."""
    lines = [f"read-back benchmark: {result['run']}, columns {', '.join(result['columns'])}; shuffle buffer "
             f"{result['shuffle_buffer_rows']} rows, batch {result['batch_size']}",
             f"{'shards':>6} {'rows':>8} {'on disk MB':>11} {'float32 MB':>11} {'rows/s':>8} {'peak RSS MB':>12} "
             f"{'peak private MB':>16}"]
    for p in result["passes"]:
        lines.append(f"{p['shards']:>6} {p['rows']:>8} {p['disk_mb']:>11,.1f} {p['float32_mb']:>11,.1f} "
                     f"{p['rows_per_s']:>8,.1f} {p['peak_rss_mb']:>12,.1f} {p['peak_private_mb']:>16,.1f}")
    return "\n".join(lines)
