"""Stage ``evaluate``: dev accuracy, parameters, size on disk and batch-1 CPU latency.

Measures the fine-tuned teacher, the distilled student (``kd``) and, when trained, the
CE-only twin (``ce_only``) on the same dev rows, with the same tokenization and the same
sentences for latency, on this machine's CPU.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

from pipeline.artifacts import RunDir
from pipeline.config import RunConfig
from pipeline.latency import batch1_latency_ms
from students.bilstm import load_student
from teachers.checkpoint import load_tokenizer
from teachers.inference import length_sorted_batches

log = logging.getLogger(__name__)

STUDENT_KINDS = ("kd", "ce_only")


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    """Measure every model of the run on the dev split.

    Returns:
        ``{"dev_rows", "hardware", "models": {"teacher"|"kd"|"ce_only": metrics}}`` where each
        metrics dict holds ``dev_accuracy``, ``parameters``, ``size_mb`` and ``latency``
        (see :func:`pipeline.latency.batch1_latency_ms`).
    """
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(cfg.seed)
    dev = pq.read_table(run_dir.split_file("dev"))
    texts, labels = dev.column("text").to_pylist(), np.asarray(dev.column("label"))
    teacher = AutoModelForSequenceClassification.from_pretrained(str(run_dir.teacher_dir)).eval()
    models: dict[str, tuple[nn.Module, Any, int, Path]] = {
        "teacher": (teacher, load_tokenizer(run_dir.teacher_dir), cfg.teacher.max_length, run_dir.teacher_dir)}
    for kind in STUDENT_KINDS:
        if run_dir.student_dir(kind).joinpath("model.safetensors").exists():
            student, tokenizer = load_student(run_dir.student_dir(kind))
            models[kind] = (student.eval(), tokenizer, cfg.train.student.max_length, run_dir.student_dir(kind))
    results = {}
    for name, (model, tokenizer, max_length, folder) in models.items():
        results[name] = measure(model, tokenizer, max_length, folder, texts, labels, cfg)
        log.info("evaluate: %s dev accuracy %.4f, %d parameters, %.1f MB, p50 %.2f ms",
                 name, results[name]["dev_accuracy"], results[name]["parameters"],
                 results[name]["size_mb"], results[name]["latency"]["p50_ms"])
    return {"dev_rows": len(texts), "hardware": hardware(), "models": results}


def measure(model: nn.Module, tokenizer, max_length: int, folder: Path, texts: list[str],
            labels: np.ndarray, cfg: RunConfig) -> dict[str, Any]:
    """Accuracy, parameter count, weight-file size (MB) and batch-1 latency of one model."""
    encoded = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    predictions = np.empty(len(texts), dtype=np.int64)
    lengths = np.asarray([len(ids) for ids in encoded])
    with torch.inference_mode():
        for rows in length_sorted_batches(lengths, 64, 64 * max_length):
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
            predictions[rows] = logits_of(model, batch).argmax(-1).numpy()
    singles = [tokenizer.pad({"input_ids": [ids]}, return_tensors="pt") for ids in encoded[:100]]
    latency = batch1_latency_ms(lambda b: logits_of(model, b), singles,
                                cfg.evaluate.latency_runs, cfg.evaluate.latency_warmup)
    weights = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    return {"dev_accuracy": round(float((predictions == labels).mean()), 4),
            "parameters": sum(p.numel() for p in model.parameters()),
            "size_mb": round(weights / 2**20, 2), "latency": latency}


def logits_of(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits [B, C] float32 of a teacher (Hugging Face output) or a student (a tensor)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return (out.logits if hasattr(out, "logits") else out).float()


def hardware() -> dict[str, Any]:
    """What the latency was measured on: CPU model, torch threads, torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
