"""Several teachers labeling the same rows, their soft labels combined (as TextBrewer's
MultiTeacherDistiller).

The extra teachers (``label.teachers``) must classify the same label set, in the same
``id2label`` order, as the run's own teacher: this is checked on their configs before any
model is loaded. Each teacher tokenizes with its own tokenizer; only the logits are combined.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, PretrainedConfig

from core.errors import ConfigError
from core.hf_checkpoint import weight_files
from teachers.checkpoint import check_checkpoint

def check_teachers(own: Path, teachers: list[Path]) -> None:
    """Fail before any work when an extra teacher cannot be combined with the run's own.

    Args:
        own: the run's (fine-tuned) teacher folder.
        teachers: the ``label.teachers`` folders.

    Raises:
        ConfigError: naming ``label.teachers[i]`` and its path, when the folder is missing, has
            no ``config.json`` or weight files, is not a sequence classifier, or differs from
            the run's teacher in its number of labels or their ``id2label`` order.
    """
    expected = label_order(AutoConfig.from_pretrained(own))
    for i, path in enumerate(teachers):
        field = f"label.teachers[{i}]"
        if not path.is_dir():
            raise ConfigError(f"{field}: no such folder {path}; give a local Hugging Face checkpoint folder")
        if not (path / "config.json").is_file() or not weight_files(path):
            raise ConfigError(f"{field}: {path} has no config.json or no model weights; "
                              f"give a folder written by save_pretrained")
        check_checkpoint(path)  # extra teachers never run their own code
        config = AutoConfig.from_pretrained(path)
        architectures = config.architectures or []
        if not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise ConfigError(f"{field}: {path} is not a sequence classifier (architectures: {architectures}); "
                              f"fine-tune it on the run's label set first")
        order = label_order(config)
        if len(order) != len(expected):
            raise ConfigError(f"{field}: {path} has {len(order)} labels but the run's teacher has "
                              f"{len(expected)} ({expected}); every teacher must classify the same label set")
        if order != expected:
            raise ConfigError(f"{field}: {path} orders its labels {order} but the run's teacher {expected}; "
                              f"re-save it with the run's id2label (data.label_names)")


def label_order(config: PretrainedConfig) -> list[str]:
    """Class names of a checkpoint's config in class-index order."""
    return [config.id2label[i] for i in range(config.num_labels)]


def combine_logits(logits: list[np.ndarray], mode: str) -> np.ndarray:
    """The combined soft labels of K teachers.

    ``mean_logits``: ``z = mean_k z_k``. ``mean_probs``: ``z = log(mean_k softmax(z_k))``,
    computed as ``logsumexp_k(log_softmax(z_k)) - log K`` in float64, so ``softmax(z)`` is the
    teachers' mean probability. A KD temperature tau then softens ``softmax(z / tau)``: for
    ``mean_probs`` that is the mean probability raised to ``1 / tau`` and renormalised, not
    the mean of the teachers' tempered probabilities.

    Args:
        logits: K float arrays [N, C], one per teacher, rows in the same order.
        mode: ``"mean_logits"`` or ``"mean_probs"`` (``label.combine``).

    Returns:
        float32 [N, C].

    Raises:
        ValueError: an unknown mode, or arrays of different shapes.
    """
    stacked = torch.from_numpy(np.stack(logits)).double()  # [K, N, C]; ValueError when shapes differ
    if mode == "mean_logits":
        combined = stacked.mean(dim=0)
    elif mode == "mean_probs":
        combined = torch.logsumexp(torch.log_softmax(stacked, dim=-1), dim=0) - math.log(len(logits))  # [N, C]
    else:
        raise ValueError(f"unknown combine mode {mode!r}; choose from ['mean_logits', 'mean_probs']")
    return combined.float().numpy()
