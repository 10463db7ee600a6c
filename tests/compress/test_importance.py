"""Mask-gradient importance equals a finite-difference derivative computed by scaling weights."""

from __future__ import annotations

import pytest
import torch

from compress.importance import batch_loss, ffn_neuron_importance, head_importance, mask_importance, model_logits
from compress.slicing import prune_heads

TEMPERATURE = 2.0
HEADS, HEAD_SIZE, LAYERS = 4, 8, 3  # conftest.tiny_bert


@torch.no_grad()
def total_loss(model, batches) -> list[float]:
    return [batch_loss(model_logits(model, b), b, TEMPERATURE).item() for b in batches]


def finite_difference(model, batches, scaled: list[torch.nn.Parameter], positions, eps: float = 1e-2) -> torch.Tensor:
    """Per batch, dL/ds at s = 1 where s scales ``positions`` of the ``scaled`` tensors: [batches]."""
    originals = [p.detach().clone() for p in scaled]
    losses = []
    for factor in (1 + eps, 1 - eps):
        with torch.no_grad():
            for p, original, index in zip(scaled, originals, positions):
                p[index] = original[index] * factor
        losses.append(torch.tensor(total_loss(model, batches), dtype=torch.float64))
        with torch.no_grad():
            for p, original in zip(scaled, originals):
                p.copy_(original)
    return (losses[0] - losses[1]) / (2 * eps)


def expected_scores(per_unit_grads: torch.Tensor) -> torch.Tensor:
    """sum over batches |dL/dm|, L2-normalised over the units: [units, batches] -> [units]."""
    scores = per_unit_grads.abs().sum(dim=1)
    return scores / scores.norm()


def test_head_importance_matches_finite_differences_of_the_value_rows(bert, transfer_batches):
    # A head's context is linear in its value rows, so scaling them by s scales its context by s:
    # dL/ds = dL/d(mask), computed here without any hook.
    model, batches = bert.double(), transfer_batches
    importance = head_importance(model, batches, TEMPERATURE)
    assert importance.shape == (LAYERS, HEADS) and importance.dtype == torch.float32
    for layer_id, layer in enumerate(model.bert.encoder.layer):
        value = layer.attention.self.value
        grads = torch.stack([finite_difference(model, batches, [value.weight, value.bias],
                                               [slice(h * HEAD_SIZE, (h + 1) * HEAD_SIZE)] * 2)
                             for h in range(HEADS)])  # [H, batches]
        torch.testing.assert_close(importance[layer_id], expected_scores(grads).float(), rtol=2e-3, atol=2e-4)


def test_neuron_importance_matches_finite_differences_of_the_output_columns(bert, transfer_batches):
    # Scaling column i of output.dense by s scales neuron i's contribution by s.
    model, batches = bert.double(), transfer_batches
    importance = ffn_neuron_importance(model, batches, TEMPERATURE)
    assert [tuple(scores.shape) for scores in importance] == [(64,)] * LAYERS
    layer = model.bert.encoder.layer[1]
    grads = torch.stack([finite_difference(model, batches, [layer.output.dense.weight], [(slice(None), i)])
                         for i in range(64)])
    torch.testing.assert_close(importance[1], expected_scores(grads).float(), rtol=2e-3, atol=2e-4)


def test_pruned_heads_are_nan_and_rows_stay_normalised(bert, transfer_batches):
    model, batches = bert, transfer_batches
    prune_heads(model, {0: [1], 2: [0, 1, 2, 3]})
    scores = mask_importance(model, batches)
    assert torch.isnan(scores.heads[0, 1]) and torch.isnan(scores.heads[2]).all()
    assert torch.nan_to_num(scores.heads[:2]).norm(dim=1).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert model.training is False and all(p.grad is None for p in model.parameters())


def test_batches_without_targets_are_refused(bert, inputs):
    with pytest.raises(ValueError, match="teacher_logits or labels"):
        head_importance(bert, [inputs])
