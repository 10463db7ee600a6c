"""Ray Train checkpoints of the train stage: each epoch's report, the mid-epoch ones of
``train.checkpoint_every_steps``, the restore on resume, and the storage they live in.

A checkpoint holds the student (``student/``) and the train state (:data:`TRAIN_STATE_FILE`:
optimizer, grad scaler, LR schedule, loss-module state, the epoch history, the optimizer steps
done and the attempts that trained, see :func:`report`); with DeepSpeed the
engine's own checkpoint (every rank's ZeRO partition, under :data:`DEEPSPEED_TAG`) replaces the
optimizer and schedule state. Checkpoints go through ``ray.train.report`` so that Ray Train
restores them (``ray.train.get_checkpoint``) when a run resumes.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray.train
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from students.registry import load_student

log = logging.getLogger(__name__)

DEEPSPEED_TAG = "engine"
"""Tag (sub-folder) of a DeepSpeed engine checkpoint inside a Ray checkpoint."""

TRAIN_STATE_FILE = "train_state.pt"
"""Optimizer, grad-scaler, schedule and loss-module state, epoch and history, next to the student."""

FINISHED_SUFFIX = ".finished.json"
"""Suffix of the summary a finished Ray run leaves next to its folder (:func:`record_finished`)."""

MID_EPOCH_SCORE = -2.0
"""``dev_score`` reported with a mid-epoch checkpoint (no dev pass ran): below every real score
(the Matthews correlation, the lowest ``data.metric``, reaches -1), so
Ray keeps it only while it is the latest and never picks it as the best."""


def prepare_storage(storage: str, name: str) -> dict[str, Any] | None:
    """Remove the Ray runs of other stage fingerprints next to ``storage`` (never resumed) and
    say how run ``name`` starts; ``storage`` is a local folder or a URI of any pyarrow filesystem.

    Returns:
        The summary :func:`record_finished` kept when run ``name`` already finished under this
        fingerprint (the caller reuses its student instead of starting Ray Train again, which
        costs a controller and a worker process, about 25 s on a 2-core CPU); else None, and a
        run with checkpoints resumes from its latest one.
    """
    fs, base = pyarrow.fs.FileSystem.from_uri(storage)
    parent = base.rstrip("/").rsplit("/", 1)[0]
    for info in fs.get_file_info(pyarrow.fs.FileSelector(parent, allow_not_found=True)):
        if info.type == pyarrow.fs.FileType.Directory and info.path.rstrip("/") != base.rstrip("/"):
            fs.delete_dir(info.path)
    finished = f"{base}/{name}{FINISHED_SUFFIX}"
    if fs.get_file_info(finished).type == pyarrow.fs.FileType.File:
        with fs.open_input_stream(finished) as stream:
            return json.loads(stream.read().decode("utf-8"))
    if fs.get_file_info(f"{base}/{name}").type != pyarrow.fs.FileType.NotFound:
        log.info("train %s: resuming from the latest checkpoint in %s/%s", name, storage, name)
    return None


def record_finished(storage: str, name: str, summary: dict[str, Any]) -> None:
    """Keep run ``name``'s summary (JSON) next to its Ray run folder in ``storage``, once its best
    student is published, so that :func:`prepare_storage` finds it under the same fingerprint."""
    fs, base = pyarrow.fs.FileSystem.from_uri(storage)
    partial = f"{base}/{name}{FINISHED_SUFFIX}.partial"
    with fs.open_output_stream(partial) as stream:
        stream.write(json.dumps(summary).encode("utf-8"))
    fs.move(partial, f"{base}/{name}{FINISHED_SUFFIX}")


def restore(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
            scaler: torch.amp.GradScaler) -> dict[str, Any] | None:
    """Load the latest checkpoint into the model, optimizer and schedule when Ray Train resumes
    (a rerun after the driver died, or a worker group restarted by ``FailureConfig``); returns
    its train state (None on a fresh start), see :func:`report`.

    A DeepSpeed engine loads its own checkpoint (each rank its ZeRO partition, with the
    optimizer and the LR schedule it steps); otherwise the student's weights come from the
    checkpoint's student folder and the rest from the train state.
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
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
    log.info("train: resumed after epoch %d, optimizer step %s", len(state["history"]), state.get("step"))
    return state


def report(metrics: dict, model: nn.Module, optimizer: torch.optim.Optimizer,
           scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
           progress: dict[str, Any], rank: int) -> None:
    """``ray.train.report`` on every rank (it is a barrier) with a checkpoint.

    Rank 0 writes the student and the train state; with DeepSpeed every rank also writes its
    part of the engine's checkpoint, and Ray Train merges the ranks' folders into one.

    Args:
        metrics: an epoch's metrics, or a mid-epoch checkpoint's (``dev_score`` :data:`MID_EPOCH_SCORE`).
        progress: stored in the train state next to the optimizer's: ``history`` (finished
            epochs' metrics), ``step`` (optimizer steps done) and ``attempts`` (one dict per start
            of the training function: ``started_at_step``, ``workers``).
    """
    with tempfile.TemporaryDirectory() as tmp:
        if is_deepspeed(model):
            model.save_checkpoint(tmp, tag=DEEPSPEED_TAG)  # collective: every rank writes its partition
        if rank == 0:
            step_module = unwrap(model)
            step_module.student.save(Path(tmp) / "student")
            own_state = not is_deepspeed(model)  # else the engine's checkpoint holds them
            torch.save({"optimizer": optimizer.state_dict() if own_state else {},
                        "scheduler": scheduler.state_dict() if own_state else {},
                        "scaler": scaler.state_dict(), "loss": step_module.loss.state_dict(), **progress},
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
