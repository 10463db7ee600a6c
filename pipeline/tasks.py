"""The tasks a run trains and evaluates its students on, for any run config.

A single-task run (:class:`RunConfig`) has one task, unnamed: its own data, teacher and soft
labels, in its own run folder. A multi-task run (:class:`MultiTaskRunConfig`, Liu et al. 2019,
"Attentive Student Meets Multi-Task Teacher") has one named task per entry of ``tasks``: each
the finished single-task run that provides its data, finetune and label stages, so that each
task keeps its own teacher. The train and evaluate stages take this list either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from transformers import AutoConfig

from core.errors import ArtifactError, ConfigError
from core.schema import TaskKind
from pipeline.artifacts import RunDir
from pipeline.config.sections import MultiTaskRunConfig, RunConfig
from pipeline.config.loading import load_config
from pipeline.config.rules import (check_student_fits, check_teacher_fits, extra_problems, raise_problems,
                                   source_problems)
from pipeline.config.sections import task_kind

SOURCE_STAGES = ("data", "finetune", "label")
"""The stages a multi-task run's source runs provide: each must have finished them."""


@dataclass(frozen=True)
class Task:
    """One task of a run: its name and the run folder that holds its data, teacher and soft labels.

    Attributes:
        name: the task's name (a multi-task student's head, passed to it as ``task``); None for
            the one task of a single-task run.
        cfg: the config of the run that owns the task's data, finetune and label stages.
        run_dir: that run's folder.
    """

    name: str | None
    cfg: RunConfig
    run_dir: RunDir

    @property
    def kind(self) -> TaskKind:
        """The task's kind, and a multi-task student's head for it: ``token``, ``pair`` or ``sentence``."""
        return task_kind(self.cfg.data)

    @property
    def num_labels(self) -> int:
        """Classes C of the task (tags for a token task)."""
        return len(self.cfg.data.labels)

    @property
    def tag_names(self) -> list[str] | None:
        """IOB2 tag names of a token task, else None."""
        return tag_names(self.cfg)

    @property
    def metric(self) -> str:
        """The task's metric (``data.metric``, :attr:`DataConfig.scored_metric`): a key of
        :func:`pipeline.evaluation.scoring.score` that picks the best epoch and heads the report."""
        return self.cfg.data.scored_metric

    def transfer_texts(self) -> list[Any]:
        """The texts of the task's transfer set: sentences (both sentences of pairs), or word lists
        for a token task."""
        table = pq.read_table(self.run_dir.split_file("transfer"), columns=self.kind.text_columns)
        return [text for column in table.columns for text in column.to_pylist()]


def tag_names(cfg: RunConfig) -> list[str] | None:
    """The IOB2 tag names of a token task, in index order; None for sequence tasks."""
    return [str(tag) for tag in cfg.data.labels] if cfg.data.task == "token" else None


def run_tasks(cfg: RunConfig | MultiTaskRunConfig, run_dir: RunDir) -> list[Task]:
    """The tasks of a run, in order: a single-task run's own (in ``run_dir``), or a multi-task
    run's source runs' (:func:`source_tasks`)."""
    if isinstance(cfg, MultiTaskRunConfig):
        return source_tasks(cfg)
    return [Task(None, cfg, run_dir)]


def source_tasks(cfg: MultiTaskRunConfig) -> list[Task]:
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
        for stage in SOURCE_STAGES:
            run_dir.require(stage)
        sources.append(Task(name, source_cfg, run_dir))
    return sources


def check_before_stages(cfg: RunConfig | MultiTaskRunConfig) -> None:
    """Check, in seconds and before any stage, the rules that read files besides the config:
    ``distill validate`` and ``distill run`` call this (the rules on the config alone ran when it
    was read, :func:`pipeline.config.loading.validate_config`).

    A single-task run's optional packages must be installed
    (:func:`pipeline.config.rules.extra_problems`) and its teacher must serve its data, signals,
    student, loss and prune section (:func:`pipeline.config.rules.check_teacher_fits`). A multi-task run's source runs must have
    finished their data, finetune and label stages (:func:`source_tasks`), labeled what its loss
    reads (:func:`pipeline.config.rules.source_problems`), and its student must fit the first
    task's teacher, whose vocabulary and embeddings it takes
    (:func:`pipeline.config.rules.check_student_fits`).

    Raises:
        ConfigError: the first broken rule, naming the field and the fix.
        ArtifactError: a source run's folder is missing or unfinished (see :func:`source_tasks`).
    """
    if isinstance(cfg, RunConfig):
        raise_problems(extra_problems(cfg))
        check_teacher_fits(cfg)
        return
    tasks = source_tasks(cfg)
    raise_problems(source_problems(cfg, {task.name: task.cfg for task in tasks}))
    check_student_fits(cfg.train, AutoConfig.from_pretrained(str(tasks[0].run_dir.teacher_dir)))


def source_fingerprints(cfg: RunConfig | MultiTaskRunConfig) -> list[tuple[str, str, str]]:
    """``(task, data fingerprint, label fingerprint)`` of every source run of a multi-task run
    (a relabelled task retrains the students); empty for a single-task run, whose own stages
    chain their fingerprints."""
    return [(task.name, task.run_dir.require("data")["fingerprint"], task.run_dir.require("label")["fingerprint"])
            for task in run_tasks(cfg, RunDir(cfg.run_dir)) if task.name is not None]
