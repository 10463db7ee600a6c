"""Stage ``train``: distil the teacher's signals into a student with Ray Train.

Two students can be trained, by one train loop (:mod:`pipeline.train_loop`) that only their
data and loss tell apart:

    kd       the transfer set with the teacher's signals (``label/shard-*.parquet``), with the
             loss of ``train.loss``: named terms (CE, logit KD, hidden states, attention maps,
             embedding cosine, PKD), each weighted and optionally scheduled
    ce_only  the labeled train split alone (``data/train.parquet``), cross-entropy only;
             trained when ``train.ce_only_baseline`` is set, for comparison

Both start from the same initial student (``train/initial/``), of any family of
:mod:`students`. The rows are streamed and batched by :mod:`pipeline.batching` and collated by
:mod:`pipeline.collate`.

Every epoch each worker reports its metrics and rank 0 attaches a checkpoint
(:mod:`pipeline.checkpoints`). Ray Train's folder is ``train/ray/<stage fingerprint>/<kind>/``
(:attr:`RunDir.train_storage`): a run interrupted mid-way resumes from its latest checkpoint
when rerun with the same inputs (the runner's fingerprint of the stage), and a run under
another fingerprint starts afresh, its predecessors' folders removed. Whether the stage is
done at all is the runner's manifest, the one cache. Ray keeps the checkpoint with the best
dev score (``dev_score``: accuracy for sequence tasks, entity-level F1 for token tasks), which
is copied to ``train/<kind>/``.

The caller owns the Ray instance: this module never calls ``ray.init`` or ``ray.shutdown``.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import ray
import torch
from ray.data import FileShuffleConfig
from ray.train import CheckpointConfig, DataConfig, ScalingConfig
from ray.train import RunConfig as RayRunConfig
from ray.train.torch import TorchTrainer

from core.errors import ArtifactError, ConfigError
from core.schema import TaskKind
from pipeline.artifacts import RunDir
from pipeline.config import RunConfig, TrainConfig
from pipeline.data import task_kind
from pipeline.evaluate import dev_metric_name, tag_names
from pipeline.shards import require_file, soft_label_files, training_columns
from pipeline.train_loop import train_loop
from students.base import BuildInputs
from students.registry import FAMILIES, build_student, load_student
from students.terms import LossConfig, layer_terms

log = logging.getLogger(__name__)

DATA_CPUS = 1
"""Logical CPUs the trainer leaves unreserved for Ray Data's streamed reads (see :func:`worker_cpus`)."""


@dataclass(frozen=True)
class TaskData:
    """What a student trains on for one task.

    Attributes:
        name: the task's name, passed to the student as ``task`` (the heads of a multi-task
            student); None for a single-task student.
        kind: sentences, sentence pairs or tagged words (:func:`pipeline.data.task_kind`).
        files: Parquet files of the training rows (see :func:`fit`).
        dev_file: the task's dev split (columns of ``kind``, see :mod:`core.schema`).
        tag_names: IOB2 tag names for a token task, None for a sequence task.
    """

    name: str | None
    kind: TaskKind
    files: list[Path]
    dev_file: Path
    tag_names: list[str] | None


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    """Train the KD student (and the CE-only twin) and publish the best checkpoint of each.

    Args:
        cfg: the run config; reads ``train``, ``data.labels``, ``data.task``,
            ``data.text_pair_column``, ``teacher.max_length`` and ``seed``.
        run_dir: the run directory, with the stage's fingerprint; reads ``label/``, ``data/``
            and ``finetune/teacher/``.

    Returns:
        ``{kind: {"dev_metric", "best_dev_score", "best_epoch", "rows", "history"}}`` for ``kd``
        and, with ``train.ce_only_baseline``, ``ce_only``; ``dev_metric`` names the dev score
        ("accuracy" or "entity_f1"); ``history`` holds one dict per epoch with
        ``epoch, loss, loss_<term> (one per loss term), dev_score, lr (after the epoch's last
        step), wall_s, peak_rss_mb`` (the largest peak RSS of a worker process, MB: bounded by
        the shuffle buffer and Ray Data's block budget, not by the transfer set's size).

    Raises:
        ArtifactError: a soft-label shard, a split or the teacher is missing or fails its
            checksum, or the shards lack a signal the loss needs.
        ConfigError: ``train.student`` does not fit the teacher or the loss, or there are fewer
            GPUs than ``train.num_workers`` on a GPU machine.
    """
    num_labels, kind = len(cfg.data.labels), task_kind(cfg.data)
    check_loss_fits_student(cfg)
    dev_file = require_file(run_dir.split_file("dev"))
    runs = {"kd": (TaskData(None, kind, soft_label_files(run_dir, num_labels, cfg.train.loss), dev_file,
                            tag_names(cfg)), cfg.train.loss)}
    if cfg.train.ce_only_baseline:
        runs["ce_only"] = (TaskData(None, kind, [require_file(run_dir.split_file("train"))], dev_file,
                                    tag_names(cfg)), cfg.train.loss.ce_only())
    if not run_dir.teacher_dir.is_dir():
        raise ArtifactError(run_dir.teacher_dir, "missing; run the finetune stage first")
    check_gpus(cfg.train)
    initial_dir = build_initial_student(cfg, run_dir, kind)
    hidden_size = teacher_hidden_size(run_dir.teacher_dir)
    return {name: fit(name, cfg.train, cfg.seed, run_dir, [task], loss, initial_dir, hidden_size)
            for name, (task, loss) in runs.items()}


