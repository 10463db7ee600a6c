"""Stage ``train``: distil the teacher's signals into a student with Ray Train.

Two students can be trained, by one train loop (:mod:`pipeline.training.loop`) that only their
data and loss tell apart:

    kd       the transfer set with the teacher's signals (``label/shard-*.parquet``), with the
             loss of ``train.loss``: named terms (CE, logit KD, hidden states, attention maps,
             embedding cosine, PKD), each weighted and optionally scheduled
    ce_only  the labeled train split alone (``data/train.parquet``), cross-entropy only;
             trained when ``train.ce_only_baseline`` is set, for comparison

Both start from the same initial student (``train/initial/``), of any family of
:mod:`students`, and learn the run's tasks (:func:`pipeline.tasks.run_tasks`): a single-task
run's own, or one per source run of a multi-task run (Liu et al. 2019), each step then
training one task, drawn in proportion to its batches (:func:`pipeline.training.batching.interleave`). The rows are streamed and batched by :mod:`pipeline.training.batching` and collated by
:mod:`pipeline.training.collate`.

Every epoch each worker reports its metrics and rank 0 attaches a checkpoint
(:mod:`pipeline.training.checkpoints`), and with ``train.checkpoint_every_steps`` also every that many
optimizer steps. A failed worker group (a killed worker, a lost node) is restarted by Ray
Train's ``FailureConfig`` up to ``train.max_failures`` times, from the latest checkpoint at its
optimizer step. Ray Train's folder is ``train/ray/<stage fingerprint>/<kind>/``, or under
``ray.storage_path`` (a shared folder or a cloud URI, :meth:`RunDir.train_storage_uri`)
when set: a run interrupted mid-way resumes from its latest checkpoint
when rerun with the same inputs (the runner's fingerprint of the stage), and a run under
another fingerprint starts afresh, its predecessors' folders removed. Whether the stage is
done at all is the runner's manifest, the one cache. Ray keeps the checkpoint with the best
dev score (``dev_score``: the task's ``data.metric``, accuracy by default for sequence tasks,
entity-level F1 for token tasks), which
is copied to ``train/<kind>/``.

The caller owns the Ray instance: this module never calls ``ray.init`` or ``ray.shutdown``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow.parquet as pq
import ray
import torch
from ray.data import FileShuffleConfig
from ray.train import CheckpointConfig, DataConfig, FailureConfig, ScalingConfig
from ray.train import RunConfig as RayRunConfig
from ray.train.torch import TorchTrainer

from core.errors import ArtifactError, ConfigError
from core.schema import TaskKind
from pipeline.observability import live_metrics
from pipeline.artifacts import RunDir
from pipeline.training.batching import read_shards
from pipeline.training.checkpoints import prepare_storage, record_finished
from pipeline.config.rules import init_checkpoint_dir, loss_problems, raise_problems
from pipeline.config.sections import MultiTaskRunConfig, RunConfig, TrainConfig
from pipeline.evaluation.scoring import dev_metric_name
from pipeline.training.shards import require_file, soft_label_files, training_columns
from pipeline.tasks import Task, run_tasks
from pipeline.training.loop import train_loop
from students.base import BuildInputs
from students.registry import build_student, load_student
from students.terms import LossConfig

log = logging.getLogger(__name__)

DATA_CPUS = 1
"""Logical CPUs the trainer leaves unreserved for Ray Data's streamed reads (see :func:`worker_cpus`)."""


@dataclass(frozen=True)
class TaskData:
    """What a student trains on for one task.

    Attributes:
        name: the task's name, passed to the student as ``task`` (the heads of a multi-task
            student); None for a single-task student.
        kind: sentences, sentence pairs or tagged words (:func:`pipeline.config.sections.task_kind`).
        files: Parquet files of the training rows (see :func:`fit`).
        dev_file: the task's dev split (columns of ``kind``, see :mod:`core.schema`).
        tag_names: IOB2 tag names for a token task, None for a sequence task.
        metric: the dev score that picks the best epoch (``data.metric``, :attr:`pipeline.tasks.Task.metric`).
    """

    name: str | None
    kind: TaskKind
    files: list[Path]
    dev_file: Path
    tag_names: list[str] | None
    metric: str


