"""Stage ``export``: ONNX, ExecuTorch (and, with the ``[litert]`` extra, LiteRT) files of every model,
parity-checked.

Every model of :func:`pipeline.evaluation.variants.run_models` (the teacher, the trained students and the
prune stage's models) is loaded (:func:`compress.backends.load_model_folder`), exported at batch 2
from its first two dev rows to ``export/<model>-onnx/model.onnx`` (:func:`compress.onnx_export.
export_onnx`, dynamic batch and sequence axes) and ``export/<model>-executorch/model.pte``
(:func:`compress.executorch_export.export_executorch`) and, when ``export.formats`` names it,
``export/<model>-litert/model.tflite`` (:func:`compress.litert_export.export_litert`: batch 1, a
fixed length, a teacher's ``teacher.max_length``: :func:`teacher_length`), and held to ``max |logit diff| <=
export.atol`` against its PyTorch forward on ``export.parity_rows`` dev rows batched 1, 3, 5, ...
rows at a time (:func:`compress.parity.check_parity`), so at shapes the export never saw. A
token-task teacher is exported as the token classifier it is (sub-token logits [B, T, C]).

Beside each ONNX graph (``export.ort``, ``export.text_graph``): ``model.ort`` and
``model.required_operators.config``, ONNX Runtime's mobile format and the operator list of a
reduced build (:mod:`compress.ort_format`), held to the same atol; and ``model_text.onnx`` (and
its ``.ort``), the model's tokenizer as onnxruntime-extensions operators in front of the graph, a
string [1] in and logits out (:mod:`compress.text_graph`), whose ids must equal the featurizer's
(the benchmark's: a Hugging Face folder truncates to ``teacher.max_length``) on every parity row.
The text graph is no variant of its own: the benchmark feeds batches of ids, and the text graph
takes one string; it is recorded in the ONNX variant's ``meta.json`` (``settings.text_graph``).
A model whose featurizer is no tokenizer of one string gets a log line saying why instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.backends import load_model_folder
from compress.executorch_export import export_executorch
from compress.litert_export import export_litert
from compress.onnx_export import export_onnx
from compress.ort_format import convert_to_ort, ort_parity
from compress.parity import EXPORT_ROWS, check_parity, parity_batches
from compress.text_graph import TEXT_INPUT, check_text_graph, export_text_graph, unsupported_reason
from compress.traceable import TEACHER, family_of, model_featurizer
from core.errors import ArtifactError
from core.schema import TaskKind
from pipeline.artifacts import RunDir
from pipeline.config.compress_sections import ExportConfig
from pipeline.config.sections import RunConfig
from pipeline.config.sections import task_kind
from pipeline.evaluation.scoring import read_split, teacher_featurizer
from pipeline.evaluation.variants import VariantMeta, run_models, variant_folder, write_meta

log = logging.getLogger(__name__)

FORMATS = {"onnx": ("onnxruntime", "model.onnx"), "executorch": ("executorch", "model.pte"),
           "litert": ("litert", "model.tflite")}
"""Export format -> (backend of its variants, file name in the variant folder)."""
TEXT_FILE = "model_text.onnx"


@dataclass(frozen=True)
class TextRows:
    """The rows a text graph is checked on: the parity rows' texts, whether the task is a
    sentence-pair task (no text graph), and a Hugging Face folder's truncation (tokens)."""

    texts: list
    pairs: bool
    max_length: int


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    """Export every model of the run in each of ``export.formats`` and check each file's parity.

    Returns:
        ``{"variants": {"<model>/<backend>-fp32": {"file", "size_mb", "max_abs_diff", "shapes",
        "export_s"}}}``: the file relative to the run folder, its size (MB), the largest |logit
        difference| to PyTorch over the parity rows, the ``[batch, length]`` shapes checked, and
        the seconds the export took.

    Raises:
        ConfigError: a model's family cannot be exported to a format (compress's message names both).
        ArtifactError: a model folder does not load, or an exported file fails parity.
    """
    kind = task_kind(cfg.data)
    dev = read_split(run_dir.split_file("dev"), kind, cfg.export.parity_rows + EXPORT_ROWS)
    texts, pairs = dev.texts, dev.pairs
    summary = {}
    for name, folder in run_models(run_dir).items():
        model = load_model_folder(folder)
        featurize = model_featurizer(model, folder)
        example = featurize(texts[:EXPORT_ROWS], pairs[:EXPORT_ROWS] if pairs else None)
        batches = parity_batches(featurize, texts[EXPORT_ROWS:], pairs[EXPORT_ROWS:] if pairs else None)
        rows = TextRows(texts[EXPORT_ROWS:], pairs is not None, cfg.teacher.max_length)
        length = fixed_length(model, kind, run_dir.split_file("dev"))
        for export_format in cfg.export.formats:
            meta, result = export_variant(run_dir, name, folder, model, export_format, example, batches, cfg.export,
                                          length or (teacher_length(model, cfg.teacher.max_length, batches)
                                                     if export_format == "litert" else None), rows)
            summary[meta.name] = result
            log.info("export: %s %.2f MB, max |diff| %.2g, %.1f s", meta.name, result["size_mb"],
                     result["max_abs_diff"], result["export_s"])
    return {"variants": summary}


