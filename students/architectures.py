"""What differs between the Hugging Face encoders a transformer student is built from, and that
the pruning of :mod:`compress.slicing` edits: BERT, MPNet, RoBERTa and DistilBERT.

They share one layout (embeddings, a list of encoder layers, a classification head) under other
names: DistilBERT's config calls the FFN width ``hidden_dim`` and its layers live in
``transformer.layer``; the others' in ``encoder.layer``. :func:`config_field` and
:func:`encoder_layers` hide that, and :func:`copy_teacher_weights` starts a student of the
teacher's own classes from the teacher's weights, whatever their names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

ARCHITECTURES = ("bert", "mpnet", "roberta", "distilbert")
"""Teacher ``model_type`` values a transformer student is built from (each tested on a tiny model)."""

FIELDS = {"distilbert": {"intermediate_size": "hidden_dim", "hidden_dropout_prob": "dropout",
                         "attention_probs_dropout_prob": "attention_dropout",
                         "classifier_dropout": "seq_classif_dropout"}}
"""Per model type, BERT's config field name -> its own, where they differ (besides the config
class's ``attribute_map``: DistilBERT's ``dim``, ``n_layers``, ``n_heads``)."""

LAYER_LISTS = {"distilbert": "transformer.layer"}
"""Per model type, the path of the encoder's layer list inside the base model, where it is not
``encoder.layer``."""


def config_field(config: PretrainedConfig, name: str) -> str:
    """The field of ``config`` that holds BERT's config field ``name`` (``intermediate_size``,
    ``hidden_size``, ``num_hidden_layers``, dropouts, ...); ``name`` itself for an object with
    BERT's names and no ``model_type``."""
    model_type = getattr(config, "model_type", None)
    return {**getattr(config, "attribute_map", {}), **FIELDS.get(model_type, {})}.get(name, name)


def layer_list_path(config: PretrainedConfig) -> str:
    """The layer list's path inside the base model (``encoder.layer`` or DistilBERT's ``transformer.layer``)."""
    return LAYER_LISTS.get(config.model_type, "encoder.layer")


def encoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The encoder layers of a Hugging Face encoder, or of the one inside a classifier (``model.base_model``)."""
    return model.base_model.get_submodule(layer_list_path(model.config))


def copy_teacher_weights(student: PreTrainedModel, teacher: PreTrainedModel, layers: Sequence[int],
                         head: bool) -> None:
    """Start ``student`` (of the teacher's classes) from the teacher's weights, in place.

    Student layer i takes teacher layer ``layers[i]`` (1-based) whole; every other base-model
    weight whose shape is the student's too is copied (the embeddings and, where the model has
    them, the pooler and MPNet's relative attention bias [buckets, H], so a narrower student or
    one of other head count keeps those random); with ``head`` the classification head as well.

    Args:
        student, teacher: Hugging Face classifiers of one architecture (``...ForSequenceClassification``).
        layers: 1-based teacher layers, one per student layer copied ([] copies none).
        head: copy the teacher's head (it classifies the student's labels, at its width).
    """
    for student_layer, teacher_layer in zip(encoder_layers(student), layers):
        student_layer.load_state_dict(encoder_layers(teacher)[teacher_layer - 1].state_dict())
    inside_layers = layer_list_path(student.config) + "."
    wanted = student.state_dict()
    source = {name: weight for name, weight in teacher.state_dict().items()
              if name in wanted and wanted[name].shape == weight.shape}
    base = student.base_model_prefix + "."
    copied = {name: weight for name, weight in source.items()
              if (name.startswith(base) and not name.removeprefix(base).startswith(inside_layers))
              or (head and not name.startswith(base))}
    with torch.no_grad():
        for name, weight in copied.items():
            wanted[name].copy_(weight)  # state_dict tensors share the parameters' storage
