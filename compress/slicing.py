"""Structured pruning of BERT models by slicing weights: heads, FFN neurons and whole layers.

transformers 5 removed ``prune_heads`` and head masks, so the slicing is done here. The removed
rows and columns leave the weight tensors, so the parameter count and the latency really drop:

    head h of layer l:    rows h*d..(h+1)*d-1 of query/key/value (weight and bias), the same
                          columns of attention.output.dense            (d = hidden / heads)
    FFN neuron i:         row i of intermediate.dense (weight, bias), column i of output.dense
    layer l:              the whole BertLayer leaves encoder.layer (Sajjad et al. 2020)

Every function takes a Hugging Face BERT model (``BertForSequenceClassification``,
``BertForTokenClassification`` or ``BertModel``; for the transformer student pass
``student.model``) and edits it in place.

The saved pruned model. Layers keep different head counts and FFN sizes, which a plain
``BertConfig`` cannot describe, so the config carries one more field, ``pruning``::

    "pruning": {"layers": [0, 2, 5],                  # original ids of the kept layers
                "heads": [[0, 3, 7], [1, 2], ...],    # per kept layer, its kept original head ids
                "intermediate_sizes": [768, 512, ...]}  # per kept layer, its FFN width

(plus ``vocab`` and ``vocab_unk_id`` once :func:`compress.vocabulary.prune_vocabulary` ran).

``config.num_hidden_layers`` is the kept layer count, while ``num_attention_heads`` and
``intermediate_size`` stay the original sizes. ``model.save_pretrained(folder)`` writes it as
usual; :func:`load_pruned` builds the original-size model from the config, slices every layer
to the recorded sizes and then loads the saved weights (strictly), so the reload gives the same
logits. Plain ``from_pretrained`` refuses such a folder with a size mismatch, never silently.

A layer whose every head is pruned keeps no attention: its self-attention becomes
:class:`NoHeads` (context [B, T, 0]), so the block adds only the output dense's bias before its
residual LayerNorm, which is exactly what masking all its heads gives. Such a layer records no
attention map (``output_attentions`` skips it).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file
from torch import nn
from transformers import BertModel, PreTrainedModel

from compress.vocabulary import prune_vocabulary
from core.errors import ArtifactError
from students.transformer import selected_teacher_layers

_PER_LAYER_KEYS = ("layers", "heads", "intermediate_sizes")


class NoHeads(nn.Module):
    """The self-attention of a layer with every head pruned: an empty context [B, T, 0]."""

    num_attention_heads = 0
    all_head_size = 0

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
        """hidden_states [B, T, D] -> (context [B, T, 0] of the same dtype, no attention map)."""
        return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None


def bert_encoder(model: nn.Module) -> BertModel:
    """The ``BertModel`` inside ``model`` (a ``BertFor*`` head model, or the BertModel itself).

    Raises:
        TypeError: ``model`` is neither (e.g. a Student: pass ``student.model``).
    """
    encoder = model if isinstance(model, BertModel) else getattr(model, "bert", None)
    if not isinstance(encoder, BertModel):
        raise TypeError(f"{type(model).__name__} is not a BERT model; pass a BertFor* model "
                        "(for a transformer student, student.model)")
    return encoder


def pruning_state(model: nn.Module) -> dict[str, list | int]:
    """A copy of the model's ``config.pruning`` record (see the module docstring); the layer fields
    it lacks (all of them for an unpruned model) describe the full structure. The config is left
    as it is."""
    config = bert_encoder(model).config
    full = {"layers": list(range(config.num_hidden_layers)),
            "heads": [list(range(config.num_attention_heads))] * config.num_hidden_layers,
            "intermediate_sizes": [config.intermediate_size] * config.num_hidden_layers}
    return copy.deepcopy({**full, **(getattr(config, "pruning", None) or {})})


def kept_heads(model: nn.Module) -> list[list[int]]:
    """Per layer, the original ids (0..num_attention_heads-1) of its remaining heads."""
    return [list(heads) for heads in pruning_state(model)["heads"]]


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (elements of all parameter tensors)."""
    return sum(p.numel() for p in model.parameters())