def fixed_length(model: nn.Module, kind: TaskKind, dev_file: Path) -> int | None:
    """The padded length of an ExecuTorch export: None (the exporter's choice: dynamic for BERTs,
    ``max_length`` for LSTM students) except for cnn_lstm taggers, which have no maximum and are
    exported at the longest dev sentence (in words), so every dev row fits the program."""
    if family_of(model) != "cnn_lstm" or kind is not TaskKind.TOKEN:
        return None
    return max(len(words) for words in read_split(dev_file, kind).texts)


def teacher_length(model: nn.Module, max_length: int, batches: list[dict[str, torch.Tensor]]) -> int | None:
    """The fixed length of a teacher's ``.tflite``: ``teacher.max_length`` (the benchmark's
    truncation), or the longest parity batch where longer (the parity rows are not truncated
    to it); None for the other families (:func:`compress.litert_export.export_litert` chooses)."""
    if family_of(model) != TEACHER:
        return None
    return max([max_length, *(next(iter(batch.values())).shape[1] for batch in batches)])


def export_variant(run_dir: RunDir, name: str, folder: Path, model: nn.Module, export_format: str,
                   example: dict[str, torch.Tensor], batches: list[dict[str, torch.Tensor]], export_cfg: ExportConfig,
                   pte_length: int | None, rows: TextRows | None = None) -> tuple[VariantMeta, dict]:
    """Export one model to one format, check parity and write the variant's ``meta.json``.

    Args:
        run_dir: the run. name, folder: the model and its folder.
        model: the loaded model, eval mode.
        export_format: ``"onnx"``, ``"executorch"`` or ``"litert"``.
        example: the traced batch (int64 [2, T]). batches: the parity batches.
        export_cfg: the ``export`` section (atol: the largest allowed max |logit difference|).
        pte_length: the ExecuTorch or LiteRT file's fixed length (:func:`fixed_length`; a teacher's
            ``.tflite``: :func:`teacher_length`).
        rows: the text graph's check rows; None: no text graph.

    Returns:
        The variant's meta and its summary entry (see :func:`run`).
    """
    backend, file_name = FORMATS[export_format]
    out_folder = variant_folder(run_dir, "export", name, export_format)
    out_folder.mkdir(parents=True, exist_ok=True)
    path = out_folder / file_name
    if export_format == "onnx":
        settings = {**export_onnx(model, path, example), "fixed_length": None}
    elif export_format == "litert":
        settings = export_litert(model, path, example, fixed_length=pte_length)
    else:
        settings = export_executorch(model, path, example, fixed_length=pte_length)
    report = check_parity(model, path, export_format, batches, atol=export_cfg.atol)
    if export_format == "onnx":
        settings.update(mobile_files(name, folder, model, path, batches, export_cfg, rows))
    meta = VariantMeta(name=f"{name}/{backend}-fp32", model=name, backend=backend, precision="fp32",
                       file=run_dir.relative(path), source=run_dir.relative(folder), parent=name, method="export",
                       family=family_of(model), input_names=settings["input_names"],
                       settings={**settings, "parity": report})
    write_meta(out_folder, meta)
    return meta, {"file": meta.file, "size_mb": settings["size_mb"], "max_abs_diff": report["max_abs_diff"],
                  "shapes": report["shapes"], "export_s": settings["export_s"]}


