"""LiteRT ``.tflite`` export (fp32, or dynamic-range int8) of every family, for Android: the
optional ``[litert]`` extra (``litert-torch`` and ``ai-edge-litert``; they pin pydantic 2.11, so
they live in an environment of their own).

    export_litert(model, "model.tflite", example_features(model, texts))             # -> settings for meta.json
    export_litert(model, "int8/model.tflite", example, quantize=True)                 # dynamic int8
    LiteRTPredictor("model.tflite", 1, input_names).predict(features)                 # compress.backends: logits

Pipeline: the view and padded example of :func:`compress.executorch_export.plan_export`
(:class:`compress.traceable.LogitsOnly`, LSTMs unrolled, a ready attention mask) -> its first row
-> ``litert_torch.convert`` -> ``.tflite``. Every shape is fixed: litert-torch 0.10 fails on a
dynamic batch of an unrolled LSTM ("Shapes must be 1D sequences of concrete values") and on a
dynamic sequence of BERT's expanded mask ("broadcast_in_dim shape must have every element be
nonnegative"). So the file takes batch 1 with every input at ``fixed_length`` (tokens; words for
cnn_lstm): the LSTM families' as in ExecuTorch, the BERT families' ``max_length`` (students; the
teacher's position embeddings unless given, the export stage gives ``teacher.max_length``).
Padding positions do not change the logits (masked), so :class:`compress.backends.LiteRTPredictor`
pads each row with 0 to the length of the file's input shapes, runs the rows one by one, and cuts
per-position logits back: the file alone says how to feed it, but for its input names.

int8: the vocabulary table is stored as int8 rows (:func:`compress.int8_embedding.with_int8_vocabulary`,
as in the ExecuTorch program; the position and segment tables stay fp32), the fp32 file is
converted, and AI Edge Quantizer's dynamic-range recipe (``dynamic_wi8_afp32``: int8 per-channel
weights, activations quantized on the fly) is applied to the ops of :data:`INT8_OPS` that hold
constant weights: the fully connected layers and the unrolled LSTM's stacked gate matmuls.
litert-torch's ``full_dynamic_recipe`` also quantized every table with it: on the SST-2 pruned
student (872 dev rows) that flipped 10 predictions of the fp32 model, this recipe 1.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path

import torch

from core.artifacts import atomic_path
from core.errors import ConfigError
from compress.litert_extra import require_litert
from compress.executorch_export import max_sequence_length, plan_export
from compress.int8_embedding import with_int8_vocabulary
from compress.traceable import AXES, LSTM_FAMILIES, SEQUENCE_AXES

log = logging.getLogger(__name__)

INT8_OPS = ("FULLY_CONNECTED", "BATCH_MATMUL")
"""The LiteRT op types whose constant weights dynamic int8 quantizes (AI Edge Quantizer's names).
On a 300-dim BiLSTM over 30,522 word pieces the int8 file is 25.7 % of the fp32 one (29.8 % with
its LSTM gates left fp32)."""
def export_litert(model: torch.nn.Module, out_path: str | Path, example_features: dict[str, torch.Tensor],
                  fixed_length: int | None = None, task: str | None = None, quantize: bool = False) -> dict:
    """Write the model's logits graph as a LiteRT flatbuffer of batch 1 at a fixed length.

    Args:
        model: any family except a multitask token head (its word count is no sequence axis);
            put in eval mode.
        out_path: the ``.tflite`` file, written atomically.
        example_features: int64 tensors from :func:`compress.traceable.example_features`, batch
            2 (as every export's; the first row is traced).
        fixed_length: the tokens (words for cnn_lstm) every input is padded to; None: the LSTM
            families' ExecuTorch length, the BERT families' :func:`max_sequence_length`.
        task: the multitask head to export.
        quantize: dynamic-range int8 weights (see the module docstring); False: fp32.

    Returns:
        Settings for ``meta.json``: ``input_names``, ``fixed_length``, ``max_batch`` (1),
        ``export_s`` (seconds), ``size_mb`` (2^20 bytes) and ``quantization`` (``"dynamic_int8"``
        or None).

    Raises:
        ConfigError: the extra is missing (:data:`compress.litert_extra.EXTRA_MISSING`), bad example features, an
            unknown family or task, a multitask token head, or a conversion error (chained),
            naming family and backend.
    """
    require_litert()
    start, out_path = time.perf_counter(), Path(out_path)
    if fixed_length is None and "word_ids" not in example_features:
        fixed_length = max_sequence_length(model)
    plan = plan_export(with_int8_vocabulary(model) if quantize else model, example_features, fixed_length, task)
    if any(AXES[name][1] not in SEQUENCE_AXES for name in plan.view.input_names):
        raise ConfigError(f"litert export of family {plan.view.family} head {task}: its word_starts count words, "
                          "which a fixed-shape .tflite cannot vary; export formats onnx or executorch for it")
    try:
        import litert_torch

        content = litert_torch.convert(plan.view, tuple(feature[:1] for feature in plan.features)).model_content()
        if quantize:
            content = dynamic_int8(content)
    except Exception as error:  # torch.export, lowering and quantizer errors: name what failed
        hint = "" if plan.view.family in LSTM_FAMILIES else "; try a smaller fixed_length"
        raise ConfigError(f"family {plan.view.family} does not export to backend litert "
                          f"({type(error).__name__}; see the chained error){hint}") from error
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(content)
    return {"input_names": plan.view.input_names, "fixed_length": plan.fixed_length, "max_batch": 1,
            "export_s": round(time.perf_counter() - start, 2), "size_mb": round(out_path.stat().st_size / 2**20, 3),
            "quantization": "dynamic_int8" if quantize else None}


def dynamic_int8(flatbuffer: bytes) -> bytes:
    """A ``.tflite`` flatbuffer with the weights of its :data:`INT8_OPS` ops int8 (per channel,
    symmetric) and their activations quantized at run time, by AI Edge Quantizer's
    ``dynamic_wi8_afp32`` recipe restricted to those ops."""
    from ai_edge_quantizer import quantizer, recipe

    (everything,) = recipe.dynamic_wi8_afp32()
    chosen = [{**everything, "operation": recipe.TFLOperationName[op]} for op in INT8_OPS]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # it prints sizes and ratios: the run's log, not the console
        content = bytes(quantizer.Quantizer(flatbuffer, chosen).quantize().quantized_model)
    log.debug("AI Edge Quantizer: %s", printed.getvalue().strip())
    return content