def check_gpus(train_cfg: TrainConfig) -> None:
    """Raise a :class:`ConfigError` when a GPU machine's Ray cluster has fewer GPUs than ``train.num_workers``."""
    gpus = ray.cluster_resources().get("GPU", 0)
    if torch.cuda.is_available() and gpus < train_cfg.num_workers:
        raise ConfigError(f"train.num_workers is {train_cfg.num_workers} but the Ray cluster has {gpus:g} GPU(s) "
                          f"and each GPU worker needs one; lower train.num_workers")


def build_initial_student(cfg: RunConfig, run_dir: RunDir, kind: TaskKind) -> Path:
    """Build the student both twins start from (seeded), save it to ``train/initial/``, return the folder.

    Families with their own vocabulary (SentencePiece, the tagger's words) learn it from the
    transfer set's texts (word lists for token tasks); a pair task gets a pair student.
    """
    transfer = pq.read_table(run_dir.split_file("transfer"), columns=kind.text_columns)
    texts = [t for column in transfer.columns for t in column.to_pylist()]
    torch.manual_seed(cfg.seed)
    student = build_student(cfg.train.student, BuildInputs(run_dir.teacher_dir, texts, len(cfg.data.labels),
                                                           sentence_pairs=kind is TaskKind.PAIR))
    return student.save(run_dir.stage_dir("train") / "initial")


def check_loss_fits_student(cfg: RunConfig) -> None:
    """Fail before any work when the loss asks for signals the student cannot match.

    Raises:
        ConfigError: a hidden-state, attention, cosine or PKD term with a student family that
            has no such outputs, or with a student ``max_length`` other than the teacher's (the
            per-token signals are aligned token by token).
    """
    needs_layers = layer_terms(cfg.train.loss)
    if not needs_layers:
        return
    student = cfg.train.student
    if not FAMILIES[student.family].layer_outputs:
        layer_families = [name for name, family in FAMILIES.items() if family.layer_outputs]
        raise ConfigError(f"train.loss.{needs_layers[0]} needs a student with hidden states and attention maps "
                          f"(train.student.family: {' or '.join(layer_families)}), not {student.family}")
    if student.max_length != cfg.teacher.max_length:
        raise ConfigError(f"train.loss.{needs_layers[0]} aligns student and teacher tokens, so "
                          f"train.student.max_length ({student.max_length}) must equal teacher.max_length "
                          f"({cfg.teacher.max_length})")


