"""Tests of pipeline/evaluation/entity_metrics.py on hand-made tag sequences with hand-computed scores."""

from __future__ import annotations

import pytest

from pipeline.textdata.conll import CONLL2003_TAGS
from pipeline.evaluation.entity_metrics import TypeScores, entity_scores

O, B_PER, I_PER, B_ORG, I_ORG, B_LOC, I_LOC, B_MISC, I_MISC = range(9)


def test_one_correct_one_wrong_boundary_one_missed():
    gold = [[B_PER, I_PER, O, B_LOC, I_LOC], [B_ORG, O]]
    predicted = [[B_PER, I_PER, O, B_LOC, O], [O, O]]
    scores = entity_scores(predicted, gold, CONLL2003_TAGS)
    # gold: PER[0:2], LOC[3:5], ORG[0:1]; predicted: PER[0:2] (right), LOC[3:4] (wrong boundary)
    # P = 1/2, R = 1/3, F1 = 2 * (1/2 * 1/3) / (1/2 + 1/3) = 2/5
    assert scores.overall.precision == pytest.approx(1 / 2)
    assert scores.overall.recall == pytest.approx(1 / 3)
    assert scores.overall.f1 == pytest.approx(2 / 5)
    assert scores.overall.support == 3
    assert scores.per_type == {
        "PER": TypeScores(precision=1.0, recall=1.0, f1=1.0, support=1),
        "LOC": TypeScores(precision=0.0, recall=0.0, f1=0.0, support=1),
        "ORG": TypeScores(precision=0.0, recall=0.0, f1=0.0, support=1),
    }


def test_conlleval_counts_an_inside_tag_after_o_as_an_entity():
    scores = entity_scores([[O, I_PER, I_PER]], [[O, B_PER, I_PER]], CONLL2003_TAGS)
    assert scores.overall.f1 == pytest.approx(1.0)


def test_wrong_type_and_no_entities_score_zero_without_nan():
    wrong_type = entity_scores([[B_MISC, I_MISC]], [[B_ORG, I_ORG]], CONLL2003_TAGS)
    assert (wrong_type.overall.precision, wrong_type.overall.recall, wrong_type.overall.f1) == (0.0, 0.0, 0.0)
    nothing = entity_scores([[O, O]], [[O, O]], CONLL2003_TAGS)
    assert nothing.overall == TypeScores(precision=0.0, recall=0.0, f1=0.0, support=0)
    assert nothing.per_type == {}


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="2 predicted sentences but 1 gold"):
        entity_scores([[O], [O]], [[O]], CONLL2003_TAGS)
    with pytest.raises(ValueError, match="sentence 0: 3 predicted tags but 2 gold"):
        entity_scores([[O, O, O]], [[O, O]], CONLL2003_TAGS)
    with pytest.raises(ValueError, match="sentence 0: tag id 9 is outside 0..8"):
        entity_scores([[O, 9]], [[O, O]], CONLL2003_TAGS)
