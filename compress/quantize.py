"""Post-training quantization of exported models with ONNX Runtime's own tools, plus a PyTorch baseline.

Every function takes a file (or a module) and writes another; each ONNX function returns the
settings it used, ready for the variant's ``meta.json``::

    settings = quantize_dynamic_int8("model.onnx", "int8/model.onnx", family="transformer", num_heads=4,
                                     hidden_size=32, model_type="mpnet")
    settings = quantize_static_int8("model.onnx", "qdq/model.onnx", calibration_batches, family="bilstm")
    settings = convert_fp16("model.onnx", "fp16/model.onnx")
    model_int8 = quantize_torch_dynamic(student)

Methods follow ONNX Runtime's quantization guide (onnxruntime.ai/docs/performance/model-optimizations/
quantization.html): dynamic quantization (weights int8 offline, activations per batch at run time)
for transformer and RNN graphs; static QDQ quantization with calibrated activation ranges; and
PyTorch's eager dynamic quantization (Jacob et al. 2018 integer arithmetic) as the baseline.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from torch import nn

from core.errors import ConfigError
from core.precision import select_int8_reduce_range


ORT_MODEL_TYPES: dict[str, str] = dict.fromkeys(
    ("albert", "bert", "camembert", "deberta", "deberta-v2", "distilbert", "electra", "mpnet", "roberta",
     "xlm-roberta"), "bert")
"""Hugging Face ``model_type`` -> the ``model_type`` of ONNX Runtime's transformer optimizer.

