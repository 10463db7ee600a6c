"""Stage ``label``: the teacher emits soft labels (logits) for every transfer-set row.

The transfer set is cut into shards of ``label.shard_rows`` consecutive rows. A Ray Data
pipeline maps the shards that are not yet done onto a pool of ``label.num_actors`` actors;
each actor loads the teacher once under ``deepspeed.init_inference`` and, per shard, runs
length-sorted dynamic batches and writes ``label/shard-NNNNN.parquet`` atomically with the
columns

    id      int64            transfer-set row id
    text    string
    label   int64            hard label index, -1 when none
    logits  list<float32>    [C] teacher logits

``label/shards.json`` lists every finished shard (shard id, row range, rows, SHA-256). It is
rewritten after each shard, so a killed run keeps its finished shards and a rerun verifies
their checksums and redoes only the rest.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from tqdm.auto import tqdm

from pipeline.artifacts import RunDir, atomic_path, atomic_write_json, fingerprint, read_json, sha256_file
from pipeline.config import RunConfig
from pipeline.precision import device_name, select_precision

log = logging.getLogger(__name__)


def plan_shards(num_rows: int, shard_rows: int) -> list[dict[str, int]]:
    """Row ranges of the shards of a table of ``num_rows`` rows.

    Returns:
        ``[{"shard": i, "start": a, "stop": b}, ...]`` covering ``0..num_rows`` without overlap.
    """
    return [{"shard": i, "start": i * shard_rows, "stop": min(num_rows, (i + 1) * shard_rows)}
            for i in range(math.ceil(num_rows / shard_rows))]


def finished_shards(run_dir: RunDir, plan_key: str) -> dict[int, dict[str, Any]]:
    """Shards of an earlier run with the same plan whose files exist and match their checksum."""
    if not run_dir.shard_index.exists():
        return {}
    index = read_json(run_dir.shard_index)
    if index.get("plan") != plan_key:
        log.info("label: the shard plan changed; relabeling every shard")
        return {}
    done = {}
    for entry in index["shards"]:
        path = run_dir.shard_file(entry["shard"])
        if path.exists() and sha256_file(path) == entry["sha256"]:
            done[entry["shard"]] = entry
        else:
            log.warning("label: %s is missing or fails its checksum; it will be redone", path)
    return done


class ShardLabeler:
    """Ray Data callable class: labels whole shards with the teacher and writes them.

    Args:
        teacher_dir: the fine-tuned teacher (Hugging Face folder).
        transfer_file: Parquet transfer set (``id, text, label``).
        run_root: the run directory; shards go where :meth:`RunDir.shard_file` says.
        precision: "auto", "fp32", "fp16" or "bf16".
        max_length, max_batch_size, max_batch_tokens: see :class:`teachers.inference.TeacherInference`.
    """

    def __init__(self, teacher_dir: str, transfer_file: str, run_root: str, precision: str,
                 max_length: int, max_batch_size: int, max_batch_tokens: int):
        from teachers.inference import TeacherInference

        self.teacher = TeacherInference(Path(teacher_dir), select_precision(precision, "label"),
                                        max_length, max_batch_size, max_batch_tokens)
        self.transfer = pq.read_table(transfer_file)
        self.run_dir = RunDir(Path(run_root))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Label the shards in ``batch`` (columns ``shard, start, stop``); returns their index entries."""
        entries = [self.label_shard(int(s), int(a), int(b))
                   for s, a, b in zip(batch["shard"], batch["start"], batch["stop"])]
        return {key: np.asarray([e[key] for e in entries]) for key in entries[0]}

    def label_shard(self, shard: int, start: int, stop: int) -> dict[str, Any]:
        """Write one shard atomically and return its index entry."""
        rows = self.transfer.slice(start, stop - start)
        began = time.perf_counter()
        logits = self.teacher.logits(rows.column("text").to_pylist())  # [n, C] float32
        seconds = time.perf_counter() - began
        num_labels = logits.shape[1]
        table = rows.select(["id", "text", "label"]).append_column(
            "logits", pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), num_labels))
        path = self.run_dir.shard_file(shard)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return {"shard": shard, "start": start, "stop": stop, "rows": stop - start,
                "sha256": sha256_file(path), "num_labels": num_labels, "label_seconds": seconds}


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    """Label every transfer-set shard that is not already done; see the module docstring.

    Returns:
        Summary for the manifest: shards, rows, classes, examples/s of the teacher and bytes
        per example of the stored logits.
    """
    label = cfg.label
    transfer_file = run_dir.split_file("transfer")
    num_rows = pq.ParquetFile(transfer_file).metadata.num_rows
    plan = plan_shards(num_rows, label.shard_rows)
    plan_key = fingerprint(num_rows, label.shard_rows, sha256_file(transfer_file),
                           sha256_file(run_dir.teacher_dir / "model.safetensors"))
    done = finished_shards(run_dir, plan_key)
    todo = [s for s in plan if s["shard"] not in done]
    log.info("label: %d rows in %d shards; %d already done, %d to label", num_rows, len(plan), len(done), len(todo))
    began = time.perf_counter()
    if todo:
        ray.data.DataContext.get_current().enable_progress_bars = False
        shards = ray.data.from_items(todo, override_num_blocks=len(todo))
        labeled = shards.map_batches(
            ShardLabeler, batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(label.num_actors, len(todo))),
            num_cpus=label.cpus_per_actor, num_gpus=1 if device_name() == "cuda" else 0,
            fn_constructor_kwargs={
                "teacher_dir": str(run_dir.teacher_dir.resolve()), "transfer_file": str(transfer_file.resolve()),
                "run_root": str(run_dir.root.resolve()), "precision": label.precision,
                "max_length": cfg.teacher.max_length, "max_batch_size": label.max_batch_size,
                "max_batch_tokens": label.max_batch_tokens})
        with tqdm(total=num_rows, initial=sum(e["rows"] for e in done.values()), desc="label", unit="ex") as bar:
            for entry in labeled.iter_rows():
                entry = {k: v.item() if hasattr(v, "item") else v for k, v in entry.items()}
                done[entry["shard"]] = entry
                atomic_write_json(run_dir.shard_index, shard_index(run_dir, plan_key, done))
                bar.update(entry["rows"])
    elapsed = time.perf_counter() - began
    entries = sorted(done.values(), key=lambda e: e["shard"])
    stored_bytes = sum(run_dir.shard_file(e["shard"]).stat().st_size for e in entries)
    labeled_now = sum(s["stop"] - s["start"] for s in todo)
    return {"shards": len(entries), "rows": num_rows, "num_labels": entries[0]["num_labels"],
            "rows_labeled_now": labeled_now,
            "throughput_eps": round(labeled_now / elapsed, 1) if labeled_now else None,
            "bytes_per_example": round(stored_bytes / num_rows, 1)}


def shard_index(run_dir: RunDir, plan_key: str, done: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The ``shards.json`` payload: the plan key, the class count and every finished shard."""
    entries = sorted(done.values(), key=lambda e: e["shard"])
    return {"plan": plan_key, "num_labels": entries[0]["num_labels"],
            "shards": [{**e, "file": run_dir.shard_file(e["shard"]).name} for e in entries]}
