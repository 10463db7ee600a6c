"""Multi-task distillation (Liu et al. 2019, "Attentive Student Meets Multi-Task Teacher"): one
attentive multi-task LSTM student learns several tasks at once, each from the teacher of a
finished single-task run (``MultiTaskRunConfig.tasks``).

Two stages, run by :func:`pipeline.runner.run_pipeline` like a single-task run's::

    train     the student of every task's soft labels (``kd``) and its CE-only twin on every
              task's labeled rows (``ce_only``), from one initial student; each step trains one
              task, drawn in proportion to its batches (:func:`pipeline.batching.interleave`)
    evaluate  every task's dev (and test) scores of both students, beside each source run's
              teacher; parameters, size and batch-1 latency of the student on the first task

Artifacts in ``<output_dir>/<name>/``: ``train/initial/``, ``train/{kd,ce_only}/``,
``{train,evaluate}/manifest.json``, ``metrics.json`` and ``report.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from core.schema import TOKENS, TaskKind
from pipeline import train
from pipeline.data import task_kind
from pipeline.shards import require_file, soft_label_files
from pipeline.artifacts import RunDir
from pipeline.config import MultiTaskRunConfig, RunConfig
from pipeline.config_loading import load_config
from core.errors import ArtifactError, ConfigError
from pipeline.evaluate import STUDENT_KINDS, Split, hardware, measure, predict, read_split, score, tag_names
from students.base import META_FILE, BuildInputs, Student
from students.registry import build_student, load_student

log = logging.getLogger(__name__)

SPLITS = ("dev", "test")
"""Splits a task is scored on, when its run has them."""


@dataclass(frozen=True)
class SourceTask:
    """One task of a multi-task run: its name and the finished single-task run it comes from.

    Attributes:
        name: the task's name (the student's head).
        cfg: the source run's config (``config.yaml``).
        run_dir: the source run's folder.
    """

    name: str
    cfg: RunConfig
    run_dir: RunDir

    @property
    def kind(self) -> TaskKind:
        """The task's kind, and the student's head for it: ``token`` (tagging), ``pair`` or ``sentence``."""
        return task_kind(self.cfg.data)

    @property
    def tag_names(self) -> list[str] | None:
        """IOB2 tag names of a token task, else None."""
        return tag_names(self.cfg)


def source_tasks(cfg: MultiTaskRunConfig) -> list[SourceTask]:
    """Read every task's source run, in ``cfg.tasks`` order.

    Raises:
        ArtifactError: a run folder has no ``config.yaml``, or has not finished its data,
            finetune and label stages (the message names the stage to run).
        ConfigError: a source run's config is invalid, or is itself a multi-task config.
    """
    sources = []
    for name, folder in cfg.tasks.items():
        config_file = Path(folder) / "config.yaml"
        if not config_file.is_file():
            raise ArtifactError(config_file, f"missing; tasks.{name} must name a run folder of `distill run` "
                                             f"(run it through its label stage first)")
        source_cfg = load_config(config_file)
        if not isinstance(source_cfg, RunConfig):
            raise ConfigError(f"tasks.{name}: {folder} is a multi-task run; name a single-task run")
        run_dir = RunDir(Path(folder))
        for stage in ("data", "finetune", "label"):
            run_dir.require(stage)
        sources.append(SourceTask(name, source_cfg, run_dir))
    return sources


def stage_inputs(cfg: MultiTaskRunConfig, stage: str) -> Any:
    """What a stage's output depends on: its config section, and for ``train`` the fingerprints
    of every source run's data and label stages (a relabelled task retrains the students)."""
    if stage == "train":
        upstream = [(s.name, s.run_dir.require("data")["fingerprint"], s.run_dir.require("label")["fingerprint"])
                    for s in source_tasks(cfg)]
        return [cfg.train, cfg.seed, upstream]
    return [cfg.evaluate]


def run_train(cfg: MultiTaskRunConfig, run_dir: RunDir) -> dict:
    """Stage ``train``: build the initial student, then train the KD student and its CE-only twin.

    The vocabulary (``vocab: sentencepiece``) is learned from every task's transfer texts;
    the WordPiece vocabulary and the teacher embeddings (``init_from_teacher_embeddings``) are
    the first task's teacher's.

    Returns:
        ``{kind: summary}`` as :func:`pipeline.train.fit`, with ``best_dev_<task>``.

    Raises:
        ArtifactError, ConfigError: as :func:`source_tasks` and :func:`pipeline.train.fit`.
    """
    sources = source_tasks(cfg)
    teacher_dir = sources[0].run_dir.teacher_dir
    texts = [text for source in sources for text in transfer_texts(source)]
    torch.manual_seed(cfg.seed)
    tasks = {s.name: (s.kind.value, len(s.cfg.data.labels)) for s in sources}
    student = build_student(cfg.train.student, BuildInputs(teacher_dir, texts, tasks=tasks))
    initial_dir = student.save(run_dir.stage_dir("train") / "initial")
    log.info("multitask: tasks %s; %d transfer texts for the vocabulary", {s.name: s.kind for s in sources}, len(texts))
    kd = [train.TaskData(s.name, s.kind, soft_label_files(s.run_dir, len(s.cfg.data.labels), cfg.train.loss),
                         require_file(s.run_dir.split_file("dev")), s.tag_names) for s in sources]
    runs = {"kd": (kd, cfg.train.loss)}
    if cfg.train.ce_only_baseline:
        ce = [train.TaskData(s.name, s.kind, [require_file(s.run_dir.split_file("train"))], task.dev_file, s.tag_names)
              for s, task in zip(sources, kd)]
        runs["ce_only"] = (ce, cfg.train.loss.ce_only())
    hidden_size = train.teacher_hidden_size(teacher_dir)
    return {kind: train.fit(kind, cfg.train, cfg.seed, run_dir, tasks, loss, initial_dir, hidden_size)
            for kind, (tasks, loss) in runs.items()}