def run(cfg: RunConfig | MultiTaskRunConfig, run_dir: RunDir) -> dict:
    """Train the KD student (and the CE-only twin) on the run's tasks and publish the best checkpoint of each.

    Args:
        cfg: the run config; reads ``train`` and ``seed``, and of each task's run
            (:func:`pipeline.tasks.run_tasks`) ``data.labels``, ``data.task``,
            ``data.text_pair_column`` and ``teacher.max_length``.
        run_dir: the run directory, with the stage's fingerprint; reads each task's ``label/``,
            ``data/`` and ``finetune/teacher/`` (the first task's teacher for the student's
            vocabulary and embeddings).

    Returns:
        ``{kind: {"dev_metric", "best_dev_score", "best_epoch", "rows", "history", "optimizer_steps",
        "restarts", "attempts"}}`` for ``kd``
        and, with ``train.ce_only_baseline``, ``ce_only``; ``dev_metric`` names the dev score
        (``data.metric``: "accuracy", "f1", "macro_f1", "matthews" or "entity_f1"); ``history``
        holds one dict per epoch with
        ``epoch, loss, loss_<term> (one per loss term), dev_score, lr (after the epoch's last
        step), wall_s, peak_rss_mb`` (the largest peak RSS of a worker process, MB: bounded by
        the shuffle buffer and Ray Data's block budget, not by the transfer set's size); named
        tasks add ``best_dev_<task>`` (see :func:`fit`). ``optimizer_steps`` counts the steps
        of the whole training, ``restarts`` the times it restarted from a checkpoint, and
        ``attempts`` gives each start's first step and the Ray node and process id of every worker by rank
        (see :func:`pipeline.training.loop.train_loop`).

    Raises:
        ArtifactError: a soft-label shard, a split or the teacher is missing or fails its
            checksum, or the shards lack a signal the loss needs; a multi-task run's source run
            is missing or unfinished.
        ConfigError: ``train.student`` does not fit the teacher or the loss, or there are fewer
            GPUs than ``train.num_workers`` on a GPU machine.
    """
    return train_students(cfg, run_dir, run_dir, cfg.train.ce_only_baseline)


def train_students(cfg: RunConfig | MultiTaskRunConfig, source: RunDir, out: RunDir, ce_only: bool,
                   total_cpus: int | None = None) -> dict:
    """Train the KD student (and, with ``ce_only``, its CE-only twin) of ``source``'s tasks into ``out``.

    The stage trains into its own run directory; a sweep (:mod:`pipeline.cli.sweep`) trains each
    trial's students into a folder of its own from the same soft labels.

    Args:
        cfg: the run config (see :func:`run`).
        source: the run directory whose tasks are read (:func:`pipeline.tasks.run_tasks`).
        out: the run directory, with a stage fingerprint, that gets ``train/initial/``, the
            students and Ray Train's checkpoints.
        ce_only: also train the CE-only twin (for ``train.ce_only_epochs`` epochs, or ``train.epochs``).
        total_cpus: logical CPUs the trainers may share (see :func:`worker_cpus`); None for the
            whole cluster's.

    Returns, Raises:
        As :func:`run`.
    """
    tasks = run_tasks(cfg, source)
    raise_problems(loss_problems(cfg.train, tasks[0].cfg.teacher.max_length))  # as validate_config did
    kd = [TaskData(task.name, task.kind, soft_label_files(task.run_dir, task.num_labels, cfg.train.loss),
                   require_file(task.run_dir.split_file("dev")), task.tag_names, task.metric) for task in tasks]
    runs = {"kd": (kd, cfg.train.loss, cfg.train)}
    if ce_only:
        ce = [replace(data, files=[require_file(task.run_dir.split_file("train"))]) for task, data in zip(tasks, kd)]
        ce_train = cfg.train.model_copy(update={"epochs": cfg.train.ce_only_epochs or cfg.train.epochs})
        runs["ce_only"] = (ce, cfg.train.loss.ce_only(), ce_train)
    teacher_dir = tasks[0].run_dir.teacher_dir
    if not teacher_dir.is_dir():
        raise ArtifactError(teacher_dir, "missing; run the finetune stage first")
    check_gpus(cfg.train)
    initial_dir = build_initial_student(cfg, out, tasks)
    hidden_size = teacher_hidden_size(teacher_dir)
    storage = out.train_storage_uri(cfg.ray.storage_path)
    return {name: fit(name, train_cfg, cfg.seed, out, task_data, loss, initial_dir, hidden_size, storage, total_cpus)
            for name, (task_data, loss, train_cfg) in runs.items()}


def cluster_gpus() -> float:
    """GPUs of the Ray cluster, whatever the driver's machine has: on a cluster with a CPU head and
    GPU workers the workers train on GPUs."""
    return ray.cluster_resources().get("GPU", 0)


