"""int8 ExecuTorch programs: PT2E quantization for the XNNPACK delegate, dynamic or static.

    quantize_executorch(model, "int8/model.pte", example, "dynamic")                # -> settings
    quantize_executorch(model, "int8/model.pte", example, "static", calibration)    # calibrated

The flow is ExecuTorch's own (docs: "Quantization" and the XNNPACK backend's quantization page):
``torch.export`` of the same :class:`compress.traceable.LogitsOnly` view as the fp32 export
(:func:`compress.executorch_export.plan_export`) -> ``torchao``'s ``prepare_pt2e`` with
``XNNPACKQuantizer`` and ``get_symmetric_quantization_config(is_per_channel=True,
is_dynamic=...)`` -> calibration -> ``convert_pt2e`` -> ``torch.export`` again -> the fp32
export's lowering (:func:`compress.executorch_export.write_program`). What gets int8:

- Every ``nn.Linear`` (attention projections, FFN, pooler, classifier heads; Conv1d for the
  cnn_lstm's characters): int8 weights with one symmetric scale per output channel. Dynamic:
  each Linear's input is quantized per tensor at run time (``choose_qparams``). Static: its
  input scale and zero point are calibrated on the given batches (the quantizer's histogram
  observers) and stored in the program, which computes no ranges at run time.
- The vocabulary table (the largest ``nn.Embedding``: words or word pieces): weight-only int8,
  one symmetric scale per row (:class:`compress.int8_embedding.Int8Embedding`; torchao's ``choose_qparams_affine`` and
  ``quantize_affine``). The other tables (position, segment, characters) stay fp32: each of their
  rows is added to every token, so its rounding error becomes a bias on every position. On the
  SST-2 pruned student (872 dev rows, batch 1) int8 position and segment tables flipped 9
  predictions of the fp32 model, fp32 ones 4 (0.56 MB more). The Python runtime of ExecuTorch
  1.5 has no quantized embedding kernel (``quantized_decomposed::embedding_byte``; torchao's
  weight-only embedding config fails at ``to_executorch`` with missing out variants), so the
  table is gathered as int8 rows by the portable ``embedding`` kernel and scaled back to fp32
  per row.

What stays fp32: the tables above, LayerNorm, softmax, GELU, the residual additions
(:data:`QUANTIZED_OPS`) and the attention's activation x activation matmuls;
the LSTM cell (the unrolled recurrence is batched matmuls of the stacked LSTM weights, which
the XNNPACK quantizer does not annotate: the LSTM families keep their recurrent weights fp32,
listed in the settings' ``kept_fp32``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from operator import attrgetter
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from core.errors import ConfigError
from compress.executorch_export import DEFAULT_MAX_BATCH, ExportPlan, plan_export, traced, write_program
from compress.int8_embedding import with_int8_vocabulary

Mode = Literal["dynamic", "static"]
MODES = ("dynamic", "static")


def calibration_inputs(plan: ExportPlan, batch: dict) -> tuple[torch.Tensor, ...]:
    """A calibration feature dict (int64 arrays or tensors) as the program's inputs: the sequence
    axes cut to the plan's fixed length (calibration rows may be longer) and padded to it.

    Raises:
        ConfigError: the batch lacks one of the program's inputs.
    """
    names = plan.view.input_names
    missing = [name for name in names if name not in batch]
    if missing:
        raise ConfigError(f"calibration batch lacks inputs {missing}; featurize the transfer set with the model's "
                          f"own featurizer (inputs {names})")
    features = {name: torch.as_tensor(np.asarray(batch[name]), dtype=torch.int64) for name in names}
    if plan.fixed_length:
        features = {name: value[:, :plan.fixed_length] if pad else value
                    for (name, value), pad in zip(features.items(), plan.padded)}
    return plan.inputs(features)


QUANTIZED_OPS = (torch.ops.aten.linear.default, torch.ops.aten.conv1d.default)
"""The ops the quantizer annotates. Its global config would also quantize the residual additions,
multiplications and concatenations in static mode: on the SST-2 transformer student (before
lowering, 872 dev rows) that lost 0.8 points of accuracy (96.4 % of predictions kept) where
Linear only lost 0.2 (98.6 % kept); ONNX Runtime's static recipe keeps them fp32 too."""


