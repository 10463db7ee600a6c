"""The one optimisation recipe of every training loop of the project: the train stage's loop
(:mod:`pipeline.training.loop`), and the prune stage's KD recovery and layer-dropping baseline
(:func:`compress.pruning.recover`).

    optimizer   AdamW with decoupled weight decay (Loshchilov & Hutter 2019), fused
                (:func:`core.precision.make_optimizer`)
    schedule    linear warm-up from 0 to the peak rate over ``warmup_ratio`` of the steps, then linear
                decay to 0 at the last step (transformers' ``get_linear_schedule_with_warmup``, the
                BERT fine-tuning schedule of Devlin et al. 2019), stepped once per optimizer step
    clipping    gradients clipped to a global L2 norm of :data:`core.precision.GRADIENT_CLIP_NORM`
                before every step
    precision   the caller runs the forward under ``precision.autocast_context()``
                (:func:`core.precision.select_precision`); fp16 scales the loss with a
                ``torch.amp.GradScaler`` and clips the unscaled gradients

A DeepSpeed engine takes the same optimizer and scheduler objects and clips at the same norm
(:func:`core.precision.deepspeed_config`), so it follows the recipe without :func:`clip_and_step`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from transformers import get_linear_schedule_with_warmup

from core.precision import GRADIENT_CLIP_NORM, Precision, make_optimizer


@dataclass(frozen=True)
class Recipe:
    """The settings of the recipe that a config chooses.

    Attributes:
        lr: peak learning rate, reached after the warm-up.
        weight_decay: AdamW's decoupled weight decay.
        warmup_ratio: share of the steps, in [0, 1), that warm the rate up (``round(ratio * steps)`` steps).
        apex: NVIDIA apex's FusedAdam on CUDA when installed (``train.apex``).
    """

    lr: float
    weight_decay: float
    warmup_ratio: float
    apex: bool = False


@dataclass
class Optimisation:
    """The optimizer, its schedule and loss scaler, as :func:`build_optimisation` makes them.

    Attributes:
        optimizer: AdamW (or DeepSpeed's wrapper of it).
        scheduler: a ``LambdaLR`` of linear warm-up and decay.
        scaler: a ``torch.amp.GradScaler``, enabled for fp16 only.
    """

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler

    def last_lr(self) -> float:
        """The learning rate that the next step uses."""
        return self.scheduler.get_last_lr()[0]


def build_optimisation(parameters: Iterable[torch.nn.Parameter], recipe: Recipe, precision: Precision,
          total_steps: int) -> Optimisation:
    """The recipe's optimizer, schedule and scaler for ``total_steps`` optimizer steps.

    Args:
        parameters: the parameters to train, already on ``precision.device``.
        recipe: lr, weight decay, warm-up share, apex.
        precision: the resolved training precision (its device picks the optimizer; fp16 turns the
            scaler on).
        total_steps: optimizer steps of the whole training, >= 1: the schedule reaches 0 there.

    Returns:
        The :class:`Optimisation`; its rate is 0 at step 0 when there is a warm-up.
    """
    optimizer = make_optimizer(parameters, recipe.lr, recipe.weight_decay, precision, recipe.apex)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(recipe.warmup_ratio * total_steps), total_steps)
    return Optimisation(optimizer, scheduler, torch.amp.GradScaler(precision.device,
                                                                    enabled=precision.needs_grad_scaler))


def clip_and_step(loss: torch.Tensor, parameters: Iterable[torch.nn.Parameter],
                  optimisation: Optimisation) -> torch.Tensor:
    """Backward of ``loss``, clip, optimizer step and schedule step: one step of the recipe.

    The gradients are cleared first, so ``loss`` is the only one they hold; with fp16 they are
    unscaled before clipping, so the clip bounds the true gradients.

    Args:
        loss: float scalar, computed under the precision's autocast.
        parameters: the trained parameters (those of :func:`build_optimisation`).
        optimisation: what :func:`build_optimisation` made.

    Returns:
        The global L2 norm of the gradients before clipping, float32 scalar tensor (inf or NaN
        when fp16 overflowed: the scaler then skips the step).
    """
    optimisation.optimizer.zero_grad(set_to_none=True)
    optimisation.scaler.scale(loss).backward()
    optimisation.scaler.unscale_(optimisation.optimizer)
    norm = torch.nn.utils.clip_grad_norm_(parameters, GRADIENT_CLIP_NORM)
    optimisation.scaler.step(optimisation.optimizer)
    optimisation.scaler.update()
    optimisation.scheduler.step()
    return norm
