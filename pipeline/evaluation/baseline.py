"""No silent failures: each task's trivial baseline, and the students that do no better than it.

The trivial baseline predicts the train split's most frequent label for every dev (and test)
row, or its most frequent tag (``O``) for every word of a token task, and is scored by the same
scorer as the models (:func:`pipeline.evaluation.scoring.score`), so it is the majority-class
score of whatever metric a run reports (accuracy; entity F1 is 0, as no entity is predicted).
A student is flagged (issue 26, "No silent failures") when its dev score on the task's
metric (``data.metric``, the report's headline) is at or below that
baseline, or under :data:`TEACHER_SHARE` of its teacher's, and the console gets one warning
line per flagged student (the evaluate stage's, from :func:`warning` and :func:`advice`) naming the
likely causes and the settings to try.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pipeline.config.data_sections import AugmentConfig
from pipeline.config.sections import TrainConfig
from pipeline.evaluation.scoring import Split, score

TEACHER_SHARE = 0.25
"""A student under this share of its teacher's dev score is flagged (issue 26)."""

BELOW_BASELINE = "at or below the trivial baseline"
BELOW_TEACHER = "under a quarter of the teacher's score"
"""The two flags a student's metrics may carry (``"flag"``), the first taking precedence."""


def majority_label(gold: list) -> int:
    """The most frequent label id of a split's rows (``gold``: N ids), or of its words (N tag-id
    lists); rows without a hard label (-1) are left out, ties go to the smaller id.

    Raises:
        ValueError: the split has no labeled row.
    """
    labels = Counter(label for row in gold for label in (row if isinstance(row, list) else [row]) if label >= 0)
    if not labels:
        raise ValueError("the train split has no labeled row to take a majority label from")
    return min(labels, key=lambda label: (-labels[label], label))


def trivial_predictions(label: int, split: Split) -> list:
    """``label`` for every row of ``split`` (N ids), or for every word of its word lists (N lists)."""
    if split.gold and isinstance(split.gold[0], list):
        return [[label] * len(words) for words in split.texts]
    return [label] * len(split.texts)


def baseline_scores(train_gold: list, splits: dict[str, Split], labels: list,
                    tag_names: list[str] | None, metric: str = "accuracy") -> dict[str, Any]:
    """A task's trivial baseline on its evaluated splits.

    Args:
        train_gold: the train split's labels (N ids, or N tag-id lists), whose majority is predicted.
        splits: ``{"dev"[, "test"]: Split}``, as the evaluate stage scores the models on.
        labels: the task's label set (``data.labels``), in class-index order.
        tag_names: IOB2 tag names of a token task, else None.
        metric: a sequence task's ``data.metric``, scored beside accuracy (see :func:`score`).

    Returns:
        ``{"rule": str, "<split>_<score>": value}``: the rule in words ("majority class: 1",
        "every word: O") and :func:`score`'s values rounded to 4 places, the keys of the models'.
    """
    label = majority_label(train_gold)
    rule = f"every word: {tag_names[label]}" if tag_names else f"majority class: {labels[label]}"
    return {"rule": rule, **{f"{split_name}_{key}": round(value, 4) for split_name, split in splits.items()
                             for key, value in score(trivial_predictions(label, split), split.gold,
                                                     tag_names, metric).items()}}


def flag(student: dict[str, float], baseline: dict[str, Any], teacher: dict[str, float] | None,
         key: str) -> str | None:
    """Why a student's dev score ``student[key]`` shows it learned (almost) nothing, or None.

    Returns:
        :data:`BELOW_BASELINE` when it is at or below ``baseline[key]``; else
        :data:`BELOW_TEACHER` when under :data:`TEACHER_SHARE` of ``teacher[key]`` (no teacher
        score, or None: not checked); else None.
    """
    if student[key] <= baseline[key]:
        return BELOW_BASELINE
    if teacher and teacher.get(key) is not None and student[key] < TEACHER_SHARE * teacher[key]:
        return BELOW_TEACHER
    return None


def flag_students(scores: dict[str, dict[str, float]], baseline: dict[str, Any], teacher: dict[str, float] | None,
                  key: str) -> dict[str, str]:
    """The flagged students of one task, ``{student: flag}`` (see :func:`flag`); ``scores`` is
    ``{model: {"<split>_<score>": value}}`` of the evaluate stage, the teacher's left out when there."""
    return {name: reason for name, row in scores.items() if name != "teacher"
            and (reason := flag(row, baseline, teacher, key)) is not None}


def warning(name: str, task: str | None, key: str, scores: dict[str, float], reason: str, baseline: dict[str, Any],
            teacher: dict[str, float] | None) -> str:
    """The console line's first part about a flagged student: its score beside the baseline's and
    the teacher's; :func:`advice` gives the rest."""
    vs_teacher = f", teacher {teacher[key]:.4f}" if teacher and teacher.get(key) is not None else ""
    return (f"evaluate: student {name}{f' on {task}' if task else ''} learned little: {key.replace('_', ' ')} "
            f"{scores[key]:.4f} is {reason} (trivial baseline, {baseline['rule']}: {baseline[key]:.4f}{vs_teacher}).")


def advice(name: str, train: TrainConfig, augment: AugmentConfig | None, tagger: bool) -> str:
    """The likely causes of a flagged student and the settings to try, with their values in this run."""
    epochs = f"train.ce_only_epochs (now {train.ce_only_epochs or train.epochs})" if name == "ce_only" else \
        f"train.epochs (now {train.epochs})"
    rows = (f"more data.augment.copies (now {augment.copies})" if augment
            else "data.augment (copies: 5) to grow the transfer set")
    tags = ("; for a tagger, the all-O prior: most words are O, so tagging every word O is an easy low-loss "
            "answer; check that its train loss fell well below that prior's") if tagger else ""
    return (f"Likely causes and settings to try: too few labeled rows -> {rows}; too few epochs -> {epochs}; "
            f"a learning rate too high or too low -> train.lr (now {train.lr:g}, try 3x either way){tags}.")
