"""Stage ``train``: distil the teacher's soft labels into a BiLSTM student with Ray Train.

Two students can be trained, by one train loop that only their data and loss tell apart:

    kd       the transfer set with the teacher's logits (``label/shard-*.parquet``), loss
             ``alpha * CE + (1 - alpha) * KD`` (Hinton et al. 2015; Tang et al. 2019)
    ce_only  the labeled train split alone (``data/train.parquet``), cross-entropy only;
             trained when ``train.ce_only_baseline`` is set, for comparison

Both start from the same initial weights. Each epoch every worker reports its metrics to Ray
Train and rank 0 attaches a checkpoint; Ray keeps the one with the best dev accuracy, which
is copied to ``train/<kind>/``. Ray's own files live under ``train/ray/<kind>/``.

The caller owns the Ray instance: this module never calls ``ray.init`` or ``ray.shutdown``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointConfig, DataConfig, ScalingConfig
from ray.train import RunConfig as RayRunConfig
from ray.train.torch import TorchTrainer
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from pipeline.artifacts import RunDir, read_json, sha256_file
from pipeline.config import LossConfig, RunConfig, TrainConfig
from pipeline.errors import ArtifactError, ConfigError
from pipeline.precision import Precision, select_precision
from students.bilstm import BiLSTMClassifier, build_student, load_student, save_student, teacher_word_embeddings
from students.losses import NO_LABEL, blended_kd_loss

log = logging.getLogger(__name__)

LOCAL_SHUFFLE_ROWS = 8192
"""Rows in each worker's shuffle buffer; re-seeded every epoch on top of one global shuffle."""


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    """Train the KD student (and the CE-only baseline) and publish the best checkpoint of each.

    Args:
        cfg: the run config; reads ``train``, ``data.labels`` and ``seed``.
        run_dir: the run directory; reads ``label/``, ``data/`` and ``finetune/teacher/``.

    Returns:
        ``{kind: {"best_dev_accuracy", "best_epoch", "rows", "history"}}`` for ``kd`` and, with
        ``train.ce_only_baseline``, ``ce_only``; ``history`` holds one dict per epoch with
        ``epoch, loss, ce_loss, kd_loss, dev_accuracy, wall_s``.

    Raises:
        ArtifactError: a soft-label shard, a split or the teacher is missing or fails its checksum.
        ConfigError: ``train.student`` does not fit the teacher (see :func:`build_student`), or
            there are fewer GPUs than ``train.num_workers`` on a GPU machine.
    """
    num_labels = len(cfg.data.labels)
    runs = {"kd": (soft_label_files(run_dir, num_labels), cfg.train.loss)}
    if cfg.train.ce_only_baseline:
        ce_only_loss = cfg.train.loss.model_copy(update={"alpha": 1.0})
        runs["ce_only"] = ([require_file(run_dir.split_file("train"))], ce_only_loss)
    dev_file = require_file(run_dir.split_file("dev"))
    if not run_dir.teacher_dir.is_dir():
        raise ArtifactError(run_dir.teacher_dir, "missing; run the finetune stage first")
    gpus = ray.cluster_resources().get("GPU", 0)
    if torch.cuda.is_available() and gpus < cfg.train.num_workers:
        raise ConfigError(f"train.num_workers is {cfg.train.num_workers} but the Ray cluster has {gpus:g} GPU(s) "
                          f"and each GPU worker needs one; lower train.num_workers")

    tokenizer = AutoTokenizer.from_pretrained(run_dir.teacher_dir)
    student_cfg = cfg.train.student
    embeddings = teacher_word_embeddings(run_dir.teacher_dir) if student_cfg.init_from_teacher_embeddings else None
    torch.manual_seed(cfg.seed)
    initial_state = ray.put(build_student(student_cfg, num_labels, tokenizer, embeddings).state_dict())
    dev = to_dataset(pq.read_table(dev_file, columns=["text", "label"]))
    return {kind: fit(kind, cfg, run_dir, files, loss, dev, initial_state) for kind, (files, loss) in runs.items()}


