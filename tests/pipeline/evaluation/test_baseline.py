"""The trivial baseline of a task and the flag (and console warning) of a student that learned
nothing: crafted splits and predictions scored by the models' scorer, no Ray, no model."""

from __future__ import annotations

import logging

from pipeline.artifacts import RunDir
from pipeline.config.loading import validate_config
from pipeline.evaluation.baseline import (BELOW_BASELINE, BELOW_TEACHER, baseline_scores, majority_label,
                                          trivial_predictions)
from pipeline.evaluation.scoring import Split, score
from pipeline.stages.evaluate import flagged
from pipeline.tasks import Task
from pipeline.textdata.conll import CONLL2003_TAGS

DEV = Split(texts=[f"row {i}" for i in range(10)], pairs=None, gold=[1, 1, 1, 1, 1, 1, 0, 0, 0, 1])
TEST = Split(texts=["a", "b", "c", "d"], pairs=None, gold=[0, 0, 0, 1])
TAGS = list(CONLL2003_TAGS)
WORDS = Split(texts=[["Anna", "met", "Bob"], ["in", "Paris"]], pairs=None, gold=[[1, 0, 1], [0, 5]])


def task(tmp_path, token: bool = False, augment: dict | None = None, metric: str | None = None) -> Task:
    data = {"train": {"path": "x.tsv"}, "dev": {"path": "y.tsv"}, "labels": TAGS if token else ["neg", "pos"],
            **({"task": "token"} if token else {}), **({"augment": augment} if augment else {}),
            **({"metric": metric} if metric else {})}
    cfg = validate_config({"name": "t", "output_dir": str(tmp_path), "data": data,
                           "train": {"epochs": 3, "lr": 0.002, "ce_only_epochs": 7,
                                     **({"student": {"family": "cnn_lstm"}} if token else {})}})
    return Task(None, cfg, RunDir(cfg.run_dir))


def scores_of(predicted: list, metric: str = "accuracy") -> dict[str, float]:
    return {f"dev_{key}": round(value, 4) for key, value in score(predicted, DEV.gold, None, metric).items()}


def test_majority_label_counts_rows_or_words_and_skips_unlabeled_rows():
    assert majority_label([0, 1, 1, -1, -1, -1]) == 1
    assert majority_label([[0, 0, 3], [3, 0]]) == 0
    assert majority_label([2, 1, 1, 2]) == 1  # a tie: the smaller id


def test_baseline_is_the_train_majority_scored_like_the_models():
    baseline = baseline_scores([1, 1, 0], {"dev": DEV, "test": TEST}, ["neg", "pos"], None)
    # the train split's majority (pos), not the test split's (neg): 7 of 10 dev rows, 1 of 4 test rows
    assert baseline == {"rule": "majority class: pos", "dev_accuracy": 0.7, "test_accuracy": 0.25}
    assert trivial_predictions(1, WORDS) == [[1, 1, 1], [1, 1]]


def test_a_taggers_baseline_tags_every_word_o_and_finds_no_entity():
    baseline = baseline_scores([[0, 0, 1], [0, 5, 6]], {"dev": WORDS}, TAGS, TAGS)
    assert baseline == {"rule": "every word: O", "dev_entity_f1": 0.0, "dev_entity_precision": 0.0,
                        "dev_entity_recall": 0.0}


def test_a_student_forced_to_one_class_is_flagged_and_warned_about(tmp_path, caplog):
    baseline = baseline_scores([1, 1, 0], {"dev": DEV}, ["neg", "pos"], None)
    good = [1, 1, 1, 1, 1, 1, 0, 0, 1, 1]  # 9 of 10
    scores = {"teacher": scores_of(DEV.gold), "kd": scores_of(good), "ce_only": scores_of([1] * 10)}
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        flags = flagged(task(tmp_path), scores, baseline, scores["teacher"], task(tmp_path).cfg.train)
    assert flags == {"ce_only": BELOW_BASELINE}
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "evaluate: student ce_only learned little: dev accuracy 0.7000 is at or below the trivial baseline "
        "(trivial baseline, majority class: pos: 0.7000, teacher 1.0000). Likely causes and settings to try: "
        "too few labeled rows -> data.augment (copies: 5) to grow the transfer set; too few epochs -> "
        "train.ce_only_epochs (now 7); a learning rate too high or too low -> train.lr (now 0.002, try 3x "
        "either way).")


def test_a_good_student_is_not_flagged(tmp_path, caplog):
    baseline = baseline_scores([1, 1, 0], {"dev": DEV}, ["neg", "pos"], None)
    scores = {"kd": scores_of([1, 1, 1, 1, 1, 1, 0, 0, 1, 1])}
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert flagged(task(tmp_path), scores, baseline, None, task(tmp_path).cfg.train) == {}
    assert caplog.records == []


def test_a_tagger_under_a_quarter_of_its_teacher_is_flagged_with_the_all_o_prior(tmp_path, caplog):
    baseline = baseline_scores([[0, 0, 1]], {"dev": WORDS}, TAGS, TAGS)
    teacher = {"dev_entity_f1": 0.49}
    scores = {"kd": {"dev_entity_f1": 0.02}, "ce_only": {"dev_entity_f1": 0.0}, "other": {"dev_entity_f1": 0.13}}
    tagger = task(tmp_path, token=True, augment={"copies": 2})
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        flags = flagged(tagger, scores, baseline, teacher, tagger.cfg.train)
    assert flags == {"kd": BELOW_TEACHER, "ce_only": BELOW_BASELINE}  # 0.13 >= 0.49 / 4: not flagged
    kd = caplog.records[0].getMessage()
    assert "dev entity f1 0.0200 is under a quarter of the teacher's score" in kd
    assert "more data.augment.copies (now 2)" in kd and "train.epochs (now 3)" in kd
    assert "the all-O prior" in kd


def test_the_check_follows_the_tasks_metric(tmp_path, caplog):
    # matthews: a student forced to one class scores 0, as the baseline does; the good one 0.8
    matthews = task(tmp_path, metric="matthews")
    baseline = baseline_scores([1, 1, 0], {"dev": DEV}, ["neg", "pos"], None, "matthews")
    assert baseline == {"rule": "majority class: pos", "dev_matthews": 0.0, "dev_accuracy": 0.7}
    scores = {"kd": scores_of([1, 1, 1, 1, 1, 1, 0, 0, 1, 1], "matthews"), "ce_only": scores_of([1] * 10, "matthews")}
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert flagged(matthews, scores, baseline, None, matthews.cfg.train) == {"ce_only": BELOW_BASELINE}
    assert "dev matthews 0.0000 is at or below the trivial baseline" in caplog.records[0].getMessage()
