"""Stage ``finetune``: fine-tune the teacher on the labeled split with DeepSpeed.

Skipped (the checkpoint is copied as is) when the configured teacher already is a classifier
of the task (sequence, or token for ``data.task: token``) for the label set, unless
``finetune.force`` is set. Output: the teacher in Hugging
Face format at ``finetune/teacher/``.
"""

from __future__ import annotations

import logging

import datasets

from pipeline.observability import live_metrics
from pipeline.artifacts import RunDir
from pipeline.config.sections import RunConfig
from core.precision import select_precision
from core.hf_checkpoint import is_classifier_for, load_tokenizer
from teachers.checkpoint import check_checkpoint, load_classifier, resolve_teacher
from teachers.finetune import finetune_classifier, save_hf

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
                                 cfg.teacher.max_length, cfg.seed, task, remote, live_metrics.local_stream("finetune"))
    log.info("finetune: %d steps, final loss %.4f", result["steps"], result["final_loss"])
    return {"source": str(source), "finetuned": True, "precision": precision.name, **result}
