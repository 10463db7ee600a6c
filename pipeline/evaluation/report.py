"""The run's report: ``metrics.json``, ``report.md`` and ``report.html`` (the same, plots inline),
built from the stage manifests."""

from __future__ import annotations

from typing import Any

from core.artifacts import atomic_write_json, atomic_write_text
from pipeline.artifacts import RunDir
from pipeline.evaluation.headline import headline_lines
from pipeline.evaluation.report_compress import sections
from pipeline.evaluation.report_html import render_html
from pipeline.evaluation.variants import STUDENT_MODELS

MODEL_TITLES = {"teacher": "teacher (fine-tuned)", "kd": "student, KD", "ce_only": "student, CE only"}


def collect(run_dir: RunDir, stages: list[str]) -> dict[str, Any]:
    """The metrics of a finished run: every stage's manifest, keyed by stage name."""
    return {stage: run_dir.require(stage) for stage in stages}


def write(run_dir: RunDir, name: str, stages: list[str]) -> dict[str, Any]:
    """Write ``metrics.json``, ``report.md`` (:func:`render`) and ``report.html``
    (:func:`pipeline.evaluation.report_html.render_html`) into the run directory; returns the metrics."""
    metrics = collect(run_dir, stages)
    atomic_write_json(run_dir.metrics_file, metrics)
    markdown = render(name, metrics)
    atomic_write_text(run_dir.report_file, markdown)
    atomic_write_text(run_dir.report_html, render_html(markdown, run_dir, f"Distillation report: {name}"))
    return metrics


def render(name: str, metrics: dict[str, Any]) -> str:
    """Markdown report of a run: the headline and the links to the stage reports
    (:mod:`pipeline.evaluation.headline`), its tasks, then its stage wall times and the sections of
    the prune and benchmark stages when they ran (:mod:`pipeline.evaluation.report_compress`).

    One task (a single-task run, whose evaluate manifest has no ``tasks``): one table of every
    model's scores, size and latency, the trivial baseline's scores, and the data sizes. Several
    (``tasks``): each task's scores per model beside its teacher and its trivial baseline, then the
    students' size and latency. A flagged student (one that learned almost nothing,
    :mod:`pipeline.evaluation.baseline`) is marked in the tables.
    """
    evaluation = metrics["evaluate"]
    hardware = evaluation["hardware"]
    hardware_line = (f"Hardware: {hardware['cpu']}, {hardware['torch_threads']} torch threads, "
                     f"torch {hardware['torch']}.")
    if "tasks" in evaluation:
        lines = [f"# Multi-task distillation report: {name}", "", hardware_line, "", *tasks_tables(evaluation)]
    else:
        headline = headline_lines(metrics)
        lines = [f"# Distillation report: {name}", "", *headline, *([""] if headline else []),
                 *one_task_tables(evaluation, metrics["data"], hardware_line)]
    lines += ["", "| stage | wall time (s) |", "|---|---|"]
    lines += [f"| {stage} | {manifest['wall_s']:.1f} |" for stage, manifest in metrics.items()]
    lines += sections(metrics)
    return "\n".join(lines) + "\n"


def one_task_tables(evaluation: dict[str, Any], data: dict[str, Any], hardware_line: str) -> list[str]:
    """A single-task run's lines: rows and hardware, the model table (every score of the evaluate
    stage, size, latency, speed-up over the teacher) and the data sizes."""
    models = evaluation["models"]
    keys = evaluation.get("score_keys", ["dev_accuracy"])  # manifests written before test splits existed
    teacher_p50 = models["teacher"]["latency"]["p50_ms"]
    rows = f"Dev rows: {evaluation['dev_rows']}" + (f"; test rows: {evaluation['test_rows']}" if "test_rows" in evaluation
                                                    else "")
    lines = [f"{rows}. {hardware_line}",
             "", f"| model | {' | '.join(map(score_title, keys))} | parameters | size (MB) | batch-1 p50 (ms) | "
                 f"p99 (ms) | speed-up vs teacher |",
             "|---|" + "---|" * (len(keys) + 5)]
    for key, row in models.items():
        latency = row["latency"]
        scores = " | ".join(f"{row[k]:.4f}" for k in keys)
        lines.append(f"| {MODEL_TITLES.get(key, key)}{flag_mark(row.get('flag'))} | {scores} | {row['parameters']:,} | "
                     f"{row['size_mb']:.1f} | {latency['p50_ms']:.2f} | {latency['p99_ms']:.2f} | "
                     f"{teacher_p50 / latency['p50_ms']:.1f}x |")
    if "baseline" in evaluation:  # manifests written before the baseline existed have none
        baseline = evaluation["baseline"]
        lines.append(f"| {baseline_title(baseline)} | {' | '.join(f'{baseline[k]:.4f}' for k in keys)} |"
                     + " - |" * 5)
    transfer = data["transfer"]
    unlabeled = transfer.get("unlabeled_rows", transfer["label_counts"].get("-1", 0))  # the key is newer than runs
    return lines + ["", f"Labeled train rows: {data['train']['rows']}; transfer set: {transfer['rows']} rows "
                        f"({unlabeled} without a hard label)."]


def tasks_tables(evaluation: dict[str, Any]) -> list[str]:
    """A multi-task run's lines: every task's scores (teacher, KD student, CE-only student), then
    the students' size and batch-1 latency on the first task."""
    lines = ["| task | score | teacher | student, KD | student, CE only | trivial baseline |",
             "|---|---|---|---|---|---|"]
    for task, results in evaluation["tasks"].items():
        flags, baseline = results.get("flags", {}), results.get("baseline", {})
        for key in results["score_keys"]:
            teacher = results["teacher"].get(key) if results["teacher"] else None
            cells = [f"{teacher:.4f}" if teacher is not None else "-",
                     *(f"{results[kind][key]:.4f}{flag_mark(flags.get(kind))}" if kind in results else "-"
                       for kind in STUDENT_MODELS), f"{baseline[key]:.4f}" if key in baseline else "-"]
            lines.append(f"| {task} | {key.replace('_', ' ')} | {' | '.join(cells)} |")
    lines += ["", f"Batch-1 latency on {evaluation['latency_task']} dev rows.", "",
              "| model | parameters | size (MB) | p50 (ms) | p99 (ms) |", "|---|---|---|---|---|"]
    for kind, row in evaluation["models"].items():
        lines.append(f"| {MODEL_TITLES[kind]} | {row['parameters']:,} | "
                     f"{row['size_mb']:.1f} | {row['latency']['p50_ms']:.2f} | {row['latency']['p99_ms']:.2f} |")
    return lines


def flag_mark(flag: str | None) -> str:
    """The marker after a flagged student's name or score in a table (:mod:`pipeline.evaluation.baseline`):
    " **[flagged: <why>]**", or "" when it is not flagged."""
    return f" **[flagged: {flag}]**" if flag else ""


def baseline_title(baseline: dict[str, Any]) -> str:
    """The model cell of the trivial baseline's row: "trivial baseline (majority class: 1)"."""
    return f"trivial baseline ({baseline['rule']})"


def score_title(key: str) -> str:
    """Column title of an evaluate score key: ``dev_accuracy`` -> "dev accuracy", ``test_entity_f1`` -> "test entity F1"."""
    return key.replace("_", " ").replace(" f1", " F1")
