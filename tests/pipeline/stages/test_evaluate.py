"""Stage ``evaluate``'s latency: the benchmark's harness (:func:`compress.latency.measure`) on the
first dev rows, each featurized alone, with the thread count it ran at stated in the metrics."""

from __future__ import annotations

import pytest
import torch

from compress.latency import LATENCY_ROWS
from core.schema import TaskKind
from pipeline.evaluation.scoring import batch1_features, read_split, teacher_model
from pipeline.stages import evaluate

from test_benchmark import build_run
from test_train import sentences


@pytest.fixture
def one_thread():
    """torch at 1 thread for the test (the process's count restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_metrics_state_the_thread_count_of_the_latency(tmp_path, tiny_teacher_dir, one_thread):
    cfg, run_dir = build_run(tmp_path, tiny_teacher_dir)
    metrics = evaluate.run(cfg, run_dir)
    latency = metrics["models"]["teacher"]["latency"]
    assert set(latency) == {"p50_ms", "p99_ms", "mean_ms", "threads"}
    assert latency["threads"] == 1 == metrics["hardware"]["torch_threads"]
    assert 0 < latency["p50_ms"] <= latency["p99_ms"]
    # the trivial baseline: the train split's majority label, scored on the dev rows
    train, dev = sentences(16, seed=1)[1], sentences(24, seed=2)[1]
    majority = max((0, 1), key=lambda label: (train.count(label), -label))
    assert metrics["baseline"] == {"rule": f"majority class: {majority}",
                                   "dev_accuracy": round(dev.count(majority) / len(dev), 4)}


def test_latency_rows_are_the_first_dev_rows_each_alone(tmp_path, tiny_teacher_dir):
    _, run_dir = build_run(tmp_path, tiny_teacher_dir)
    dev = read_split(run_dir.split_file("dev"), TaskKind.SENTENCE)
    _, featurize, _ = teacher_model(run_dir.teacher_dir, 32)
    singles = batch1_features(featurize, dev, 5)
    assert len(singles) == 5
    for text, features in zip(dev.texts, singles):
        alone = featurize([text])
        assert features["input_ids"].shape[0] == 1 and torch.equal(features["input_ids"], alone["input_ids"])
    assert len(batch1_features(featurize, dev, LATENCY_ROWS)) == len(dev.texts) == 24  # fewer rows than asked: all
