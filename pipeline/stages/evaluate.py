"""Stage ``evaluate``: dev (and test) scores, parameters, size on disk and batch-1 CPU latency.

Measures the fine-tuned teacher, the distilled student (``kd``) and, when trained, the
CE-only twin (``ce_only``) on the same rows and the same sentences for latency, each with
its own featurisation (the teacher's tokenizer, or the student's ``featurize``), on this
machine's CPU. Latency is timed by the benchmark stage's harness (:func:`compress.latency.measure`,
whose module docstring says how), at the process's torch thread count. The rows are those of
the run's tasks (:func:`pipeline.tasks.run_tasks`): a single-task run's own, or every source
run's of a multi-task run, whose teachers were measured by their own runs. Sequence tasks are
scored by their ``data.metric`` (the report's first column) and accuracy; token tasks by
entity-level F1, precision and recall
(:mod:`pipeline.evaluation.entity_metrics`), the teacher tagging each word with its first
sub-token (:class:`teachers.token_alignment.WordTagger`). Beside them, each task's trivial
baseline (the train split's majority label for every row or word), scored alike; a student at
or below it, or under a quarter of its teacher's dev score, is flagged and warned about
(:mod:`pipeline.evaluation.baseline`).
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.latency import LATENCY_ROWS, measure as measure_latency
from core.errors import ArtifactError
from pipeline.artifacts import RunDir
from pipeline.config.sections import EvaluateConfig, MultiTaskRunConfig, RunConfig, TrainConfig
from pipeline.evaluation.baseline import advice, baseline_scores, flag_students, warning
from pipeline.evaluation.scoring import (Split, batch1_features, featurize_for, logits_of, predict,
                                         read_split, score, teacher_model)
from pipeline.tasks import Task, run_tasks
from students.base import META_FILE, Student
from students.registry import load_student

log = logging.getLogger(__name__)

STUDENT_KINDS = ("kd", "ce_only")


def run(cfg: RunConfig | MultiTaskRunConfig, run_dir: RunDir) -> dict:
    """Score every model of the run on each task's dev split (and test split when its run has one),
    and measure parameters, size and batch-1 latency on the first task's dev rows.

    The models are the trained students (``kd``, ``ce_only``) and, when the run fine-tuned it,
    the teacher; a multi-task run's teachers are its source runs', whose scores come from those
    runs' evaluate stages.

    Returns:
        For a single-task run (one unnamed task): ``{"dev_rows", ["test_rows",] "hardware",
        "score_keys", "models": {"teacher"|"kd"|"ce_only": metrics}}``; ``score_keys`` lists the
        score entries of each metrics dict, ``<split>_<score>`` with the scores of :func:`score`
        (``dev_accuracy``; ``dev_entity_f1``, ``test_entity_f1``, ...), and each metrics dict
        also holds ``parameters``, ``size_mb`` and ``latency`` (see :func:`measure`), and a
        flagged student's ``flag`` (:func:`flagged`); ``baseline`` is the task's trivial baseline,
        ``{"rule", <score key>: value}`` (:func:`pipeline.evaluation.baseline.baseline_scores`).
        For named tasks: ``{"tasks": {task: {"kind", "score_keys", "teacher": {score: value} or
        None, "kd"/"ce_only": {score: value}, "baseline", "flags": {student: flag}}}, "models":
        {kind: {"parameters", "size_mb", "latency"}}, "latency_task", "hardware"}``; the
        teacher's scores are None when its run has not been evaluated.

    Raises:
        ArtifactError: a multi-task run has no KD student (run the train stage first), or a
            source run is missing or unfinished.
    """
    torch.manual_seed(cfg.seed)
    tasks = run_tasks(cfg, run_dir)
    models = {name: (student, student.featurize, run_dir.student_dir(name))
              for name, student in trained_students(run_dir).items()}
    if cfg.runs_stage("finetune"):  # the run's own teacher, measured beside its students
        models = {"teacher": teacher_model(run_dir.teacher_dir, cfg.teacher.max_length, cfg.data.task), **models}
    if not models.keys() & {"teacher", "kd"}:
        raise ArtifactError(run_dir.student_dir("kd"), "missing; run the train stage first")
    splits = {task.name: task_splits(task) for task in tasks}
    scores = {task.name: {name: task_scores(name, model, featurize_for(featurize, task.name), splits[task.name], task)
                          for name, (model, featurize, _) in models.items()} for task in tasks}
    teachers = {task.name: teacher_scores(task, scores[task.name]) for task in tasks}
    baselines = {task.name: baseline_scores(read_split(task.run_dir.split_file("train"), task.kind).gold,
                                            splits[task.name], task.cfg.data.labels, task.tag_names, task.metric)
                 for task in tasks}
    flags = {task.name: flagged(task, scores[task.name], baselines[task.name], teachers[task.name], cfg.train)
             for task in tasks}
    first = tasks[0]
    measured = {name: measure(model, featurize_for(featurize, first.name), folder, splits[first.name]["dev"],
                              cfg.evaluate) for name, (model, featurize, folder) in models.items()}
    for name, row in measured.items():
        log.info("evaluate: %s, %d parameters, %.1f MB, p50 %.2f ms", name, row["parameters"], row["size_mb"],
                 row["latency"]["p50_ms"])
    if first.name is None:
        return {**{f"{name}_rows": len(split.texts) for name, split in splits[None].items()}, "hardware": hardware(),
                "score_keys": list(next(iter(scores[None].values()))), "baseline": baselines[None],
                "models": {name: {**scores[None][name], **measured[name],
                                  **({"flag": flags[None][name]} if name in flags[None] else {})} for name in models}}
    return {"tasks": {task.name: {**named_task_results(task, scores[task.name], teachers[task.name]),
                                  "baseline": baselines[task.name], "flags": flags[task.name]} for task in tasks},
            "models": measured, "latency_task": first.name, "hardware": hardware()}


def trained_students(run_dir: RunDir) -> dict[str, Student]:
    """The run's trained students that exist (``kd``, ``ce_only``), loaded in eval mode."""
    return {kind: load_student(run_dir.student_dir(kind)) for kind in STUDENT_KINDS
            if run_dir.student_dir(kind).joinpath(META_FILE).exists()}