def fit(kind: str, cfg: RunConfig, run_dir: RunDir, files: list[Path], loss: LossConfig,
        dev: ray.data.Dataset, initial_state: ray.ObjectRef) -> dict:
    """Train one student with Ray Train and copy its best checkpoint to ``run_dir.student_dir(kind)``.

    Args:
        kind: "kd" or "ce_only"; names the Ray run and the student folder.
        cfg: the run config.
        run_dir: the run directory.
        files: Parquet files of the training rows (``text``, ``label`` and, for KD, ``logits``).
        loss: the loss to train with (``alpha = 1`` for the CE-only student).
        dev: the dev split, columns ``text, label``.
        initial_state: object ref of the initial student ``state_dict``.

    Returns:
        The summary of this student, as in :func:`run`.
    """
    storage = (run_dir.stage_dir("train") / "ray").resolve()
    # Ray Train resumes a run whose folder already exists; a redone stage starts afresh.
    shutil.rmtree(storage / kind, ignore_errors=True)
    table = pa.concat_tables(pq.read_table(f) for f in files)
    table = table.select([c for c in ("text", "label", "logits") if c in table.column_names])
    rows = len(table)
    train = to_dataset(table.take(np.random.default_rng(cfg.seed).permutation(rows)))  # one global shuffle
    use_gpu = torch.cuda.is_available()
    cpus = 1 if use_gpu else cpus_per_worker(cfg.train.num_workers)
    log.info("train %s: %d rows, %d worker(s) with %d CPU(s) each, gpu=%s",
             kind, rows, cfg.train.num_workers, cpus, use_gpu)

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"kind": kind, "train": cfg.train, "loss": loss, "seed": cfg.seed, "cpus": cpus,
                           "num_labels": len(cfg.data.labels), "teacher_dir": str(run_dir.teacher_dir.resolve()),
                           "initial_state": initial_state},
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus}),
        run_config=RayRunConfig(name=kind, storage_path=str(storage), checkpoint_config=CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute="dev_accuracy", checkpoint_score_order="max")),
        datasets={"train": train, "dev": dev},
        # Every worker sees the whole dev split, so dev accuracy does not depend on the worker count.
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    result = trainer.fit()
    checkpoint, best = max(result.best_checkpoints, key=lambda pair: pair[1]["dev_accuracy"])
    with checkpoint.as_directory() as folder:
        model, tokenizer = load_student(folder)
    save_student(model, cfg.train.student, len(cfg.data.labels), tokenizer, run_dir.student_dir(kind))
    log.info("train %s: best dev accuracy %.4f at epoch %d", kind, best["dev_accuracy"], best["epoch"])
    return {"best_dev_accuracy": best["dev_accuracy"], "best_epoch": best["epoch"], "rows": rows,
            "history": result.return_value}


def train_loop(config: dict) -> list[dict]:
    """Per-worker training function of :class:`TorchTrainer`; returns the epoch history.

    Args:
        config: the ``train_loop_config`` built by :func:`fit`.
    """
    train_cfg: TrainConfig = config["train"]
    loss_cfg: LossConfig = config["loss"]
    rank = ray.train.get_context().get_world_rank()
    precision = select_precision(train_cfg.precision, "train")
    if precision.device == "cpu":
        torch.set_num_threads(config["cpus"])
    torch.manual_seed(config["seed"] + rank)  # dropout masks differ per rank; weights come from initial_state

    tokenizer = AutoTokenizer.from_pretrained(config["teacher_dir"])
    model = BiLSTMClassifier(train_cfg.student, len(tokenizer), config["num_labels"], tokenizer.pad_token_id)
    model.load_state_dict(ray.get(config["initial_state"]))
    model = ray.train.torch.prepare_model(model)
    # fused Adam: one kernel over all parameters; on a CPU 8x faster than the default for the
    # 30k x 384 embedding table, which dominates the step.
    optimizer = torch.optim.Adam(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, fused=True)
    scaler = torch.amp.GradScaler(precision.device, enabled=precision.needs_grad_scaler)
    collate = Collate(tokenizer, train_cfg.student.max_length)
    train_shard = ray.train.get_dataset_shard("train")
    dev_shard = ray.train.get_dataset_shard("dev")

    history = []
    for epoch in range(1, train_cfg.epochs + 1):
        start = time.perf_counter()
        batches = train_shard.iter_torch_batches(batch_size=train_cfg.batch_size, collate_fn=collate,
                                                 local_shuffle_buffer_size=LOCAL_SHUFFLE_ROWS,
                                                 local_shuffle_seed=config["seed"] + 1000 * epoch + rank)
        losses = train_epoch(model, batches, optimizer, scaler, precision, loss_cfg)
        dev_batches = dev_shard.iter_torch_batches(batch_size=train_cfg.batch_size, collate_fn=collate)
        metrics = {"epoch": epoch, **losses, "dev_accuracy": accuracy(unwrap(model), dev_batches, precision),
                   "wall_s": round(time.perf_counter() - start, 2)}
        log.info("train %s epoch %d/%d: loss %.4f (ce %.4f, kd %.4f), dev accuracy %.4f, %.1f s",
                 config["kind"], epoch, train_cfg.epochs, metrics["loss"], metrics["ce_loss"],
                 metrics["kd_loss"], metrics["dev_accuracy"], metrics["wall_s"])
        history.append(metrics)
        report(metrics, model, train_cfg, config["num_labels"], tokenizer, rank)
    return history