def fit(name: str, train_cfg: TrainConfig, seed: int, run_dir: RunDir, tasks: list[TaskData], loss: LossConfig,
        initial_dir: Path, teacher_hidden_size: int) -> dict:
    """Train one student with Ray Train and copy its best checkpoint to ``run_dir.student_dir(name)``.

    An interrupted training under the same stage fingerprint resumes from its latest
    checkpoint (a finished one resumes after its last epoch, so it only reloads its best
    checkpoint). With several tasks, each step takes a batch of one task, drawn at random in
    proportion to the batches each task has left (see :func:`pipeline.batching.interleave`), and
    the dev score is the mean of the tasks' scores.

    Args:
        name: "kd" or "ce_only"; names the Ray run and the student folder.
        train_cfg: the ``train`` section (the student's loss is ``loss``, not ``train_cfg.loss``).
        seed: the run's seed.
        run_dir: the run directory that owns ``train/``, with the stage's fingerprint.
        tasks: what to train on; the Parquet files of a task hold the columns of
            :func:`pipeline.shards.training_columns` for its kind.
        loss: the loss to train with (CE only for the twin).
        initial_dir: the initial student's folder.
        teacher_hidden_size: D_t, for the hidden-state projections.

    Returns:
        The summary of this student, as in :func:`run`; with named tasks, ``history`` also
        holds ``dev_<task>`` per epoch and the summary ``best_dev_<task>``.
    """
    storage = run_dir.train_storage.resolve()
    for stale in storage.parent.iterdir() if storage.parent.is_dir() else []:
        if stale != storage:  # Ray runs of other inputs: never resumed, so removed
            shutil.rmtree(stale)
    if (storage / name).exists():
        log.info("train %s: resuming from the latest checkpoint in %s", name, storage / name)

    ray.data.DataContext.get_current().enable_progress_bars = False  # they flood the workers' logs
    datasets, task_configs = {}, []
    for i, task in enumerate(tasks):
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in task.files)
        datasets[f"train_{i}"] = ray.data.read_parquet([str(f.resolve()) for f in task.files],
                                                       columns=training_columns(task.kind, loss),
                                                       shuffle=FileShuffleConfig(seed=seed))
        datasets[f"dev_{i}"] = ray.data.read_parquet(str(task.dev_file.resolve()),
                                                     columns=[*task.kind.text_columns, task.kind.label_column])
        task_configs.append({"name": task.name, "kind": task.kind.value, "rows": rows, "tag_names": task.tag_names})
        log.info("train %s: task %s: %d rows streamed from %d file(s)", name, task.name or "-", rows, len(task.files))
    use_gpu = torch.cuda.is_available()
    threads, reserved = (1, 1.0) if use_gpu else worker_cpus(train_cfg.num_workers)
    log.info("train %s: %d worker(s) with %d thread(s) each, gpu=%s", name, train_cfg.num_workers, threads, use_gpu)

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"kind": name, "train": train_cfg, "loss": loss, "seed": seed, "threads": threads,
                           "tasks": task_configs, "initial_dir": str(initial_dir.resolve()),
                           "teacher_hidden_size": teacher_hidden_size},
        scaling_config=ScalingConfig(num_workers=train_cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": reserved}),
        run_config=RayRunConfig(name=name, storage_path=str(storage), checkpoint_config=CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute="dev_score", checkpoint_score_order="max")),
        datasets=datasets,
        # Every worker sees the whole dev split, so the dev score does not depend on the worker count.
        dataset_config=DataConfig(datasets_to_split=[key for key in datasets if key.startswith("train_")]),
    )
    result = trainer.fit()
    checkpoint, best = max(result.best_checkpoints, key=lambda pair: pair[1]["dev_score"])
    with checkpoint.as_directory() as folder:
        load_student(Path(folder) / "student").save(run_dir.student_dir(name))
    metrics = [dev_metric_name(task.tag_names) for task in tasks]
    log.info("train %s: best dev %s %.4f at epoch %d", name, "/".join(metrics), best["dev_score"], best["epoch"])
    return {"dev_metric": metrics[0] if len(tasks) == 1 else "mean of " + ", ".join(metrics),
            "best_dev_score": best["dev_score"], "best_epoch": best["epoch"],
            "rows": sum(task["rows"] for task in task_configs), "history": result.return_value,
            **{f"best_dev_{task.name}": best[f"dev_{task.name}"] for task in tasks if task.name is not None}}


def teacher_hidden_size(teacher_dir: Path) -> int:
    """Hidden width D_t of the teacher, from its config."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(teacher_dir).hidden_size


def worker_cpus(num_workers: int) -> tuple[int, float]:
    """Torch threads and reserved logical CPUs per worker on a CPU-only cluster.

    Threads: the cluster's CPUs shared evenly, at most a node's, at least 1; counted from the
    cluster's total, not what is free at this instant, so every student of a run gets the same
    share (Ray waits until the previous trainer has released it). Reserved: the same share of
    all CPUs but :data:`DATA_CPUS`, which stay free for Ray Data's read tasks; were the workers
    to reserve every CPU, the streamed read could never be scheduled and training would hang.
    """
    total_cpus = int(ray.cluster_resources().get("CPU", 1))
    largest_node = max(int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node["Alive"])
    threads = max(1, min(largest_node, total_cpus // num_workers))
    return threads, min(float(threads), max(0.0, (total_cpus - DATA_CPUS) / num_workers))
