"""Importance of attention heads and FFN neurons from the gradient of a mask (Michel et al. 2019).

A mask multiplies each unit's output while the model runs (:func:`masked`):

    head h of layer l:   context[:, :, h, :] * m_{l,h}, the input of the output projection
                         viewed [B, T, H_l, d] (the merged per-head context; BERT's
                         attention.output.dense, MPNet's attention.attn.o)
    FFN neuron i:        GELU(intermediate.dense(x))[..., i] * n_{l,i}

With all masks at 1 the model is unchanged; a mask at 0 removes the unit exactly as slicing it
out does (:mod:`compress.slicing`). The importance of a unit is the accumulated magnitude of the
loss's gradient with respect to its mask,

    I = sum over batches | d L_batch / d m |

(Michel et al. 2019, eq. 3, "Are Sixteen Heads Really Better than One?", accumulated per batch
as their code does). For an FFN neuron, dL/dn_i = sum over tokens a_i * dL/da_i, the first-order
Taylor criterion |activation x gradient| of Molchanov et al. (2017). Each layer's scores are
divided by their L2 norm (Michel et al.'s code), so layers compare in a global ranking.

The loss is the distillation loss of :func:`batch_loss`: KL at temperature T against the
teacher's stored logits (``teacher_logits`` in the batch) and/or CE on ``labels``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from compress.slicing import kept_heads, output_projection, prunable_encoder
from students.losses import ce_loss, logit_kd_loss

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
"""The batch keys passed to the model; the other keys (teacher_logits, labels) feed the loss."""


def model_logits(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The model's logits for a batch (the :data:`MODEL_INPUTS` it has): [B, C] float."""
    return model(**{key: batch[key] for key in MODEL_INPUTS if key in batch}).logits


def batch_loss(logits: torch.Tensor, batch: Mapping[str, torch.Tensor], temperature: float,
               ce_weight: float = 0.0) -> torch.Tensor:
    """The distillation loss of one batch (Hinton et al. 2015), float32 scalar.

    ``L = KL_T(teacher_logits || logits) * T^2 + ce_weight * CE(logits, labels)``
    (:func:`students.losses.logit_kd_loss`, :func:`students.losses.ce_loss`; labels -1 carry
    no CE). A batch without ``teacher_logits`` uses CE alone (weight 1).

    Args:
        logits: float [B, C], the model's.
        batch: holds ``teacher_logits`` float [B, C] and/or ``labels`` int64 [B].
        temperature: T > 0 of the KL term.
        ce_weight: weight of the CE term when both are present.

    Raises:
        ValueError: the batch has neither ``teacher_logits`` nor ``labels``.
    """
    if "teacher_logits" not in batch:
        if "labels" not in batch:
            raise ValueError(f"a batch needs teacher_logits or labels for the loss; it has {sorted(batch)}")
        return ce_loss(logits, batch["labels"])
    loss = logit_kd_loss(logits, batch["teacher_logits"], temperature, "kl")
    if ce_weight and "labels" in batch:
        loss = loss + ce_weight * ce_loss(logits, batch["labels"])
    return loss


@contextmanager
def masked(model: nn.Module, head_mask: torch.Tensor | None = None,
           neuron_masks: Sequence[torch.Tensor] | None = None) -> Iterator[None]:
    """Multiply heads' contexts and FFN neurons' activations by masks while inside (forward hooks).

    Args:
        model: a BERT or MPNet model (see :func:`compress.slicing.prunable_encoder`), pruned or not.
        head_mask: float [L, H], H the config's original head count; column h scales original
            head h (the entries of heads already pruned are unused). May require grad.
        neuron_masks: per layer, float [I_l] over the layer's current FFN neurons. May require grad.

    Raises:
        ValueError: masks whose shapes do not match the model.
    """
    encoder = prunable_encoder(model)
    layers = encoder.encoder.layer
    heads = kept_heads(model)
    if head_mask is not None and tuple(head_mask.shape[:1]) != (len(layers),):
        raise ValueError(f"head_mask {tuple(head_mask.shape)} needs one row per layer ({len(layers)})")
    if neuron_masks is not None and [len(m) for m in neuron_masks] != [l.intermediate.dense.out_features
                                                                       for l in layers]:
        raise ValueError("neuron_masks need one [I_l] mask per layer, I_l the layer's FFN width")
    handles = []
    for layer_id, layer in enumerate(layers):
        if head_mask is not None and heads[layer_id]:
            handles.append(output_projection(layer, encoder.config).register_forward_pre_hook(
                _head_hook(head_mask[layer_id], heads[layer_id])))
        if neuron_masks is not None:
            handles.append(layer.intermediate.register_forward_hook(_neuron_hook(neuron_masks[layer_id])))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _head_hook(mask: torch.Tensor, heads: list[int]):
    """Forward pre-hook of the output projection scaling the context of the layer's p-th head
    by ``mask[heads[p]]`` (``mask`` [H] over original head ids)."""
    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        context = args[0]
        scale = mask[heads].to(context.dtype)  # [H_l], indexed per call: a new graph node each forward
        per_head = context.view(*context.shape[:-1], len(heads), -1)  # [B, T, H_l, d]
        return (per_head * scale[:, None]).view(context.shape), *args[1:]  # [B, T, H_l * d]
    return hook


