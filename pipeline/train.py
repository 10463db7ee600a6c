"""Stage ``train``: distil the teacher's signals into a student with Ray Train.

Two students can be trained, by one train loop that only their data and loss tell apart:

    kd       the transfer set with the teacher's signals (``label/shard-*.parquet``), with the
             loss of ``train.loss``: named terms (CE, logit KD, hidden states, attention maps,
             embedding cosine, PKD), each weighted and optionally scheduled
    ce_only  the labeled train split alone (``data/train.parquet``), cross-entropy only;
             trained when ``train.ce_only_baseline`` is set, for comparison

Both start from the same initial student (``train/initial/``), of any family of
:mod:`students`. The rows are streamed: Ray Data reads the Parquet shards in a shuffled file
order, block by block, splits them across the workers and each worker shuffles within a
buffer of ``LOCAL_SHUFFLE_ROWS`` rows, so memory stays bounded whatever the transfer set's
size. Per-token teacher signals (``hidden_{l}``, ``attention_{l}``) are cut to each row's
real tokens in the shards and padded per batch here.

Token tasks (``data.task: token``) train a tagger on rows of words (``tokens``): hard tags
[B, W] padded with -1, the teacher's word logits [B, W, C] and a distillation mask [B, W]
that leaves out padding words and words the teacher never saw (cut by its ``max_length``).

Every epoch each worker reports its metrics and rank 0 attaches a checkpoint (the student and
the optimizer, scaler and loss-projection state). A run interrupted mid-way resumes from the
latest checkpoint: its Ray folder (``train/ray/<kind>/``) is kept while the training inputs
are unchanged. Ray keeps the checkpoint with the best dev score (``dev_score``: accuracy for
sequence tasks, entity-level F1 for token tasks), which is copied to ``train/<kind>/``; a
finished student is not retrained on a rerun.

The caller owns the Ray instance: this module never calls ``ray.init`` or ``ray.shutdown``.
"""

from __future__ import annotations

import logging
import math
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray
import ray.train
import ray.train.torch
import torch
from ray.data import FileShuffleConfig
from ray.train import CheckpointConfig, DataConfig, ScalingConfig
from ray.train import RunConfig as RayRunConfig
from ray.train.torch import TorchTrainer
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from core.artifacts import atomic_write_json, read_json, sha256_file
from pipeline.artifacts import RunDir, fingerprint
from pipeline.config import RunConfig, TrainConfig
from core.errors import ArtifactError, ConfigError
from pipeline.evaluate import dev_metric_name, score, tag_names
from core.precision import Precision, deepspeed_config, make_optimizer, select_precision
from students.base import BuildInputs, Student, StudentOutput
from students.distillation import DistillationLoss, LossTerms
from students.losses import NO_LABEL
from students.registry import FAMILIES, build_student, load_student
from students.terms import LossConfig, layer_terms, teacher_layers

log = logging.getLogger(__name__)

LOCAL_SHUFFLE_ROWS = 8192
"""Rows in each worker's shuffle buffer, re-seeded every epoch, on top of a shuffled file order."""

LENGTH_GROUP_BATCHES = 50
"""Batches per length group (see :func:`length_grouped`), as in transformers' ``group_by_length``."""

DATA_CPUS = 1
"""Logical CPUs the trainer leaves unreserved for Ray Data's streamed reads (see :func:`worker_cpus`)."""

DEEPSPEED_TAG = "engine"
"""Tag (sub-folder) of a DeepSpeed engine checkpoint inside a Ray checkpoint."""

