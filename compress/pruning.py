"""Iterative structured pruning of a BERT or MPNet model, KD recovery training, and the sensitivity report.

    prune_iteratively:  score heads and FFN neurons (compress.importance), slice the least important
                        out (compress.slicing), re-score, repeat until the target fractions are gone
                        (TextPruner-style iterative pruning, Yang et al. 2022; scores of Michel et al. 2019)
    recover:            distil the pruned model on the teacher's stored logits (Hinton et al. 2015), or
                        fine-tune it on labels alone, by the project's one optimisation recipe
                        (core.optimisation: AdamW, linear warm-up then decay, clipping, precision policy)
    sensitivity:        accuracy vs fraction of heads / FFN neurons masked, one shot, no recovery
    plot_*:             the sensitivity curves and the head-importance heat map as PNG files
                        (matplotlib's object API, which renders PNGs with the Agg canvas; no pyplot state)

Batches are plain dicts of tensors, as the label shards give them: input_ids, attention_mask,
token_type_ids int64 [B, T], teacher_logits float [B, C] (soft labels) and/or labels int64 [B]
(-1 = no label). Functions that pass over them more than once need a re-iterable (a list).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn

from compress.importance import batch_loss, mask_importance, masked, model_logits
from compress.slicing import count_parameters, kept_heads, prune_ffn_neurons, prune_heads, prunable_encoder
from core.optimisation import Recipe, build_optimisation, clip_and_step
from core.precision import Precision

Batches = Iterable[Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class PruneStep:
    """The model after one pruning step (step 0 = before pruning)."""

    step: int
    heads_left: int
    neurons_left: int
    parameters: int


@dataclass(frozen=True)
class RecoveryStep:
    """One optimizer step of :func:`recover`."""

    loss: float  # the batch's loss before the step
    lr: float  # the learning rate the step used
    grad_norm: float  # global L2 norm of the gradients before clipping to GRADIENT_CLIP_NORM


def lowest_units(scores: Sequence[torch.Tensor], count: int, keep_per_layer: int) -> dict[int, list[int]]:
    """The ``count`` lowest-scoring units over all layers, leaving each layer ``keep_per_layer``.

    Args:
        scores: per layer float [n_l]; NaN marks a unit that is already gone.
        count: units to choose.
        keep_per_layer: units each layer keeps at least (its highest-scoring ones).

    Returns:
        layer -> ascending unit indices (into ``scores[layer]``), layers with a choice only.
        Ties go to the lower layer, then the lower index.

    Raises:
        ValueError: fewer than ``count`` units may be removed.
    """
    candidates = []
    for layer, layer_scores in enumerate(scores):
        present = [i for i in range(len(layer_scores)) if not torch.isnan(layer_scores[i])]
        ascending = sorted(present, key=lambda i: layer_scores[i].item())
        removable = ascending[:max(len(ascending) - keep_per_layer, 0)]
        candidates += [(layer_scores[i].item(), layer, i) for i in removable]
    if count > len(candidates):
        raise ValueError(f"cannot remove {count} units: only {len(candidates)} may go while each layer keeps "
                         f"{keep_per_layer}; lower the fraction (or drop whole layers with drop_layers)")
    chosen: dict[int, list[int]] = {}
    for _, layer, index in sorted(candidates)[:count]:
        chosen.setdefault(layer, []).append(index)
    return {layer: sorted(indices) for layer, indices in sorted(chosen.items())}


def _record(model: nn.Module, step: int) -> PruneStep:
    """A :class:`PruneStep` of the model as it is now."""
    layers = prunable_encoder(model).encoder.layer
    return PruneStep(step=step, heads_left=sum(len(heads) for heads in kept_heads(model)),
                     neurons_left=sum(layer.intermediate.dense.out_features for layer in layers),
                     parameters=count_parameters(model))


def prune_iteratively(model: nn.Module, batches: Batches, head_fraction: float, ffn_fraction: float,
                      iterations: int = 1, temperature: float = 2.0) -> tuple[nn.Module, list[PruneStep]]:
    """Remove ``head_fraction`` of the heads and ``ffn_fraction`` of the FFN neurons in ``iterations`` steps.

    Step k (1..iterations) re-scores the remaining units on ``batches`` (:func:`mask_importance`)
    and slices out the least important ones, globally over the layers, until
    ``round(fraction * total * k / iterations)`` are gone. Each layer keeps at least one head and
    one neuron (to remove a whole layer use :func:`compress.slicing.drop_layers`).

    Args:
        model: a BERT or MPNet model (see :func:`compress.slicing.prunable_encoder`), pruned in place.
        batches: re-iterable transfer-set batches (module docstring); the loss of
            :func:`compress.importance.batch_loss` at ``temperature``.
        head_fraction: fraction of the model's current heads to remove, in [0, 1).
        ffn_fraction: fraction of its current FFN neurons to remove, in [0, 1).
        iterations: pruning steps, >= 1.
        temperature: T of the KL loss that scores the units.

    Returns:
        (the same model, pruned, in eval mode; one :class:`PruneStep` per step, step 0 first).

    Raises:
        ValueError: a fraction outside [0, 1), iterations < 1, or more heads than one per layer allows.
    """
    if not (0 <= head_fraction < 1 and 0 <= ffn_fraction < 1) or iterations < 1:
        raise ValueError(f"prune_iteratively needs fractions in [0, 1) and iterations >= 1; got heads "
                         f"{head_fraction}, ffn {ffn_fraction}, iterations {iterations}")
    first = _record(model, 0)
    records = [first]
    for step in range(1, iterations + 1):
        now = records[-1]
        heads_to_go = round(head_fraction * first.heads_left * step / iterations) - (first.heads_left - now.heads_left)
        neurons_to_go = (round(ffn_fraction * first.neurons_left * step / iterations)
                         - (first.neurons_left - now.neurons_left))
        scores = mask_importance(model, batches, temperature)
        prune_heads(model, lowest_units(scores.heads, heads_to_go, keep_per_layer=1))
        prune_ffn_neurons(model, lowest_units(scores.neurons, neurons_to_go, keep_per_layer=1))
        records.append(_record(model, step))
    return model.eval(), records


def recover(model: nn.Module, batches: Batches, recipe: Recipe, precision: Precision, epochs: int = 1,
            temperature: float = 2.0, ce_weight: float = 0.0) -> list[RecoveryStep]:
    """Recovery training of a pruned model by distillation (Hinton et al. 2015), or CE fine-tuning
    on batches without teacher logits (the layer-dropping baseline, Sajjad et al. 2020).

    It follows the recipe of :mod:`core.optimisation`, as the train stage does: AdamW, the rate
    warmed up linearly from 0 over ``recipe.warmup_ratio`` of the steps then decayed linearly to
    0, gradients clipped to a global L2 norm of 1.0 (:data:`core.precision.GRADIENT_CLIP_NORM`),
    the forward under ``precision``'s autocast; one step per batch. Loss:
    :func:`compress.importance.batch_loss` (T^2-scaled KL on teacher_logits + ``ce_weight`` x CE
    on the labeled rows; CE alone on a batch without teacher_logits). Dropout is on while
    training; the model is trained on ``precision.device`` and ends in eval mode on the device
    it came on.

    Args:
        model: the model to train in place.
        batches: re-iterable batches (module docstring), each passed once per epoch. A sized
            re-iterable (with ``len()``, e.g. a view that streams them from disk) is iterated as
            it is; anything else is listed first.
        recipe: peak lr, weight decay, warm-up share.
        precision: the resolved training precision (:func:`core.precision.select_precision`).
        epochs: passes over ``batches``.
        temperature: T of the KL term.
        ce_weight: weight of the CE term beside the KL term.

    Returns:
        One :class:`RecoveryStep` per optimizer step, in order.

    Raises:
        ValueError: ``batches`` is empty.
    """
    if not isinstance(batches, Sized):
        batches = list(batches)
    if not len(batches):
        raise ValueError("recover needs at least one batch")
    home = next(model.parameters()).device
    model.to(precision.device).train()
    optimisation = build_optimisation(model.parameters(), recipe, precision, epochs * len(batches))
    steps = []
    for _ in range(epochs):
        for batch in batches:
            batch = {key: value.to(precision.device) for key, value in batch.items()}
            lr = optimisation.last_lr()
            with precision.autocast_context():
                loss = batch_loss(model_logits(model, batch), batch, temperature, ce_weight)
            norm = clip_and_step(loss, model.parameters(), optimisation)
            steps.append(RecoveryStep(loss.item(), lr, norm.item()))
    model.to(home).eval()
    return steps


def sensitivity(model: nn.Module, eval_fn: Callable[[nn.Module], float], fractions: Sequence[float],
                batches: Batches, temperature: float = 2.0) -> dict[str, list[tuple[float, float]]]:
    """Accuracy as heads, then FFN neurons, are removed one shot by importance, without recovery.

    The units are scored once on ``batches`` (:func:`mask_importance`); for each fraction f the
    ``round(f * total)`` least important heads (or neurons, the other kind untouched) are masked
    to 0 (:func:`compress.importance.masked`, exactly what slicing gives) and ``eval_fn(model)``
    measures the model. Masking allows every unit of a layer to go.

    Args:
        model: a BERT or MPNet model; left unchanged.
        eval_fn: model -> accuracy (or any score) on a dev set.
        fractions: fractions of units to remove, each in [0, 1].
        batches: re-iterable batches that score the units (module docstring).
        temperature: T of the scoring loss.

    Returns:
        ``{"heads": [(f, score), ...], "ffn": [(f, score), ...]}`` in the order of ``fractions``.
    """
    scores = mask_importance(model, batches, temperature)
    ones_heads = torch.ones_like(scores.heads)
    ones_neurons = [torch.ones_like(layer) for layer in scores.neurons]
    total_heads = int((~scores.heads.isnan()).sum())
    total_neurons = sum(len(layer) for layer in scores.neurons)
    curves: dict[str, list[tuple[float, float]]] = {"heads": [], "ffn": []}
    for fraction in fractions:
        head_mask = ones_heads.clone()
        for layer, heads in lowest_units(scores.heads, round(fraction * total_heads), 0).items():
            head_mask[layer, heads] = 0
        with masked(model, head_mask=head_mask):
            curves["heads"].append((fraction, eval_fn(model)))
        neuron_masks = [mask.clone() for mask in ones_neurons]
        for layer, neurons in lowest_units(scores.neurons, round(fraction * total_neurons), 0).items():
            neuron_masks[layer][neurons] = 0
        with masked(model, neuron_masks=neuron_masks):
            curves["ffn"].append((fraction, eval_fn(model)))
    return curves


def plot_sensitivity(curves: Mapping[str, Sequence[tuple[float, float]]], path: str | Path,
                     metric: str = "accuracy") -> Path:
    """Draw :func:`sensitivity`'s curves (one line per unit kind) to a PNG at ``path``; returns it."""
    figure = Figure(figsize=(5, 3.5))
    axes = figure.subplots()
    for kind, points in curves.items():
        axes.plot([f for f, _ in points], [score for _, score in points], marker="o",
                  label={"heads": "attention heads", "ffn": "FFN neurons"}.get(kind, kind))
    axes.set(xlabel="fraction removed (one shot, no recovery)", ylabel=metric, title="Pruning sensitivity")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return Path(path)


def plot_head_importance(importance: torch.Tensor, path: str | Path) -> Path:
    """Draw the head-importance heat map (float [L, H], NaN = pruned, left blank) to a PNG; returns it."""
    figure = Figure(figsize=(max(4.5, 1.5 + 0.45 * importance.shape[1]), max(3.0, 1 + 0.45 * importance.shape[0])))
    axes = figure.subplots()
    image = axes.imshow(importance.float().numpy(), cmap="viridis", aspect="auto")
    axes.set(xlabel="head", ylabel="layer", title="Head importance (blank: pruned)",
             xticks=range(importance.shape[1]), yticks=range(importance.shape[0]))
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return Path(path)