def mobile_files(name: str, folder: Path, model: nn.Module, path: Path, batches: list[dict[str, torch.Tensor]],
                 export_cfg: ExportConfig, rows: TextRows | None) -> dict:
    """The ``.ort`` of an ONNX export (parity with PyTorch within atol) and its text graph.

    Returns:
        ``{"ort": {...convert_to_ort, "parity"}, "text_graph": {...} or None}``, each key only
        when switched on in ``export_cfg``.

    Raises:
        ArtifactError: the ``.ort`` or the text graph fails its check.
    """
    files = {}
    if export_cfg.ort:
        files["ort"] = convert_to_ort(path)
        files["ort"]["parity"] = check_parity(model, path.with_suffix(".ort"), "onnx", batches, atol=export_cfg.atol)
    if export_cfg.text_graph and rows is not None:
        files["text_graph"] = text_graph_files(name, folder, model, path, export_cfg, rows)
    return files


def text_graph_files(name: str, folder: Path, model: nn.Module, path: Path, export_cfg: ExportConfig,
                     rows: TextRows) -> dict | None:
    """Write and check ``model_text.onnx`` (and its ``.ort``) beside ``path``; None, with a log
    line saying why, for a model whose featurizer is no tokenizer of one string.

    Returns:
        :func:`compress.text_graph.export_text_graph`'s settings with ``check`` (rows, rows whose
        ids are equal, max |logit diff| to the id graph) and ``ort`` (as in :func:`mobile_files`).

    Raises:
        ArtifactError: ids differ on a row, or logits (or the ``.ort``'s) by more than atol.
    """
    reason = "a sentence-pair task: the text graph takes one string" if rows.pairs else unsupported_reason(model)
    if reason is not None:
        log.info("export: %s: no text graph (%s)", name, reason)
        return None
    text_path = path.with_name(TEXT_FILE)
    settings = export_text_graph(model, folder, path, text_path, rows.max_length)
    featurize = (teacher_featurizer(folder, rows.max_length) if family_of(model) == TEACHER
                 else model_featurizer(model, folder))
    check = check_text_graph(model, folder, featurize, path, text_path, rows.texts, rows.max_length)
    if check["ids_equal"] < check["rows"] or not check["max_abs_diff"] <= export_cfg.atol:
        raise ArtifactError(text_path, f"the text graph gives the featurizer's ids on {check['ids_equal']} of "
                                       f"{check['rows']} rows, logits within {check['max_abs_diff']:.3g} of the id "
                                       f"graph (allowed {export_cfg.atol:g}); its tokenizer settings are wrong")
    settings["check"] = check
    if export_cfg.ort:
        settings["ort"] = convert_to_ort(text_path, custom_ops=True)
        feeds = [{TEXT_INPUT: np.array([text])} for text in rows.texts]
        settings["ort"]["parity"] = ort_parity(text_path, text_path.with_suffix(".ort"), feeds, custom_ops=True)
        if not settings["ort"]["parity"]["max_abs_diff"] <= export_cfg.atol:
            raise ArtifactError(text_path.with_suffix(".ort"), f"logits {settings['ort']['parity']['max_abs_diff']:.3g} "
                                                               f"from {TEXT_FILE}'s (allowed {export_cfg.atol:g})")
    log.info("export: %s text graph: ids equal on %d/%d rows, max |diff| %.2g", name, check["ids_equal"],
             check["rows"], check["max_abs_diff"])
    return settings
