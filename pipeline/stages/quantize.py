"""Stage ``quantize``: int8 and fp16 variants of every ONNX and ExecuTorch export, and PyTorch dynamic int8.

For each fp32 variant of the export stage, the file is first checked again against its PyTorch
model (a file changed since export fails here, naming it), then written as each method of
``quantize.methods`` made for its backend (:data:`METHODS`): an ONNX file to
``quantize/<model>-<suffix>/model.onnx`` with :mod:`compress.quantize` (ONNX Runtime's dynamic
int8, static int8 in QDQ calibrated on ``quantize.calibration_rows`` transfer-set rows, fp16
weights), an ExecuTorch program to ``quantize/<model>-<suffix>/model.pte`` with
:mod:`compress.executorch_quantize` (PT2E int8 for XNNPACK, dynamic, or static calibrated on the
same rows), a LiteRT file to ``quantize/<model>-litert-int8-dynamic/model.tflite`` with
:func:`compress.litert_export.export_litert` (dynamic-range int8); ``torch_dynamic_int8`` writes a meta-only variant beside each ONNX export that
:func:`pipeline.evaluation.variants.load_variant` quantizes on load. A method whose format the
export stage did not write is skipped with a log line. Every variant must predict as its fp32
parent on at least ``quantize.min_agreement`` of the export stage's parity rows
(:func:`compress.parity.check_parity`, ``mode="predictions"``).
"""

from __future__ import annotations

import io
import logging
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from compress.backends import PyTorchPredictor, load_model_folder
from compress.executorch_quantize import quantize_executorch
from compress.litert_export import export_litert
from compress.parity import EXPORT_ROWS, check_parity, parity_batches
from compress.quantize import convert_fp16, quantize_dynamic_int8, quantize_static_int8, quantize_torch_dynamic
from compress.traceable import family_of, model_featurizer
from core.errors import ConfigError
from pipeline.artifacts import RunDir
from pipeline.config.compress_sections import ExportConfig
from pipeline.config.sections import RunConfig
from pipeline.config.sections import task_kind
from pipeline.evaluation.scoring import read_split
from pipeline.evaluation.variants import VariantMeta, stage_variants, variant_folder, write_meta

log = logging.getLogger(__name__)

class Method(NamedTuple):
    """What a quantize method makes: the precision of its variants, their folder suffix
    (``quantize/<model>-<suffix>/``) and the backend of the fp32 exports it starts from."""

    precision: str
    suffix: str
    backend: str


