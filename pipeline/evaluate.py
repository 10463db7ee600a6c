"""Stage ``evaluate``: dev (and test) scores, parameters, size on disk and batch-1 CPU latency.

Measures the fine-tuned teacher, the distilled student (``kd``) and, when trained, the
CE-only twin (``ce_only``) on the same rows and the same sentences for latency, each with
its own featurisation (the teacher's tokenizer, or the student's ``featurize``), on this
machine's CPU. The rows are those of the run's tasks (:func:`pipeline.tasks.run_tasks`): a
single-task run's own, or every source run's of a multi-task run, whose teachers were
measured by their own runs. Sequence tasks are scored by accuracy; token tasks by entity-level F1,
precision and recall (:mod:`pipeline.entity_metrics`), the teacher tagging each word with
its first sub-token (:class:`teachers.token_alignment.WordTagger`).
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

from core.schema import TEXT_PAIR, TaskKind
from pipeline.artifacts import RunDir
from core.errors import ArtifactError
from pipeline.config import EvaluateConfig, MultiTaskRunConfig, RunConfig
from pipeline.entity_metrics import entity_scores
from pipeline.latency import batch1_latency_ms
from pipeline.tasks import Task, run_tasks
from students.base import META_FILE, Student
from students.registry import load_student
from core.hf_checkpoint import load_tokenizer
from teachers.checkpoint import CLASSIFIERS
from teachers.token_alignment import WordTagger, word_features

log = logging.getLogger(__name__)

STUDENT_KINDS = ("kd", "ce_only")

EVAL_BATCH = 64
"""Rows per batch, taken in length order so that padding stays small."""

LATENCY_ROWS = 100
"""Dev rows whose batch-1 forward passes are timed, cycled."""


@dataclass(frozen=True)
class Split:
    """The rows of one evaluated split.

    Attributes:
        texts: N sentences, or N word lists for token tasks.
        pairs: N second sentences of a pair task, else None.
        gold: N class ids, or N tag-id lists for token tasks.
    """

    texts: list
    pairs: list[str] | None
    gold: list


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
        also holds ``parameters``, ``size_mb`` and ``latency`` (see
        :func:`pipeline.latency.batch1_latency_ms`).
        For named tasks: ``{"tasks": {task: {"kind", "score_keys", "teacher": {score: value} or
        None, "kd"/"ce_only": {score: value}}}, "models": {kind: {"parameters", "size_mb",
        "latency"}}, "latency_task", "hardware"}``; the teacher's scores are None when its run
        has not been evaluated.

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
    first = tasks[0]
    measured = {name: measure(model, featurize_for(featurize, first.name), folder, splits[first.name]["dev"],
                              cfg.evaluate) for name, (model, featurize, folder) in models.items()}
    for name, row in measured.items():
        log.info("evaluate: %s, %d parameters, %.1f MB, p50 %.2f ms", name, row["parameters"], row["size_mb"],
                 row["latency"]["p50_ms"])
    if first.name is None:
        return {**{f"{name}_rows": len(split.texts) for name, split in splits[None].items()}, "hardware": hardware(),
                "score_keys": list(next(iter(scores[None].values()))),
                "models": {name: {**scores[None][name], **measured[name]} for name in models}}
    return {"tasks": {task.name: named_task_results(task, scores[task.name]) for task in tasks},
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
              for key, value in score(predict(model, featurize, split), split.gold, task.tag_names).items()}
    log.info("evaluate: %s on %s: %s", name, task.name or "the run's task",
             ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    return scores


def named_task_results(task: Task, scores: dict[str, dict[str, float]]) -> dict[str, Any]:
    """One task of a multi-task run: ``{"kind", "kd"/"ce_only": scores, "score_keys", "teacher"}``;
    the teacher's scores are its source run's evaluate stage's (None when that has not run)."""
    keys = list(scores["kd"])
    teacher = task.run_dir.manifest("evaluate")
    return {"kind": task.kind.value, **scores, "score_keys": keys,
            "teacher": {key: teacher["models"]["teacher"].get(key) for key in keys} if teacher else None}


def featurize_for(featurize: Callable[..., dict[str, Any]], task: str | None) -> Callable[..., dict[str, Any]]:
    """``featurize`` itself for an unnamed task; for a named one, its features with ``task`` added
    (the head a multi-task student runs)."""
    if task is None:
        return featurize

    def featurize_task(texts: list, pairs: list[str] | None = None) -> dict[str, Any]:
        return {**featurize(texts, pairs), "task": task}

    return featurize_task


def dev_metric_name(tag_names: list[str] | None) -> str:
    """The key of :func:`score` that picks the best epoch: ``accuracy``, or ``entity_f1`` for tags."""
    return "accuracy" if tag_names is None else "entity_f1"


