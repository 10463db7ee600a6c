"""The run's report: ``metrics.json`` and ``report.md``, built from the stage manifests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.artifacts import atomic_write_json, atomic_write_text
from pipeline.artifacts import RunDir
from pipeline.report_compress import sections

MODEL_TITLES = {"teacher": "teacher (fine-tuned)", "kd": "student, KD", "ce_only": "student, CE only"}


def collect(run_dir: RunDir, stages: list[str]) -> dict[str, Any]:
    """The metrics of a finished run: every stage's manifest, keyed by stage name."""
    return {stage: run_dir.require(stage) for stage in stages}


def write(run_dir: RunDir, name: str, stages: list[str],
          render_markdown: Callable[[str, dict[str, Any]], str] | None = None) -> dict[str, Any]:
    """Write ``metrics.json`` and ``report.md`` (by ``render_markdown``, default :func:`render`)
    into the run directory; returns the metrics."""
    metrics = collect(run_dir, stages)
    atomic_write_json(run_dir.metrics_file, metrics)
    atomic_write_text(run_dir.report_file, (render_markdown or render)(name, metrics))
    return metrics


def render(name: str, metrics: dict[str, Any]) -> str:
    """Markdown report: model table (every score of the evaluate stage), data sizes, stage wall times,
    and the sections of the prune and benchmark stages when they ran (:mod:`pipeline.report_compress`)."""
    evaluation = metrics["evaluate"]
    models = evaluation["models"]
    keys = evaluation.get("score_keys", ["dev_accuracy"])  # manifests written before test splits existed
    teacher_p50 = models["teacher"]["latency"]["p50_ms"]
    rows = f"Dev rows: {evaluation['dev_rows']}" + (f"; test rows: {evaluation['test_rows']}" if "test_rows" in evaluation
                                                    else "")
    lines = [f"# Distillation report: {name}", "",
             f"{rows}. Hardware: {evaluation['hardware']['cpu']}, "
             f"{evaluation['hardware']['torch_threads']} torch threads, torch {evaluation['hardware']['torch']}.",
             "", f"| model | {' | '.join(map(score_title, keys))} | parameters | size (MB) | batch-1 p50 (ms) | "
                 f"p99 (ms) | speed-up vs teacher |",
             "|---|" + "---|" * (len(keys) + 5)]
    for key, row in models.items():
        latency = row["latency"]
        scores = " | ".join(f"{row[k]:.4f}" for k in keys)
        lines.append(f"| {MODEL_TITLES.get(key, key)} | {scores} | {row['parameters']:,} | "
                     f"{row['size_mb']:.1f} | {latency['p50_ms']:.2f} | {latency['p99_ms']:.2f} | "
                     f"{teacher_p50 / latency['p50_ms']:.1f}x |")
    data = metrics["data"]
    transfer = data["transfer"]
    unlabeled = transfer.get("unlabeled_rows", transfer["label_counts"].get("-1", 0))  # the key is newer than runs
    lines += ["", f"Labeled train rows: {data['train']['rows']}; transfer set: {transfer['rows']} rows "
                  f"({unlabeled} without a hard label).", "",
              "| stage | wall time (s) |", "|---|---|"]
    lines += [f"| {stage} | {manifest['wall_s']:.1f} |" for stage, manifest in metrics.items()]
    lines += sections(metrics)
    return "\n".join(lines) + "\n"


def score_title(key: str) -> str:
    """Column title of an evaluate score key: ``dev_accuracy`` -> "dev accuracy", ``test_entity_f1`` -> "test entity F1"."""
    return key.replace("_", " ").replace(" f1", " F1")