TRAIN_STATE_FILE = "train_state.pt"
"""Optimizer, grad-scaler and loss-module state, epoch and history, next to the student in a checkpoint."""


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    """Train the KD student (and the CE-only twin) and publish the best checkpoint of each.

    Args:
        cfg: the run config; reads ``train``, ``data.labels``, ``teacher.max_length`` and ``seed``.
        run_dir: the run directory; reads ``label/``, ``data/`` and ``finetune/teacher/``.

    Returns:
        ``{kind: {"dev_metric", "best_dev_score", "best_epoch", "rows", "history"}}`` for ``kd``
        and, with ``train.ce_only_baseline``, ``ce_only``; ``dev_metric`` names the dev score
        ("accuracy" or "entity_f1"); ``history`` holds one dict per epoch with
        ``epoch, loss, loss_<term> (one per loss term), dev_score, wall_s, peak_rss_mb`` (the
        largest peak RSS of a worker process, MB: bounded by the shuffle buffer and Ray Data's
        block budget, not by the transfer set's size).

    Raises:
        ArtifactError: a soft-label shard, a split or the teacher is missing or fails its
            checksum, or the shards lack a signal the loss needs.
        ConfigError: ``train.student`` does not fit the teacher or the loss, or there are fewer
            GPUs than ``train.num_workers`` on a GPU machine.
    """
    num_labels = len(cfg.data.labels)
    check_loss_fits_student(cfg)
    dev_file = require_file(run_dir.split_file("dev"))
    runs = {"kd": (TaskData(None, soft_label_files(run_dir, num_labels, cfg.train.loss), dev_file, tag_names(cfg)),
                   cfg.train.loss)}
    if cfg.train.ce_only_baseline:
        runs["ce_only"] = (TaskData(None, [require_file(run_dir.split_file("train"))], dev_file, tag_names(cfg)),
                           cfg.train.loss.ce_only())
    if not run_dir.teacher_dir.is_dir():
        raise ArtifactError(run_dir.teacher_dir, "missing; run the finetune stage first")
    check_gpus(cfg.train)
    initial_dir = build_initial_student(cfg, run_dir)
    hidden_size = teacher_hidden_size(run_dir.teacher_dir)
    return {kind: fit(kind, cfg.train, cfg.seed, run_dir, [task], loss, initial_dir, hidden_size)
            for kind, (task, loss) in runs.items()}


@dataclass(frozen=True)
class TaskData:
    """What a student trains on for one task.

    Attributes:
        name: the task's name, passed to the student as ``task`` (the heads of a multi-task
            student); None for a single-task student.
        files: Parquet files of the training rows (see :func:`fit`).
        dev_file: the task's dev split (``text`` (``text_pair``), ``label``; or ``tokens``, ``tags``).
        tag_names: IOB2 tag names for a token task, None for a sequence task.
    """

    name: str | None
    files: list[Path]
    dev_file: Path
    tag_names: list[str] | None


def check_gpus(train_cfg: TrainConfig) -> None:
    """Raise a :class:`ConfigError` when a GPU machine's Ray cluster has fewer GPUs than ``train.num_workers``."""
    gpus = ray.cluster_resources().get("GPU", 0)
    if torch.cuda.is_available() and gpus < train_cfg.num_workers:
        raise ConfigError(f"train.num_workers is {train_cfg.num_workers} but the Ray cluster has {gpus:g} GPU(s) "
                          f"and each GPU worker needs one; lower train.num_workers")


def build_initial_student(cfg: RunConfig, run_dir: RunDir) -> Path:
    """Build the student both twins start from (seeded), save it to ``train/initial/``, return the folder.

    Families with their own vocabulary (SentencePiece, the tagger's words) learn it from the
    transfer set's texts (word lists for token tasks).
    """
    transfer = pq.read_table(run_dir.split_file("transfer"), columns=text_columns(run_dir.split_file("transfer")))
    texts = [t for column in transfer.columns for t in column.to_pylist()]
    torch.manual_seed(cfg.seed)
    student = build_student(cfg.train.student, BuildInputs(run_dir.teacher_dir, texts, len(cfg.data.labels),
                                                           sentence_pairs="text_pair" in transfer.column_names))
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