def _neuron_hook(mask: torch.Tensor):
    """Forward hook of intermediate scaling its activations [B, T, I_l] by ``mask`` [I_l]."""
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output * mask.to(output.dtype)
    return hook


@dataclass(frozen=True)
class Importance:
    """Unit importances of one model.

    Attributes:
        heads: float32 [L, H] (H the original head count); NaN at heads already pruned; each
            row L2-normalised over its present heads.
        neurons: per layer float32 [I_l] over the current FFN neurons, L2-normalised.
    """

    heads: torch.Tensor
    neurons: list[torch.Tensor]


def _l2_normalised(scores: torch.Tensor) -> torch.Tensor:
    """``scores / ||scores||_2`` over the last dim, ignoring NaN (Michel et al.'s layer norm)."""
    norm = torch.nan_to_num(scores).pow(2).sum(dim=-1, keepdim=True).sqrt()
    return scores / (norm + 1e-20)


def mask_importance(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], temperature: float = 2.0,
                    ce_weight: float = 0.0) -> Importance:
    """Head and FFN-neuron importance in one pass over ``batches`` (see the module docstring).

    Runs in eval mode (no dropout) and restores the model's mode; parameters get no gradients.

    Args:
        model: a BERT or MPNet model (see :func:`compress.slicing.prunable_encoder`).
        batches: dicts of tensors: input_ids / attention_mask / token_type_ids int64 [B, T],
            teacher_logits float [B, C] and/or labels int64 [B] (:func:`batch_loss`).
        temperature: T of the KL term.
        ce_weight: weight of CE next to KL (:func:`batch_loss`).

    Returns:
        :class:`Importance`.

    Raises:
        ValueError: ``batches`` is empty, or a batch has neither teacher_logits nor labels.
    """
    config = prunable_encoder(model).config
    layers = prunable_encoder(model).encoder.layer
    parameter = next(model.parameters())
    head_mask = torch.ones(len(layers), config.num_attention_heads, device=parameter.device, requires_grad=True)
    neuron_masks = [torch.ones(l.intermediate.dense.out_features, device=parameter.device, requires_grad=True)
                    for l in layers]
    head_scores = torch.zeros(head_mask.shape, dtype=torch.float64)
    neuron_scores = [torch.zeros(len(m), dtype=torch.float64) for m in neuron_masks]
    was_training, seen = model.training, 0
    model.eval()
    try:
        with masked(model, head_mask, neuron_masks):
            for batch in batches:
                loss = batch_loss(model_logits(model, batch), batch, temperature, ce_weight)
                grads = torch.autograd.grad(loss, [head_mask, *neuron_masks], allow_unused=True)
                head_scores += _abs(grads[0], head_mask)
                for scores, grad, mask in zip(neuron_scores, grads[1:], neuron_masks):
                    scores += _abs(grad, mask)
                seen += 1
    finally:
        model.train(was_training)
    if not seen:
        raise ValueError("mask_importance needs at least one batch")
    present = torch.zeros(head_mask.shape, dtype=torch.bool)
    for layer_id, heads in enumerate(kept_heads(model)):
        present[layer_id, heads] = True
    heads = torch.where(present, head_scores, torch.nan)
    return Importance(heads=_l2_normalised(heads).float(),
                      neurons=[_l2_normalised(scores).float() for scores in neuron_scores])


def _abs(grad: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """|grad| on the CPU in float64, zeros for a mask the loss does not reach (a NoHeads layer)."""
    return torch.zeros(mask.shape, dtype=torch.float64) if grad is None else grad.detach().abs().double().cpu()


def head_importance(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], temperature: float = 2.0,
                    ce_weight: float = 0.0) -> torch.Tensor:
    """Head importance (Michel et al. 2019): float32 [L, H], NaN at pruned heads, rows L2-normalised.
    Arguments as :func:`mask_importance`."""
    return mask_importance(model, batches, temperature, ce_weight).heads


def ffn_neuron_importance(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
                          temperature: float = 2.0, ce_weight: float = 0.0) -> list[torch.Tensor]:
    """FFN neuron importance (Taylor |a x dL/da|, Molchanov et al. 2017): per layer float32 [I_l],
    L2-normalised. Arguments as :func:`mask_importance`."""
    return mask_importance(model, batches, temperature, ce_weight).neurons