def task_splits(task: Task) -> dict[str, Split]:
    """The task's dev split, and its test split when its run configures one."""
    names = ["dev"] + (["test"] if task.cfg.data.test is not None else [])
    return {name: read_split(task.run_dir.split_file(name), task.kind) for name in names}


def task_scores(name: str, model: nn.Module, featurize: Callable, splits: dict[str, Split],
                task: Task) -> dict[str, float]:
    """Model ``name``'s scores on a task's splits, ``{<split>_<score>: value}`` rounded to 4 places
    (see :func:`score`)."""
    scores = {f"{split_name}_{key}": round(value, 4) for split_name, split in splits.items()
              for key, value in score(predict(model, featurize, split), split.gold, task.tag_names,
                                      task.metric).items()}
    log.info("evaluate: %s on %s: %s", name, task.name or "the run's task",
             ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    return scores


def teacher_scores(task: Task, scores: dict[str, dict[str, float]]) -> dict[str, float | None] | None:
    """The teacher's scores on a task: this run's (``scores["teacher"]``), else, for a multi-task
    run's task, its source run's evaluate stage's (None when that has not run)."""
    if "teacher" in scores:
        return scores["teacher"]
    teacher = task.run_dir.manifest("evaluate")
    return {key: teacher["models"]["teacher"].get(key) for key in scores["kd"]} if teacher else None


def flagged(task: Task, scores: dict[str, dict[str, float]], baseline: dict[str, Any],
            teacher: dict[str, float | None] | None, train: TrainConfig) -> dict[str, str]:
    """The task's students that learned (almost) nothing, ``{student: flag}``
    (:func:`pipeline.evaluation.baseline.flag_students` on the dev score of the task's metric,
    ``data.metric``), each warned about on the console with the likely causes and the settings to try."""
    key = f"dev_{task.metric}"
    flags = flag_students(scores, baseline, teacher, key)
    for name, reason in flags.items():
        log.warning("%s %s", warning(name, task.name, key, scores[name], reason, baseline, teacher),
                    advice(name, train, task.cfg.data.augment, task.tag_names is not None))
    return flags


def named_task_results(task: Task, scores: dict[str, dict[str, float]],
                       teacher: dict[str, float | None] | None) -> dict[str, Any]:
    """One task of a multi-task run: ``{"kind", "kd"/"ce_only": scores, "score_keys", "teacher"}``;
    the teacher's scores are its source run's evaluate stage's (None when that has not run)."""
    return {"kind": task.kind.value, **scores, "score_keys": list(scores["kd"]), "teacher": teacher}


def measure(model: nn.Module, featurize: Callable, folder: Path, dev: Split, cfg: EvaluateConfig) -> dict[str, Any]:
    """Parameter count, weight-file size (MB) and batch-1 latency (ms) of one model.

    Args:
        model: a teacher or student in eval mode; called as ``model(**featurize(texts))``.
        featurize: texts (and pairs) -> the model's input tensors, padded per batch.
        folder: where its weights lie (``*.safetensors`` are counted).
        dev: the dev split; its first :data:`compress.latency.LATENCY_ROWS` rows are timed one at a time.
        cfg: the ``evaluate`` section (``latency_runs``, ``latency_warmup``).

    Returns:
        ``{"parameters", "size_mb", "latency": {"p50_ms", "p99_ms", "mean_ms", "threads"}}``:
        :func:`compress.latency.measure`'s figures (ms, 3 decimals) and the torch thread count
        they were measured at.
    """
    stats = measure_latency(ModelPredictor(model), batch1_features(featurize, dev, LATENCY_ROWS), None,
                            cfg.latency_runs, cfg.latency_warmup)
    weights = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "size_mb": round(weights / 2**20, 2),
            "latency": {**{key: round(stats[key], 3) for key in ("p50_ms", "p99_ms", "mean_ms")},
                        "threads": stats["threads"]}}


class ModelPredictor:
    """A teacher or student with the ``predict`` and ``threads`` of a :class:`compress.backends.Predictor`,
    fed its own features (torch tensors, with a multi-task student's ``task`` or a teacher
    tagger's ``first_subtoken``, which :class:`compress.backends.PyTorchPredictor` would not pass
    on): run eagerly under ``torch.inference_mode`` at the process's torch thread count, as that
    predictor runs a model."""

    def __init__(self, model: nn.Module):
        self.model = model

    @property
    def threads(self) -> int:
        """The process's torch intra-op thread count."""
        return torch.get_num_threads()

    def predict(self, features: dict[str, Any]) -> torch.Tensor:
        """Logits float32 [B, C] or [B, W, C] of a batch of the model's features."""
        with torch.inference_mode():
            return logits_of(self.model, features)


def hardware() -> dict[str, Any]:
    """What the latency was measured on: CPU model, torch threads, torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
