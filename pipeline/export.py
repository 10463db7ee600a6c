"""Stage ``export``: ONNX and ExecuTorch files of every model, parity-checked.

Every model of :func:`pipeline.variants.run_models` (the teacher, the trained students and the
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

import pyarrow.parquet as pq
import torch
from torch import nn

from compress.backends import load_model_folder
from compress.executorch_export import export_executorch
from compress.onnx_export import export_onnx
from compress.parity import check_parity
from compress.traceable import example_features, family_of
from core.hf_checkpoint import load_tokenizer
from core.schema import TaskKind
from pipeline.artifacts import RunDir
from pipeline.config import RunConfig
from pipeline.data import task_kind
from pipeline.variants import VariantMeta, run_models, variant_folder, write_meta

log = logging.getLogger(__name__)

FORMATS = {"onnx": ("onnxruntime", "model.onnx"), "executorch": ("executorch", "model.pte")}
"""Export format -> (backend of its variants, file name in the variant folder)."""
EXPORT_ROWS = 2
"""Dev rows of the example the graphs are traced with (batch 2: every variable axis above 1)."""


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
    texts, pairs = read_texts(run_dir.split_file("dev"), kind, cfg.export.parity_rows + EXPORT_ROWS)
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


def read_texts(path: Path, kind: TaskKind, rows: int | None = None) -> tuple[list, list[str] | None]:
    """The first ``rows`` rows (None: all) of a split table: sentences (word lists for token
    tasks), and second sentences for pair tasks (else None)."""
    table = pq.read_table(path, columns=kind.text_columns).slice(0, rows)
    columns = [table.column(name).to_pylist() for name in kind.text_columns]
    return columns[0], (columns[1] if kind is TaskKind.PAIR else None)


def model_featurizer(model: nn.Module, folder: Path):
    """``(texts, pairs=None) -> features``: the exported graph's int64 inputs of rows, in input
    order (:func:`compress.traceable.example_features`); a teacher tokenizes with its folder's
    tokenizer, and reads word lists joined by spaces (a token classifier's rows)."""
    tokenizer = load_tokenizer(folder) if family_of(model) == "teacher" else None

    def featurize(texts: list, pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        if tokenizer is not None:
            texts = [text if isinstance(text, str) else " ".join(text) for text in texts]
        return example_features(model, texts, pairs=pairs, tokenizer=tokenizer)

    return featurize


def parity_batches(featurize, texts: list, pairs: list[str] | None) -> list[dict[str, torch.Tensor]]:
    """The rows in batches of 1, 3, 5, ... rows (odd, so never the export's batch of 2; at most
    31, under ExecuTorch's largest batch), each padded to its own longest row."""
    batches, start, size = [], 0, 1
    while start < len(texts):
        batches.append(featurize(texts[start:start + size], pairs[start:start + size] if pairs else None))
        start, size = start + size, min(size + 2, 31)
    return batches


def fixed_length(model: nn.Module, kind: TaskKind, dev_file: Path) -> int | None:
    """The padded length of an ExecuTorch export: None (the exporter's choice: dynamic for BERTs,
    ``max_length`` for LSTM students) except for cnn_lstm taggers, which have no maximum and are
    exported at the longest dev sentence (in words), so every dev row fits the program."""
    if family_of(model) != "cnn_lstm" or kind is not TaskKind.TOKEN:
        return None
    return max(len(words) for words in read_texts(dev_file, kind)[0])


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
                       file=relative(run_dir, path), source=relative(run_dir, folder), parent=name, method="export",
                       family=family_of(model), input_names=settings["input_names"],
                       settings={**settings, "parity": report})
    write_meta(out_folder, meta)
    return meta, {"file": meta.file, "size_mb": settings["size_mb"], "max_abs_diff": report["max_abs_diff"],
                  "shapes": report["shapes"], "export_s": settings["export_s"]}


def relative(run_dir: RunDir, path: Path) -> str:
    """``path`` relative to the run folder, as meta.json stores it."""
    return str(Path(path).resolve().relative_to(run_dir.root.resolve()))
