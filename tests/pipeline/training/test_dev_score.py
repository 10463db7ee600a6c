"""The training loop's dev score follows ``data.metric``, so the metric picks the best epoch.

A crafted imbalanced dev split (8 negatives, 2 positives) and two epochs of predictions: epoch 1
says negative everywhere (accuracy 0.8, no positive found), epoch 2 finds both positives at the
cost of 3 false alarms (accuracy 0.7). Accuracy keeps epoch 1, the positive class's F1 epoch 2.
The student is a stand-in module whose logits are the crafted predictions; the scoring is the
loop's own (:func:`pipeline.training.loop.dev_score`), on the CPU, without Ray.
"""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from core.precision import select_precision
from pipeline.evaluation.scoring import score
from pipeline.training.collate import Batch
from pipeline.training.loop import dev_score

GOLD = [0] * 8 + [1] * 2
EPOCHS = {1: [0] * 10, 2: [0] * 5 + [1] * 3 + [1] * 2}


class Replay(nn.Module):
    """A student whose logits [B, 2] are one-hot of the predictions given in its features."""

    def forward(self, predicted):
        return SimpleNamespace(logits=nn.functional.one_hot(predicted, 2).float() * 5)


def epoch_scores(metric: str) -> dict[int, float]:
    """The loop's dev score of each crafted epoch, its dev rows in two batches."""
    precision = select_precision("fp32", "train")
    gold = torch.tensor(GOLD)
    return {epoch: dev_score(Replay(), [Batch({"predicted": torch.tensor(p[i:i + 5])}, {}, gold[i:i + 5])
                                        for i in (0, 5)], precision, torch.device("cpu"), None, metric)
            for epoch, p in EPOCHS.items()}


@pytest.mark.parametrize("metric, expected, best", [
    ("accuracy", {1: 0.8, 2: 0.7}, 1),
    ("f1", {1: 0.0, 2: 4 / 7}, 2),  # 2 TP, 3 FP, 0 FN: 2*2 / (2*2 + 3)
    ("macro_f1", {1: 8 / 18, 2: (10 / 13 + 4 / 7) / 2}, 2),
])
def test_the_metric_picks_the_best_epoch(metric, expected, best):
    scores = epoch_scores(metric)
    assert scores == pytest.approx(expected)
    assert max(scores, key=scores.get) == best  # as Ray keeps the checkpoint of the highest dev_score


def test_matthews_and_the_headline_comes_first_with_accuracy_beside():
    assert epoch_scores("matthews")[1] == 0.0  # a constant prediction correlates with nothing
    scores = score(EPOCHS[2], GOLD, None, "f1")
    assert list(scores) == ["f1", "accuracy"]
    assert scores["accuracy"] == pytest.approx(0.7)
    assert list(score(EPOCHS[2], GOLD, None)) == ["accuracy"]
