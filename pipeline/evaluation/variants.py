"""The models of a run and their variants: the one owner of where the compression stages put them.

A *model* is a PyTorch folder the run trained or pruned; a *variant* is one way to run a model
(a backend and a precision). Layout under ``<output_dir>/<name>/``::

    finetune/teacher/                    model "teacher" (Hugging Face folder)
    train/kd/, train/ce_only/            models "kd", "ce_only" (student folders)
    prune/<model>-pruned/                model "<model>-pruned" (Hugging Face folder, pruned)
    prune/teacher-layerdrop/             model "teacher-layerdrop" (Sajjad et al. 2020 baseline)
    export/<model>-onnx/model.onnx       variant onnxruntime fp32
    export/<model>-executorch/model.pte  variant executorch fp32
    quantize/<model>-<method>/model.onnx variant onnxruntime int8-dynamic / int8-static / fp16
    quantize/<model>-executorch-int8-<dynamic|static>/model.pte  variant executorch int8-dynamic / int8-static

Every model and variant folder holds ``meta.json`` (:class:`VariantMeta`), written last, so a
folder without it is unfinished. PyTorch dynamic int8 has no file: its meta names the model
folder and the benchmark quantizes it on load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compress.backends import Predictor, load_model_folder, load_predictor
from compress.quantize import quantize_torch_dynamic
from core.artifacts import atomic_write_json, read_json
from pipeline.artifacts import RunDir
from pipeline.evaluation.scoring import teacher_featurizer
from students.base import META_FILE as STUDENT_META_FILE
from students.registry import load_student

META_FILE = "meta.json"
"""Name of the file that describes a model or variant folder."""

STUDENT_MODELS = ("kd", "ce_only")
"""The trained students of a run, by their train-stage names."""


@dataclass(frozen=True)
class VariantMeta:
    """What ``meta.json`` says of a model or variant.

    Attributes:
        name: unique within the run, e.g. ``teacher``, ``kd-pruned``, ``kd/onnxruntime-int8-dynamic``.
        model: the model it runs (``teacher``, ``kd``, ``teacher-pruned``, ...).
        backend: ``pytorch``, ``onnxruntime`` or ``executorch`` (:data:`compress.backends.BACKENDS`).
        precision: ``fp32``, ``fp16``, ``int8-dynamic`` or ``int8-static``.
        file: the file or folder the backend loads, relative to the run folder.
        source: the PyTorch model folder (relative to the run folder) whose tokenizer or
            ``featurize`` makes the variant's inputs.
        parent: the name of the model or variant it was made from; None for trained models.
        method: how it was made (``finetune``, ``distill``, ``prune``, ``export``, ``quantize``).
        family: ``teacher`` or the student family.
        input_names: the graph's inputs in order (exported variants).
        settings: the method's settings (fractions pruned, op types quantized, fixed length, ...).
    """

    name: str
    model: str
    backend: str
    precision: str
    file: str
    source: str
    parent: str | None = None
    method: str = ""
    family: str = "teacher"
    input_names: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


def write_meta(folder: Path, meta: VariantMeta) -> None:
    """Write ``meta.json`` into a finished model or variant folder (atomically, last)."""
    atomic_write_json(folder / META_FILE, asdict(meta))


def read_meta(folder: Path) -> VariantMeta:
    """The :class:`VariantMeta` of a folder.

    Raises:
        ArtifactError: ``meta.json`` is missing or not JSON.
    """
    return VariantMeta(**read_json(folder / META_FILE))


def run_models(run_dir: RunDir) -> dict[str, Path]:
    """Every finished PyTorch model of the run by name: the teacher, the trained students and the
    models of the prune stage, in that order."""
    models = {"teacher": run_dir.teacher_dir}
    models.update({kind: run_dir.student_dir(kind) for kind in STUDENT_MODELS
                   if (run_dir.student_dir(kind) / "student.json").is_file()})
    prune_dir = run_dir.stage_dir("prune")
    if prune_dir.is_dir():
        models.update({folder.name: folder for folder in sorted(prune_dir.iterdir())
                       if (folder / META_FILE).is_file()})
    return models


def variant_folder(run_dir: RunDir, stage: str, model: str, suffix: str) -> Path:
    """``<stage>/<model>-<suffix>/``: where a stage puts one variant of ``model``."""
    return run_dir.stage_dir(stage) / f"{model}-{suffix}"


def stage_variants(run_dir: RunDir, stage: str) -> list[VariantMeta]:
    """The finished variants a stage wrote (folders with ``meta.json``), sorted by folder name."""
    folder = run_dir.stage_dir(stage)
    if not folder.is_dir():
        return []
    return [read_meta(sub) for sub in sorted(folder.iterdir()) if (sub / META_FILE).is_file()]


def model_family(folder: Path) -> str:
    """The family of a model folder: ``student.json``'s ``family``, or ``teacher`` for a Hugging Face folder."""
    student_meta = folder / STUDENT_META_FILE
    return read_json(student_meta)["family"] if student_meta.is_file() else "teacher"


def is_token_classifier(folder: Path) -> bool:
    """Whether a Hugging Face folder holds a token classifier (logits per sub-token, [B, T, C])."""
    config = folder / "config.json"
    return config.is_file() and any(name.endswith("ForTokenClassification")
                                    for name in read_json(config).get("architectures") or [])


def load_variant(run_dir: RunDir, meta: VariantMeta, threads: int) -> Predictor:
    """A :class:`compress.backends.Predictor` of any model or variant of the run.

    ``pytorch`` variants whose ``settings`` say ``torch_dynamic`` are quantized on load
    (:func:`compress.quantize.quantize_torch_dynamic`); the others load ``meta.file`` with
    :func:`compress.backends.load_predictor` (an ExecuTorch program's padding comes from the
    program itself, its input order from the ``meta.json`` beside it).

    Args:
        run_dir: the run.
        meta: the variant (from :func:`read_meta` or :func:`stage_variants`).
        threads: intra-op threads of the backend (process-wide for PyTorch and ExecuTorch).

    Raises:
        ArtifactError: the file is missing or does not load.
        ConfigError: an unknown backend.
    """
    path = run_dir.root / meta.file
    if meta.backend == "pytorch" and meta.settings.get("torch_dynamic"):
        return load_predictor("pytorch", quantize_torch_dynamic(load_model_folder(path)), threads)
    return load_predictor(meta.backend, path, threads)


def featurizer(run_dir: RunDir, meta: VariantMeta, max_length: int) -> Callable[..., dict[str, np.ndarray]]:
    """``(texts, pairs=None) -> {feature name: int64 array}``: the inputs of a variant, made by its
    source model folder, padded per batch.

    A student folder featurizes with its own ``featurize`` (its vocabulary and ``max_length``);
    a Hugging Face folder with its tokenizer truncating to ``max_length`` tokens (the run's
    ``teacher.max_length``, as :func:`pipeline.evaluation.scoring.teacher_model`); a token classifier
    takes word lists and adds ``first_subtoken`` [B, W] (for mapping its sub-token logits to words).

    Returns:
        int64 arrays [B, T] (``char_ids`` [B, T, L]); predictors ignore the keys they do not take.
    """
    folder = run_dir.root / meta.source
    if (folder / STUDENT_META_FILE).is_file():
        featurize = load_student(folder).featurize
    else:
        featurize = teacher_featurizer(folder, max_length, "token" if is_token_classifier(folder) else "sequence")

    def numpy_features(texts: list, pairs: list[str] | None = None) -> dict[str, np.ndarray]:
        return {name: np.asarray(tensor, dtype=np.int64) for name, tensor in featurize(texts, pairs).items()}

    return numpy_features
