"""Weights & Biases tracking of a run: live training curves, stage results, artifacts.

One W&B run per run folder, offline by default (``tracking.mode``): written under
``<run_dir>/wandb`` and uploaded later with ``wandb sync``; ``disabled`` turns tracking off.
Its id is stable (:func:`run_id`: the run's name and a hash of its absolute folder) and the
run is opened with ``resume="allow"``, so a rerun of the pipeline (after a kill, or with
``--force``) continues the same W&B run.

What is logged:
    config      the run config (secret-looking values redacted, :func:`pipeline.config.loading.redact`),
                ``machine`` (:func:`machine_facts`) and, for a multi-task run, ``source_runs``
    finetune/*  per step: loss, lr, examples_per_s, against ``finetune/step``
    train/<student>/*  per step: loss, loss_<term> of every loss term, lr, examples_per_s, the
                optimizer step; per epoch: dev_score (and dev_<task>), epoch means, wall_s,
                peak_rss_mb; against ``train/<student>/step`` (:mod:`pipeline.observability.live_metrics`)
    summary     each stage's wall_s, the evaluate scores, the benchmark table and plot
    artifacts   ``report`` (report.md, metrics.json), ``plots`` (every png of the run) and one
                ``model`` artifact per student folder, after evaluate and after benchmark

Steps stay monotonic across reruns: each step metric continues above the last step logged to
it, which :class:`StepCounters` keeps in ``<run_dir>/wandb/steps.json`` (offline runs cannot
ask the server).
"""

from __future__ import annotations

import hashlib
import logging
import platform
import re
from pathlib import Path
from typing import Any

import psutil

from core.artifacts import atomic_write_json, read_json
from pipeline.artifacts import RunDir
from pipeline.config.sections import MultiTaskRunConfig, RunConfig
from pipeline.config.loading import redact

log = logging.getLogger(__name__)

BENCHMARK_COLUMNS = ("name", "model", "backend", "precision", "method", "size_mb", "parameters",
                     "speedup_vs_teacher_best", "size_ratio_vs_teacher_best", "accuracy_ratio_vs_teacher")
"""Columns of the benchmark table from each variant (the dev score goes after ``method``)."""
THREAD_FIGURES = ("p50_ms", "p99_ms", "throughput_eps", "peak_rss_mb")
"""Figures measured per thread count, one column each per thread count."""
STUDENT_KINDS = ("kd", "ce_only")
"""Student folders of the train stage logged as ``model`` artifacts."""


def run_id(cfg: RunConfig | MultiTaskRunConfig) -> str:
    """The W&B run id of a run folder: its name (characters W&B allows, at most 48) and the first
    8 hex digits of the SHA-1 of its absolute path, e.g. ``sst2-quick-1a2b3c4d``."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", cfg.name)[:48]
    return f"{name}-{hashlib.sha1(str(cfg.run_dir.resolve()).encode()).hexdigest()[:8]}"


def run_group(cfg: RunConfig | MultiTaskRunConfig) -> str:
    """The W&B group: ``tracking.group``, else a multi-task run's first source run's group, else the run's name."""
    if cfg.tracking.group is not None:
        return cfg.tracking.group
    if isinstance(cfg, MultiTaskRunConfig):
        from pipeline.tasks import run_tasks

        return run_group(run_tasks(cfg, RunDir(cfg.run_dir))[0].cfg)
    return cfg.name


def source_run_ids(cfg: RunConfig | MultiTaskRunConfig) -> dict[str, str]:
    """A multi-task run's sources' W&B run ids by task name; empty for a single-task run."""
    if not isinstance(cfg, MultiTaskRunConfig):
        return {}
    from pipeline.tasks import run_tasks

    return {task.name: run_id(task.cfg) for task in run_tasks(cfg, RunDir(cfg.run_dir))}


def machine_facts() -> dict[str, Any]:
    """The driver machine: host OS, Python, CPU model, logical CPUs, memory (GB), torch and its
    accelerator (W&B's own system metrics add the utilisation curves)."""
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "logical_cpus": psutil.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 1e9, 1), "torch": torch.__version__,
            "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}


class StepCounters:
    """The last step logged to each step metric, kept in a JSON file so that a rerun continues above it.

    Args:
        file: ``<run_dir>/wandb/steps.json``: ``{step metric: last step}``.
    """

    def __init__(self, file: Path):
        self.file = file
        self.last: dict[str, int] = read_json(file) if file.is_file() else {}

    def base(self, metric: str, first_step: int) -> int:
        """The offset that puts a new stream, whose first local step is ``first_step``, above
        the last step logged to ``metric`` (0 when nothing was)."""
        return max(0, self.last.get(metric, -1) + 1 - first_step)

    def logged(self, metric: str, step: int) -> None:
        """Record ``step`` as logged to ``metric``."""
        self.last[metric] = max(step, self.last.get(metric, -1))

    def save(self) -> None:
        """Write the counters (atomically)."""
        atomic_write_json(self.file, self.last)