METHODS = {
    "dynamic_int8": Method("int8-dynamic", "int8-dynamic", "onnxruntime"),
    "static_int8": Method("int8-static", "int8-static", "onnxruntime"),
    "fp16": Method("fp16", "fp16", "onnxruntime"),
    "torch_dynamic_int8": Method("int8-dynamic", "torch-int8-dynamic", "onnxruntime"),
    "executorch_dynamic_int8": Method("int8-dynamic", "executorch-int8-dynamic", "executorch"),
    "executorch_static_int8": Method("int8-static", "executorch-int8-static", "executorch"),
    "litert_dynamic_int8": Method("int8-dynamic", "litert-int8-dynamic", "litert"),
}
"""Quantize method (``quantize.methods``) -> what it makes."""
FORMATS = {"onnxruntime": "onnx", "executorch": "executorch", "litert": "litert"}
"""Export backend -> its ``export.formats`` name, which :func:`compress.parity.check_parity` takes too."""
CALIBRATION_BATCH = 32
"""Transfer-set rows per calibration batch."""


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    """Quantize every ONNX and ExecuTorch export of the run with each of ``quantize.methods``
    made for its backend.

    A variant whose agreement is under ``quantize.min_agreement`` is kept (the benchmark measures
    its accuracy) but flagged: ``below_min_agreement`` in its summary and meta, and a warning.

    Returns:
        ``{"variants": {"<model>/<backend>-<precision>": {"file", "size_mb", "agreement",
        "max_abs_diff", "below_min_agreement", "op_types", "fused"}}}``: the file (the model folder for PyTorch), its
        size (MB, 2^20 bytes; PyTorch's serialized quantized weights), the fraction of parity-row
        predictions equal to the fp32 model's and the largest |logit difference|, the op types
        quantized, and the ops ONNX Runtime's transformer optimizer fused (dynamic int8 of BERTs).

    Raises:
        ConfigError: the export stage wrote no file any method takes, or a method cannot quantize a family.
        ArtifactError: an fp32 export no longer matches its model, or a variant's file does not
            load or run (naming the file).
    """
    methods = methods_by_backend(cfg.quantize.methods, {meta.backend for meta in stage_variants(run_dir, "export")})
    parents = [meta for meta in stage_variants(run_dir, "export") if meta.backend in methods]
    if not parents:
        raise ConfigError(f"quantize: the export stage wrote no file that quantize.methods {cfg.quantize.methods} "
                          "take; add an export: section with formats including onnx or executorch")
    kind = task_kind(cfg.data)
    rows = sum(batch for batch, _ in parents[0].settings["parity"]["shapes"])  # the export's parity rows
    dev = read_split(run_dir.split_file("dev"), kind, rows + EXPORT_ROWS)
    texts, pairs = dev.texts, dev.pairs
    transfer = read_split(run_dir.split_file("transfer"), kind, cfg.quantize.calibration_rows)
    calibration = (transfer.texts, transfer.pairs)
    summary = {}
    for parent in parents:
        folder = run_dir.root / parent.source
        model = load_model_folder(folder)
        featurize = model_featurizer(model, folder)
        batches = parity_batches(featurize, texts[EXPORT_ROWS:], pairs[EXPORT_ROWS:] if pairs else None)
        check_parity(model, run_dir.root / parent.file, FORMATS[parent.backend], batches,
                     atol=cfg.export.atol if cfg.export else ExportConfig().atol)
        example = featurize(texts[:EXPORT_ROWS], pairs[:EXPORT_ROWS] if pairs else None)  # the export's
        for method in methods[parent.backend]:
            out_folder = variant_folder(run_dir, "quantize", parent.model, METHODS[method].suffix)
            meta, report = quantize_variant(run_dir, parent, model, method, cfg, featurize, calibration, out_folder,
                                            example)
            torch_dynamic = meta.backend == "pytorch"
            parity = check_parity(model, run_dir.root / meta.file,
                                  "pytorch" if torch_dynamic else FORMATS[meta.backend], batches,
                                  mode="predictions", min_agreement=0.0,
                                  predictor=PyTorchPredictor(quantize_torch_dynamic(model), torch.get_num_threads())
                                  if torch_dynamic else None)
            below = parity["agreement"] < cfg.quantize.min_agreement
            if below:
                log.warning("quantize: %s agrees with its fp32 model on %.3f of the parity rows' predictions, under "
                            "quantize.min_agreement %.2f; kept for the benchmark, flagged below_min_agreement",
                            meta.name, parity["agreement"], cfg.quantize.min_agreement)
            meta = replace(meta, settings={**meta.settings, "below_min_agreement": below})
            write_meta(out_folder, meta)
            summary[meta.name] = {"file": meta.file, **report, "agreement": parity["agreement"],
                                  "max_abs_diff": parity["max_abs_diff"], "below_min_agreement": below}
            log.info("quantize: %s %.2f MB, agreement %.3f, max |diff| %.3g", meta.name, report["size_mb"],
                     parity["agreement"], parity["max_abs_diff"])
    return {"variants": summary}


def methods_by_backend(methods: list[str], exported: set[str]) -> dict[str, list[str]]:
    """``{backend: its methods}`` of the quantize methods whose fp32 exports exist (backends in
    ``exported``); each other method is skipped with an info line naming the missing format."""
    kept: dict[str, list[str]] = {}
    for method in methods:
        if METHODS[method].backend in exported:
            kept.setdefault(METHODS[method].backend, []).append(method)
        else:
            log.info("quantize: skipping %s: the export stage wrote no %s file (add it to export.formats)", method,
                     FORMATS[METHODS[method].backend])
    return kept