def score(predicted: list, gold: list, tag_names: list[str] | None) -> dict[str, float]:
    """Scores of predictions against gold labels.

    Args:
        predicted: N class ids, or N tag-id lists (one per word).
        gold: the same shape.
        tag_names: IOB2 name of each tag id for token tasks; None for sentence labels.

    Returns:
        ``{"accuracy"}`` for sentence labels; ``{"entity_f1", "entity_precision", "entity_recall"}``
        (micro-averaged over entities, :func:`pipeline.entity_metrics.entity_scores`) for tags.
    """
    if tag_names is None:
        return {"accuracy": float(np.mean(np.equal(predicted, gold))) if gold else 0.0}
    overall = entity_scores(predicted, gold, tag_names).overall
    return {"entity_f1": overall.f1, "entity_precision": overall.precision, "entity_recall": overall.recall}


def read_split(path: Path, kind: TaskKind) -> Split:
    """A split table of the data stage (the columns of ``kind``) as a :class:`Split`."""
    table = pq.read_table(path, columns=kind.text_columns + [kind.label_column])
    pairs = table.column(TEXT_PAIR).to_pylist() if kind is TaskKind.PAIR else None
    return Split(table.column(kind.text_columns[0]).to_pylist(), pairs, table.column(kind.label_column).to_pylist())


def teacher_model(teacher_dir: Path, max_length: int, task: str = "sequence") -> tuple[nn.Module, Callable, Path]:
    """The fine-tuned teacher in eval mode, its featurizer (tokenizer to ``max_length``) and folder.

    A token classifier is wrapped as a :class:`WordTagger` whose featurizer takes word lists,
    so that it returns word logits [B, W, C] like a tagging student.
    """
    model = CLASSIFIERS[task].from_pretrained(str(teacher_dir), use_safetensors=True).eval()
    return (WordTagger(model).eval() if task == "token" else model), teacher_featurizer(teacher_dir, max_length,
                                                                                        task), teacher_dir


def teacher_featurizer(teacher_dir: Path, max_length: int, task: str = "sequence") -> Callable:
    """``(texts, pairs=None) -> features``: the tokenizer of a Hugging Face folder, truncating to
    ``max_length`` tokens: int64 tensors [B, T] (``input_ids``, ``attention_mask``,
    ``token_type_ids``); for ``task="token"`` the texts are word lists and ``first_subtoken``
    [B, W] is added (:func:`teachers.token_alignment.word_features`)."""
    tokenizer = load_tokenizer(teacher_dir)
    if task == "token":
        return lambda sentences, pairs=None: word_features(tokenizer, sentences, max_length)

    def featurize(texts: list[str], pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        return dict(tokenizer(texts, pairs, padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt"))

    return featurize


def predict(model: nn.Module, featurize: Callable, split: Split) -> list:
    """The argmax class of every row ([N] ids), or of every word of every row (N lists) for taggers.

    Rows are batched in length order (characters, or words for word lists) to keep padding small.
    """
    with torch.inference_mode():
        return predict_with(lambda batch: logits_of(model, batch), featurize, split, EVAL_BATCH)


def predict_with(logits_fn: Callable, featurize: Callable, split: Split, batch_size: int) -> list:
    """:func:`predict` through any runtime: ``logits_fn(featurize(texts, pairs))`` gives logits
    [b, C] or [b, W, C] (a torch tensor or a numpy array) of ``batch_size`` rows at a time,
    taken in length order."""
    texts, pairs = split.texts, split.pairs
    predictions: list = [None] * len(texts)
    order = np.argsort([len(t) + len(p or "") for t, p in zip(texts, pairs or [None] * len(texts))], kind="stable")
    for start in range(0, len(texts), batch_size):
        rows = order[start:start + batch_size]
        batch = featurize([texts[i] for i in rows], [pairs[i] for i in rows] if pairs else None)
        best = logits_fn(batch).argmax(-1)  # [b] or [b, W]
        for j, row in enumerate(rows):
            predictions[row] = best[j].item() if best.ndim == 1 else best[j, :len(texts[row])].tolist()
    return predictions


def measure(model: nn.Module, featurize: Callable, folder: Path, dev: Split, cfg: EvaluateConfig) -> dict[str, Any]:
    """Parameter count, weight-file size (MB) and batch-1 latency (ms) of one model.

    Args:
        model: a teacher or student in eval mode; called as ``model(**featurize(texts))``.
        featurize: texts (and pairs) -> the model's input tensors, padded per batch.
        folder: where its weights lie (``*.safetensors`` are counted).
        dev: the dev split; its first :data:`LATENCY_ROWS` rows are timed one at a time.
        cfg: the ``evaluate`` section (``latency_runs``, ``latency_warmup``).
    """
    singles = [featurize([dev.texts[i]], [dev.pairs[i]] if dev.pairs else None)
               for i in range(min(LATENCY_ROWS, len(dev.texts)))]
    latency = batch1_latency_ms(lambda b: logits_of(model, b), singles,
                                cfg.latency_runs, cfg.latency_warmup)
    weights = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "size_mb": round(weights / 2**20, 2), "latency": latency}


def logits_of(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits float32 of a teacher or a student (both return an object with ``logits``):
    [B, C] for sentences, [B, W, C] for word taggers."""
    return model(**batch).logits.float()


def hardware() -> dict[str, Any]:
    """What the latency was measured on: CPU model, torch threads, torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