def quantizer(mode: Mode, per_channel: bool = True):
    """``XNNPACKQuantizer`` for :data:`QUANTIZED_OPS` with symmetric int8 weights (one scale per
    output channel, or per tensor), dynamic or static activations."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)

    config = get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=mode == "dynamic")
    annotated = XNNPACKQuantizer()
    for op in QUANTIZED_OPS:
        annotated.set_operator_type(op, config)
    return annotated


def stored_weights(module: torch.fx.GraphModule) -> dict[str, torch.Tensor]:
    """The tensors a converted graph reads as constants (``get_attr``), by name."""
    return {node.target: attrgetter(node.target)(module) for node in module.graph.nodes if node.op == "get_attr"}


def describe(module: torch.fx.GraphModule) -> dict:
    """What a converted graph stores: ``quant_ops`` (quantize/dequantize/choose_qparams nodes by
    op), ``int8_weights`` and ``fp32_weights`` (elements), and ``kept_fp32`` (the fp32
    matrices by name; the embeddings' [V, 1] scales are no matrices)."""
    ops = Counter(str(node.target).split(".")[1] for node in module.graph.nodes
                  if node.op == "call_function" and str(node.target).startswith("quantized_decomposed."))
    weights = {name: t for name, t in stored_weights(module).items() if isinstance(t, torch.Tensor)}
    int8 = sum(t.numel() for t in weights.values() if t.dtype == torch.int8)
    fp32 = {name: t for name, t in weights.items() if t.is_floating_point()}
    return {"quant_ops": dict(sorted(ops.items())), "int8_weights": int8,
            "fp32_weights": sum(t.numel() for t in fp32.values()),
            "kept_fp32": sorted(name for name, t in fp32.items() if t.dim() >= 2 and t.shape[-1] > 1)}


def quantize_executorch(model: nn.Module, out_path: str | Path, example_features: dict[str, torch.Tensor],
                        mode: Mode, calibration: Iterable[dict] | None = None, fixed_length: int | None = None,
                        task: str | None = None, max_batch: int = DEFAULT_MAX_BATCH, per_channel: bool = True) -> dict:
    """Write an int8 ExecuTorch program of ``model`` lowered to XNNPACK (see the module docstring).

    Args:
        model: any family (:mod:`compress.traceable`); left unchanged (a copy is quantized).
        out_path: the ``.pte`` file, written atomically.
        example_features: as :func:`compress.executorch_export.export_executorch`.
        mode: ``"dynamic"`` (activation ranges per call) or ``"static"`` (calibrated).
        calibration: feature dicts (name -> int64 array or tensor [B, T], B <= ``max_batch``),
            e.g. a few hundred transfer-set rows; required for static, unused for dynamic.
        fixed_length, task, max_batch: as :func:`compress.executorch_export.export_executorch`.
        per_channel: one weight scale per output channel (else one per tensor).

    Returns:
        The fp32 export's settings (``input_names``, ``fixed_length``, ``max_batch``,
        ``export_s``, ``size_mb``) plus ``method``, ``weights``, ``activations``,
        ``embeddings``, ``calibration_rows`` and :func:`describe`'s entries.

    Raises:
        ConfigError: an unknown mode, static without calibration batches, a batch lacking an
            input, or any error of :func:`compress.executorch_export.export_executorch`.
    """
    if mode not in MODES:
        raise ConfigError(f"executorch int8 mode {mode!r} is unknown; choose from {list(MODES)}")
    batches = list(calibration or [])
    if mode == "static" and not batches:
        raise ConfigError("executorch static int8 needs calibration batches; pass a few featurized transfer-set "
                          "batches (quantize.calibration_rows)")
    start = time.perf_counter()
    plan = plan_export(with_int8_vocabulary(model), example_features, fixed_length, task, max_batch)
    feeds = [calibration_inputs(plan, batch) for batch in batches] if mode == "static" else [plan.features]
    report = {}

    def quantized_program() -> torch.export.ExportedProgram:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        prepared = prepare_pt2e(traced(plan).module(), quantizer(mode, per_channel))
        with torch.no_grad():
            for inputs in feeds:
                prepared(*inputs)
        converted = convert_pt2e(prepared)
        report.update(describe(converted))
        return traced(plan, converted)

    settings = write_program(plan, quantized_program, out_path, start)
    return {**settings, "method": f"executorch_{mode}_int8",
            "weights": f"int8 symmetric, per {'output channel' if per_channel else 'tensor'}",
            "activations": ("int8 per tensor, ranges at run time" if mode == "dynamic"
                            else "int8 per tensor, calibrated ranges stored"),
            "embeddings": "vocabulary int8 weight-only, per row; position, segment and character tables fp32",
            "calibration_rows": sum(len(inputs[0]) for inputs in feeds) if mode == "static" else 0, **report}
