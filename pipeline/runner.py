"""Runs the stages of a distillation in order, skipping those already done.

Each stage's fingerprint hashes its config section, the fingerprint of the stage before and
the versions of the project and of the libraries that shape its output (:data:`STAGE_LIBRARIES`),
so changing ``train.*`` reruns ``train`` and ``evaluate`` but reuses the data, the teacher and
its soft labels, and an upgraded library redoes the stages it shapes. A rerun after an
interruption starts at the first stage without a manifest (and the label stage resumes inside,
shard by shard); Ctrl-C ends a run with :class:`StageInterrupted`. :func:`dry_run` says what a
run would redo, and why, without doing it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from pipeline.stages import benchmark, data, evaluate, export, finetune, label, prune, quantize, train
from pipeline.observability import console, live_metrics
from pipeline.evaluation import report
from core.artifacts import atomic_write_text, sha256_file
from pipeline.artifacts import RunDir, changed_parts, fingerprint, fingerprint_parts
from pipeline.config.sections import MultiTaskRunConfig, RunConfig
from pipeline.config.loading import redact
from pipeline.ray_address import check_ray_address
from core.errors import ConfigError
from pipeline.tasks import check_before_stages, source_fingerprints
from pipeline.textdata.lexicon import lexicon_path
from pipeline.observability.tracking import Tracker
from core.hf_checkpoint import weight_files

log = logging.getLogger(__name__)

STAGES: dict[str, Callable[[RunConfig | MultiTaskRunConfig, RunDir], dict[str, Any]]] = {
    "data": data.run, "finetune": finetune.run, "label": label.run, "train": train.run, "evaluate": evaluate.run,
    "prune": prune.run, "export": export.run, "quantize": quantize.run, "benchmark": benchmark.run}
"""Stage name -> stage function, in pipeline order; a run runs those it has a section for (:func:`configured`)."""

OPTIONAL_STAGES = ("prune", "export", "quantize", "benchmark")
"""Stages that run only when the config has their section (``prune:``, ...)."""

PROJECT = "distill"
"""This project's distribution: its version counts in every stage's fingerprint."""

STAGE_LIBRARIES: dict[str, tuple[str, ...]] = {
    "data": ("datasets", "transformers", "tokenizers"),  # the teacher's tokenizer counts the truncated rows
    "finetune": ("torch", "transformers", "deepspeed"),
    "label": ("torch", "transformers", "tokenizers", "ray"),
    "train": ("torch", "transformers", "tokenizers", "deepspeed", "ray", "sentencepiece"),
    "evaluate": ("torch", "transformers", "tokenizers"),
    "prune": ("torch", "transformers"),
    "export": ("torch", "onnx", "onnxruntime", "executorch"),
    "quantize": ("torch", "onnx", "onnxruntime", "executorch", "torchao"),
    "benchmark": ("torch", "onnxruntime", "executorch")}
"""Stage name -> the distributions whose versions shape its output, besides :data:`PROJECT`."""


def needs_ray(cfg: RunConfig | MultiTaskRunConfig, stage: str) -> bool:
    """Whether a stage uses Ray: label and train always, data when it augments."""
    return stage in {"label", "train"} or (stage == "data" and cfg.data.augment is not None)


def stage_inputs(cfg: RunConfig | MultiTaskRunConfig, stage: str) -> dict[str, Any]:
    """What a stage's output depends on besides the stages before it and the libraries, by a name
    that says what changed when it does (``"config section train"``, ``"data files"``); for a
    multi-task run's ``train``, also its source runs' data and label fingerprints
    (:func:`pipeline.tasks.source_fingerprints`)."""
    if stage == "train":
        sources = source_fingerprints(cfg)
        return {"config section train": cfg.train, "config seed": cfg.seed,
                **({"source runs": sources} if sources else {})}
    if stage == "data":
        files = [cfg.data.resolve(s) for s in (cfg.data.train, cfg.data.dev, cfg.data.test, cfg.data.unlabeled)
                 if s is not None]
        if cfg.data.augment is not None:
            files.append(lexicon_path(cfg.data))
        # where the data lies (data.root) does not count, only the content of its files; the teacher
        # counts for the rows its tokenizer truncates
        return {"config section data": cfg.data.model_copy(update={"root": None}),
                "data files": file_stats(f for f in files if f is not None and f.exists()),
                "config section teacher": cfg.teacher}
    if stage == "label":
        # every teacher counts by the content of all its weight files (sharded checkpoints too):
        # a teacher replaced in place relabels, under a new fingerprint
        teachers = [RunDir(cfg.run_dir).teacher_dir, *cfg.label.teachers]
        return {"config section label": cfg.label, "config teacher.max_length": cfg.teacher.max_length,
                "teacher weights": [file_stats(weight_files(folder)) for folder in teachers]}
    if stage in OPTIONAL_STAGES:
        return {f"config section {stage}": getattr(cfg, stage), "config seed": cfg.seed}
    if stage == "finetune":
        return {"config section teacher": cfg.teacher, "config section finetune": cfg.finetune, "config seed": cfg.seed}
    return {"config section evaluate": cfg.evaluate}


def stage_parts(cfg: RunConfig | MultiTaskRunConfig, stage: str, upstream: str) -> dict[str, Any]:
    """What a stage's fingerprint hashes (:func:`pipeline.artifacts.fingerprint_parts`): its inputs
    (:func:`stage_inputs`), the stage before's fingerprint ``upstream`` and the versions of
    :data:`PROJECT` and of the stage's :data:`STAGE_LIBRARIES`."""
    return fingerprint_parts(stage_inputs(cfg, stage), upstream, (PROJECT, *STAGE_LIBRARIES[stage]))


