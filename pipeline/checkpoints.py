"""Ray Train checkpoints of the train stage: each epoch's report, and the restore on resume.

A checkpoint holds the student (``student/``) and the train state (:data:`TRAIN_STATE_FILE`:
optimizer, grad scaler, LR schedule, loss-module state and the epoch history); with DeepSpeed the
engine's own checkpoint (every rank's ZeRO partition, under :data:`DEEPSPEED_TAG`) replaces the
optimizer and schedule state. Checkpoints go through ``ray.train.report`` so that Ray Train
restores them (``ray.train.get_checkpoint``) when a run resumes.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

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


def restore(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
            scaler: torch.amp.GradScaler) -> dict[str, Any] | None:
    """Load the latest checkpoint into the model, optimizer and schedule when Ray Train resumes;
    returns its train state (None on a fresh start).

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
    log.info("train: resumed after epoch %d", len(state["history"]))
    return state


def report(metrics: dict, model: nn.Module, optimizer: torch.optim.Optimizer,
           scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
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
            own_state = not is_deepspeed(model)  # else the engine's checkpoint holds them
            torch.save({"optimizer": optimizer.state_dict() if own_state else {},
                        "scheduler": scheduler.state_dict() if own_state else {},
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
