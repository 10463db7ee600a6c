"""Structured pruning of BERT and MPNet models by slicing weights: heads, FFN neurons and whole layers.

transformers 5 removed ``prune_heads`` and head masks, so the slicing is done here. The removed
rows and columns leave the weight tensors, so the parameter count and the latency really drop:

    head h of layer l:    rows h*d..(h+1)*d-1 of the query/key/value projections (weight and
                          bias), the same columns of the output projection (d = hidden / heads)
    FFN neuron i:         row i of intermediate.dense (weight, bias), column i of output.dense
    layer l:              the whole layer leaves encoder.layer (Sajjad et al. 2020)

The two architectures name the projections differently (:data:`ATTENTION`): BERT's
``attention.self.{query,key,value}`` and ``attention.output.dense``, MPNet's
``attention.attn.{q,k,v,o}``. MPNet's encoder also computes one relative position bias
[B, H, T, T] for all heads and hands it to every layer, so a layer with pruned heads takes the
rows of its kept heads only (a forward pre-hook of its self-attention, :func:`_cut_position_bias`).
Other architectures are refused (:func:`prunable_encoder`), and a run config that prunes one
fails before any stage (:mod:`pipeline.config.rules`).

Every function takes a Hugging Face model of :data:`PRUNABLE_ARCHITECTURES` (a
``...ForSequenceClassification``, ``...ForTokenClassification`` or the base model; for the
transformer student pass ``student.model``) and edits it in place.

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
:class:`NoHeads` (context [B, T, 0]), so the block adds only the output projection's bias before
its residual LayerNorm, which is exactly what masking all its heads gives. Such a layer records
no attention map (``output_attentions`` skips it for BERT; MPNet's encoder records None).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import transformers
from safetensors.torch import load_file
from torch import nn

from compress.vocabulary import prune_vocabulary
from core.errors import ArtifactError
from students.transformer import selected_teacher_layers

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

_PER_LAYER_KEYS = ("layers", "heads", "intermediate_sizes")


@dataclass(frozen=True)
class AttentionNames:
    """Where one architecture keeps a layer's attention projections.

    Attributes:
        self_attention: the attribute of ``layer.attention`` holding the Q/K/V projections.
        projections: the query, key and value ``nn.Linear`` names inside it.
        output: the output projection's path from ``layer.attention`` (its input is the
            heads' merged context [B, T, H * d]).
    """

    self_attention: str
    projections: tuple[str, str, str]
    output: str


ATTENTION = {"bert": AttentionNames("self", ("query", "key", "value"), "output.dense"),
             "mpnet": AttentionNames("attn", ("q", "k", "v"), "attn.o")}
"""The attention layout of each prunable architecture, by ``config.model_type``."""
PRUNABLE_ARCHITECTURES = tuple(ATTENTION)
"""Model types whose heads, FFN neurons and layers this module slices."""


class NoHeads(nn.Module):
    """The self-attention of a layer with every head pruned: an empty context [B, T, 0], or, for
    MPNet, whose self-attention ends in its output projection, that projection of it (its bias).

    Args:
        output: MPNet's sliced output projection ``o`` (input width 0); None for BERT.
    """

    num_attention_heads = 0
    all_head_size = 0

    def __init__(self, output: nn.Linear | None = None):
        super().__init__()
        self.o = output

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
        """hidden_states [B, T, D] -> (context [B, T, 0], or MPNet's [B, T, D] output, of the same
        dtype; no attention map)."""
        context = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
        return (context if self.o is None else self.o(context)), None


def prunable_encoder(model: nn.Module) -> PreTrainedModel:
    """The base model (``BertModel``, ``MPNetModel``) of ``model``, a head model or the base model.

    Raises:
        TypeError: ``model`` is no Hugging Face model of :data:`PRUNABLE_ARCHITECTURES` (e.g. a
            Student: pass ``student.model``; or a RoBERTa).
    """
    from transformers import PreTrainedModel  # here: importing it costs seconds, the config rules need none of it

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if not isinstance(model, PreTrainedModel) or model_type not in PRUNABLE_ARCHITECTURES:
        raise TypeError(f"{type(model).__name__} is not a model of {', '.join(PRUNABLE_ARCHITECTURES)}, which "
                        "pruning slices; pass a Hugging Face model of those (for a transformer student, student.model)")
    return model.base_model


def output_projection(layer: nn.Module, config: PretrainedConfig) -> nn.Linear:
    """The linear layer whose input is the heads' merged context [B, T, H_l * d] (BERT's
    ``attention.output.dense``, MPNet's ``attention.attn.o``)."""
    return layer.attention.get_submodule(ATTENTION[config.model_type].output)


def pruning_state(model: nn.Module) -> dict[str, list | int]:
    """A copy of the model's ``config.pruning`` record (see the module docstring); the layer fields
    it lacks (all of them for an unpruned model) describe the full structure. The config is left
    as it is."""
    config = prunable_encoder(model).config
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