def stage_fingerprint(cfg: RunConfig | MultiTaskRunConfig, stage: str, upstream: str) -> str:
    """The fingerprint of a stage (16 hex characters): a hash of its :func:`stage_parts`. The stage
    sees it as :attr:`RunDir.stage_fingerprint`, under which its partial work (label shards, train
    checkpoints) resumes."""
    return fingerprint(stage, stage_parts(cfg, stage, upstream))


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
    names = stage_names(cfg, until, force)
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


def stage_names(cfg: RunConfig | MultiTaskRunConfig, until: str, force: tuple[str, ...]) -> list[str]:
    """The stages a run up to and including ``until`` runs or reuses, in order: those the config
    has a section for.

    Raises:
        ConfigError: ``until`` or ``force`` names an unknown stage.
    """
    all_names = list(STAGES)
    for stage in (until, *force):
        if stage not in STAGES:
            raise ConfigError(f"unknown stage {stage!r}; stages are {all_names}")
    return [name for name in all_names[: all_names.index(until) + 1] if cfg.runs_stage(name)]


class Step(NamedTuple):
    """One stage of a run as :func:`plan` decides it."""

    stage: str
    fingerprint: str
    parts: dict[str, Any]
    """What the fingerprint hashes (:func:`stage_parts`); its manifest records them."""
    reasons: list[str]
    """Why the stage reruns (``"no manifest yet"``, ``"config section train changed"``,
    ``"torch 2.5.1 -> 2.6.0"``, ``"upstream stage label reruns"``); empty: its manifest is reused."""


def plan(cfg: RunConfig | MultiTaskRunConfig, run_dir: RunDir, names: list[str],
         force: tuple[str, ...]) -> Iterator[Step]:
    """Each stage of ``names`` in order, with its fingerprint and why it reruns.

    Lazy: a stage's inputs are read when the caller takes its step, after running the stage
    before (the label stage counts the weights of the teacher that finetune wrote). A stage reruns
    when it has no manifest, is forced, its fingerprint changed or the stage before reruns.
    """
    upstream, previous, previous_reruns = "", None, False
    for stage in names:
        parts = stage_parts(cfg, stage, upstream)
        stage_fp = fingerprint(stage, parts)
        manifest = run_dir.manifest(stage)
        if manifest is None:
            reasons = ["no manifest yet"]
        else:
            reasons = ["forced with --force"] if stage in force else []
            if previous_reruns:
                reasons.append(f"upstream stage {previous} reruns")
            if manifest.get("fingerprint") != stage_fp:
                recorded = manifest.get("fingerprint_parts")
                reasons += (changed_parts(recorded, parts, None if previous_reruns else previous)
                            or ([] if previous_reruns else ["its fingerprint changed"]))
        yield Step(stage, stage_fp, parts, reasons)
        upstream, previous, previous_reruns = stage_fp, stage, previous_reruns or bool(reasons)


