"""The per-worker training loop of the train stage (run by Ray Train's :class:`TorchTrainer`).

Both strategies optimise by the project's one recipe (:mod:`core.optimisation`, which the prune
stage's recovery shares): AdamW, a linear warm-up over ``train.warmup_ratio`` of the steps then
linear decay to 0, gradients clipped to a global L2 norm of
:data:`core.precision.GRADIENT_CLIP_NORM`. With ``strategy: ddp`` the loop steps with
:func:`core.optimisation.clip_and_step`; with ``strategy: deepspeed`` the engine does
(``gradient_clipping`` in its config and the same scheduler object passed to ``deepspeed.initialize``).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Callable
import resource
import time

import numpy as np
import ray.train
import ray.train.torch
from ray.experimental import tqdm_ray
import torch
from torch import nn
from core.optimisation import Optimisation, Recipe, build_optimisation, clip_and_step
from core.precision import Precision, deepspeed_config, select_precision
from core.schema import TaskKind
from pipeline.training.batching import LENGTH_GROUP_BATCHES, interleave, length_grouped, shuffled_batches
from pipeline.training.checkpoints import MID_EPOCH_SCORE, is_deepspeed, report, restore
from pipeline.training.collate import Batch, Collate
from pipeline.config.sections import TrainConfig
from students.terms import LossConfig
from pipeline.evaluation.scoring import dev_metric_name, predicted_classes, score, word_rows
from pipeline.observability.live_metrics import RowSink
from pipeline.training.shards import layers_needed
from students.base import Student, StudentOutput
from students.registry import load_student
from students.distillation import DistillationLoss, LossTerms

log = logging.getLogger(__name__)


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


def optimization(step_module: nn.Module, train_cfg: TrainConfig, precision: Precision,
                 total_steps: int) -> tuple[nn.Module, Optimisation]:
    """The model to call and the recipe's optimizer, LR schedule and grad scaler
    (:func:`core.optimisation.build_optimisation`), for ``train.strategy``.

    Args:
        step_module: the module to train (a :class:`DistillationStep`), on ``precision.device``.
        train_cfg: reads ``strategy``, ``lr``, ``weight_decay``, ``warmup_ratio``, ``apex``,
            ``batch_size``, ``zero_stage`` and ``deepspeed_config``.
        precision: the training precision.
        total_steps: optimizer steps of the whole training (the schedule's length).

    Returns:
        ``(model, optimisation)``: ``model`` is a DeepSpeed engine (then ``optimisation`` holds its
        wrapped optimizer) or ``step_module`` itself (for Ray Train's ``prepare_model`` to wrap in DDP).
    """
    settings = Recipe(train_cfg.lr, train_cfg.weight_decay, train_cfg.warmup_ratio, train_cfg.apex)
    optimisation = build_optimisation(step_module.parameters(), settings, precision, total_steps)
    if train_cfg.strategy != "deepspeed":
        return step_module, optimisation
    import deepspeed

    model, optimizer, _, scheduler = deepspeed.initialize(
        model=step_module, optimizer=optimisation.optimizer, lr_scheduler=optimisation.scheduler,
        dist_init_required=False,
        config=deepspeed_config(train_cfg.batch_size, train_cfg.zero_stage, precision, train_cfg.deepspeed_config))
    return model, Optimisation(optimizer, scheduler, optimisation.scaler)


def optimizer_step(model: nn.Module, batch: Batch, optimisation: Optimisation, precision: Precision,
                   progress: float) -> LossTerms:
    """Forward under the precision's autocast, then :func:`core.optimisation.clip_and_step` (backward, clip,
    optimizer and schedule step) on one batch.

    A DeepSpeed engine does the precision, loss scaling, clipping and schedule step itself.

    Returns:
        The batch's loss terms.
    """
    if is_deepspeed(model):
        terms = model(batch.features, batch.teacher, batch.labels, batch.mask, progress)
        model.backward(terms.total)
        model.step()
        return terms
    with precision.autocast_context():
        terms = model(batch.features, batch.teacher, batch.labels, batch.mask, progress)
    clip_and_step(terms.total, model.parameters(), optimisation)
    return terms


def train_loop(config: dict) -> dict:
    """Per-worker training function of :class:`TorchTrainer`.

    It starts from the latest checkpoint when there is one (see :mod:`pipeline.training.checkpoints`) at
    the optimizer step it was taken, so that a run restarted any number of times makes exactly
    ``epochs * steps_per_epoch`` optimizer steps; the steps after the latest checkpoint are made
    again. A resumed epoch's mean losses cover the steps since the resume. After a restart
    the epoch's batch order is drawn with the same seeds, but Ray Data may stream the files in
    another order, so in that epoch a row can be seen once more or once less.

    Args:
        config: the ``train_loop_config`` built by :func:`pipeline.stages.train.fit`.

    Returns:
        ``{"history": [per-epoch metrics], "optimizer_steps": int, "attempts": [{"started_at_step",
        "workers"}, ...]}`` (``workers``: see :func:`worker_processes`): one attempt per start of this function for the run (the first,
        and one per restart by Ray Train's ``FailureConfig`` or rerun after the driver died).
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
    tasks = config["tasks"]
    task_steps = [math.ceil(task["rows"] / world / train_cfg.batch_size) for task in tasks]
    steps_per_epoch = sum(task_steps)
    total_steps = max(1, train_cfg.epochs * steps_per_epoch)
    model, optimisation = optimization(step_module, train_cfg, precision, total_steps)
    if not is_deepspeed(model):
        model = ray.train.torch.prepare_model(model)  # to the device; DDP with several workers
    states = (optimisation.optimizer, optimisation.scheduler, optimisation.scaler)
    state = restore(model, *states) or {}
    history: list[dict] = state.get("history", [])
    step = state.get("step", len(history) * steps_per_epoch)  # optimizer steps done; older checkpoints: whole epochs
    attempts = state.get("attempts", [])
    if step < total_steps:  # a start with steps to make; a finished run's rerun only reloads its result
        attempts = [*attempts, {"started_at_step": step, "workers": worker_processes()}]
    kinds = [TaskKind(task["kind"]) for task in tasks]
    collates = [Collate(student, (hidden_layers, attention_layers), kind, task["name"])
                for task, kind in zip(tasks, kinds)]
    dev_collates = [Collate(student, ([], []), kind, task["name"])  # dev rows: texts and labels only
                    for task, kind in zip(tasks, kinds)]
    sink = RowSink(config["live"]) if rank == 0 and config.get("live") is not None else None
    train_shards = [ray.train.get_dataset_shard(f"train_{i}") for i in range(len(tasks))]
    dev_shards = [ray.train.get_dataset_shard(f"dev_{i}") for i in range(len(tasks))]

    def checkpoint_mid_epoch(done: int) -> None:
        """Report a checkpoint after ``done`` optimizer steps when ``train.checkpoint_every_steps`` says so."""
        every = train_cfg.checkpoint_every_steps
        if every and done % every == 0 and done % steps_per_epoch:
            report({"epoch": done / steps_per_epoch, "step": done, "dev_score": MID_EPOCH_SCORE}, model, *states,
                   {"history": history, "step": done, "attempts": attempts}, rank)

    dev_batches: list[list[Batch]] = []
    for epoch in range(step // steps_per_epoch + 1, train_cfg.epochs + 1):
        start = time.perf_counter()
        seed = config["seed"] + 1000 * epoch
        streams = [map(collate, shuffled_batches(shard, train_cfg.batch_size, seed + rank, kind))
                   for shard, collate, kind in zip(train_shards, collates, kinds)]
        # the task order is drawn alike on every rank; after a mid-epoch restart the batches the
        # checkpoint already trained on are drawn again and dropped, so the epoch goes on at its next step
        batches = itertools.islice(interleave(streams, task_steps, np.random.default_rng(seed)),
                                   step - (epoch - 1) * steps_per_epoch, None)
        losses, step = train_epoch(model, batches, optimisation, precision, step, total_steps,
                                   steps_per_epoch, show_progress=rank == 0, after_step=checkpoint_mid_epoch,
                                   sink=sink)
        # the dev split is read and collated at the first dev pass and kept: a Ray Data pass costs
        # seconds of start-up, most of an epoch on a small dev split
        dev_batches = dev_batches or [list(map(collate, length_grouped(
            shard.iter_batches(batch_size=train_cfg.batch_size * LENGTH_GROUP_BATCHES), train_cfg.batch_size,
            None, kind))) for shard, collate, kind in zip(dev_shards, dev_collates, kinds)]
        scores = [dev_score(student, batches, precision, ray.train.torch.get_device(), task["tag_names"],
                            task["metric"]) for batches, task in zip(dev_batches, tasks)]
        named = {f"dev_{task['name']}": value for task, value in zip(tasks, scores) if task["name"] is not None}
        metrics = {"epoch": epoch, **losses, "dev_score": float(np.mean(scores)), **named,
                   "lr": optimisation.last_lr(),
                   "wall_s": round(time.perf_counter() - start, 2), "peak_rss_mb": peak_rss_mb()}
        log.info("train %s epoch %d/%d: %s", config["kind"], epoch, train_cfg.epochs,
                 ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "epoch"))
        history.append(metrics)
        if sink is not None:  # the epoch's row, at its last step
            sink.add({"step": step - 1, "epoch": epoch, "dev_score": metrics["dev_score"],
                      **named, "epoch_wall_s": metrics["wall_s"], "peak_rss_mb": metrics["peak_rss_mb"]})
            sink.flush()
        report(metrics, model, *states, {"history": history, "step": step, "attempts": attempts}, rank)
    return {"history": history, "optimizer_steps": step, "attempts": attempts}


def worker_processes() -> list[dict[str, str | int]]:
    """``{"node_id", "pid"}`` of every training worker by rank: the Ray node it runs on and its process
    id (Ray names a worker's log files after it); a collective when there are several workers."""
    me = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
    if not torch.distributed.is_initialized():
        return [me]
    workers: list[dict | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(workers, me)
    return workers


def train_epoch(model: nn.Module, batches, optimisation: Optimisation, precision: Precision, first_step: int,
                total_steps: int, steps: int,
                show_progress: bool, after_step: Callable[[int], None],
                sink: RowSink | None = None) -> tuple[dict[str, float], int]:
    """One pass over this worker's shard (or the rest of it, from optimizer step ``first_step``).

    ``steps`` (this worker's steps per epoch) sizes the progress bar, shown when ``show_progress``
    (rank 0); ``after_step`` is called with the optimizer steps done after each step. A ``sink``
    (rank 0's, when tracking) receives one row per step: ``step`` (the global optimizer step,
    0-based), ``loss`` (this worker's weighted total), ``loss_<term>`` (each unweighted term),
    ``lr`` (the rate the step used) and ``examples_per_s`` (this worker's rows / step wall time,
    times the world size).

    Returns:
        ``({"loss": total, "loss_<term>": unweighted term, ...}, steps done)``: the row-weighted
        mean losses over all workers, for every term of the loss, and the optimizer steps done.
    """
    model.train()
    device = ray.train.torch.get_device()
    names: list[str] = []
    sums = None  # row-weighted sums of total and each term, then the row count
    # Ray's tqdm: the driver draws the worker's bar in place, instead of a line per update
    progress = tqdm_ray.tqdm(batches, desc="train", unit="step", total=steps) if show_progress else batches
    world = ray.train.get_context().get_world_size()
    done = first_step
    for step, batch in enumerate(progress, start=first_step):
        began, lr = time.perf_counter(), optimisation.last_lr()
        batch = batch.to(device)
        terms = optimizer_step(model, batch, optimisation, precision, min(1.0, step / total_steps))
        if sums is None:
            names = list(terms.terms)
            sums = torch.zeros(len(names) + 2, dtype=torch.float64, device=device)
        rows = float(len(batch.labels))
        sums += torch.tensor([terms.total.item() * rows, *(terms.terms[n].item() * rows for n in names), rows],
                             dtype=torch.float64, device=device)
        if sink is not None:
            sink.add({"step": step, "loss": terms.total.item(), **{f"loss_{n}": terms.terms[n].item() for n in names},
                      "lr": lr, "examples_per_s": rows * world / (time.perf_counter() - began)})
        done = step + 1
        after_step(done)
    if show_progress:
        progress.close()
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    *values, rows = sums.tolist()
    losses = {"loss": values[0] / max(rows, 1), **{f"loss_{n}": v / max(rows, 1) for n, v in zip(names, values[1:])}}
    return losses, done


@torch.no_grad()
def dev_score(student: Student, batches, precision: Precision, device: torch.device, tag_names: list[str] | None,
              metric: str) -> float:
    """The dev score of :func:`pipeline.evaluation.scoring.score` over
    :func:`pipeline.evaluation.scoring.predicted_classes`: ``metric`` (``data.metric``) of the
    argmax logit, or, with ``tag_names``, entity-level F1 of the argmax tag of every real word
    (``student.word_mask``, gold tags alike), the batches (:class:`Batch`) taken to ``device``.
    The best epoch is the one of the highest score, so ``metric`` picks it. The student is left
    in training mode."""
    student.eval()
    predicted, gold = [], []
    for batch in batches:
        batch = batch.to(device)
        with precision.autocast_context():
            logits = student(**batch.features).logits  # [B, C] or [B, W, C]
        real = student.word_mask(batch.features) if tag_names is not None else None  # [B, W]
        predicted += predicted_classes(logits, real)
        gold += batch.labels.tolist() if real is None else word_rows(batch.labels, real)
    student.train()
    return score(predicted, gold, tag_names, metric)[dev_metric_name(tag_names, metric)]


def peak_rss_mb() -> float:
    """The largest peak resident set size (MB) of any training worker process so far."""
    peak = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024], dtype=torch.float64,
                        device=ray.train.torch.get_device())  # ru_maxrss is in KiB on Linux
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
    return round(peak.item(), 1)