def train_epoch(model: nn.Module, batches, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                precision: Precision, loss_cfg: LossConfig) -> dict[str, float]:
    """One pass over this worker's shard; returns the epoch's mean losses over all workers.

    Returns:
        ``{"loss", "ce_loss", "kd_loss"}``: the means of :class:`~students.losses.KDLoss`'s
        ``total`` and ``kd`` over all rows and of ``ce`` over the labeled rows, of every worker.
    """
    model.train()
    # Row-weighted sums: total, ce (labeled rows), labeled rows, kd, rows.
    sums = torch.zeros(5, dtype=torch.float64, device=ray.train.torch.get_device())
    for batch in batches:
        with precision.autocast_context():
            logits = model(batch["input_ids"], batch["attention_mask"])  # [B, C]
        loss = blended_kd_loss(logits, batch.get("teacher_logits"), batch["labels"], alpha=loss_cfg.alpha,
                               temperature=loss_cfg.temperature, kd=loss_cfg.kd)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss.total).backward()
        scaler.step(optimizer)
        scaler.update()
        labeled = (batch["labels"] != NO_LABEL).sum().float()
        rows = torch.full_like(labeled, len(logits))
        sums += torch.stack([loss.total.detach() * rows, loss.ce.detach() * labeled, labeled,
                             loss.kd.detach() * rows, rows])
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    total, ce, labeled, kd, rows = sums.tolist()
    return {"loss": total / max(rows, 1), "ce_loss": ce / max(labeled, 1), "kd_loss": kd / max(rows, 1)}


@torch.no_grad()
def accuracy(model: nn.Module, batches, precision: Precision) -> float:
    """Fraction of rows whose argmax logit is the label; the model is left in training mode."""
    model.eval()
    correct = total = 0
    for batch in batches:
        with precision.autocast_context():
            logits = model(batch["input_ids"], batch["attention_mask"])  # [B, C]
        correct += (logits.argmax(dim=-1) == batch["labels"]).sum().item()
        total += len(logits)
    model.train()
    return correct / max(total, 1)


def report(metrics: dict, model: nn.Module, train_cfg: TrainConfig, num_labels: int,
           tokenizer: PreTrainedTokenizerBase, rank: int) -> None:
    """``ray.train.report`` on every rank (it is a barrier); rank 0 attaches the student."""
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_student(unwrap(model), train_cfg.student, num_labels, tokenizer, Path(tmp) / "student")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper; ``prepare_model`` wraps only when there are several workers."""
    return model.module if isinstance(model, DistributedDataParallel) else model


class Collate:
    """Tokenise and pad a Ray Data batch (dynamic padding to the batch's longest row).

    Args:
        tokenizer: the teacher's tokenizer.
        max_length: tokens; longer rows are truncated.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """``{text [B] str, label [B] int64, logits [B] of [C] float32 (KD only)}`` ->
        ``{input_ids [B, T], attention_mask [B, T], labels [B]}`` int64, plus
        ``teacher_logits [B, C]`` float32 when the batch has logits."""
        encoded = self.tokenizer(list(batch["text"]), padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt", return_token_type_ids=False)
        out = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
               "labels": torch.tensor(batch["label"], dtype=torch.int64)}
        if "logits" in batch:
            out["teacher_logits"] = torch.from_numpy(np.stack(batch["logits"]).astype(np.float32))  # [B, C]
        return out


def to_dataset(table: pa.Table) -> ray.data.Dataset:
    """A Ray dataset over an in-memory table, without the progress bars that flood worker logs.

    The tables are read in the driver rather than with ``ray.data.read_parquet``: they are small
    next to the model, no read task then competes with the training workers for CPUs, and
    Ray Data 2.60 can fail to list several Parquet files at once when ``aiohttp`` is missing
    (a threaded import of ``fsspec.implementations.http`` raises ImportError).
    """
    dataset = ray.data.from_arrow(table)
    dataset.context.enable_progress_bars = False
    return dataset


def soft_label_files(run_dir: RunDir, num_labels: int) -> list[Path]:
    """The label stage's shards, checked against ``shards.json`` (existence, checksum, label count).

    Raises:
        ArtifactError: the index is missing, a shard is missing or altered, holds top-k logits
            only, or the shards hold logits for a different number of classes than ``data.labels``.
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
        if "logits" not in pq.read_schema(path).names:
            raise ArtifactError(path, "holds top-k logits only, and the KD loss needs every class's logit; "
                                      "set label.emit.logits_top_k: null and rerun the label stage")
        files.append(path)
    if not files:
        raise ArtifactError(run_dir.shard_index, "lists no shards; rerun the label stage")
    return files


def require_file(path: Path) -> Path:
    """``path`` if it is a file, else an :class:`ArtifactError` naming the stage to run."""
    if not path.is_file():
        raise ArtifactError(path, "missing; run the upstream stage that writes it first")
    return path


def cpus_per_worker(num_workers: int) -> int:
    """CPU threads per worker on a CPU-only cluster: the cluster's CPUs shared evenly, at most a node's,
    at least 1. Counted from the cluster's total, not what is free at this instant, so that every
    student of a run gets the same share (Ray waits until the previous trainer has released it)."""
    total_cpus = int(ray.cluster_resources().get("CPU", 1))
    largest_node = max(int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node["Alive"])
    return max(1, min(largest_node, total_cpus // num_workers))