def _keep_head_positions(layer: nn.Module, positions: Sequence[int], kept: Sequence[int],
                         config: PretrainedConfig) -> None:
    """Keep the heads at ``positions`` (indices among the layer's current heads) of one encoder
    layer; ``kept`` are their original ids (0..num_attention_heads-1), whose rows of MPNet's
    relative position bias the layer then reads."""
    names, head_size = ATTENTION[config.model_type], config.hidden_size // config.num_attention_heads
    keep = torch.tensor([p * head_size + i for p in positions for i in range(head_size)], dtype=torch.long)
    holder_path, _, output_name = names.output.rpartition(".")
    holder = layer.attention.get_submodule(holder_path)
    setattr(holder, output_name, _sliced_linear(getattr(holder, output_name), keep, dim=1))
    if not positions:  # MPNet's output projection lives in the self-attention that NoHeads replaces
        inside = getattr(holder, output_name) if holder_path == names.self_attention else None
        setattr(layer.attention, names.self_attention, NoHeads(inside))
        return
    self_attention = getattr(layer.attention, names.self_attention)
    for name in names.projections:
        setattr(self_attention, name, _sliced_linear(getattr(self_attention, name), keep, dim=0))
    self_attention.num_attention_heads = len(positions)
    self_attention.all_head_size = len(positions) * head_size
    if config.model_type == "mpnet" and len(kept) < config.num_attention_heads:
        _cut_position_bias(self_attention, kept)


def _cut_position_bias(self_attention: nn.Module, kept: Sequence[int]) -> None:
    """Make an MPNet self-attention add only the ``kept`` heads' rows of the relative position bias
    its encoder computes for all heads: [B, H, T, T] -> [B, H_l, T, T] (a forward pre-hook)."""
    if not hasattr(self_attention, "kept_heads"):
        self_attention.register_forward_pre_hook(_kept_heads_bias, with_kwargs=True)
    self_attention.register_buffer("kept_heads", torch.tensor(list(kept), dtype=torch.long), persistent=False)


def _kept_heads_bias(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook of :func:`_cut_position_bias`: ``position_bias`` (MPNetSelfAttention's third
    argument) cut to ``module.kept_heads``."""
    if "position_bias" in kwargs:
        bias = kwargs["position_bias"]
        kwargs = {**kwargs, "position_bias": None if bias is None else bias.index_select(1, module.kept_heads)}
    elif len(args) > 2 and args[2] is not None:
        args = (*args[:2], args[2].index_select(1, module.kept_heads), *args[3:])
    return args, kwargs


def _keep_neuron_positions(layer: nn.Module, positions: Sequence[int]) -> None:
    """Keep the FFN neurons at ``positions`` (indices among the current ones) of one encoder layer."""
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
        model: a BERT or MPNet model (see :func:`prunable_encoder`).
        heads: 0-based layer -> head ids to remove, in the layer's ORIGINAL numbering
            (0..num_attention_heads-1, the columns of :func:`compress.importance.head_importance`);
            the ids a layer still has are :func:`kept_heads`. Removing all of a layer's heads turns
            its self-attention into :class:`NoHeads`.

    Raises:
        ValueError: a layer that does not exist or a head the layer no longer (or never) had.
    """
    encoder, state = prunable_encoder(model), pruning_state(model)
    _check_layers(heads, len(encoder.encoder.layer), "prune_heads")
    for layer_id, removed in heads.items():  # check all before slicing any
        missing = sorted(set(removed) - set(state["heads"][layer_id]))
        if missing:
            raise ValueError(f"prune_heads: layer {layer_id} has no heads {missing}; "
                             f"its heads are {state['heads'][layer_id]}")
    for layer_id, removed in heads.items():
        current = state["heads"][layer_id]
        kept = [h for h in current if h not in set(removed)]
        _keep_head_positions(encoder.encoder.layer[layer_id], [current.index(h) for h in kept], kept, encoder.config)
        state["heads"][layer_id] = kept
    encoder.config.pruning = state


def prune_ffn_neurons(model: nn.Module, neurons: dict[int, list[int]]) -> None:
    """Remove FFN (intermediate) neurons in place.

    Args:
        model: a BERT or MPNet model (see :func:`prunable_encoder`).
        neurons: 0-based layer -> neuron ids to remove, indices among the layer's CURRENT
            neurons (0..I_l-1, the positions of :func:`compress.importance.ffn_neuron_importance`).

    Raises:
        ValueError: a layer that does not exist or a neuron id outside 0..I_l-1.
    """
    encoder, state = prunable_encoder(model), pruning_state(model)
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
        model: a BERT or MPNet model (see :func:`prunable_encoder`).
        layers: 0-based ids of the current layers to remove; at least one layer must stay.

    Raises:
        ValueError: a layer that does not exist, or every layer named.
    """
    encoder, state = prunable_encoder(model), pruning_state(model)
    num_layers = len(encoder.encoder.layer)
    _check_layers(layers, num_layers, "drop_layers")
    kept = [i for i in range(num_layers) if i not in set(layers)]
    if not kept:
        raise ValueError(f"drop_layers: removing all {num_layers} layers leaves no encoder; keep at least one")
    encoder.encoder.layer = nn.ModuleList(encoder.encoder.layer[i] for i in kept)
    for new_id, layer in enumerate(encoder.encoder.layer):
        self_attention = getattr(layer.attention, ATTENTION[encoder.config.model_type].self_attention)
        if hasattr(self_attention, "layer_idx"):
            self_attention.layer_idx = new_id
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
        for layer, heads, size in zip(prunable_encoder(model).encoder.layer, state["heads"],
                                      state["intermediate_sizes"], strict=True):
            _keep_head_positions(layer, range(len(heads)), heads, model.config)
            _keep_neuron_positions(layer, range(size))
        if "vocab" in state:
            prune_vocabulary(model, state["vocab"], state["vocab_unk_id"])
    try:
        model.load_state_dict(load_file(str(weights_file)), strict=True)
    except RuntimeError as error:
        raise ArtifactError(weights_file, f"weights do not fit the pruning record of config.json: "
                                          f"{str(error).splitlines()[0]} ({json.dumps(record)[:200]})") from None
    return model.eval()