def check_gpus(train_cfg: TrainConfig) -> None:
    """Raise a :class:`ConfigError` when a Ray cluster with GPUs has fewer than ``train.num_workers``."""
    gpus = cluster_gpus()
    if gpus and gpus < train_cfg.num_workers:
        raise ConfigError(f"train.num_workers is {train_cfg.num_workers} but the Ray cluster has {gpus:g} GPU(s) "
                          f"and each GPU worker needs one; lower train.num_workers")


def build_initial_student(cfg: RunConfig | MultiTaskRunConfig, run_dir: RunDir, tasks: list[Task]) -> Path:
    """Build the student both twins start from (seeded), save it to ``train/initial/``, return the folder.

    Families with their own vocabulary (SentencePiece, the tagger's words) learn it from the
    transfer sets' texts (:func:`student_inputs`); a transformer with ``init_checkpoint`` starts
    from that checkpoint's folder (:func:`pipeline.config.rules.init_checkpoint_dir`).
    """
    inputs = replace(student_inputs(tasks), init_dir=init_checkpoint_dir(cfg.train.student))
    torch.manual_seed(cfg.seed)
    student = build_student(cfg.train.student, inputs)
    return student.save(run_dir.stage_dir("train") / "initial")


def student_inputs(tasks: list[Task]) -> BuildInputs:
    """What the student's builder reads: the first task's teacher and every task's transfer texts.

    The one unnamed task of a single-task run gives its label count, its word lists (token
    tasks) and whether it classifies pairs (a pair student); named tasks give a multi-task
    student its heads, ``{name: (kind, num_labels)}``, and their texts as sentences (word lists
    joined by spaces).
    """
    teacher_dir = tasks[0].run_dir.teacher_dir
    if tasks[0].name is None:
        task = tasks[0]
        return BuildInputs(teacher_dir, task.transfer_texts(), task.num_labels,
                           sentence_pairs=task.kind is TaskKind.PAIR)
    texts = [" ".join(text) if task.kind is TaskKind.TOKEN else text
             for task in tasks for text in task.transfer_texts()]
    log.info("train: tasks %s; %d transfer texts for the vocabulary",
             ", ".join(f"{t.name} ({t.kind.value})" for t in tasks), len(texts))
    return BuildInputs(teacher_dir, texts, tasks={task.name: (task.kind.value, task.num_labels) for task in tasks})