def fit(kind: str, train_cfg: TrainConfig, seed: int, run_dir: RunDir, tasks: list[TaskData], loss: LossConfig,
        initial_dir: Path, teacher_hidden_size: int) -> dict:
    """Train one student with Ray Train and copy its best checkpoint to ``run_dir.student_dir(kind)``.

    A student already trained from the same inputs is reused; an interrupted training of the
    same inputs resumes from its latest checkpoint. With several tasks, each step takes a batch
    of one task, drawn at random in proportion to the batches each task has left (see
    :func:`interleave`), and the dev score is the mean of the tasks' scores.

    Args:
        kind: "kd" or "ce_only"; names the Ray run and the student folder.
        train_cfg: the ``train`` section (the student's loss is ``loss``, not ``train_cfg.loss``).
        seed: the run's seed.
        run_dir: the run directory that owns ``train/``.
        tasks: what to train on; the Parquet files of a task hold ``text`` (``text_pair``),
            ``label`` and the teacher's signals, or ``tokens``, ``tags``, ``logits``,
            ``num_words``, ``word_mask`` for token tasks.
        loss: the loss to train with (CE only for the twin).
        initial_dir: the initial student's folder.
        teacher_hidden_size: D_t, for the hidden-state projections.

    Returns:
        The summary of this student, as in :func:`run`; with named tasks, ``history`` also
        holds ``dev_<task>`` per epoch and the summary ``best_dev_<task>``.
    """
    # what this student depends on: not whether its twin is trained too
    key = fingerprint(kind, train_cfg.model_copy(update={"loss": loss, "ce_only_baseline": True}), seed,
                      [(task.name, [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in task.files])
                       for task in tasks])
    summary_file = run_dir.stage_dir("train") / f"{kind}.json"
    if summary_file.exists() and read_json(summary_file).get("key") == key and run_dir.student_dir(kind).is_dir():
        log.info("train %s: already trained from these inputs; reusing %s", kind, run_dir.student_dir(kind))
        return read_json(summary_file)["summary"]

    storage = (run_dir.stage_dir("train") / "ray").resolve()
    key_file = storage / f"{kind}.key"
    if not key_file.exists() or key_file.read_text() != key:
        shutil.rmtree(storage / kind, ignore_errors=True)  # other inputs: start afresh
        storage.mkdir(parents=True, exist_ok=True)
        key_file.write_text(key)
    elif (storage / kind).exists():
        log.info("train %s: resuming from the latest checkpoint in %s", kind, storage / kind)

    ray.data.DataContext.get_current().enable_progress_bars = False  # they flood the workers' logs
    datasets, task_configs = {}, []
    for i, task in enumerate(tasks):
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in task.files)
        datasets[f"train_{i}"] = ray.data.read_parquet([str(f.resolve()) for f in task.files],
                                                       columns=training_columns(task.files[0], loss),
                                                       shuffle=FileShuffleConfig(seed=seed))
        datasets[f"dev_{i}"] = ray.data.read_parquet(str(task.dev_file.resolve()),
                                                     columns=text_columns(task.dev_file) + [label_column(task.dev_file)])
        task_configs.append({"name": task.name, "rows": rows, "tag_names": task.tag_names})
        log.info("train %s: task %s: %d rows streamed from %d file(s)", kind, task.name or "-", rows, len(task.files))
    use_gpu = torch.cuda.is_available()
    threads, reserved = (1, 1.0) if use_gpu else worker_cpus(train_cfg.num_workers)
    log.info("train %s: %d worker(s) with %d thread(s) each, gpu=%s", kind, train_cfg.num_workers, threads, use_gpu)

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"kind": kind, "train": train_cfg, "loss": loss, "seed": seed, "threads": threads,
                           "tasks": task_configs, "initial_dir": str(initial_dir.resolve()),
                           "teacher_hidden_size": teacher_hidden_size},
        scaling_config=ScalingConfig(num_workers=train_cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": reserved}),
        run_config=RayRunConfig(name=kind, storage_path=str(storage), checkpoint_config=CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute="dev_score", checkpoint_score_order="max")),
        datasets=datasets,
        # Every worker sees the whole dev split, so the dev score does not depend on the worker count.
        dataset_config=DataConfig(datasets_to_split=[name for name in datasets if name.startswith("train_")]),
    )
    result = trainer.fit()
    checkpoint, best = max(result.best_checkpoints, key=lambda pair: pair[1]["dev_score"])
    with checkpoint.as_directory() as folder:
        load_student(Path(folder) / "student").save(run_dir.student_dir(kind))
    metrics = [dev_metric_name(task.tag_names) for task in tasks]
    log.info("train %s: best dev %s %.4f at epoch %d", kind, "/".join(metrics), best["dev_score"], best["epoch"])
    summary = {"dev_metric": metrics[0] if len(tasks) == 1 else "mean of " + ", ".join(metrics),
               "best_dev_score": best["dev_score"], "best_epoch": best["epoch"],
               "rows": sum(task["rows"] for task in task_configs), "history": result.return_value,
               **{f"best_dev_{task.name}": best[f"dev_{task.name}"] for task in tasks if task.name is not None}}
    atomic_write_json(summary_file, {"key": key, "summary": summary})
    return summary


