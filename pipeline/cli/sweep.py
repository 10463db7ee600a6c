"""``distill sweep``: a grid search over ``train.*`` settings with Ray Tune, on a run's soft labels.

The label stage is what costs (a teacher forward pass over the whole transfer set), so a sweep
reuses it: every grid point is a full config (the run's, with ``--set`` and the point's values
applied, validated like ``distill run``), and each trial only trains a KD student on the
finished ``label/`` shards with the train stage's own code (:func:`pipeline.stages.train.train_students`),
then scores it on the dev split with the evaluate stage's (:func:`pipeline.stages.evaluate.task_scores`).

Trials are Ray Tune function trainables (the Ray Train V2 pattern: each trial drives one
``TorchTrainer``), run in a grid over the points still to do; a trial's run folder
``sweep/<trial>/`` gets its student and a train manifest under the train stage's fingerprint, so a
rerun reuses finished trials and an interrupted one resumes from its latest checkpoint. The
results, best first, go to ``sweep/results.json``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any

import ray
import torch
from ray import tune

from core.artifacts import atomic_write_json
from core.errors import ArtifactError, ConfigError
from pipeline.evaluation import scoring
from pipeline.stages import evaluate, train
from pipeline.artifacts import RunDir
from pipeline.config.sections import RunConfig
from pipeline.config.loading import load_config
from pipeline.runner import stage_fingerprint, start_ray
from pipeline.tasks import Task, run_tasks
from students.registry import load_student

log = logging.getLogger(__name__)

GRID_SECTION = "train"
"""The config section a grid may vary: its settings change the train stage only, so the soft labels stay valid."""

TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 2**20}
"""What a trial's own process reserves: no CPU (its trainer's workers and Ray Data's reads
reserve theirs), and 1 MiB of memory because Ray Tune refuses an empty request."""


@dataclass(frozen=True)
class Trial:
    """One grid point.

    Attributes:
        name: the trial's folder name, ``key=value`` of each grid key (without ``train.``) joined by ``,``.
        values: the grid keys' values as given, ``{dotted key: text}``.
        cfg: the validated run config of this point.
        label_fingerprint: the label stage's fingerprint it trains on (:func:`label_fingerprint`).
        fingerprint: its train stage's fingerprint (:func:`pipeline.runner.stage_fingerprint`).
    """

    name: str
    values: dict[str, str]
    cfg: RunConfig
    label_fingerprint: str
    fingerprint: str


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
    """``["train.lr=1e-3,1e-2", ...]`` -> ``{"train.lr": ["1e-3", "1e-2"], ...}``, in the given order.

    Raises:
        ConfigError: a spec is not ``KEY=v1,v2,...``, names a key outside ``train.``, or repeats a key.
    """
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        choices = [value.strip() for value in values.split(",")]
        if not sep or not key or "" in choices:
            raise ConfigError(f"--set-grid {spec!r}: expected KEY=v1,v2,..., e.g. train.loss.temperature=1,2,4")
        if not key.startswith(GRID_SECTION + "."):
            raise ConfigError(f"--set-grid {key}: a sweep reuses the soft labels, so it varies {GRID_SECTION}.* "
                              f"settings only; use --set for others and rerun `distill run`")
        if key in grid:
            raise ConfigError(f"--set-grid {key}: given twice; list all its values in one --set-grid")
        grid[key] = choices
    if not grid:
        raise ConfigError("distill sweep needs at least one --set-grid KEY=v1,v2,...")
    return grid


def plan_trials(source: str, overrides: list[str], grid: dict[str, list[str]]) -> list[Trial]:
    """Every point of ``grid`` as a validated config, in grid order (the last key varies fastest).

    Args:
        source: the run's preset name or YAML file.
        overrides: ``--set`` overrides, applied before each point's values.
        grid: see :func:`parse_grid`.

    Raises:
        ConfigError: a point's config is invalid (one line naming the point and the field), or
            the config is a multi-task run's (which has no label stage of its own).
    """
    trials, label_fp = [], None
    for combination in itertools.product(*grid.values()):
        values = dict(zip(grid, combination))
        try:
            cfg = load_config(source, [*overrides, *(f"{key}={value}" for key, value in values.items())])
        except ConfigError as exc:
            point = " ".join(f"{key}={value}" for key, value in values.items())
            raise ConfigError(f"--set-grid {point}: " + " ".join(str(exc).split())) from None
        if not isinstance(cfg, RunConfig):
            raise ConfigError(f"{source}: a sweep tunes a single-task run; give a source run's config")
        label_fp = label_fp or label_fingerprint(cfg)  # the same for every point: the grid varies train.* only
        trials.append(Trial(trial_name(values), values, cfg, label_fp, stage_fingerprint(cfg, "train", label_fp)))
    return trials


def label_fingerprint(cfg: RunConfig) -> str:
    """The label stage's fingerprint of ``cfg``, chained through the data and finetune stages as the runner does."""
    fingerprint = ""
    for stage in ("data", "finetune", "label"):
        fingerprint = stage_fingerprint(cfg, stage, fingerprint)
    return fingerprint