def dry_run(cfg: RunConfig | MultiTaskRunConfig, until: str = "benchmark",
            force: tuple[str, ...] = ()) -> list[tuple[str, list[str]]]:
    """What :func:`run_pipeline` would do, without doing it: each stage with the reasons it would
    rerun (:attr:`Step.reasons`; empty: reused). Starts no Ray and writes no manifest; it reads the
    data files and teacher weights to hash them.

    Raises:
        ConfigError: ``until`` or ``force`` names an unknown stage.
        ArtifactError: a multi-task run's source run has not finished its data or label stage.
    """
    return [(step.stage, step.reasons) for step in plan(cfg, RunDir(cfg.run_dir), stage_names(cfg, until, force),
                                                         force)]


def run_stages(cfg: RunConfig | MultiTaskRunConfig, run_dir: RunDir, names: list[str], force: tuple[str, ...],
               tracker: Tracker | None, manifests: dict[str, Any]) -> None:
    """Run (or reuse) the stages ``names`` in order into ``manifests``, then write the report and
    log it, the plots and the students to W&B (see :func:`run_pipeline`).

    Raises:
        StageInterrupted: Ctrl-C during a stage (:func:`interruptible`).
    """
    connected = False
    for step in plan(cfg, run_dir, names, force):
        stage = step.stage
        if not step.reasons:
            log.info("stage %s: up to date, reusing %s", stage, run_dir.root / stage)
            manifests[stage] = run_dir.manifest(stage)
            continue
        if needs_ray(cfg, stage):
            connected = start_ray(cfg) or connected
        log.info("stage %s: running%s", stage, "" if step.reasons == ["no manifest yet"]
                 else f" ({'; '.join(step.reasons)})")
        run_dir.invalidate(stage)
        for stale in run_dir.remove_partial_files(stage):
            log.info("stage %s: removed %s, left by an interrupted run", stage, stale)
        began = time.perf_counter()
        with interruptible(stage, connected):
            summary = STAGES[stage](cfg, run_dir.for_stage(step.fingerprint))
        manifests[stage] = run_dir.publish(stage, step.fingerprint, summary, time.perf_counter() - began, step.parts)
        log.info("stage %s: done in %.1f s", stage, manifests[stage]["wall_s"])
        if tracker:
            tracker.log_stage(stage, manifests[stage])
    if "evaluate" in names:
        report.write(run_dir, cfg.name, names)
        log.debug("report: %s", run_dir.report_file)
        if tracker:
            log.debug("tracking: artifacts %s", tracker.log_artifacts(run_dir))


RAY_EXIT_S = 5.0
"""Seconds the local Ray instance's worker processes get to exit after ``ray.shutdown()`` on Ctrl-C."""


class StageInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during a stage, named by ``stage``; finished stages, label shards and train
    checkpoints stay for the rerun."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage)
        self.stage = stage