class DistillationStep(nn.Module):
    """The student and its loss in one module, so that DDP or DeepSpeed syncs the loss's
    learned projections together with the student.

    Args:
        student: any student family.
        loss: the loss module of ``train.loss``.
    """

    def __init__(self, student: Student, loss: DistillationLoss):
        super().__init__()
        self.student = student
        self.loss = loss

    def forward(self, features: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], labels: torch.Tensor,
                mask: torch.Tensor | None, progress: float) -> LossTerms:
        """The loss terms of one batch (see :class:`Batch`); ``mask`` selects the logit positions
        to distil (None = all), ``progress`` in [0, 1] drives the schedules."""
        output: StudentOutput = self.student(**features)
        return self.loss(output, teacher, labels, mask, progress)


def train_loop(config: dict) -> list[dict]:
    """Per-worker training function of :class:`TorchTrainer`; returns the epoch history.

    Args:
        config: the ``train_loop_config`` built by :func:`fit`.
    """
    train_cfg: TrainConfig = config["train"]
    loss_cfg: LossConfig = config["loss"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    precision = select_precision(train_cfg.precision, "train")
    if precision.device == "cpu":
        torch.set_num_threads(config["threads"])
    torch.manual_seed(config["seed"] + rank)  # dropout masks differ per rank; weights come from initial_dir

    student = load_student(config["initial_dir"]).train()
    hidden_layers, attention_layers = layers_needed(loss_cfg)
    if hidden_layers:
        student.output_hidden_states = True
    if attention_layers:
        student.output_attentions = True
    step_module = DistillationStep(student, DistillationLoss(loss_cfg, student.hidden_size,
                                                             config["teacher_hidden_size"]))
    optimizer = make_optimizer(step_module.parameters(), train_cfg.lr, train_cfg.weight_decay, precision,
                               train_cfg.apex)
    scaler = torch.amp.GradScaler(precision.device, enabled=precision.needs_grad_scaler)
    if train_cfg.strategy == "deepspeed":
        import deepspeed

        model, optimizer, _, _ = deepspeed.initialize(
            model=step_module, optimizer=optimizer, dist_init_required=False,
            config=deepspeed_config(train_cfg.batch_size, train_cfg.zero_stage, precision, train_cfg.deepspeed_config))
    else:
        model = ray.train.torch.prepare_model(step_module)
    state = restore(model, optimizer, scaler)
    history: list[dict] = state["history"] if state else []
    tasks = config["tasks"]
    task_steps = [math.ceil(task["rows"] / world / train_cfg.batch_size) for task in tasks]
    steps_per_epoch = sum(task_steps)
    total_steps = max(1, train_cfg.epochs * steps_per_epoch)
    collates = [Collate(student, (hidden_layers, attention_layers), task["name"]) for task in tasks]
    dev_collates = [Collate(student, ([], []), task["name"]) for task in tasks]  # dev rows: texts and labels only
    train_shards = [ray.train.get_dataset_shard(f"train_{i}") for i in range(len(tasks))]
    dev_shards = [ray.train.get_dataset_shard(f"dev_{i}") for i in range(len(tasks))]

    for epoch in range(len(history) + 1, train_cfg.epochs + 1):
        start = time.perf_counter()
        seed = config["seed"] + 1000 * epoch
        streams = [map(collate, shuffled_batches(shard, train_cfg.batch_size, seed + rank))
                   for shard, collate in zip(train_shards, collates)]
        # the task order is drawn alike on every rank
        batches = interleave(streams, task_steps, np.random.default_rng(seed))
        first_step = (epoch - 1) * steps_per_epoch
        losses = train_epoch(model, batches, optimizer, scaler, precision, first_step, total_steps, steps_per_epoch,
                             show_progress=rank == 0)
        scores = [dev_score(student, map(collate, length_grouped(
                      shard.iter_batches(batch_size=train_cfg.batch_size * LENGTH_GROUP_BATCHES),
                      train_cfg.batch_size, None)), precision, task["tag_names"])
                  for shard, collate, task in zip(dev_shards, dev_collates, tasks)]
        named = {f"dev_{task['name']}": value for task, value in zip(tasks, scores) if task["name"] is not None}
        metrics = {"epoch": epoch, **losses, "dev_score": float(np.mean(scores)), **named,
                   "wall_s": round(time.perf_counter() - start, 2), "peak_rss_mb": peak_rss_mb()}
        log.info("train %s epoch %d/%d: %s", config["kind"], epoch, train_cfg.epochs,
                 ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "epoch"))
        history.append(metrics)
        report(metrics, model, optimizer, scaler, history, rank)
    return history