def transfer_texts(source: SourceTask) -> list[str]:
    """The sentences of a task's transfer set (word lists joined by spaces; both sentences of pairs)."""
    path = source.run_dir.split_file("transfer")
    table = pq.read_table(path, columns=source.kind.text_columns)
    if source.kind is TaskKind.TOKEN:
        return [" ".join(words) for words in table.column(TOKENS).to_pylist()]
    return [text for column in table.columns for text in column.to_pylist()]


def run_evaluate(cfg: MultiTaskRunConfig, run_dir: RunDir) -> dict:
    """Stage ``evaluate``: score both students on every task's dev (and test) split.

    Returns:
        ``{"tasks": {task: {"kind", "score_keys", "teacher": {score: value} or None,
        "kd"/"ce_only": {score: value}}}, "models": {kind: {"parameters", "size_mb", "latency"}},
        "latency_task", "hardware"}``; scores as :func:`pipeline.evaluate.score`, keyed
        ``<split>_<score>``; the teacher's are those of its own run's evaluate stage (None when
        that run has not been evaluated). Latency is batch-1 on the first task's dev rows.
    """
    sources = source_tasks(cfg)
    students = {kind: load_student(run_dir.student_dir(kind)) for kind in STUDENT_KINDS
                if run_dir.student_dir(kind).joinpath(META_FILE).exists()}
    if "kd" not in students:
        raise ArtifactError(run_dir.student_dir("kd"), "missing; run the train stage first")
    tasks = {}
    for source in sources:
        splits = {name: read_split(source.run_dir.split_file(name), source.kind) for name in SPLITS
                  if source.run_dir.split_file(name).is_file()}
        results: dict[str, Any] = {"kind": source.kind.value}
        for kind, student in students.items():
            results[kind] = {f"{split_name}_{key}": round(value, 4) for split_name, split in splits.items()
                             for key, value in score(predict(student, task_featurizer(student, source.name), split),
                                                     split.gold, source.tag_names).items()}
            log.info("evaluate: %s on %s: %s", kind, source.name, results[kind])
        results["score_keys"] = list(results["kd"])
        teacher = source.run_dir.manifest("evaluate")
        results["teacher"] = ({key: teacher["models"]["teacher"].get(key) for key in results["score_keys"]}
                              if teacher else None)
        tasks[source.name] = results
    first = sources[0]
    dev: Split = read_split(first.run_dir.split_file("dev"), first.kind)
    models = {kind: measure(student, task_featurizer(student, first.name), run_dir.student_dir(kind), dev,
                            cfg.evaluate) for kind, student in students.items()}
    return {"tasks": tasks, "models": models, "latency_task": first.name, "hardware": hardware()}


def task_featurizer(student: Student, task: str) -> Callable[..., dict[str, Any]]:
    """The student's :meth:`featurize` with ``task`` added, for :func:`pipeline.evaluate.predict`."""
    def featurize(texts: list, pairs: list[str] | None = None) -> dict[str, Any]:
        return {**student.featurize(texts, pairs), "task": task}

    return featurize


STAGES: dict[str, Callable[[MultiTaskRunConfig, RunDir], dict[str, Any]]] = {"train": run_train,
                                                                           "evaluate": run_evaluate}
"""Stage name -> stage function of a multi-task run, in order."""


def render(name: str, metrics: dict[str, Any]) -> str:
    """Markdown report: every task's scores (teacher, KD student, CE-only student), then size and latency."""
    evaluation = metrics["evaluate"]
    lines = [f"# Multi-task distillation report: {name}", "",
             f"Hardware: {evaluation['hardware']['cpu']}, {evaluation['hardware']['torch_threads']} torch threads, "
             f"torch {evaluation['hardware']['torch']}.", "",
             "| task | score | teacher | student, KD | student, CE only |", "|---|---|---|---|---|"]
    for task, results in evaluation["tasks"].items():
        for key in results["score_keys"]:
            teacher = results["teacher"].get(key) if results["teacher"] else None
            cells = [f"{teacher:.4f}" if teacher is not None else "-",
                     *(f"{results[kind][key]:.4f}" if kind in results else "-" for kind in STUDENT_KINDS)]
            lines.append(f"| {task} | {key.replace('_', ' ')} | {' | '.join(cells)} |")
    lines += ["", f"Batch-1 latency on {evaluation['latency_task']} dev rows.", "",
              "| model | parameters | size (MB) | p50 (ms) | p99 (ms) |", "|---|---|---|---|---|"]
    for kind, row in evaluation["models"].items():
        lines.append(f"| student, {'KD' if kind == 'kd' else 'CE only'} | {row['parameters']:,} | "
                     f"{row['size_mb']:.1f} | {row['latency']['p50_ms']:.2f} | {row['latency']['p99_ms']:.2f} |")
    lines += ["", "| stage | wall time (s) |", "|---|---|"]
    lines += [f"| {stage} | {manifest['wall_s']:.1f} |" for stage, manifest in metrics.items()]
    return "\n".join(lines) + "\n"
