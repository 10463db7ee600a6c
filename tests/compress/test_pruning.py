"""Iterative pruning reaches its targets, recovery lowers the KD loss by the shared optimisation
recipe (warm-up, decay, clipping), sensitivity and plots."""

from __future__ import annotations

import pytest
import torch

from compress.importance import batch_loss, head_importance, model_logits
from compress.pruning import (lowest_units, plot_head_importance, plot_sensitivity, prune_iteratively, recover,
                              sensitivity)
from compress.slicing import kept_heads
from core.optimisation import Recipe
from core.precision import GRADIENT_CLIP_NORM, Precision

HIDDEN, HEAD_SIZE = 32, 8  # conftest.tiny_bert
PER_HEAD = 4 * HIDDEN * HEAD_SIZE + 3 * HEAD_SIZE
PER_NEURON = 2 * HIDDEN + 1
FP32 = Precision("fp32", "cpu", "test")


def test_lowest_units_is_global_and_keeps_each_layer_alive():
    scores = [torch.tensor([0.1, 0.9, float("nan")]), torch.tensor([0.2, 0.05, 0.3])]
    assert lowest_units(scores, 2, keep_per_layer=1) == {0: [0], 1: [1]}
    assert lowest_units(scores, 3, keep_per_layer=1) == {0: [0], 1: [0, 1]}
    with pytest.raises(ValueError, match="only 3 may go"):
        lowest_units(scores, 4, keep_per_layer=1)


def test_iterative_pruning_reaches_the_fractions_and_drops_the_expected_parameters(bert, transfer_batches):
    model, records = prune_iteratively(bert, transfer_batches, head_fraction=0.5, ffn_fraction=0.5, iterations=3)
    assert [(r.step, r.heads_left, r.neurons_left) for r in records] == [
        (0, 12, 192), (1, 10, 160), (2, 8, 128), (3, 6, 96)]
    assert [records[0].parameters - r.parameters for r in records] == [
        (12 - r.heads_left) * PER_HEAD + (192 - r.neurons_left) * PER_NEURON for r in records]
    assert all(heads for heads in kept_heads(model))  # every layer keeps a head
    assert model.training is False


def test_recovery_lowers_the_kd_loss(bert, transfer_batches):
    prune_iteratively(bert, transfer_batches, head_fraction=0.5, ffn_fraction=0.5)
    soft = [transfer_batches[0]]

    def kd_loss() -> float:
        with torch.no_grad():
            return batch_loss(model_logits(bert, soft[0]), soft[0], temperature=2.0).item()

    before = kd_loss()
    steps = recover(bert, soft * 4, Recipe(lr=1e-3, weight_decay=0.01, warmup_ratio=0.1), FP32, epochs=5,
                    temperature=2.0)
    assert len(steps) == 20
    assert kd_loss() < 0.5 * before
    assert bert.training is False


def test_recovery_warms_the_rate_up_decays_it_and_clips_the_gradients(bert, transfer_batches):
    steps = recover(bert, transfer_batches * 2, Recipe(lr=1e-3, weight_decay=0.0, warmup_ratio=0.25), FP32,
                    epochs=2)
    peak = 1e-3  # 8 steps: 2 of warm-up from 0, then linear decay to 0 at step 8
    expected = [0.0, peak / 2, peak, peak * 5 / 6, peak * 4 / 6, peak * 3 / 6, peak * 2 / 6, peak / 6]
    assert [step.lr for step in steps] == pytest.approx(expected)
    # the random model's gradients are far above the bound, and the last step left them clipped to it
    assert min(step.grad_norm for step in steps) > 2 * GRADIENT_CLIP_NORM
    left = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in bert.parameters() if p.grad is not None]))
    assert left.item() == pytest.approx(GRADIENT_CLIP_NORM, rel=1e-5)


def test_sensitivity_curves_start_at_the_full_model_and_plots_are_written(bert, transfer_batches, inputs, tmp_path):
    def agreement(model) -> float:  # accuracy against the unpruned model's predictions
        with torch.no_grad():
            return (model(**inputs).logits.argmax(-1) == reference).float().mean().item()

    with torch.no_grad():
        reference = bert(**inputs).logits.argmax(-1)
    curves = sensitivity(bert, agreement, [0.0, 0.5, 1.0], transfer_batches)
    assert [f for f, _ in curves["heads"]] == [0.0, 0.5, 1.0] and curves["heads"][0][1] == 1.0
    assert curves["ffn"][0][1] == 1.0
    assert kept_heads(bert) == [[0, 1, 2, 3]] * 3  # masking left the model whole
    for path in (plot_sensitivity(curves, tmp_path / "sensitivity.png"),
                 plot_head_importance(head_importance(bert, transfer_batches), tmp_path / "heads.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