def interleave(streams: list, steps: list[int], rng: np.random.Generator):
    """Merge per-task batch streams into one: each next batch comes from a task drawn with
    probability proportional to its expected batches left (``steps``, at least 1 while the
    stream lasts), so every task is spread over the whole epoch (the task sampling of MT-DNN,
    Liu et al. 2019).

    Args:
        streams: one iterator of batches per task.
        steps: the expected number of batches of each stream.
        rng: draws the task order.

    Yields:
        every batch of every stream, once.
    """
    live = dict(enumerate(streams))
    left = dict(enumerate(steps))
    while live:
        names = list(live)
        weights = np.array([max(left[i], 1) for i in names], dtype=np.float64)
        pick = names[rng.choice(len(names), p=weights / weights.sum())]
        try:
            batch = next(live[pick])
        except StopIteration:
            del live[pick]
            continue
        left[pick] -= 1
        yield batch


def shuffled_batches(shard, batch_size: int, seed: int):
    """One epoch of a worker's training rows as numpy batches: shuffled within a buffer of
    :data:`LOCAL_SHUFFLE_ROWS` rows (on top of the dataset's shuffled file order), then cut
    into batches of similar length (:func:`length_grouped`) in a random order.

    Args:
        shard: a Ray Data dataset or a worker's ``DataIterator``.
        batch_size: rows per batch.
        seed: seeds the shuffle buffer and the batch order (vary it per epoch and rank).

    Yields:
        ``{column: np.ndarray [<= batch_size]}``.
    """
    groups = shard.iter_batches(batch_size=batch_size * LENGTH_GROUP_BATCHES,
                                local_shuffle_buffer_size=LOCAL_SHUFFLE_ROWS, local_shuffle_seed=seed)
    return length_grouped(groups, batch_size, np.random.default_rng(seed))


def length_grouped(groups, batch_size: int, rng: np.random.Generator | None):
    """Cut each group of rows (a Ray Data numpy batch of ``LENGTH_GROUP_BATCHES`` batches) into
    batches of rows of similar length, so that padding wastes little compute.

    Rows are sorted by their texts' character length (``text`` + ``text_pair``, or the number
    of words of ``tokens``), cut into batches of ``batch_size`` rows, and the batches are
    yielded in a random order drawn from ``rng`` (in order when None). The megabatch scheme of
    transformers' ``LengthGroupedSampler``; the rows are already shuffled across groups.

    Args:
        groups: iterable of ``{column: np.ndarray [N]}``.
        batch_size: rows per batch (the last batch of a group may be smaller).
        rng: shuffles the batch order within each group; None keeps them sorted (dev).

    Yields:
        ``{column: np.ndarray [<= batch_size]}``.
    """
    for group in groups:
        order = np.argsort(row_lengths(group), kind="stable")
        starts = np.arange(0, len(order), batch_size)
        if rng is not None:
            rng.shuffle(starts)
        for start in starts:
            rows = order[start:start + batch_size]
            yield {column: values[rows] for column, values in group.items()}


def row_lengths(group: dict[str, np.ndarray]) -> np.ndarray:
    """Length of each row's input: words for token tasks, else characters of ``text`` (+ ``text_pair``)."""
    if "tokens" in group:
        return np.fromiter((len(words) for words in group["tokens"]), dtype=np.int64, count=len(group["tokens"]))
    lengths = np.char.str_len(group["text"].astype(str))
    if "text_pair" in group:
        lengths = lengths + np.char.str_len(group["text_pair"].astype(str))
    return lengths


@dataclass
class Batch:
    """One collated batch.

    Attributes:
        features: the student's inputs (see :meth:`Student.featurize`), int64 tensors, and the
            ``task`` name (a str) for a multi-task student.
        teacher: the teacher's signals: ``logits`` [B, C] float32, or [B, W, C] for a tagger
            (KD rows only), and with layer terms ``hidden_{l}`` [B, T, D], ``attention_{l}``
            [B, H, T, T] and ``mask`` [B, T].
        labels: int64 [B], or [B, W] for a tagger; -1 for rows (words) without a hard label.
        mask: bool [B, W], a tagger's words to distil (real words the teacher saw); None = all rows.
    """

    features: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor]
    labels: torch.Tensor
    mask: torch.Tensor | None = None

    def to(self, device: torch.device) -> "Batch":
        move = lambda d: {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v  # noqa: E731
                          for k, v in d.items()}
        return Batch(move(self.features), move(self.teacher), self.labels.to(device, non_blocking=True),
                     None if self.mask is None else self.mask.to(device, non_blocking=True))