The optimizer has no MPNet, RoBERTa or DistilBERT types of its own (``onnxruntime.transformers.
optimizer.MODEL_TYPES``); every BERT-shaped encoder fuses as ``"bert"`` (its BertOnnxModel), as
Hugging Face Optimum maps them (``ORTConfigManager``). Measured on tiny random BERT, MPNet,
RoBERTa and DistilBERT classifiers exported by :func:`compress.onnx_export.export_onnx`: each
fused fp32 graph is within 1.2e-6 of the unfused one. Other model types skip the optimizer."""


@dataclass(frozen=True)
class Recipe:
    """Which graph ops each method quantizes for one kind of graph.

    Attributes:
        graph: ``"bert"`` runs ONNX Runtime's transformer optimizer before dynamic quantization.
        dynamic_ops: op types given to ``quantize_dynamic`` (ONNX Runtime's IntegerOps registry).
        static_ops: op types given to ``quantize_static`` in QDQ format (its QDQ registry has no
            LSTM or Attention, so those stay fp32 there).
    """

    graph: Literal["bert", "rnn"]
    dynamic_ops: tuple[str, ...]
    static_ops: tuple[str, ...]


BERT = Recipe("bert", dynamic_ops=("MatMul", "Attention", "Gather"),
              static_ops=("MatMul", "Gemm", "Gather"))
RNN = Recipe("rnn", dynamic_ops=("MatMul", "LSTM", "Gather"), static_ops=("MatMul", "Gemm", "Gather"))
CHAR_CNN_RNN = Recipe("rnn", dynamic_ops=("MatMul", "LSTM", "Gather", "Conv"),
                      static_ops=("MatMul", "Gemm", "Gather", "Conv"))

RECIPES: dict[str, Recipe] = {
    "teacher": BERT,
    "transformer": BERT,
    "bilstm": RNN,
    "multitask_lstm": RNN,
    "cnn_lstm": CHAR_CNN_RNN,
}
"""Quantization recipe per model family (the teacher and the student families of students/)."""

STATIC_KEEP_FP32 = ("LayerNormalization", "Erf", "Add", "Softmax")
"""Op types static quantization leaves in fp32 by name (LayerNorm statistics, the GELU's erf, the
residual sums and the attention softmax lose accuracy in int8 for little speed)."""

CALIBRATION_METHODS = ("minmax", "percentile")
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                           "QAttention", "QEmbedLayerNormalization", "DynamicQuantizeLSTM", "ConvInteger", "QGemm"})
"""Ops whose presence shows a graph was quantized already."""


def recipe_for(family: str, method: str) -> Recipe:
    """The recipe of ``family``; raises ConfigError naming the family and ``method`` if none."""
    if family not in RECIPES:
        raise ConfigError(f"{method} cannot quantize family {family!r}: no recipe; choose from {sorted(RECIPES)}")
    return RECIPES[family]


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Number of nodes of each op type in the main graph, most common first."""
    return dict(Counter(node.op_type for node in model.graph.node).most_common())


def graph_input_names(model: onnx.ModelProto) -> list[str]:
    """Names of the graph's real inputs (initializers listed as inputs excluded), in order."""
    initializers = {init.name for init in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def _quantizable(model: onnx.ModelProto, ops: Iterable[str], family: str, method: str) -> list[str]:
    """The op types of ``ops`` present in ``model``.

    Raises:
        ConfigError: naming family and method, if the graph is already quantized or has none of ``ops``.
    """
    counts = op_counts(model)
    quantized = sorted(QUANTIZED_OPS.intersection(counts))
    if quantized:
        raise ConfigError(f"{method} of family {family!r}: the graph is already quantized (has {quantized}); "
                          "quantize the fp32 export instead")
    present = [op for op in ops if op in counts]
    if not present:
        raise ConfigError(f"{method} finds nothing to quantize for family {family!r}: the graph has none of "
                          f"{list(ops)}; export the model's fp32 graph")
    return present


def optimize_encoder(onnx_in: str | Path, onnx_out: str | Path, num_heads: int, hidden_size: int,
                     model_type: str = "bert") -> dict[str, int]:
    """Fuse an encoder graph with ONNX Runtime's transformer optimizer (Attention,
    SkipLayerNormalization, (Bias)Gelu), so dynamic quantization reaches the fused Attention op.

    The embeddings are not fused into EmbedLayerNormalization: its int8 form quantizes every table
    with the vocabulary's (see :func:`added_table_gathers`) and counts positions 0..T-1, where
    MPNet's graph reads explicit position ids (on a tiny MPNet it agreed with fp32 on 3 of 7 rows).

    Args:
        onnx_in: fp32 ONNX file of an encoder classifier of a :data:`ORT_MODEL_TYPES` type.
        onnx_out: where the fused graph is written.
        num_heads, hidden_size: the encoder's shape (config.json's num_attention_heads and
            hidden_size); the optimizer cannot read them from a dynamic-length export.
        model_type: the Hugging Face model type (config.json's ``model_type``).

    Returns:
        the optimizer's fused-operator counts (op type -> nodes), zero entries dropped.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions(ORT_MODEL_TYPES[model_type])
    options.enable_embed_layer_norm = False
    optimized = optimize_model(str(onnx_in), model_type=ORT_MODEL_TYPES[model_type], num_heads=num_heads,
                               hidden_size=hidden_size, optimization_options=options)
    optimized.save_model_to_file(str(onnx_out))
    return {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}


def added_table_gathers(model: onnx.ModelProto) -> list[str]:
    """Names of the Gather nodes that read an embedding table other than the vocabulary (the
    largest 2-D table a Gather reads): position, segment and character tables, kept fp32.

    Each row of a position or segment table is added to every token, so its int8 rounding becomes
    a bias on every position; ONNX Runtime quantizes a Gather's table with one scale for the whole
    table. On the SST-2 pruned student (872 dev rows, batch 1) quantizing them flipped 13
    predictions of the fp32 model, keeping them fp32 3, for 0.57 MB more.
    """
    tables = {init.name: int(np.prod(init.dims)) for init in model.graph.initializer if len(init.dims) == 2}
    gathers = [node for node in model.graph.node if node.op_type == "Gather" and node.input[0] in tables]
    if not gathers:
        return []
    vocabulary = max(tables[node.input[0]] for node in gathers)
    return [node.name for node in gathers if tables[node.input[0]] < vocabulary]


def quantize_dynamic_int8(onnx_in: str | Path, onnx_out: str | Path, family: str, per_channel: bool = True,
                          reduce_range: bool | Literal["auto"] = "auto", num_heads: int | None = None,
                          hidden_size: int | None = None, model_type: str = "bert") -> dict:
    """Dynamic int8 quantization: int8 weights stored, uint8 activations quantized per batch at run time.

    Encoder graphs (``teacher``, ``transformer``) of a :data:`ORT_MODEL_TYPES` type are first
    fused by :func:`optimize_encoder` so the Attention op becomes QAttention; RNN graphs quantize
    LSTM, MatMul and Conv directly. Of the embedding tables only the vocabulary's Gather turns
    int8 (:func:`added_table_gathers`).

    Args:
        onnx_in: fp32 ONNX file; inputs int64 [B, T], output logits float32.
        onnx_out: quantized file to write (its folder is created).
        family: model family, a key of :data:`RECIPES`.
        per_channel: one scale per output column of each weight (more accurate, same speed).
        reduce_range: 7-bit weights, or "auto": by this CPU (:func:`core.precision.select_int8_reduce_range`:
            on for an x86 CPU without VNNI, where full-range U8S8 products can saturate).
        num_heads, hidden_size: encoder shape for the optimizer (config.json's num_attention_heads
            and hidden_size); required for the encoder families.
        model_type: the encoder's Hugging Face model type (config.json's ``model_type``).

    Returns:
        settings: method, weight type, per_channel, reduce_range, quantized op types, op counts
        before/after the optimizer (``ops_before``, ``fused``; ``optimizer_model_type`` None when
        it did not run), the Gather nodes of the tables kept fp32 (``tables_kept_fp32``) and the
        written graph's op counts.

    Raises:
        ConfigError: family unknown, encoder shape missing, or the graph has none of its quantizable ops.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    recipe = recipe_for(family, "dynamic int8")
    if recipe.graph == "bert" and not (num_heads and hidden_size):
        raise ConfigError(f"dynamic int8 of family {family!r} needs num_heads and hidden_size for ONNX Runtime's "
                          "transformer optimizer; pass the model's config.json num_attention_heads and hidden_size")
    onnx_out = Path(onnx_out)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    reduce_range, why = select_int8_reduce_range(reduce_range, "dynamic int8")
    settings = {"method": "dynamic_int8", "weight_type": "QInt8", "activation_type": "QUInt8 (dynamic)",
                "per_channel": per_channel, "reduce_range": reduce_range, "reduce_range_reason": why,
                "ops_before": op_counts(onnx.load(str(onnx_in), load_external_data=False))}
    settings["optimizer_model_type"] = ORT_MODEL_TYPES.get(model_type) if recipe.graph == "bert" else None
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(onnx_in)
        if settings["optimizer_model_type"]:
            source = Path(scratch) / "optimized.onnx"
            settings["fused"] = optimize_encoder(onnx_in, source, num_heads, hidden_size, model_type)
        graph = onnx.load(str(source))
        ops = _quantizable(graph, recipe.dynamic_ops, family, "dynamic int8")
        settings["tables_kept_fp32"] = added_table_gathers(graph)
        quantize_dynamic(source, onnx_out, op_types_to_quantize=ops, per_channel=per_channel,
                         reduce_range=reduce_range, weight_type=QuantType.QInt8,
                         nodes_to_exclude=settings["tables_kept_fp32"],
                         extra_options={"MatMulConstBOnly": True,  # weights only, never activation x activation
                                        # the fused com.microsoft ops have no ONNX shape inference
                                        "DefaultTensorType": onnx.TensorProto.FLOAT})
    settings.update(op_types=ops, ops_after=op_counts(onnx.load(str(onnx_out))))
    return settings


def _calibration_reader(batches: Iterable[dict[str, np.ndarray]], input_names: list[str]):
    """A CalibrationDataReader over feature dicts, keeping the graph's inputs as int64 arrays."""
    from onnxruntime.quantization import CalibrationDataReader

    feeds = []
    for i, batch in enumerate(batches):
        missing = [name for name in input_names if name not in batch]
        if missing:
            raise ConfigError(f"calibration batch {i} lacks graph inputs {missing}; featurize the transfer set "
                              f"with the model's own featurizer (inputs {input_names})")
        feeds.append({name: np.asarray(batch[name], dtype=np.int64) for name in input_names})
    if not feeds:
        raise ConfigError("static int8 needs calibration batches; pass a few featurized transfer-set batches")

    class FeatureBatchReader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(feeds)

        def get_next(self):
            return next(self.feeds, None)

    return FeatureBatchReader()


def _static_exclusions(model: onnx.ModelProto) -> list[str]:
    """Nodes kept fp32: those of :data:`STATIC_KEEP_FP32`, the node writing the logits (the head)
    and the Gathers of the tables added to the vocabulary's rows (:func:`added_table_gathers`)."""
    outputs = {o.name for o in model.graph.output}
    return [node.name for node in model.graph.node
            if node.op_type in STATIC_KEEP_FP32 or outputs.intersection(node.output)] + added_table_gathers(model)


def quantize_static_int8(onnx_in: str | Path, onnx_out: str | Path, calibration_batches: Iterable[dict[str, np.ndarray]],
                         family: str, calibration: Literal["minmax", "percentile"] = "minmax",
                         per_channel: bool = True, reduce_range: bool | Literal["auto"] = "auto") -> dict:
    """Static int8 quantization in QDQ format with activation ranges calibrated on transfer-set batches.

    Runs ``quant_pre_process`` (symbolic shape inference and ONNX Runtime's basic graph
    optimizations) first, then ``quantize_static`` with uint8 activations (asymmetric) and int8
    weights (U8S8, ONNX Runtime's fast x86 path). LayerNorm, Erf (GELU), residual Add and Softmax
    nodes and the logits head stay fp32; LSTM and Attention have no QDQ kernel and stay fp32.

    Args:
        onnx_in: fp32 ONNX file (unfused: the QDQ format needs the plain MatMuls).
        onnx_out: quantized file to write (its folder is created).
        calibration_batches: feature dicts (input name -> int64 array [B, T] or [B, W, L]), e.g.
            a few hundred transfer-set rows; every graph input must be present.
        family: model family, a key of :data:`RECIPES`.
        calibration: ``"minmax"`` (observed range) or ``"percentile"`` (99.999th percentile, robust
            to BERT's activation outliers).
        per_channel: one weight scale per output channel.
        reduce_range: 7-bit weights, or "auto" (as :func:`quantize_dynamic_int8`).

    Returns:
        settings: method, formats, calibration, reduce_range and why, op types, how many nodes were
        kept fp32, op counts.

    Raises:
        ConfigError: unknown family or calibration method, missing inputs, no calibration batches,
            or nothing quantizable in the graph.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    recipe = recipe_for(family, "static int8")
    reduce_range, why = select_int8_reduce_range(reduce_range, "static int8")
    if calibration not in CALIBRATION_METHODS:
        raise ConfigError(f"static int8 calibration {calibration!r} is unknown; choose from {list(CALIBRATION_METHODS)}")
    onnx_out = Path(onnx_out)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # auto_merge: the exports' dynamic lengths give symbolic dims the inference must unify
        quant_pre_process(str(onnx_in), str(prepared), auto_merge=True)
        model = onnx.load(str(prepared))
        ops = _quantizable(model, recipe.static_ops, family, "static int8")
        excluded = _static_exclusions(model)
        reader = _calibration_reader(calibration_batches, graph_input_names(model))
        method = CalibrationMethod.Percentile if calibration == "percentile" else CalibrationMethod.MinMax
        quantize_static(prepared, onnx_out, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=ops,
                        per_channel=per_channel, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=excluded, calibrate_method=method,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    return {"method": "static_int8", "format": "QDQ", "weight_type": "QInt8", "activation_type": "QUInt8",
            "calibration": calibration, "per_channel": per_channel, "reduce_range": reduce_range,
            "reduce_range_reason": why, "op_types": ops,
            "nodes_kept_fp32": len(excluded), "ops_after": op_counts(onnx.load(str(onnx_out)))}


def convert_fp16(onnx_in: str | Path, onnx_out: str | Path) -> dict:
    """Store weights and compute in float16 (half the file size), inputs and outputs kept as before.

    Uses ``onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)``. On a
    CPU this is a size variant: ONNX Runtime has few fp16 CPU kernels and casts around the others,
    so expect it no faster than fp32.

    Returns:
        settings: method and the op counts of the written graph.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx_out = Path(onnx_out)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    model = convert_float_to_float16(onnx.load(str(onnx_in)), keep_io_types=True)
    onnx.save(model, str(onnx_out))
    return {"method": "fp16", "keep_io_types": True, "ops_after": op_counts(model)}


def quantize_torch_dynamic(model: nn.Module) -> nn.Module:
    """PyTorch eager dynamic int8 quantization of every nn.Linear and nn.LSTM (a baseline for ORT).

    Args:
        model: an fp32 model on the CPU (a Student or a Hugging Face classifier); left as it is.

    Returns:
        a quantized copy in eval mode; its forward takes the same inputs and returns the same
        output type (logits float32).

    Raises:
        ConfigError: if torch cannot quantize this family, naming the family and the backend.
    """
    import torch

    family = getattr(model, "family", type(model).__name__)
    try:
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear, nn.LSTM}, dtype=torch.qint8).eval()
    except (RuntimeError, NotImplementedError, AttributeError) as error:
        raise ConfigError(f"PyTorch dynamic int8 cannot quantize family {family!r} on torch {torch.__version__}: "
                          f"{error}; use the onnxruntime dynamic int8 variant instead") from error
