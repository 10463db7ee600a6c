"""Weights & Biases tracking of a run: config, per-stage losses and metrics.

Offline by default (``tracking.mode``): runs are written under ``<run_dir>/wandb`` and can be
uploaded later with ``wandb sync``. ``disabled`` turns tracking off.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.config import MultiTaskRunConfig, RunConfig

log = logging.getLogger(__name__)

BENCHMARK_COLUMNS = ("name", "model", "backend", "precision", "method", "size_mb", "parameters",
                     "speedup_vs_teacher_best", "size_ratio_vs_teacher_best", "accuracy_ratio_vs_teacher")
"""Columns of the benchmark table from each variant (the dev score goes after ``method``)."""
THREAD_FIGURES = ("p50_ms", "p99_ms", "throughput_eps", "peak_rss_mb")
"""Figures measured per thread count, one column each per thread count."""


class Tracker:
    """One W&B run per ``distill run``; logs each stage's manifest as it completes.

    Args:
        cfg: the run config, logged as the W&B config; ``cfg.tracking.mode`` is "offline" or
            "online" (the runner creates no tracker when it is "disabled").
    """

    def __init__(self, cfg: RunConfig | MultiTaskRunConfig):
        import wandb

        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_root = cfg.run_dir
        self.run = wandb.init(project=cfg.tracking.project, name=cfg.name, dir=str(cfg.run_dir),
                              mode=cfg.tracking.mode, config=cfg.model_dump(mode="json"),
                              settings=wandb.Settings(silent=True, console="off"))
        if cfg.tracking.mode == "offline":
            log.info("tracking: W&B offline run in %s (upload with `wandb sync`)", self.run.dir)

    def log_stage(self, stage: str, manifest: dict[str, Any]) -> None:
        """Log a stage's wall time, its loss curves and its scalar results."""
        self.run.summary[f"{stage}/wall_s"] = manifest["wall_s"]
        for kind, result in manifest.items():
            if isinstance(result, dict) and "history" in result:
                for row in result["history"]:
                    self.run.log({f"{stage}/{kind}/{k}": v for k, v in row.items()})
        if stage == "finetune":
            for step, loss in enumerate(manifest.get("loss_history", [])):
                self.run.log({"finetune/loss": loss, "finetune/tenth": step})
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

    def finish(self) -> None:
        """Close the W&B run."""
        self.run.finish()
