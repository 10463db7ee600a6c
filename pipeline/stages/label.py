"""Stage ``label``: the teacher emits soft labels (logits) for every transfer-set row.

The transfer set is cut into shards of ``label.shard_rows`` consecutive rows, or fewer so that
every actor gets a shard. A Ray Data pipeline maps the shards that are not yet done onto a pool
of ``label.num_actors`` actors, one shard in flight per actor so that a free actor takes the
next one; each actor runs ``label.cpus_per_actor`` torch threads, loads the teacher once under
``deepspeed.init_inference`` and, per shard, runs
length-sorted dynamic batches and writes ``label/shard-NNNNN.parquet`` atomically with the
columns of :mod:`core.schema` (the row's ``id``, inputs and hard labels, then the teacher's
signals as ``label.emit`` configures: ``logits`` or ``topk_values``/``topk_indices``, and with
per-token signals ``length``, ``hidden_{l}``, ``attention_{l}``). For token tasks the shards
hold word-level soft labels of the token classifier, each word's first sub-token's logits
(:meth:`TeacherInference.word_logits`), with ``num_words`` and ``word_mask``.

With ``label.teachers`` the extra teachers label the same rows and ``logits`` holds their
combination with the run's teacher (:func:`teachers.ensemble.combine_logits`); per-token
signals come from the run's teacher alone.

``label/shards.json`` lists every finished shard (shard id, row range, rows, SHA-256) under the
stage's fingerprint (:attr:`RunDir.stage_fingerprint`, from the runner: the label config, the
content of every teacher weight file and, upstream, the transfer set). It is rewritten after
each shard, so a killed run keeps its finished shards and a rerun under the same fingerprint
verifies their checksums and redoes only the rest; under another fingerprint every shard is
relabeled. Each entry names the Ray node and the actor's process that labeled the shard
(``node_id``, ``pid``: Ray names a worker's log files after it).

An actor that dies (killed, or its node lost) is restarted by Ray up to
``label.max_actor_restarts`` times, and the shard it was labeling is retried on the restarted
actor: its file is written once, by the attempt that finishes (a write is atomic, so a killed
attempt leaves only a temporary file, removed when the stage ends).
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import pyarrow.parquet as pq
import ray
from tqdm.auto import tqdm
from transformers import AutoConfig

from core.artifacts import atomic_write_json, read_json, sha256_file
from core.precision import device_name
from pipeline.artifacts import RunDir
from pipeline.config.sections import RunConfig
from pipeline.labeling.actor import ShardLabeler
from pipeline.config.sections import task_kind
from teachers.checkpoint import fp32_weight_mb
from teachers.ensemble import check_teachers
from teachers.inference import check_tensor_parallel
from teachers.zero_inference import check_nvme_offload
from teachers.signals import check_signals

log = logging.getLogger(__name__)


def shard_size(num_rows: int, shard_rows: int, num_actors: int) -> int:
    """Rows per shard: ``shard_rows``, or ``ceil(num_rows / num_actors)`` when that is fewer, so
    that a table smaller than ``num_actors`` shards still gives every actor one."""
    return max(1, min(shard_rows, math.ceil(num_rows / num_actors)))


def plan_shards(num_rows: int, shard_rows: int) -> list[dict[str, int]]:
    """Row ranges of the shards of a table of ``num_rows`` rows.

    Returns:
        ``[{"shard": i, "start": a, "stop": b}, ...]`` covering ``0..num_rows`` without overlap.
    """
    return [{"shard": i, "start": i * shard_rows, "stop": min(num_rows, (i + 1) * shard_rows)}
            for i in range(math.ceil(num_rows / shard_rows))]


def finished_shards(run_dir: RunDir) -> dict[int, dict[str, Any]]:
    """Shards of an earlier run under the same stage fingerprint whose files exist and match their checksum."""
    if not run_dir.shard_index.exists():
        return {}
    index = read_json(run_dir.shard_index)
    if index.get("fingerprint") != run_dir.stage_fingerprint:
        log.info("label: the stage's inputs changed; relabeling every shard")
        return {}
    done = {}
    for entry in index["shards"]:
        path = run_dir.shard_file(entry["shard"])
        if path.exists() and sha256_file(path) == entry["sha256"]:
            done[entry["shard"]] = entry
        else:
            log.warning("label: %s is missing or fails its checksum; it will be redone", path)
    return done


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    """Label every transfer-set shard that is not already done; see the module docstring.

    Returns:
        Summary for the manifest: shards, rows, classes, rows labeled by this call and their
        examples/s (``throughput_eps``: wall clock, actor start-up included; ``labeling_eps``
        over ``labeling_window_s``, from the first shard's start to the last shard's write,
        i.e. with the teachers loaded, as a loop that has its model in memory is timed),
        bytes per example on disk, and the in-memory bytes per example of each signal
        (``signal_bytes_per_example``); ``actor_peak_rss_mb``, the peak resident set size of
        each actor that labeled now (MB, 10^6 bytes; empty when none did), beside
        ``teacher_fp32_mb``, what the teacher's weights take in float32 (:func:`fp32_weight_mb`).
    """
    label = cfg.label
    transfer_file = run_dir.split_file("transfer")
    num_rows = pq.ParquetFile(transfer_file).metadata.num_rows
    rows_per_shard = shard_size(num_rows, label.shard_rows, label.num_actors)
    plan = plan_shards(num_rows, rows_per_shard)
    check_signals(label.emit, AutoConfig.from_pretrained(run_dir.teacher_dir))
    check_teachers(run_dir.teacher_dir, label.teachers)
    # the actors' device, not the driver's: a CPU head may drive GPU workers
    device = "cuda" if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) else device_name()
    check_tensor_parallel(label.tensor_parallel, device)
    check_nvme_offload(label.engine, label.offload)  # this machine's libaio; label nodes like it are assumed
    done = finished_shards(run_dir)
    todo = [s for s in plan if s["shard"] not in done]
    log.info("label: %d rows in %d shards; %d already done, %d to label", num_rows, len(plan), len(done), len(todo))
    began, began_at = time.perf_counter(), time.time()
    if todo:
        ray.data.DataContext.get_current().enable_progress_bars = False
        shards = ray.data.from_items(todo, override_num_blocks=len(todo))
        labeled = shards.map_batches(
            ShardLabeler, batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(label.num_actors, len(todo)), max_tasks_in_flight_per_actor=1),
            num_cpus=label.cpus_per_actor, num_gpus=label.tensor_parallel if device == "cuda" else 0,
            max_restarts=label.max_actor_restarts, max_task_retries=label.max_actor_restarts,
            fn_constructor_kwargs={
                "teacher_dir": str(run_dir.teacher_dir.resolve()), "transfer_file": str(transfer_file.resolve()),
                "run_root": str(run_dir.root.resolve()), "max_length": cfg.teacher.max_length,
                "label": label.model_dump(),
                "extra_teacher_dirs": [str(t.resolve()) for t in label.teachers], "kind": task_kind(cfg.data)})
        with tqdm(total=num_rows, initial=sum(e["rows"] for e in done.values()), desc="label", unit="ex") as bar:
            for entry in labeled.iter_rows():
                entry = {k: v.item() if hasattr(v, "item") else v for k, v in entry.items()}
                done[entry["shard"]] = entry
                atomic_write_json(run_dir.shard_index, shard_index(run_dir, done))
                bar.update(entry["rows"])
    elapsed = time.perf_counter() - began
    for stale in run_dir.remove_partial_files("label"):
        log.info("label: removed %s, left by a label actor that died", stale)
    entries = sorted(done.values(), key=lambda e: e["shard"])
    stored_bytes = sum(run_dir.shard_file(e["shard"]).stat().st_size for e in entries)
    labeled_now = sum(s["stop"] - s["start"] for s in todo)
    signal_bytes: dict[str, int] = {}
    for entry in entries:
        for name, size in json.loads(entry["signal_bytes"]).items():
            signal_bytes[name] = signal_bytes.get(name, 0) + size
    labeled = [done[s["shard"]] for s in todo]
    window = max(e["ended_at"] for e in labeled) - min(e["began_at"] for e in labeled) if labeled else 0.0
    started = startup(labeled, began_at) if labeled else None
    if started:
        log.info("label: start-up %.1f s before the first shard: actor processes started after %.1f s, their imports "
                 "took %.1f s, the teachers' load %.1f s", started["to_first_shard_s"], started["to_actor_process_s"],
                 started["actor_imports_s"], started["teacher_load_s"])
    return {"startup": started, "shards": len(entries), "rows": num_rows, "num_labels": entries[0]["num_labels"],
            "rows_labeled_now": labeled_now,
            "throughput_eps": round(labeled_now / elapsed, 1) if labeled_now else None,
            "labeling_window_s": round(window, 3),
            "labeling_eps": round(labeled_now / window, 1) if window > 0 else None,
            "stored_bytes_per_example": round(stored_bytes / num_rows, 1),
            "signal_bytes_per_example": {k: round(v / num_rows, 1) for k, v in signal_bytes.items()},
            "actor_peak_rss_mb": actor_peak_rss(labeled),
            "teacher_fp32_mb": round(fp32_weight_mb(run_dir.teacher_dir), 1)}


def startup(labeled: list[dict[str, Any]], began_at: float) -> dict[str, float]:
    """Where the stage's start-up went, in seconds, from the timestamps of the shards labeled now
    (:class:`pipeline.labeling.actor.ShardLabeler` records them) and the stage's start ``began_at``
    (Unix seconds): ``to_actor_process_s`` until the first actor's process started (Ray Data's
    planning and Ray starting a worker process; 0 when Ray gave the actor a worker it had started
    before the stage), ``actor_imports_s`` from then to the actor's constructor (Ray's worker
    start-up and the imports; the slowest actor's), ``teacher_load_s`` its constructor (teachers
    loaded under DeepSpeed; the slowest actor's), and ``to_first_shard_s`` until the first shard
    began, the whole start-up."""
    actors = {entry["pid"]: entry for entry in labeled}.values()
    started = {id(a): max(a["actor_started_at"], began_at) for a in actors}
    return {"to_actor_process_s": round(min(started.values()) - began_at, 3),
            "actor_imports_s": round(max(a["actor_init_at"] - started[id(a)] for a in actors), 3),
            "teacher_load_s": round(max(a["actor_ready_at"] - a["actor_init_at"] for a in actors), 3),
            "to_first_shard_s": round(min(e["began_at"] for e in labeled) - began_at, 3)}


def actor_peak_rss(labeled: list[dict[str, Any]]) -> list[float]:
    """The peak resident set size (MB) of each actor that labeled the shards of ``labeled`` (index
    entries; an actor is a node's process), in order of first appearance: the largest its entries
    recorded, i.e. after its last shard, as a process's peak only grows."""
    peaks: dict[tuple[str, int], float] = {}
    for entry in labeled:
        actor = (entry["node_id"], entry["pid"])
        peaks[actor] = max(peaks.get(actor, 0.0), entry["peak_rss_mb"])
    return [round(peak, 1) for peak in peaks.values()]


def shard_index(run_dir: RunDir, done: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The ``shards.json`` payload: the stage fingerprint, the class count and every finished shard."""
    entries = sorted(done.values(), key=lambda e: e["shard"])
    return {"fingerprint": run_dir.stage_fingerprint, "num_labels": entries[0]["num_labels"],
            "shards": [{**e, "file": run_dir.shard_file(e["shard"]).name} for e in entries]}