def _sliced_linear(linear: nn.Linear, keep: torch.Tensor, dim: int) -> nn.Linear:
    """A copy of ``linear`` keeping the output rows (``dim=0``, bias too) or the input columns
    (``dim=1``) at the int64 positions ``keep``."""
    weight = linear.weight.detach().index_select(dim, keep).clone()
    out_features, in_features = weight.shape
    sliced = nn.Linear(1, 1, bias=linear.bias is not None, device="meta")  # no init work (or warning at 0 wide)
    sliced.in_features, sliced.out_features = in_features, out_features
    sliced.weight = nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        bias = linear.bias.detach()
        sliced.bias = nn.Parameter((bias.index_select(0, keep) if dim == 0 else bias).clone(),
                                   requires_grad=linear.bias.requires_grad)
    return sliced


def _keep_head_positions(layer: nn.Module, positions: Sequence[int], head_size: int) -> None:
    """Keep the heads at ``positions`` (indices among the layer's current heads, each ``head_size``
    wide) of one BertLayer."""
    attention = layer.attention
    keep = torch.tensor([p * head_size + i for p in positions for i in range(head_size)], dtype=torch.long)
    attention.output.dense = _sliced_linear(attention.output.dense, keep, dim=1)
    if not positions:
        attention.self = NoHeads()
        return
    for name in ("query", "key", "value"):
        setattr(attention.self, name, _sliced_linear(getattr(attention.self, name), keep, dim=0))
    attention.self.num_attention_heads = len(positions)
    attention.self.all_head_size = len(positions) * head_size


def _head_size(model: nn.Module) -> int:
    """Width d of one attention head: hidden size / the config's (original) head count."""
    config = bert_encoder(model).config
    return config.hidden_size // config.num_attention_heads


def _keep_neuron_positions(layer: nn.Module, positions: Sequence[int]) -> None:
    """Keep the FFN neurons at ``positions`` (indices among the current ones) of one BertLayer."""
    keep = torch.tensor(list(positions), dtype=torch.long)
    layer.intermediate.dense = _sliced_linear(layer.intermediate.dense, keep, dim=0)
    layer.output.dense = _sliced_linear(layer.output.dense, keep, dim=1)


def _check_layers(ids, num_layers: int, what: str) -> None:
    """ValueError naming ``what`` unless every id is a layer index in 0..num_layers-1."""
    bad = [layer for layer in ids if not 0 <= layer < num_layers]
    if bad:
        raise ValueError(f"{what}: layers {bad} do not exist; the model has layers 0..{num_layers - 1}")


def prune_heads(model: nn.Module, heads: dict[int, list[int]]) -> None:
    """Remove attention heads in place (Michel et al. 2019, by slicing instead of masking).

    Args:
        model: a BERT model (see :func:`bert_encoder`).
        heads: 0-based layer -> head ids to remove, in the layer's ORIGINAL numbering
            (0..num_attention_heads-1, the columns of :func:`compress.importance.head_importance`);
            the ids a layer still has are :func:`kept_heads`. Removing all of a layer's heads turns
            its self-attention into :class:`NoHeads`.

    Raises:
        ValueError: a layer that does not exist or a head the layer no longer (or never) had.
    """
    encoder, state = bert_encoder(model), pruning_state(model)
    _check_layers(heads, len(encoder.encoder.layer), "prune_heads")
    for layer_id, removed in heads.items():  # check all before slicing any
        missing = sorted(set(removed) - set(state["heads"][layer_id]))
        if missing:
            raise ValueError(f"prune_heads: layer {layer_id} has no heads {missing}; "
                             f"its heads are {state['heads'][layer_id]}")
    for layer_id, removed in heads.items():
        current = state["heads"][layer_id]
        kept = [h for h in current if h not in set(removed)]
        _keep_head_positions(encoder.encoder.layer[layer_id], [current.index(h) for h in kept], _head_size(encoder))
        state["heads"][layer_id] = kept
    encoder.config.pruning = state


