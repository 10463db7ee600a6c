"""The teacher's fine-tune keeps the epoch that ``data.metric`` rates best (:func:`pipeline.stages.finetune.dev_scorer`).

The crafted case of ``tests/pipeline/training/test_dev_score.py`` through the teacher's scorer and
:class:`teachers.finetune.BestEpoch`: an imbalanced dev split (8 negatives, 2 positives), epoch 1 says
negative everywhere (accuracy 0.8, positive F1 0), epoch 2 says positive on the 5 rows with "yes"
(both positives found, 3 false alarms: accuracy 0.7, F1 4/7). The data stage writes the split; the
tiny teacher's tokenizer featurizes it; stand-in models give the crafted predictions.
"""

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer

from pipeline.artifacts import RunDir
from pipeline.config.loading import validate_config
from pipeline.stages import data
from pipeline.stages.finetune import dev_scorer
from teachers.finetune import BestEpoch

DEV = [("no", 0)] * 5 + [("yes", 0)] * 3 + [("yes", 1)] * 2


class Says(nn.Module):
    """Logits [B, 2]: positive where the row holds the id ``positive_id`` (-1: nowhere)."""

    def __init__(self, positive_id: int):
        super().__init__()
        self.positive_id, self.weight = positive_id, nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **_):
        positive = (input_ids == self.positive_id).any(dim=1)
        return type("Out", (), {"logits": nn.functional.one_hot(positive.long(), 2).float() * 5 + self.weight})


@pytest.mark.parametrize("metric, scores, best", [(None, [0.8, 0.7], 1), ("f1", [0.0, 4 / 7], 2)])
def test_the_teachers_best_epoch_follows_the_metric(tmp_path, tiny_teacher_dir, metric, scores, best):
    for split, rows in (("train", DEV), ("dev", DEV)):
        (tmp_path / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    cfg = validate_config({"name": "t", "output_dir": str(tmp_path / "runs"), "teacher": {"model": str(tiny_teacher_dir)},
                           "data": {"root": str(tmp_path), "train": {"path": "train.tsv"}, "dev": {"path": "dev.tsv"},
                                    "labels": [0, 1], "metric": metric}})
    run_dir = RunDir(tmp_path / "runs" / "t")
    data.run(cfg, run_dir)
    yes = AutoTokenizer.from_pretrained(str(tiny_teacher_dir)).convert_tokens_to_ids("yes")
    best_epoch = BestEpoch(dev_scorer(cfg, run_dir, tiny_teacher_dir))
    for model in (Says(-1), Says(yes)):
        best_epoch.observe(model)
    assert best_epoch.scores == pytest.approx(scores) and best_epoch.best_epoch == best
