"""Runs the stages of a distillation in order, skipping those already done.

Each stage's fingerprint hashes its config section and the fingerprint of the stage before,
so changing ``train.*`` reruns ``train`` and ``evaluate`` but reuses the data, the teacher and
its soft labels. A rerun after an interruption starts at the first stage without a manifest
(and the label stage resumes inside, shard by shard).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from pipeline.stages import benchmark, data, evaluate, export, finetune, label, prune, quantize, train
from pipeline.observability import console, live_metrics
from pipeline.evaluation import report
from core.artifacts import atomic_write_text, sha256_file
from pipeline.artifacts import RunDir, fingerprint
from pipeline.config.sections import MultiTaskRunConfig, RunConfig
from pipeline.config.loading import redact
from pipeline.ray_address import check_ray_address
from core.errors import ConfigError
from pipeline.tasks import check_before_stages, source_fingerprints
from pipeline.observability.tracking import Tracker
from core.hf_checkpoint import weight_files

log = logging.getLogger(__name__)

STAGES: dict[str, Callable[[RunConfig | MultiTaskRunConfig, RunDir], dict[str, Any]]] = {
    "data": data.run, "finetune": finetune.run, "label": label.run, "train": train.run, "evaluate": evaluate.run,
    "prune": prune.run, "export": export.run, "quantize": quantize.run, "benchmark": benchmark.run}
"""Stage name -> stage function, in pipeline order; a run runs those it has a section for (:func:`configured`)."""

OPTIONAL_STAGES = ("prune", "export", "quantize", "benchmark")
"""Stages that run only when the config has their section (``prune:``, ...)."""


def needs_ray(cfg: RunConfig | MultiTaskRunConfig, stage: str) -> bool:
    """Whether a stage uses Ray: label and train always, data when it augments."""
    return stage in {"label", "train"} or (stage == "data" and cfg.data.augment is not None)


def stage_inputs(cfg: RunConfig | MultiTaskRunConfig, stage: str) -> Any:
    """What a stage's output depends on besides the stages before it; for a multi-task run's
    ``train``, also its source runs' data and label fingerprints (:func:`pipeline.tasks.source_fingerprints`)."""
    if stage == "train":
        sources = source_fingerprints(cfg)
        return [cfg.train, cfg.seed, sources] if sources else [cfg.train, cfg.seed]
    if stage == "data":
        files = [cfg.data.resolve(s) for s in (cfg.data.train, cfg.data.dev, cfg.data.test, cfg.data.unlabeled)
                 if s is not None]
        if cfg.data.augment is not None:
            files.append(cfg.data.resolve_path(cfg.data.augment.pos_lexicon))
        # where the data lies (data.root) does not count, only the content of its files; the teacher
        # counts for the rows its tokenizer truncates
        return [cfg.data.model_copy(update={"root": None}), file_stats(f for f in files if f is not None and f.exists()),
                cfg.teacher]
    if stage == "label":
        # every teacher counts by the content of all its weight files (sharded checkpoints too):
        # a teacher replaced in place relabels, under a new fingerprint
        teachers = [RunDir(cfg.run_dir).teacher_dir, *cfg.label.teachers]
        return [cfg.label, cfg.teacher.max_length, [file_stats(weight_files(folder)) for folder in teachers]]
    if stage in OPTIONAL_STAGES:
        return [getattr(cfg, stage), cfg.seed]
    if stage == "finetune":
        return [cfg.teacher, cfg.finetune, cfg.seed]
    return [cfg.evaluate]


def stage_fingerprint(cfg: RunConfig | MultiTaskRunConfig, stage: str, upstream: str) -> str:
    """The fingerprint of a stage: its inputs (:func:`stage_inputs`) and the stage before's
    fingerprint ``upstream``. The stage sees it as :attr:`RunDir.stage_fingerprint`, under
    which its partial work (label shards, train checkpoints) resumes."""
    return fingerprint(stage, stage_inputs(cfg, stage), upstream)


def file_stats(files: Iterable[Path]) -> list[tuple[str, int, str]]:
    """``(name, size in bytes, SHA-256)`` of each file: its content, not where it lies or when it
    was touched, so a copied or re-provisioned data folder keeps every finished stage."""
    return [(f.name, f.stat().st_size, sha256_file(f)) for f in files]


