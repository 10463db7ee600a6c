"""Stage ``export``: ONNX and ExecuTorch files of every model, parity-checked.

Every model of :func:`pipeline.evaluation.variants.run_models` (the teacher, the trained students and the
prune stage's models) is loaded (:func:`compress.backends.load_model_folder`), exported at batch 2
from its first two dev rows to ``export/<model>-onnx/model.onnx`` (:func:`compress.onnx_export.
export_onnx`, dynamic batch and sequence axes) and ``export/<model>-executorch/model.pte``
(:func:`compress.executorch_export.export_executorch`), and held to ``max |logit diff| <=
export.atol`` against its PyTorch forward on ``export.parity_rows`` dev rows batched 1, 3, 5, ...
rows at a time (:func:`compress.parity.check_parity`), so at shapes the export never saw. A
token-task teacher is exported as the token classifier it is (sub-token logits [B, T, C]).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from compress.backends import load_model_folder
from compress.executorch_export import export_executorch
from compress.onnx_export import export_onnx
from compress.parity import EXPORT_ROWS, check_parity, parity_batches
from compress.traceable import family_of, model_featurizer
from core.schema import TaskKind
from pipeline.artifacts import RunDir
from pipeline.config.sections import RunConfig
from pipeline.config.sections import task_kind
from pipeline.evaluation.scoring import read_split
from pipeline.evaluation.variants import VariantMeta, run_models, variant_folder, write_meta

log = logging.getLogger(__name__)

FORMATS = {"onnx": ("onnxruntime", "model.onnx"), "executorch": ("executorch", "model.pte")}
"""Export format -> (backend of its variants, file name in the variant folder)."""


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
        for export_format in cfg.export.formats:
            meta, result = export_variant(run_dir, name, folder, model, export_format, example, batches,
                                          cfg.export.atol, fixed_length(model, kind, run_dir.split_file("dev")))
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


def export_variant(run_dir: RunDir, name: str, folder: Path, model: nn.Module, export_format: str,
                   example: dict[str, torch.Tensor], batches: list[dict[str, torch.Tensor]], atol: float,
                   pte_length: int | None) -> tuple[VariantMeta, dict]:
    """Export one model to one format, check parity and write the variant's ``meta.json``.

    Args:
        run_dir: the run. name, folder: the model and its folder.
        model: the loaded model, eval mode.
        export_format: ``"onnx"`` or ``"executorch"``.
        example: the traced batch (int64 [2, T]). batches: the parity batches.
        atol: the largest allowed max |logit difference|.
        pte_length: ExecuTorch's fixed length (:func:`fixed_length`).

    Returns:
        The variant's meta and its summary entry (see :func:`run`).
    """
    backend, file_name = FORMATS[export_format]
    out_folder = variant_folder(run_dir, "export", name, export_format)
    out_folder.mkdir(parents=True, exist_ok=True)
    path = out_folder / file_name
    if export_format == "onnx":
        settings = {**export_onnx(model, path, example), "fixed_length": None}
    else:
        settings = export_executorch(model, path, example, fixed_length=pte_length)
    report = check_parity(model, path, export_format, batches, atol=atol)
    meta = VariantMeta(name=f"{name}/{backend}-fp32", model=name, backend=backend, precision="fp32",
                       file=run_dir.relative(path), source=run_dir.relative(folder), parent=name, method="export",
                       family=family_of(model), input_names=settings["input_names"],
                       settings={**settings, "parity": report})
    write_meta(out_folder, meta)
    return meta, {"file": meta.file, "size_mb": settings["size_mb"], "max_abs_diff": report["max_abs_diff"],
                  "shapes": report["shapes"], "export_s": settings["export_s"]}