def trial_name(values: dict[str, str]) -> str:
    """A folder name for a grid point: ``loss.temperature=2,lr=0.001``; characters other than
    letters, digits and ``.=,+-`` become ``_``."""
    text = ",".join(f"{key.removeprefix(GRID_SECTION + '.')}={value}" for key, value in values.items())
    return re.sub(r"[^A-Za-z0-9.=,+-]", "_", text)


def require_labels(trial: Trial, source: str) -> None:
    """Raise an :class:`ArtifactError` unless the run's label stage is finished and fresh for ``trial``."""
    run_dir = RunDir(trial.cfg.run_dir)
    if not run_dir.is_fresh("label", trial.label_fingerprint):
        raise ArtifactError(run_dir.root / "label", f"no finished label stage for this config; run "
                                                    f"`distill run {source} --until label` first")


def metric_key(task: Task, metric: str | None) -> str:
    """The dev score key trials are ranked by, ``dev_<metric>``; by default the train stage's dev metric.

    Raises:
        ConfigError: ``metric`` is not a score of the task (:func:`pipeline.evaluation.scoring.score`).
    """
    dev = scoring.read_split(task.run_dir.split_file("dev"), task.kind)
    names = list(scoring.score(dev.gold, dev.gold, task.tag_names, task.metric))
    metric = metric or scoring.dev_metric_name(task.tag_names, task.metric)
    if metric not in names:
        raise ConfigError(f"--metric {metric}: not a score of this {task.kind.value} task; choose from {names}")
    return f"dev_{metric}"


def train_trial(trial: Trial, total_cpus: int | None) -> dict[str, Any]:
    """Train one trial's KD student on its run's soft labels, score it on the dev split, publish its manifest.

    Args:
        trial: the grid point.
        total_cpus: logical CPUs its trainer may use (see :func:`pipeline.stages.train.worker_cpus`).

    Returns:
        The manifest of the trial's train stage: the train stage's ``kd`` summary (see
        :func:`pipeline.stages.train.run`) with ``values`` (the grid values), ``scores``
        (``{"dev_<score>": value}``) and ``wall_s`` (seconds).
    """
    source = RunDir(trial.cfg.run_dir)
    out = source.sweep_trial(trial.name).for_stage(trial.fingerprint)
    out.invalidate("train")
    began = time.perf_counter()
    (task,) = run_tasks(trial.cfg, source)
    summary = train.train_students(trial.cfg, source, out, ce_only=False, total_cpus=total_cpus)["kd"]
    student = load_student(out.student_dir("kd"))
    dev = {"dev": scoring.read_split(task.run_dir.split_file("dev"), task.kind)}
    scores = evaluate.task_scores(trial.name, student, student.featurize, dev, task)
    return out.publish("train", trial.fingerprint, {**summary, "values": trial.values, "scores": scores},
                       time.perf_counter() - began)


def tune_trial(config: dict[str, Any], trials: dict[str, Trial], total_cpus: int | None) -> None:
    """Ray Tune's function trainable: train the trial ``config["trial"]`` and report its dev scores."""
    tune.report(train_trial(trials[config["trial"]], total_cpus)["scores"])


