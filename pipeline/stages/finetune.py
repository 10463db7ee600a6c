"""Stage ``finetune``: fine-tune the teacher on the labeled split with DeepSpeed.

Skipped (the checkpoint is copied as is) when the configured teacher already is a classifier
of the task (sequence, or token for ``data.task: token``) for the label set, unless
``finetune.force`` is set. Output: the teacher in Hugging
Face format at ``finetune/teacher/``: the weights of its best epoch on the dev split (the task's
``data.metric``, accuracy by default, entity F1 for tags: :func:`dev_scorer`), with
``finetune.epochs/lr/warmup_ratio: auto`` chosen by the labeled split's size and the teacher's
width (:func:`teachers.finetune.resolve_recipe`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import datasets
import torch
from torch import nn

from pipeline.observability import live_metrics
from pipeline.artifacts import RunDir
from pipeline.config.sections import RunConfig, task_kind
from pipeline.evaluation.scoring import (EVAL_BATCH, dev_metric_name, logits_of, predict_with, read_split, score,
                                         teacher_featurizer)
from pipeline.tasks import tag_names
from core.precision import select_precision
from core.hf_checkpoint import is_classifier_for, load_tokenizer
from teachers.checkpoint import check_checkpoint, load_classifier, resolve_teacher
from teachers.finetune import finetune_classifier, save_hf
from teachers.token_alignment import WordTagger

log = logging.getLogger(__name__)


def label_names(cfg: RunConfig) -> list[str]:
    """Class names in index order: ``data.label_names`` or the label values as strings."""
    return cfg.data.label_names or [str(v) for v in cfg.data.labels]


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    """Fine-tune (or adopt) the teacher and save it to ``run_dir.teacher_dir``.

    Returns:
        Summary for the manifest: the source checkpoint, whether it was fine-tuned, and the
        training loss history (mean per tenth of the run).
    """
    source = resolve_teacher(cfg.teacher.model)
    remote = cfg.teacher.trust_remote_code
    check_checkpoint(source, remote)
    names, task = label_names(cfg), cfg.data.task
    if is_classifier_for(source, len(names), task) and not cfg.finetune.force:
        log.info("finetune: %s already is a %d-class %s classifier; skipping fine-tuning", source, len(names), task)
        save_hf(load_classifier(source, names, task, remote), load_tokenizer(source, remote), run_dir.teacher_dir)
        return {"source": str(source), "finetuned": False}
    train = datasets.Dataset.from_parquet(str(run_dir.split_file("train")))
    precision = select_precision(cfg.finetune.precision, "finetune")
    result = finetune_classifier(source, train, names, run_dir.teacher_dir, cfg.finetune, precision,
                                 cfg.teacher.max_length, cfg.seed, task, remote, live_metrics.local_stream("finetune"),
                                 dev_scorer(cfg, run_dir, source))
    log.info("finetune: %d steps, final loss %.4f; dev %s by epoch %s, epoch %d kept", result["steps"],
             result["final_loss"], dev_metric_name(tag_names(cfg), cfg.data.scored_metric),
             [round(v, 4) for v in result["dev_scores"]], result["best_epoch"])
    return {"source": str(source), "finetuned": True, "precision": precision.name, **result}


def dev_scorer(cfg: RunConfig, run_dir: RunDir, source: Path) -> Callable[[nn.Module], float]:
    """``score(model) -> float``: the dev split's score (:func:`pipeline.evaluation.scoring.dev_metric_name`:
    ``data.metric``, accuracy by default, or entity F1 for tags) of a classifier being fine-tuned,
    its inputs made by the tokenizer of ``source`` and moved to the model's device."""
    tags, metric = tag_names(cfg), cfg.data.scored_metric
    split = read_split(run_dir.split_file("dev"), task_kind(cfg.data))
    featurize = teacher_featurizer(source, cfg.teacher.max_length, cfg.data.task)

    def dev_score(model: nn.Module) -> float:
        device = next(model.parameters()).device
        scored = WordTagger(model) if tags is not None else model
        with torch.inference_mode():
            predicted = predict_with(lambda batch: logits_of(scored, {k: v.to(device) for k, v in batch.items()}),
                                     featurize, split, EVAL_BATCH)
        return score(predicted, split.gold, tags, metric)[dev_metric_name(tags, metric)]

    return dev_score