def prune_ffn_neurons(model: nn.Module, neurons: dict[int, list[int]]) -> None:
    """Remove FFN (intermediate) neurons in place.

    Args:
        model: a BERT model (see :func:`bert_encoder`).
        neurons: 0-based layer -> neuron ids to remove, indices among the layer's CURRENT
            neurons (0..I_l-1, the positions of :func:`compress.importance.ffn_neuron_importance`).

    Raises:
        ValueError: a layer that does not exist or a neuron id outside 0..I_l-1.
    """
    encoder, state = bert_encoder(model), pruning_state(model)
    _check_layers(neurons, len(encoder.encoder.layer), "prune_ffn_neurons")
    sizes = list(state["intermediate_sizes"])
    for layer_id, removed in neurons.items():  # check all before slicing any
        bad = sorted(i for i in set(removed) if not 0 <= i < sizes[layer_id])
        if bad:
            raise ValueError(f"prune_ffn_neurons: layer {layer_id} has neurons 0..{sizes[layer_id] - 1}; got {bad}")
    for layer_id, removed in neurons.items():
        kept = [i for i in range(sizes[layer_id]) if i not in set(removed)]
        _keep_neuron_positions(encoder.encoder.layer[layer_id], kept)
        sizes[layer_id] = len(kept)
    state["intermediate_sizes"] = sizes
    encoder.config.pruning = state


def drop_layers(model: nn.Module, layers: list[int]) -> None:
    """Remove whole encoder layers in place (Sajjad et al. 2020); see :func:`layers_to_drop`.

    Args:
        model: a BERT model (see :func:`bert_encoder`).
        layers: 0-based ids of the current layers to remove; at least one layer must stay.

    Raises:
        ValueError: a layer that does not exist, or every layer named.
    """
    encoder, state = bert_encoder(model), pruning_state(model)
    num_layers = len(encoder.encoder.layer)
    _check_layers(layers, num_layers, "drop_layers")
    kept = [i for i in range(num_layers) if i not in set(layers)]
    if not kept:
        raise ValueError(f"drop_layers: removing all {num_layers} layers leaves no encoder; keep at least one")
    encoder.encoder.layer = nn.ModuleList(encoder.encoder.layer[i] for i in kept)
    for new_id, layer in enumerate(encoder.encoder.layer):
        if hasattr(layer.attention.self, "layer_idx"):
            layer.attention.self.layer_idx = new_id
    encoder.config.num_hidden_layers = len(kept)
    encoder.config.pruning = {**state, **{key: [state[key][i] for i in kept] for key in _PER_LAYER_KEYS}}


def layers_to_drop(num_layers: int, keep: int, strategy: str,
                   similarities: Sequence[float] | None = None) -> list[int]:
    """The 0-based layers :func:`drop_layers` removes to keep ``keep`` of ``num_layers`` layers,
    chosen by a Sajjad et al. (2020) strategy of
    :func:`students.transformer.selected_teacher_layers` (``drop_top``, ``drop_bottom``,
    ``drop_alternate``, ``drop_symmetric``, ``drop_contribution`` with ``similarities``)."""
    kept = {layer - 1 for layer in selected_teacher_layers(strategy, num_layers, keep, similarities)}
    return [layer for layer in range(num_layers) if layer not in kept]


def load_pruned(folder: str | Path) -> PreTrainedModel:
    """Load a model saved with ``save_pretrained`` after pruning (or an unpruned one), in eval mode.

    Builds the config's architecture at its original sizes, slices each layer to the sizes of
    ``config.pruning`` (and the word embeddings to its ``vocab``, with
    :func:`compress.vocabulary.prune_vocabulary`) and loads ``model.safetensors`` strictly.

    Raises:
        ArtifactError: no config.json / model.safetensors, or weights that do not fit the record.
    """
    folder = Path(folder)
    config_file, weights_file = folder / "config.json", folder / "model.safetensors"
    for path in (config_file, weights_file):
        if not path.is_file():
            raise ArtifactError(path, "missing; save the pruned model with model.save_pretrained(folder)")
    config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    record = getattr(config, "pruning", None)
    architecture = getattr(transformers, (config.architectures or ["BertModel"])[0])
    model = architecture(config)
    if record is not None:
        state = pruning_state(model)
        for layer, heads, size in zip(bert_encoder(model).encoder.layer, state["heads"],
                                      state["intermediate_sizes"], strict=True):
            _keep_head_positions(layer, range(len(heads)), _head_size(model))
            _keep_neuron_positions(layer, range(size))
        if "vocab" in state:
            prune_vocabulary(model, state["vocab"], state["vocab_unk_id"])
    try:
        model.load_state_dict(load_file(str(weights_file)), strict=True)
    except RuntimeError as error:
        raise ArtifactError(weights_file, f"weights do not fit the pruning record of config.json: "
                                          f"{str(error).splitlines()[0]} ({json.dumps(record)[:200]})") from None
    return model.eval()
