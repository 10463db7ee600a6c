"""ExecuTorch export (``.pte`` with the XNNPACK delegate) of every family, for phones.

    export_executorch(model, "model.pte", example_features(model, texts))  # -> settings for meta.json
    ExecuTorchPredictor("model.pte", 1, input_names).predict(features)     # compress.backends: logits

Pipeline: ``torch.export`` of :class:`compress.traceable.LogitsOnly` -> ``executorch.exir.
to_edge_transform_and_lower`` with ``XnnpackPartitioner`` -> ``.to_executorch()`` -> bytes.

Shapes, per family:

- teacher, transformer: dynamic batch (up to ``max_batch``) and sequence (up to the model's
  position embeddings' tokens, :func:`max_sequence_length`), checked at batch 1-5 and lengths 5-31.
- bilstm, multitask_lstm, cnn_lstm: ``torch.export`` unrolls ``nn.LSTM`` over time steps and
  fails on a dynamic sequence ("specialized it to be a constant"), so these are exported at a
  fixed, padded length (their ``max_length``, the example's length for cnn_lstm, or
  ``fixed_length``) with a dynamic batch. Padding positions do not change their logits (the
  masked path of :mod:`compress.traceable`), so :class:`compress.backends.ExecuTorchPredictor`
  pads inputs with 0 to that length, and cuts per-position logits back. cnn_lstm's characters axis is fixed too (it
  always is ``max_word_chars``): XNNPACK's reshape takes one dynamic axis only.

The file describes itself through constant methods (ExecuTorch's way of storing settings):
``fixed_length`` (0 when dynamic), ``padded_inputs`` (1 per input padded to it) and
``pads_output`` (1 when logits axis 1 is padded too); the predictor reads them, so the program
alone says how to feed it (``meta.json``'s ``settings.fixed_length`` only records it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from core.artifacts import atomic_path
from core.errors import ConfigError
from core.hf_checkpoint import max_tokens
from compress.onnx_export import check_example, dynamic_shapes
from compress.traceable import AXES, LSTM_FAMILIES, SEQUENCE_AXES, LogitsOnly, output_axes

DEFAULT_MAX_BATCH = 32
"""Largest batch a ``.pte`` with a dynamic batch takes (ExecuTorch plans memory for it)."""


def max_sequence_length(model: torch.nn.Module) -> int | None:
    """Longest input a model reads: its ``max_length`` (students), the tokens its position
    embeddings cover (teachers, :func:`core.hf_checkpoint.max_tokens`), or None (cnn_lstm: any
    number of words)."""
    if hasattr(model, "cfg"):
        return getattr(model.cfg, "max_length", None)
    return max_tokens(model.config)


def pad_sequences(features: list[torch.Tensor], padded: list[bool], length: int) -> list[torch.Tensor]:
    """Right-pad axis 1 of the ``padded`` features with 0 to ``length``.

    Raises:
        ValueError: a feature is longer than ``length``.
    """
    out = []
    for feature, pad in zip(features, padded):
        if pad and feature.shape[1] > length:
            raise ValueError(f"input of length {feature.shape[1]} is longer than the {length} positions the .pte was "
                             f"exported at; truncate it or export with a larger fixed_length")
        extra = [0, 0] * (feature.dim() - 2) + [0, length - feature.shape[1]] if pad else []
        out.append(F.pad(feature, extra) if pad else feature)
    return out


@dataclass(frozen=True)
class ExportPlan:
    """What an ExecuTorch program of one model is traced from (:func:`plan_export`).

    Attributes:
        view: the model's :class:`compress.traceable.LogitsOnly` view (LSTMs unrolled, ready masks).
        features: the example, int64, padded to ``fixed_length`` where ``padded`` says.
        dynamic_shapes: ``torch.export``'s spec of each positional input.
        padded: per input, whether it is right-padded to ``fixed_length``.
        fixed_length: the padded sequence length; None when dynamic.
        max_batch: the largest batch the program takes.
        constant_methods: the program's self-description (see the module docstring).
    """

    view: LogitsOnly
    features: tuple[torch.Tensor, ...]
    dynamic_shapes: tuple
    padded: list[bool]
    fixed_length: int | None
    max_batch: int
    constant_methods: dict

    def inputs(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """A feature dict as the program's positional inputs, padded like the example.

        Raises:
            ValueError: a padded feature is longer than ``fixed_length``.
        """
        return tuple(pad_sequences([features[name] for name in self.view.input_names], self.padded,
                                   self.fixed_length or 0))


def plan_export(model: torch.nn.Module, example_features: dict[str, torch.Tensor], fixed_length: int | None = None,
                task: str | None = None, max_batch: int = DEFAULT_MAX_BATCH) -> ExportPlan:
    """The view, example and shapes an ExecuTorch program of ``model`` is traced with
    (arguments as :func:`export_executorch`).

    Raises:
        ConfigError: bad example features (or longer than ``fixed_length``), an unknown family
            or a missing task.
    """
    names = check_example(model, example_features, task, "executorch")
    view = LogitsOnly(model, names, task, unroll_lstm=True, ready_mask=True)
    if fixed_length is None and view.family in LSTM_FAMILIES:
        fixed_length = (max_sequence_length(model) if view.family != "cnn_lstm"
                        else example_features["word_ids"].shape[1])
    padded = [fixed_length is not None and AXES[name][1] in SEQUENCE_AXES for name in names]
    try:
        features = pad_sequences(list(example_features.values()), padded, fixed_length or 0)
    except ValueError as error:
        raise ConfigError(f"executorch export of family {view.family}: example {error}") from None
    max_sizes = {"batch": max_batch, "sequence": max_sequence_length(model), "pair_sequence": max_sequence_length(model)}
    fixed = {**(dict.fromkeys(SEQUENCE_AXES, fixed_length) if fixed_length else {}),
             "chars": None}  # always max_word_chars; XNNPACK reshapes take one dynamic axis (batch)
    pads_output = int(fixed_length is not None and output_axes(model, task).get(1) == "sequence")
    return ExportPlan(view, tuple(features), tuple(dynamic_shapes(names, fixed, max_sizes)), padded, fixed_length,
                      max_batch, {"fixed_length": fixed_length or 0, "padded_inputs": [int(p) for p in padded],
                                  "pads_output": pads_output})


def traced(plan: ExportPlan, module: torch.nn.Module | None = None) -> torch.export.ExportedProgram:
    """``torch.export`` of ``module`` (default: the plan's view) on the plan's example and shapes."""
    if module is None:
        return torch.export.export(plan.view, plan.features, dynamic_shapes=(plan.dynamic_shapes,))
    return torch.export.export(module, plan.features, dynamic_shapes=plan.dynamic_shapes)  # a flat GraphModule


def write_program(plan: ExportPlan, program: Callable[[], torch.export.ExportedProgram], out_path: str | Path,
                  start: float) -> dict:
    """Lower the program ``program()`` returns to XNNPACK and write it, atomically, as a ``.pte``.

    Args:
        plan: what the program was traced from. program: traces it (errors are caught here).
        out_path: the ``.pte`` file. start: ``time.perf_counter()`` when the work began.

    Returns:
        ``input_names``, ``fixed_length``, ``max_batch``, ``export_s`` (seconds since ``start``),
        ``size_mb`` (2^20 bytes).

    Raises:
        ConfigError: a tracing or lowering error (chained), naming the family and backend.
    """
    out_path = Path(out_path)
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        lowered = to_edge_transform_and_lower(program(), partitioner=[XnnpackPartitioner()],
                                              constant_methods=plan.constant_methods).to_executorch()
    except Exception as error:  # torch.export, PT2E and exir errors: name what failed
        raise ConfigError(f"family {plan.view.family} does not export to backend executorch "
                          f"({type(error).__name__}; see the chained error); try fixed_length=") from error
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(lowered.buffer)
    return {"input_names": plan.view.input_names, "fixed_length": plan.fixed_length, "max_batch": plan.max_batch,
            "export_s": round(time.perf_counter() - start, 2), "size_mb": round(out_path.stat().st_size / 2**20, 3)}


def export_executorch(model: torch.nn.Module, out_path: str | Path, example_features: dict[str, torch.Tensor],
                      fixed_length: int | None = None, task: str | None = None,
                      max_batch: int = DEFAULT_MAX_BATCH) -> dict:
    """Write the model's logits graph as an fp32 ExecuTorch program lowered to XNNPACK.

    Args:
        model: any family (see :mod:`compress.traceable`); put in eval mode.
        out_path: the ``.pte`` file, written atomically.
        example_features: int64 tensors from :func:`compress.traceable.example_features`, every
            variable axis at least 2 long.
        fixed_length: export the sequence axes at this padded length; None keeps them dynamic
            for the BERT families and uses the model's ``max_length`` for the LSTM families
            (the example's length for cnn_lstm, which has none).
        task: the multitask head to export.
        max_batch: the largest batch the program takes.

    Returns:
        Settings for ``meta.json``: ``input_names``, ``fixed_length`` (None when dynamic),
        ``max_batch``, ``export_s`` (seconds), ``size_mb``.

    Raises:
        ConfigError: bad example features (or longer than ``fixed_length``), an unknown family,
            a missing task, or an export or lowering error (chained), naming family and backend.
    """
    start = time.perf_counter()
    plan = plan_export(model, example_features, fixed_length, task, max_batch)
    return write_program(plan, lambda: traced(plan), out_path, start)