def train_epoch(model: nn.Module, batches, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                precision: Precision, first_step: int, total_steps: int, steps: int,
                show_progress: bool) -> dict[str, float]:
    """One pass over this worker's shard; returns the epoch's row-weighted mean losses over all workers.

    ``steps`` (this worker's steps per epoch) sizes the progress bar, shown when ``show_progress``
    (rank 0).

    Returns:
        ``{"loss": total, "loss_<term>": unweighted term, ...}`` for every term of the loss.
    """
    model.train()
    device = ray.train.torch.get_device()
    names: list[str] = []
    sums = None  # row-weighted sums of total and each term, then the row count
    for step, batch in enumerate(tqdm(batches, desc="train", unit="step", total=steps, disable=not show_progress),
                                 start=first_step):
        batch = batch.to(device)
        progress = min(1.0, step / total_steps)
        if is_deepspeed(model):  # the engine handles precision, loss scaling and clipping
            terms = model(batch.features, batch.teacher, batch.labels, batch.mask, progress)
            model.backward(terms.total)
            model.step()
        else:
            with precision.autocast_context():
                terms = model(batch.features, batch.teacher, batch.labels, batch.mask, progress)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(terms.total).backward()
            scaler.step(optimizer)
            scaler.update()
        if sums is None:
            names = list(terms.terms)
            sums = torch.zeros(len(names) + 2, dtype=torch.float64, device=device)
        rows = float(len(batch.labels))
        sums += torch.tensor([terms.total.item() * rows, *(terms.terms[n].item() * rows for n in names), rows],
                             dtype=torch.float64, device=device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    *values, rows = sums.tolist()
    return {"loss": values[0] / max(rows, 1), **{f"loss_{n}": v / max(rows, 1) for n, v in zip(names, values[1:])}}


@torch.no_grad()
def dev_score(student: Student, batches, precision: Precision, tag_names: list[str] | None) -> float:
    """The dev score of :func:`pipeline.evaluate.score`: accuracy of the argmax logit, or, with
    ``tag_names``, entity-level F1 of the argmax tag of every real word. The student is left in
    training mode."""
    student.eval()
    device = ray.train.torch.get_device()
    predicted, gold = [], []
    for batch in batches:
        batch = batch.to(device)
        with precision.autocast_context():
            predictions = student(**batch.features).logits.argmax(dim=-1).cpu()  # [B] or [B, W]
        labels = batch.labels.cpu()
        if tag_names is None:
            predicted += predictions.tolist()
            gold += labels.tolist()
        else:
            real = student.word_mask(batch.features).cpu()  # [B, W]
            predicted += [row[keep].tolist() for row, keep in zip(predictions, real)]
            gold += [row[keep].tolist() for row, keep in zip(labels, real)]
    student.train()
    return score(predicted, gold, tag_names)[dev_metric_name(tag_names)]


def peak_rss_mb() -> float:
    """The largest peak resident set size (MB) of any training worker process so far."""
    peak = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024], dtype=torch.float64,
                        device=ray.train.torch.get_device())  # ru_maxrss is in KiB on Linux
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
    return round(peak.item(), 1)