def run_pipeline(cfg: RunConfig | MultiTaskRunConfig, until: str = "benchmark",
                 force: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run every stage up to and including ``until``.

    Args:
        cfg: the validated run config, single- or multi-task.
        until: the last stage to run; stages the config has no section for are skipped.
        force: stages to redo even when fresh (the stages after them are redone too).

    Returns:
        The manifests of the stages run or reused, keyed by stage name.

    Raises:
        ConfigError: ``until`` or ``force`` names an unknown stage, a rule of the config that
            reads its teacher or source runs is broken (:func:`pipeline.tasks.check_before_stages`),
            or ``ray.address`` names a cluster that does not answer (checked before any stage,
            when one of them uses Ray).
        DistillError: any stage's input error (see each stage).
    """
    all_names = list(STAGES)
    for stage in (until, *force):
        if stage not in STAGES:
            raise ConfigError(f"unknown stage {stage!r}; stages are {all_names}")
    names = [name for name in all_names[: all_names.index(until) + 1] if cfg.runs_stage(name)]
    check_before_stages(cfg)  # every rule of the config, not only those of the stages up to ``until``
    if cfg.ray.address is not None and any(needs_ray(cfg, name) for name in names):
        check_ray_address(cfg.ray.address)  # in seconds, not after the stages before the first Ray one
    run_dir = RunDir(cfg.run_dir)
    run_dir.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir.root / "config.yaml", yaml.safe_dump(redact(cfg.model_dump(mode="json")),
                                                                       sort_keys=False))
    tracker = Tracker(cfg) if cfg.tracking.mode != "disabled" else None
    manifests: dict[str, Any] = {}
    try:
        with live_metrics.activated(tracker):
            run_stages(cfg, run_dir, names, force, tracker, manifests)
    finally:
        if tracker:
            tracker.finish()
    return manifests


def run_stages(cfg: RunConfig | MultiTaskRunConfig, run_dir: RunDir, names: list[str], force: tuple[str, ...],
               tracker: Tracker | None, manifests: dict[str, Any]) -> None:
    """Run (or reuse) the stages ``names`` in order into ``manifests``, then write the report and
    log it, the plots and the students to W&B (see :func:`run_pipeline`)."""
    stage_fp, rerun = "", False
    for stage in names:
        stage_fp = stage_fingerprint(cfg, stage, stage_fp)
        rerun = rerun or stage in force or not run_dir.is_fresh(stage, stage_fp)
        if not rerun:
            log.info("stage %s: up to date, reusing %s", stage, run_dir.root / stage)
            manifests[stage] = run_dir.manifest(stage)
            continue
        if needs_ray(cfg, stage):
            start_ray(cfg)
        log.info("stage %s: running", stage)
        run_dir.invalidate(stage)
        for stale in run_dir.remove_partial_files(stage):
            log.info("stage %s: removed %s, left by an interrupted run", stage, stale)
        began = time.perf_counter()
        summary = STAGES[stage](cfg, run_dir.for_stage(stage_fp))
        manifests[stage] = run_dir.publish(stage, stage_fp, summary, time.perf_counter() - began)
        log.info("stage %s: done in %.1f s", stage, manifests[stage]["wall_s"])
        if tracker:
            tracker.log_stage(stage, manifests[stage])
    if "evaluate" in names:
        report.write(run_dir, cfg.name, names)
        log.debug("report: %s", run_dir.report_file)
        if tracker:
            log.debug("tracking: artifacts %s", tracker.log_artifacts(run_dir))


def start_ray(cfg: RunConfig | MultiTaskRunConfig) -> None:
    """Connect to the configured Ray cluster, or start a local instance, once per process.

    Raises:
        ConfigError: ``ray.address`` names a cluster that does not answer
            (:func:`pipeline.ray_address.check_ray_address`), instead of Ray's minutes of retries.
    """
    import ray

    if ray.is_initialized():
        return
    if cfg.ray.address is not None:
        check_ray_address(cfg.ray.address)
    # Workers' output still reaches the console (the train progress bar); their log records go to
    # the run's logs/ folder (pipeline.observability.console.setup_worker_logging).
    ray.init(address=cfg.ray.address, num_cpus=cfg.ray.num_cpus if cfg.ray.address is None else None,
             include_dashboard=False, log_to_driver=True, configure_logging=False, logging_level=logging.WARNING,
             runtime_env=console.ray_runtime_env())
    console.route_ray_forwarded_noise()
    log.debug("ray: %s", ray.cluster_resources())
