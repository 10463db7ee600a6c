"""Stage ``evaluate``: dev accuracy, parameters, size on disk and batch-1 CPU latency.

Measures the fine-tuned teacher, the distilled student (``kd``) and, when trained, the
CE-only twin (``ce_only``) on the same dev rows and the same sentences for latency, each with
its own featurisation (the teacher's tokenizer, or the student's ``featurize``), on this
machine's CPU.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

from pipeline.artifacts import RunDir
from pipeline.config import RunConfig
from pipeline.latency import batch1_latency_ms
from students.base import META_FILE, load_student
from teachers.checkpoint import load_tokenizer

log = logging.getLogger(__name__)

STUDENT_KINDS = ("kd", "ce_only")

EVAL_BATCH = 64
"""Dev rows per batch, taken in length order so that padding stays small."""


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    """Measure every model of the run on the dev split.

    Returns:
        ``{"dev_rows", "hardware", "models": {"teacher"|"kd"|"ce_only": metrics}}`` where each
        metrics dict holds ``dev_accuracy``, ``parameters``, ``size_mb`` and ``latency``
        (see :func:`pipeline.latency.batch1_latency_ms`).
    """
    torch.manual_seed(cfg.seed)
    dev = pq.read_table(run_dir.split_file("dev"))
    texts = dev.column("text").to_pylist()
    pairs = dev.column("text_pair").to_pylist() if "text_pair" in dev.column_names else None
    labels = np.asarray(dev.column("label"))
    models: dict[str, tuple[nn.Module, Callable, Path]] = {"teacher": teacher_model(run_dir.teacher_dir,
                                                                                     cfg.teacher.max_length)}
    for kind in STUDENT_KINDS:
        if run_dir.student_dir(kind).joinpath(META_FILE).exists():
            student = load_student(run_dir.student_dir(kind))
            models[kind] = (student, student.featurize, run_dir.student_dir(kind))
    results = {}
    for name, (model, featurize, folder) in models.items():
        results[name] = measure(model, featurize, folder, texts, pairs, labels, cfg)
        log.info("evaluate: %s dev accuracy %.4f, %d parameters, %.1f MB, p50 %.2f ms",
                 name, results[name]["dev_accuracy"], results[name]["parameters"],
                 results[name]["size_mb"], results[name]["latency"]["p50_ms"])
    return {"dev_rows": len(texts), "hardware": hardware(), "models": results}


def teacher_model(teacher_dir: Path, max_length: int) -> tuple[nn.Module, Callable, Path]:
    """The fine-tuned teacher in eval mode, its featurizer (tokenizer to ``max_length``) and folder."""
    from transformers import AutoModelForSequenceClassification

    teacher = AutoModelForSequenceClassification.from_pretrained(str(teacher_dir)).eval()
    tokenizer = load_tokenizer(teacher_dir)

    def featurize(texts: list[str], pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        return dict(tokenizer(texts, pairs, padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt"))

    return teacher, featurize, teacher_dir


def measure(model: nn.Module, featurize: Callable, folder: Path, texts: list[str], pairs: list[str] | None,
            labels: np.ndarray, cfg: RunConfig) -> dict[str, Any]:
    """Accuracy, parameter count, weight-file size (MB) and batch-1 latency (ms) of one model.

    Args:
        model: a teacher or student in eval mode; called as ``model(**featurize(texts))``.
        featurize: texts (and pairs) -> the model's input tensors, padded per batch.
        folder: where its weights lie (``*.safetensors`` are counted).
        texts: dev sentences; pairs: their second sentences, or None.
        labels: int64 [N] gold class ids.
        cfg: reads ``evaluate.latency_runs`` and ``evaluate.latency_warmup``.
    """
    predictions = np.empty(len(texts), dtype=np.int64)
    order = np.argsort([len(t) + len(p or "") for t, p in zip(texts, pairs or [None] * len(texts))], kind="stable")
    with torch.inference_mode():
        for start in range(0, len(texts), EVAL_BATCH):
            rows = order[start:start + EVAL_BATCH]
            batch = featurize([texts[i] for i in rows], [pairs[i] for i in rows] if pairs else None)
            predictions[rows] = logits_of(model, batch).argmax(-1).numpy()
    singles = [featurize([texts[i]], [pairs[i]] if pairs else None) for i in range(min(100, len(texts)))]
    latency = batch1_latency_ms(lambda b: logits_of(model, b), singles,
                                cfg.evaluate.latency_runs, cfg.evaluate.latency_warmup)
    weights = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    return {"dev_accuracy": round(float((predictions == labels).mean()), 4),
            "parameters": sum(p.numel() for p in model.parameters()),
            "size_mb": round(weights / 2**20, 2), "latency": latency}


def logits_of(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits [B, C] float32 of a teacher or a student (both return an object with ``logits``)."""
    return model(**batch).logits.float()


def hardware() -> dict[str, Any]:
    """What the latency was measured on: CPU model, torch threads, torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