def restore(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> dict[str, Any] | None:
    """Load the latest checkpoint into the model and optimizer when Ray Train resumes; returns its train state.

    A DeepSpeed engine loads its own checkpoint (each rank its ZeRO partition); otherwise the
    student's weights come from the checkpoint's student folder and the rest from the train state.
    """
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / TRAIN_STATE_FILE, weights_only=True)
        if is_deepspeed(model):
            model.load_checkpoint(folder, tag=DEEPSPEED_TAG)
        else:
            step_module = unwrap(model)
            step_module.student.load_state_dict(load_student(Path(folder) / "student").state_dict())
            step_module.loss.load_state_dict(state["loss"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
    log.info("train: resumed after epoch %d", len(state["history"]))
    return state


def report(metrics: dict, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
           history: list[dict], rank: int) -> None:
    """``ray.train.report`` on every rank (it is a barrier) with this epoch's checkpoint.

    Rank 0 writes the student and the train state; with DeepSpeed every rank also writes its
    part of the engine's checkpoint, and Ray Train merges the ranks' folders into one.
    """
    with tempfile.TemporaryDirectory() as tmp:
        if is_deepspeed(model):
            model.save_checkpoint(tmp, tag=DEEPSPEED_TAG)  # collective: every rank writes its partition
        if rank == 0:
            step_module = unwrap(model)
            step_module.student.save(Path(tmp) / "student")
            torch.save({"optimizer": optimizer.state_dict() if not is_deepspeed(model) else {},
                        "scaler": scaler.state_dict(), "loss": step_module.loss.state_dict(), "history": history},
                       Path(tmp) / TRAIN_STATE_FILE)
        has_files = rank == 0 or is_deepspeed(model)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if has_files else None)


def is_deepspeed(model: nn.Module) -> bool:
    """Whether ``model`` is a DeepSpeed engine (``train.strategy: deepspeed``)."""
    return type(model).__name__ == "DeepSpeedEngine"


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper or a DeepSpeed engine (``prepare_model`` wraps only when
    there are several workers)."""
    return model.module if isinstance(model, DistributedDataParallel) or is_deepspeed(model) else model


class Collate:
    """Featurise a Ray Data batch for the student and pad the teacher's per-token signals to it.

    Args:
        student: the student whose :meth:`Student.featurize` tokenizes the texts.
        layers: ``(hidden_layers, attention_layers)`` of the teacher that the loss reads.
        task: the task name a multi-task student is called with (``features["task"]``), or None.
    """

    def __init__(self, student: Student, layers: tuple[list[int], list[int]], task: str | None = None):
        self.student = student
        self.hidden_layers, self.attention_layers = layers
        self.task = task

    def __call__(self, batch: dict[str, np.ndarray]) -> Batch:
        """A Ray Data batch -> :class:`Batch` (see :meth:`rows`), with the task name among the features."""
        collated = self.rows(batch)
        if self.task is not None:
            collated.features["task"] = self.task
        return collated

    def rows(self, batch: dict[str, np.ndarray]) -> Batch:
        """Columns ``text`` [B] (``text_pair`` [B]), ``label`` [B] and the teacher's signals -> :class:`Batch`;
        rows of words (``tokens``) go to :meth:`tagged`."""
        if "tokens" in batch:
            return self.tagged(batch)
        pairs = list(batch["text_pair"]) if "text_pair" in batch else None
        features = self.student.featurize(list(batch["text"]), pairs)
        teacher: dict[str, torch.Tensor] = {}
        if "logits" in batch:
            teacher["logits"] = torch.from_numpy(np.stack(batch["logits"]).astype(np.float32))  # [B, C]
        if self.hidden_layers or self.attention_layers:
            mask = features["attention_mask"]  # [B, T]
            lengths = np.asarray(batch["length"], dtype=np.int64)
            if not np.array_equal(lengths, mask.sum(dim=1).numpy()):
                raise ArtifactError(Path("label"), "the student's tokens differ from the teacher's stored ones; "
                                                   "use the teacher's tokenizer and max_length for layer terms")
            teacher["mask"] = mask
            for layer in self.hidden_layers:
                teacher[f"hidden_{layer}"] = pad_matrices(batch[f"hidden_{layer}"], lengths, mask.shape[1])
            for layer in self.attention_layers:
                teacher[f"attention_{layer}"] = pad_attention(batch[f"attention_{layer}"], lengths, mask.shape[1])
        return Batch(features, teacher, torch.as_tensor(np.asarray(batch["label"], dtype=np.int64)))

    def tagged(self, batch: dict[str, np.ndarray]) -> Batch:
        """Columns ``tokens`` [B] (word lists), ``tags`` [B] (per-word lists, empty or None when
        unlabeled) and, on KD rows, ``logits``/``num_words``/``word_mask`` -> :class:`Batch` with
        labels [B, W] (-1 on padding and unlabeled words), teacher ``logits`` [B, W, C] and the
        distillation mask [B, W] (real words that the teacher saw)."""
        features = self.student.featurize([[str(word) for word in words] for words in batch["tokens"]])
        real = self.student.word_mask(features)  # [B, W]
        width = real.shape[1]
        labels = pad_words(batch["tags"], width, NO_LABEL)  # [B, W]
        teacher, mask = {}, None
        if "logits" in batch:
            teacher["logits"] = pad_matrices(batch["logits"], np.asarray(batch["num_words"]), width)  # [B, W, C]
            mask = pad_words(batch["word_mask"], width, False) & real  # [B, W]
        return Batch(features, teacher, labels, mask)


def pad_matrices(rows: np.ndarray, lengths: np.ndarray, width: int) -> torch.Tensor:
    """Flat per-row matrices (each ``T_i * D`` values: hidden states, or a tagger's word
    logits with T_i words and D classes) -> zero-padded float32 [B, width, D]."""
    dim = len(rows[0]) // int(lengths[0])
    out = torch.zeros(len(rows), width, dim)
    real = torch.arange(width) < torch.as_tensor(lengths).unsqueeze(1)  # [B, width], row-major like the rows
    out[real] = torch.from_numpy(np.concatenate(list(rows)).astype(np.float32).reshape(-1, dim))  # one copy
    return out


def pad_words(rows: np.ndarray, width: int, fill: int | bool) -> torch.Tensor:
    """Per-row word values (tags, or the word mask; None or empty for a row without them) ->
    [B, width] padded with ``fill``: int64 for an int fill, bool for a bool one."""
    out = torch.full((len(rows), width), fill)
    for i, row in enumerate(rows):
        if row is not None and len(row):
            out[i, :len(row)] = torch.from_numpy(np.array(row))  # a copy: Ray's arrays are read-only
    return out


def pad_attention(rows: np.ndarray, lengths: np.ndarray, width: int) -> torch.Tensor:
    """Flat per-row attention maps (each ``H * T_i * T_i`` values) -> zero-padded float32 [B, H, width, width]."""
    heads = len(rows[0]) // int(lengths[0]) ** 2
    out = torch.zeros(len(rows), heads, width, width)
    for i, (row, n) in enumerate(zip(rows, lengths)):
        out[i, :, :n, :n] = torch.from_numpy(np.asarray(row, dtype=np.float32).reshape(heads, n, n))
    return out


def layers_needed(loss: LossConfig) -> tuple[list[int], list[int]]:
    """Teacher ``(hidden_layers, attention_layers)`` that the loss's layer maps read, sorted."""
    layers = teacher_layers(loss)
    return layers["hidden"], layers["attention"]


def text_columns(path: Path) -> list[str]:
    """``["text"]``, plus ``"text_pair"`` when the table holds sentence pairs; ``["tokens"]`` for words."""
    return [c for c in ("text", "text_pair", "tokens") if c in pq.read_schema(path).names]


def label_column(path: Path) -> str:
    """``"tags"`` for a table of tagged words (token tasks), else ``"label"``."""
    return "tags" if "tags" in pq.read_schema(path).names else "label"


def training_columns(path: Path, loss: LossConfig) -> list[str]:
    """The columns of a training file that the loss reads (texts, labels, logits and layer or word signals)."""
    hidden, attention = layers_needed(loss)
    columns = text_columns(path) + [label_column(path)]
    if loss.kd is not None:
        columns.append("logits")
        if "tokens" in columns:
            columns += ["num_words", "word_mask"]
    if hidden or attention:
        columns += ["length", *(f"hidden_{l}" for l in hidden), *(f"attention_{l}" for l in attention)]
    return columns


def teacher_hidden_size(teacher_dir: Path) -> int:
    """Hidden width D_t of the teacher, from its config."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(teacher_dir).hidden_size


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
    if loss.kd is not None and "logits" not in names:
        raise ArtifactError(shard, "holds top-k logits only, and the KD loss needs every class's logit; "
                                   "set label.emit.logits_top_k: null and rerun the label stage")
    hidden, attention = layers_needed(loss)
    for kind, layers in (("hidden", hidden), ("attention", attention)):
        missing = [layer for layer in layers if f"{kind}_{layer}" not in names]
        if missing:
            raise ArtifactError(shard, f"has no {kind} layer(s) {missing}, which train.loss reads; add them to "
                                       f"label.emit.{kind}_layers and rerun the label stage")


def require_file(path: Path) -> Path:
    """``path`` if it is a file, else an :class:`ArtifactError` naming the stage to run."""
    if not path.is_file():
        raise ArtifactError(path, "missing; run the upstream stage that writes it first")
    return path


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