@contextlib.contextmanager
def interruptible(stage: str, connected: bool) -> Iterator[None]:
    """Run a stage so that Ctrl-C ends it as :class:`StageInterrupted`, with no Ray process left.

    A SIGINT is noticed whatever a library makes of it: Ray Train's own handler aborts the training
    and ends ``trainer.fit`` with a SystemExit, Ray's waits end with a KeyboardInterrupt, a stage
    may even return. The signal module writes the number of every signal that arrives to a wakeup
    pipe (:func:`signal.set_wakeup_fd`), read when the stage ends. Then, when this run connected to
    Ray (``connected``), ``ray.shutdown()`` takes down the local instance it started with its train
    workers and label actors (or leaves a cluster, whose actors of this driver go with it); another
    Ctrl-C meanwhile is ignored. The SIGINT handler is restored when the stage ends, so Ray Train's
    does not outlive it. In a thread other than the main one, which receives no signal, the stage
    just runs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGINT)
    read, write = os.pipe()
    for end in (read, write):
        os.set_blocking(end, False)
    previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)

    def interrupted() -> bool:
        try:
            return signal.SIGINT in os.read(read, 4096)
        except BlockingIOError:  # nothing arrived
            return False

    try:
        try:
            yield
        except BaseException as exc:
            if interrupted():
                clean_up_interrupted(stage, connected)
                raise StageInterrupted(stage) from exc
            raise
        if interrupted():
            clean_up_interrupted(stage, connected)
            raise StageInterrupted(stage)
    finally:
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGINT, handler)
        os.close(read)
        os.close(write)


def clean_up_interrupted(stage: str, connected: bool) -> None:
    """After Ctrl-C during ``stage``: ignore further ones; when this run connected to Ray, shut it
    down; close the progress bars (Ray's driver-side bars of the stage's workers would otherwise be
    drawn again under the last line). Worker processes of the local instance that outlive its
    raylet (Ray Train's PlacementGroupCleaner and PreemptionWatcher linger for tens of seconds)
    are killed after :data:`RAY_EXIT_S`."""
    from tqdm import tqdm

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log.debug("stage %s: interrupted (SIGINT)%s", stage, "; shutting Ray down" if connected else "")
    workers = shutdown_ray() if connected else []
    for bar in list(tqdm._instances):  # every bar still open, tqdm_ray's included
        bar.close()
    reap(workers)


def shutdown_ray() -> list:
    """``ray.shutdown()``: the local instance this process started goes down (a cluster is left).

    Returns:
        The ``psutil.Process`` es of the local instance's workers (the children of its raylet,
        none on a cluster), which may outlive it: give them to :func:`reap`.
    """
    import psutil
    import ray

    workers: list[psutil.Process] = []
    for child in psutil.Process().children():  # no raylet among them on a cluster
        with contextlib.suppress(psutil.NoSuchProcess):  # a child that has just exited
            if child.name() == "raylet":
                workers += child.children(recursive=True)
    ray.shutdown()
    return workers


def reap(workers: list) -> None:
    """Wait up to :data:`RAY_EXIT_S` for Ray worker processes (``psutil.Process``) that
    :func:`shutdown_ray` left, then kill those still alive (Ray Train's PlacementGroupCleaner and
    PreemptionWatcher linger for tens of seconds)."""
    import psutil

    _, alive = psutil.wait_procs(workers, timeout=RAY_EXIT_S)
    for worker in alive:
        log.debug("killing Ray worker %d, left after ray.shutdown()", worker.pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()


def start_ray(cfg: RunConfig | MultiTaskRunConfig) -> bool:
    """Connect to the configured Ray cluster, or start a local instance, once per process.

    Returns:
        True when this call connected, False when Ray was already initialized (by an earlier
        call or by the caller).

    Raises:
        ConfigError: ``ray.address`` names a cluster that does not answer
            (:func:`pipeline.ray_address.check_ray_address`), instead of Ray's minutes of retries.
    """
    import ray

    if ray.is_initialized():
        return False
    if cfg.ray.address is not None:
        check_ray_address(cfg.ray.address)
    # Workers' output still reaches the console (the train progress bar); their log records go to
    # the run's logs/ folder (pipeline.observability.console.setup_worker_logging).
    ray.init(address=cfg.ray.address, num_cpus=cfg.ray.num_cpus if cfg.ray.address is None else None,
             include_dashboard=False, log_to_driver=True, configure_logging=False, logging_level=logging.WARNING,
             runtime_env=console.ray_runtime_env())
    console.route_ray_forwarded_noise()
    log.debug("ray: %s", ray.cluster_resources())
    return True