def fit(name: str, train_cfg: TrainConfig, seed: int, run_dir: RunDir, tasks: list[TaskData], loss: LossConfig,
        initial_dir: Path, teacher_hidden_size: int, storage: str, total_cpus: int | None = None) -> dict:
    """Train one student with Ray Train and copy its best checkpoint to ``run_dir.student_dir(name)``.

    An interrupted training under the same stage fingerprint resumes from its latest
    checkpoint. A finished one returns the summary it recorded, its student already in
    ``run_dir.student_dir(name)``, without starting Ray Train (when the driver died after Ray
    Train finished and before that record, Ray Train resumes after the last epoch and only the
    best checkpoint is reloaded). With several tasks, each step takes a batch of one task, drawn at random in
    proportion to the batches each task has left (see :func:`pipeline.training.batching.interleave`), and
    the dev score is the mean of the tasks' scores.

    Args:
        name: "kd" or "ce_only"; names the Ray run and the student folder.
        train_cfg: the ``train`` section (the student's loss is ``loss``, not ``train_cfg.loss``).
        seed: the run's seed.
        run_dir: the run directory that owns ``train/``, with the stage's fingerprint.
        tasks: what to train on; the Parquet files of a task hold the columns of
            :func:`pipeline.training.shards.training_columns` for its kind.
        loss: the loss to train with (CE only for the twin).
        initial_dir: the initial student's folder.
        teacher_hidden_size: D_t, for the hidden-state projections.
        storage: Ray Train's storage (:meth:`RunDir.train_storage_uri`), a folder or a URI.
        total_cpus: logical CPUs this trainer may use (see :func:`worker_cpus`); None for the
            whole cluster's.

    Returns:
        The summary of this student, as in :func:`run`; with named tasks, ``history`` also
        holds ``dev_<task>`` per epoch and the summary ``best_dev_<task>``.
    """
    finished = prepare_storage(storage, name)
    if finished is not None and run_dir.student_dir(name).is_dir():
        log.info("train %s: finished under this fingerprint; its best student (epoch %d) is kept", name,
                 finished["best_epoch"])
        return finished

    ray.data.DataContext.get_current().enable_progress_bars = False  # they flood the workers' logs
    datasets, task_configs = {}, []
    for i, task in enumerate(tasks):
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in task.files)
        datasets[f"train_{i}"] = read_shards([str(f.resolve()) for f in task.files],
                                             columns=training_columns(task.kind, loss),
                                             shuffle=FileShuffleConfig(seed=seed))
        datasets[f"dev_{i}"] = read_shards([str(task.dev_file.resolve())],
                                           columns=[*task.kind.text_columns, task.kind.label_column])
        task_configs.append({"name": task.name, "kind": task.kind.value, "rows": rows, "tag_names": task.tag_names,
                             "metric": task.metric})
        log.info("train %s: task %s: %d rows streamed from %d file(s)", name, task.name or "-", rows, len(task.files))
    use_gpu = cluster_gpus() > 0
    threads, reserved = (1, 1.0) if use_gpu else worker_cpus(train_cfg.num_workers, total_cpus)
    log.info("train %s: %d worker(s) with %d thread(s) each, gpu=%s", name, train_cfg.num_workers, threads, use_gpu)

    with live_metrics.relay(f"train/{name}") as live:  # rank 0's per-step rows, logged to W&B as they come
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={"kind": name, "train": train_cfg, "loss": loss, "seed": seed, "threads": threads,
                               "tasks": task_configs, "initial_dir": str(initial_dir.resolve()),
                               "teacher_hidden_size": teacher_hidden_size, "live": live},
            scaling_config=ScalingConfig(num_workers=train_cfg.num_workers, use_gpu=use_gpu,
                                         resources_per_worker={"CPU": reserved}),
            run_config=RayRunConfig(name=name, storage_path=storage, checkpoint_config=CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="dev_score", checkpoint_score_order="max"),
                failure_config=FailureConfig(max_failures=train_cfg.max_failures)),
            datasets=datasets,
            # Every worker sees the whole dev split, so the dev score does not depend on the worker count;
            # one worker reads the train split whole (a split would start a coordinator actor per run).
            dataset_config=DataConfig(datasets_to_split=[key for key in datasets if key.startswith("train_")]
                                      if train_cfg.num_workers > 1 else []),
        )
        result = trainer.fit()
    trained = result.return_value  # rank 0's, see pipeline.training.loop.train_loop
    checkpoint, best = max(result.best_checkpoints, key=lambda pair: pair[1]["dev_score"])
    with checkpoint.as_directory() as folder:
        load_student(Path(folder) / "student").save(run_dir.student_dir(name))
    metrics = [dev_metric_name(task.tag_names, task.metric) for task in tasks]
    log.info("train %s: best dev %s %.4f at epoch %d", name, "/".join(metrics), best["dev_score"], best["epoch"])
    summary = {"dev_metric": metrics[0] if len(tasks) == 1 else "mean of " + ", ".join(metrics),
               "best_dev_score": best["dev_score"], "best_epoch": best["epoch"],
               "rows": sum(task["rows"] for task in task_configs), "history": trained["history"],
               "optimizer_steps": trained["optimizer_steps"], "restarts": len(trained["attempts"]) - 1,
               "attempts": trained["attempts"],
               **{f"best_dev_{task.name}": best[f"dev_{task.name}"] for task in tasks if task.name is not None}}
    record_finished(storage, name, summary)
    return summary


def teacher_hidden_size(teacher_dir: Path) -> int:
    """Hidden width D_t of the teacher, from its config."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(teacher_dir).hidden_size


def worker_cpus(num_workers: int, total_cpus: int | None = None) -> tuple[int, float]:
    """Torch threads and reserved logical CPUs per worker on a CPU-only cluster.

    Threads: the cluster's CPUs (or ``total_cpus``, a sweep trial's share) shared evenly, at most a
    node's, at least 1; counted from the cluster's total, not what is free at this instant, so
    every student of a run gets the same share (Ray waits until the previous trainer has
    released it). Reserved: the same share of
    all CPUs but :data:`DATA_CPUS`, which stay free for Ray Data's read tasks; were the workers
    to reserve every CPU, the streamed read could never be scheduled and training would hang.
    """
    total_cpus = total_cpus or int(ray.cluster_resources().get("CPU", 1))
    largest_node = max(int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node["Alive"])
    threads = max(1, min(largest_node, total_cpus // num_workers))
    return threads, min(float(threads), max(0.0, (total_cpus - DATA_CPUS) / num_workers))
