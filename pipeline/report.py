"""The run's report: ``metrics.json`` and ``report.md``, built from the stage manifests."""

from __future__ import annotations

from typing import Any

from pipeline.artifacts import RunDir, atomic_write_json, atomic_write_text

MODEL_TITLES = {"teacher": "teacher (fine-tuned)", "kd": "student, KD", "ce_only": "student, CE only"}


def collect(run_dir: RunDir, stages: list[str]) -> dict[str, Any]:
    """The metrics of a finished run: every stage's manifest, keyed by stage name."""
    return {stage: run_dir.require(stage) for stage in stages}


def write(run_dir: RunDir, name: str, stages: list[str]) -> dict[str, Any]:
    """Write ``metrics.json`` and ``report.md`` into the run directory; returns the metrics."""
    metrics = collect(run_dir, stages)
    atomic_write_json(run_dir.metrics_file, metrics)
    atomic_write_text(run_dir.report_file, render(name, metrics))
    return metrics


def render(name: str, metrics: dict[str, Any]) -> str:
    """Markdown report: model table, data sizes and stage wall times."""
    models = metrics["evaluate"]["models"]
    teacher_p50 = models["teacher"]["latency"]["p50_ms"]
    lines = [f"# Distillation report: {name}", "",
             f"Dev rows: {metrics['evaluate']['dev_rows']}. Hardware: {metrics['evaluate']['hardware']['cpu']}, "
             f"{metrics['evaluate']['hardware']['torch_threads']} torch threads, torch {metrics['evaluate']['hardware']['torch']}.",
             "", "| model | dev accuracy | parameters | size (MB) | batch-1 p50 (ms) | p99 (ms) | speed-up vs teacher |",
             "|---|---|---|---|---|---|---|"]
    for key, row in models.items():
        latency = row["latency"]
        lines.append(f"| {MODEL_TITLES.get(key, key)} | {row['dev_accuracy']:.4f} | {row['parameters']:,} | "
                     f"{row['size_mb']:.1f} | {latency['p50_ms']:.2f} | {latency['p99_ms']:.2f} | "
                     f"{teacher_p50 / latency['p50_ms']:.1f}x |")
    data = metrics["data"]
    lines += ["", f"Labeled train rows: {data['train']['rows']}; transfer set: {data['transfer']['rows']} rows "
                  f"({data['transfer']['label_counts'].get('-1', 0)} without a hard label).", "",
              "| stage | wall time (s) |", "|---|---|"]
    lines += [f"| {stage} | {manifest['wall_s']:.1f} |" for stage, manifest in metrics.items()]
    return "\n".join(lines) + "\n"