class Tracker:
    """One W&B run per run folder; logs live training rows, each stage's results and the artifacts.

    Args:
        cfg: the run config; ``cfg.tracking.mode`` is "offline" or "online" (the runner creates
            no tracker when it is "disabled").
    """

    def __init__(self, cfg: RunConfig | MultiTaskRunConfig):
        import wandb

        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_root = cfg.run_dir
        config = {**redact(cfg.model_dump(mode="json")), "machine": machine_facts(),
                  "source_runs": source_run_ids(cfg)}
        # silent here too: wandb.init's settings do not reach the artifact messages of wandb's terminal
        wandb.setup(settings=wandb.Settings(silent=True))
        self.run = wandb.init(project=cfg.tracking.project, entity=cfg.tracking.entity, name=cfg.name,
                              id=run_id(cfg), resume="allow", group=run_group(cfg), dir=str(cfg.run_dir),
                              mode=cfg.tracking.mode, config=config, job_type="distill",
                              settings=wandb.Settings(silent=True, console="off"))
        (cfg.run_dir / "wandb").mkdir(exist_ok=True)
        self.steps = StepCounters(cfg.run_dir / "wandb" / "steps.json")
        if cfg.tracking.mode == "offline":
            log.info("tracking: W&B offline run %s in %s (upload with `wandb sync`)", self.run.id, self.run.dir)

    def define_steps(self, namespace: str) -> str:
        """Plot every ``<namespace>/*`` key against the step metric ``<namespace>/step``; returns its name."""
        metric = f"{namespace}/step"
        self.run.define_metric(metric)
        self.run.define_metric(f"{namespace}/*", step_metric=metric)
        return metric

    def log_rows(self, namespace: str, rows: list[dict[str, float]], base: int) -> None:
        """Log live rows of one stream: each row's ``step`` (its local step) plus ``base`` becomes
        ``<namespace>/step``, the other keys ``<namespace>/<key>``."""
        metric = f"{namespace}/step"
        for row in rows:
            step = base + int(row["step"])
            self.run.log({metric: step, **{f"{namespace}/{k}": v for k, v in row.items() if k != "step"}})
            self.steps.logged(metric, step)
        self.steps.save()

    def log_stage(self, stage: str, manifest: dict[str, Any]) -> None:
        """Log a stage's wall time and scalar results to the summary (the curves were logged live)."""
        self.run.summary[f"{stage}/wall_s"] = manifest["wall_s"]
        if stage == "evaluate":
            for task, results in manifest.get("tasks", {}).items():  # a multi-task run's scores, per task
                for model in ("kd", "ce_only"):
                    for key, value in results.get(model, {}).items():
                        self.run.summary[f"{model}/{task}_{key}"] = value
            for model, metrics in manifest["models"].items():
                for key in manifest.get("score_keys", []):
                    self.run.summary[f"{model}/{key}"] = metrics[key]
                self.run.summary[f"{model}/parameters"] = metrics["parameters"]
                self.run.summary[f"{model}/size_mb"] = metrics["size_mb"]
                self.run.summary[f"{model}/p50_ms"] = metrics["latency"]["p50_ms"]
        if stage == "benchmark":
            self.log_benchmark(manifest)

    def log_benchmark(self, summary: dict[str, Any]) -> None:
        """Log the benchmark's variants as a ``wandb.Table`` (``benchmark/variants``: one row per
        variant, the columns of :data:`BENCHMARK_COLUMNS` with the thread counts flattened as
        ``p50_ms_1``, ``p50_ms_all``, ...) and its Pareto plot as a ``wandb.Image``."""
        import wandb

        fixed = [*BENCHMARK_COLUMNS[:5], summary["score_key"], *BENCHMARK_COLUMNS[5:]]
        per_thread = [(key, figure) for key in summary["machine"]["threads"] for figure in THREAD_FIGURES]
        columns = fixed + [f"{figure}_{key}" for key, figure in per_thread]
        rows = [[v[c] for c in fixed] + [v["threads"][key][figure] for key, figure in per_thread]
                for v in summary["variants"]]
        logged = {"benchmark/variants": wandb.Table(columns=columns, data=rows)}
        if "pareto_png" in summary:
            logged["benchmark/pareto"] = wandb.Image(str(self.run_root / summary["pareto_png"]))
        self.run.log(logged)
        self.run.summary["benchmark/baseline"] = summary["baseline"]

    def log_artifacts(self, run_dir: RunDir) -> list[str]:
        """Log the report, the plots and the students as ``wandb.Artifact`` s; returns their names.

        ``report``: report.md and metrics.json; ``plots``: every png of the run folder (outside
        ``wandb/``); ``student-<kind>``: each student folder of the train stage (type ``model``).
        """
        import wandb

        artifacts = []
        report = wandb.Artifact(f"{self.run.id}-report", type="report")
        for file in (run_dir.report_file, run_dir.metrics_file):
            if file.is_file():
                report.add_file(str(file))
        artifacts.append(report)
        plots = run_dir.plots()
        if plots:
            artifact = wandb.Artifact(f"{self.run.id}-plots", type="plots")
            for png in plots:
                artifact.add_file(str(png), name=str(png.relative_to(run_dir.root)))
            artifacts.append(artifact)
        for kind in STUDENT_KINDS:
            if run_dir.student_dir(kind).is_dir():
                artifact = wandb.Artifact(f"{self.run.id}-student-{kind}", type="model")
                artifact.add_dir(str(run_dir.student_dir(kind)))
                artifacts.append(artifact)
        for artifact in artifacts:
            self.run.log_artifact(artifact)
        return [artifact.name for artifact in artifacts]

    def finish(self) -> None:
        """Save the step counters and close the W&B run."""
        self.steps.save()
        self.run.finish()