def quantize_variant(run_dir: RunDir, parent: VariantMeta, model: nn.Module, method: str, cfg: RunConfig,
                     featurize, calibration: tuple[list, list[str] | None], folder: Path,
                     example: dict[str, torch.Tensor]) -> tuple[VariantMeta, dict]:
    """Write one quantized variant of an fp32 ONNX or ExecuTorch export (or, for
    ``torch_dynamic_int8``, its meta-only folder) and say what was done; the caller checks it and
    writes its meta.

    Args:
        run_dir: the run. parent: the fp32 variant of the method's backend. model: its PyTorch model.
        method: a :data:`METHODS` key. cfg: the run config (``quantize`` section).
        featurize: the model's featurizer (:func:`compress.traceable.model_featurizer`).
        calibration: transfer-set texts and pairs for static int8.
        folder: the variant folder (``quantize/<model>-<suffix>/``).
        example: the export stage's example batch (ExecuTorch traces the model again from it).

    Returns:
        The variant's meta, and ``{"size_mb", "op_types", "fused"}``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    source, out = run_dir.root / parent.file, folder / "model.onnx"
    family = family_of(model)
    if method == "dynamic_int8":
        settings = quantize_dynamic_int8(source, out, family, per_channel=cfg.quantize.per_channel,
                                         reduce_range=cfg.quantize.reduce_range, **encoder_shape(model))
    elif method == "static_int8":
        settings = quantize_static_int8(source, out, calibration_batches(featurize, *calibration), family,
                                        calibration=cfg.quantize.calibration, per_channel=cfg.quantize.per_channel,
                                        reduce_range=cfg.quantize.reduce_range)
    elif method == "fp16":
        settings = convert_fp16(source, out)
    elif METHODS[method].backend == "executorch":
        mode, out = method.split("_")[1], folder / "model.pte"
        settings = quantize_executorch(model, out, example, mode, calibration_batches(featurize, *calibration)
                                       if mode == "static" else None, fixed_length=parent.settings["fixed_length"],
                                       max_batch=parent.settings["max_batch"], per_channel=cfg.quantize.per_channel)
    elif METHODS[method].backend == "litert":
        out = folder / "model.tflite"
        settings = export_litert(model, out, example, fixed_length=parent.settings["fixed_length"], quantize=True)
    else:
        return torch_dynamic_meta(parent, model), {
            "size_mb": round(serialized_mb(quantize_torch_dynamic(model)), 3), "op_types": ["Linear", "LSTM"],
            "fused": {}}
    backend = METHODS[method].backend
    meta = VariantMeta(name=f"{parent.model}/{backend}-{METHODS[method].precision}", model=parent.model, backend=backend,
                       precision=METHODS[method].precision, file=run_dir.relative(out), source=parent.source,
                       parent=parent.name, method="quantize", family=parent.family,
                       input_names=parent.input_names, settings=settings)
    return meta, {"size_mb": round(out.stat().st_size / 2**20, 3), "op_types": settings.get("op_types", []),
                  "fused": settings.get("fused", {})}


def torch_dynamic_meta(parent: VariantMeta, model: nn.Module) -> VariantMeta:
    """The meta of PyTorch dynamic int8 of ``parent``'s model: no file of its own (``file`` is
    the model folder), quantized on load because ``settings.torch_dynamic`` is set."""
    return VariantMeta(name=f"{parent.model}/pytorch-int8-dynamic", model=parent.model, backend="pytorch",
                       precision="int8-dynamic", file=parent.source, source=parent.source, parent=parent.model,
                       method="quantize", family=parent.family, input_names=[],
                       settings={"torch_dynamic": True, "op_types": ["Linear", "LSTM"]})


def encoder_shape(model: nn.Module) -> dict[str, int | str]:
    """``num_heads``, ``hidden_size`` and ``model_type`` for ONNX Runtime's transformer optimizer
    (:func:`compress.quantize.optimize_encoder`), from a Hugging Face model's config or a
    transformer student's encoder (``{}`` for students without one, whose recipes do not fuse).

    A pruned BERT keeps its unpruned config numbers; the optimizer then fuses no Attention in its
    layers of fewer heads (their Q/K/V widths differ from ``hidden_size``), and its output stays
    within 1e-7 of the unfused graph (checked on a tiny BERT with 2 and 3 of 4 heads left). The
    dynamo exports of :func:`compress.onnx_export.export_onnx` get no Attention fused even
    unpruned (only SkipLayerNormalization and BiasGelu), so dynamic int8 quantizes their MatMul
    and Gather nodes.
    """
    hf_model = getattr(model, "model", model)  # a transformer student wraps its encoder as .model
    config = getattr(hf_model, "config", None)
    if config is None or not hasattr(config, "num_attention_heads"):
        return {}
    return {"num_heads": config.num_attention_heads, "hidden_size": config.hidden_size,
            "model_type": config.model_type}


def calibration_batches(featurize, texts: list, pairs: list[str] | None) -> list[dict[str, np.ndarray]]:
    """Calibration rows featurized like the model's inputs, :data:`CALIBRATION_BATCH` rows a batch."""
    return [{name: tensor.numpy() for name, tensor in featurize(
        texts[start:start + CALIBRATION_BATCH], pairs[start:start + CALIBRATION_BATCH] if pairs else None).items()}
        for start in range(0, len(texts), CALIBRATION_BATCH)]


def serialized_mb(model: nn.Module) -> float:
    """Size in MB (2^20 bytes) of a model's ``state_dict`` saved with ``torch.save``."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 2**20