def concurrency(num_workers: int, gpus: int, cpus: int) -> tuple[int, int | None]:
    """``(concurrent trials, CPUs per trial)`` on a cluster of ``gpus`` GPUs and ``cpus`` CPUs.

    With GPUs (and CUDA here), one trial per ``num_workers`` GPUs, each trainer one thread per
    worker (CPUs: None). On CPUs, one trial per ``num_workers + DATA_CPUS`` CPUs
    (:data:`pipeline.stages.train.DATA_CPUS` keep each trial's Ray Data reads schedulable), at least
    one, the CPUs shared evenly: a 2-CPU machine runs one trial at a time with both.
    """
    if gpus and torch.cuda.is_available():
        return max(1, gpus // num_workers), None
    slots = max(1, cpus // (num_workers + train.DATA_CPUS))
    return slots, cpus // slots


def prepare(source: str, grid_specs: list[str], overrides: list[str], metric: str | None) -> tuple[list[Trial], str]:
    """Everything ``distill sweep`` checks before any trial: the grid, every point's config, the
    finished label stage and the metric.

    Args:
        source: the run's preset name or YAML file.
        grid_specs: ``--set-grid`` specs (:func:`parse_grid`).
        overrides: ``--set`` overrides.
        metric: the score to rank by (``accuracy``, ``entity_f1``, ...); None for the train stage's.

    Returns:
        ``(trials, metric key)``, the arguments of :func:`run_sweep`.

    Raises:
        ConfigError: a bad grid spec, point config or metric, before any trial.
        ArtifactError: the run's label stage is not finished for these settings.
    """
    trials = plan_trials(source, overrides, parse_grid(grid_specs))
    cfg = trials[0].cfg
    require_labels(trials[0], source)
    (task,) = run_tasks(cfg, RunDir(cfg.run_dir))
    return trials, metric_key(task, metric)


def run_sweep(trials: list[Trial], metric: str) -> list[dict[str, Any]]:
    """Run the trials not yet finished through Ray Tune and gather every trial's result, best first.

    Args:
        trials: from :func:`plan_trials`, of one run.
        metric: the dev score key to rank by (:func:`metric_key`).

    Returns:
        One row per trial: ``{"trial", "values", "scores", "best_epoch", "train_wall_s", "reused"}``,
        sorted by ``scores[metric]``, highest first; also written to ``sweep/results.json``.

    Raises:
        RuntimeError: a trial failed (its error, with Ray Tune's error file); the finished
            trials are kept for the next run.
    """
    run_dir = RunDir(trials[0].cfg.run_dir)
    done = {t.name for t in trials if run_dir.sweep_trial(t.name).is_fresh("train", t.fingerprint)}
    pending = [t for t in trials if t.name not in done]
    log.info("sweep: %d trial(s), %d finished before, %d to train", len(trials), len(done), len(pending))
    if pending:
        tune_pending(pending, run_dir)
    rows = [result_row(run_dir.sweep_trial(t.name).manifest("train"), t, reused=t.name in done) for t in trials]
    rows.sort(key=lambda row: -row["scores"][metric])
    atomic_write_json(run_dir.sweep_results, {"metric": metric, "trials": rows})
    return rows


def tune_pending(pending: list[Trial], run_dir: RunDir) -> None:
    """Train the ``pending`` trials in a Ray Tune grid, as many at once as :func:`concurrency` allows,
    on the configured Ray cluster (:func:`pipeline.runner.start_ray`: connected to or started once per process)."""
    start_ray(pending[0].cfg)
    slots, cpus = concurrency(pending[0].cfg.train.num_workers, int(ray.cluster_resources().get("GPU", 0)),
                              int(ray.cluster_resources().get("CPU", 1)))
    storage = run_dir.sweep_dir / "tune"
    shutil.rmtree(storage, ignore_errors=True)  # trials resume from their own folders, not from Tune's state
    trainable = tune.with_resources(tune.with_parameters(tune_trial, trials={t.name: t for t in pending},
                                                         total_cpus=cpus), TRIAL_DRIVER_RESOURCES)
    tuner = tune.Tuner(trainable, param_space={"trial": tune.grid_search([t.name for t in pending])},
                       tune_config=tune.TuneConfig(max_concurrent_trials=slots, reuse_actors=True,
                                                   trial_dirname_creator=lambda t: t.config["trial"]),
                       run_config=tune.RunConfig(name="tune", storage_path=str(storage.resolve().parent), verbose=0))
    with contextlib.redirect_stdout(sys.stderr):  # Ray Tune's experiment box: stdout is for the results table
        results = tuner.fit()
    if results.errors:
        failed = [r for r in results if r.error is not None]
        raise RuntimeError(f"sweep: {len(failed)} trial(s) failed, the first {failed[0].config['trial']} (see "
                           f"{failed[0].path}); finished trials are kept") from failed[0].error


def result_row(manifest: dict[str, Any], trial: Trial, reused: bool) -> dict[str, Any]:
    """One trial's row of the results, from its train manifest (see :func:`run_sweep`)."""
    return {"trial": trial.name, "values": trial.values, "scores": manifest["scores"],
            "best_epoch": manifest["best_epoch"], "train_wall_s": manifest["wall_s"], "reused": reused}


def render(rows: list[dict[str, Any]]) -> str:
    """The results as a text table: one row per trial (grid values, dev scores, best epoch,
    train wall seconds, whether reused), best first as given."""
    keys, scores = list(rows[0]["values"]), list(rows[0]["scores"])
    header = [key.removeprefix(GRID_SECTION + ".") for key in keys] + scores + ["best epoch", "train s", "reused"]
    lines = [[row["values"][k] for k in keys] + [f"{row['scores'][s]:.4f}" for s in scores]
             + [str(row["best_epoch"]), f"{row['train_wall_s']:.1f}", "yes" if row["reused"] else "no"]
             for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in [header, *lines])
