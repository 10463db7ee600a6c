"""Length-sorted dynamic batching and DeepSpeed teacher inference."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pipeline.precision import select_precision
from teachers.inference import TeacherInference, length_sorted_batches


@pytest.mark.parametrize("max_rows,max_tokens", [(3, 16), (1, 100), (64, 10_000), (4, 9)])
def test_batches_cover_every_row_once_within_limits(max_rows, max_tokens):
    lengths = np.random.default_rng(0).integers(1, 12, size=50)
    batches = list(length_sorted_batches(lengths, max_rows, max_tokens))
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(50))
    for batch in batches:
        assert len(batch) <= max_rows
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= max_tokens


def test_batches_are_length_sorted():
    lengths = np.array([5, 1, 9, 3, 3, 2, 8])
    batches = [b.tolist() for b in length_sorted_batches(lengths, 3, 16)]
    assert batches == [[1, 5, 3], [4, 0], [6], [2]]


def test_inference_matches_a_plain_forward_in_input_order(tiny_teacher_dir):
    texts = ["a long sentence that is much longer than the others in this list", "ok", "fine film", "bad"]
    teacher = TeacherInference(tiny_teacher_dir, select_precision("fp32", "test"), max_length=32,
                               max_batch_size=2, max_batch_tokens=64)
    logits = teacher.logits(texts)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    with torch.inference_mode():
        expected = torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in texts]).numpy()
    assert logits.shape == (4, 2) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected, atol=1e-5)
