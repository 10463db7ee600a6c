"""Combining several teachers' soft labels, and the checks that they can be combined."""

import math

import numpy as np
import pytest

from core.errors import ConfigError
from teachers.ensemble import check_teachers, combine_logits

LN3 = math.log(3)


def test_mean_logits_is_the_elementwise_mean():
    a = np.array([[0.0, LN3], [2.0, -1.0]], dtype=np.float32)
    b = np.array([[LN3, 0.0], [4.0, 1.0]], dtype=np.float32)
    combined = combine_logits([a, b], "mean_logits")
    assert combined.dtype == np.float32
    np.testing.assert_allclose(combined, [[LN3 / 2, LN3 / 2], [3.0, 0.0]], atol=1e-6)


def test_mean_probs_stores_the_log_of_the_mean_probability():
    # softmax: [0.25, 0.75] and [0.75, 0.25] -> mean [0.5, 0.5]; [1, 0] and [0, 1] at logits +-1000
    a = np.array([[0.0, LN3], [1000.0, -1000.0]], dtype=np.float32)
    b = np.array([[LN3, 0.0], [-1000.0, 1000.0]], dtype=np.float32)
    combined = combine_logits([a, b], "mean_probs")
    np.testing.assert_allclose(combined, np.full((2, 2), -math.log(2)), atol=1e-6)  # no overflow at 1000
    three = [np.array([[0.0, 0.0, LN3]]), np.array([[LN3, 0.0, 0.0]]), np.array([[0.0, LN3, 0.0]])]
    # each softmax is a permutation of [0.2, 0.2, 0.6]: the mean is uniform, log(1/3)
    np.testing.assert_allclose(combine_logits(three, "mean_probs"), [[-LN3] * 3], atol=1e-6)


def test_unknown_mode_and_shape_mismatch():
    with pytest.raises(ValueError, match=r"unknown combine mode 'max'"):
        combine_logits([np.zeros((1, 2))], "max")
    with pytest.raises(ValueError):
        combine_logits([np.zeros((1, 2)), np.zeros((1, 3))], "mean_logits")


def test_teachers_must_share_the_label_set_and_its_order(tiny_teacher_dir, make_tiny_teacher, tmp_path):
    same = make_tiny_teacher("same", seed=3)
    check_teachers(tiny_teacher_dir, [same])  # same labels, other weights: fine
    with pytest.raises(ConfigError, match=rf"label.teachers\[0\]: no such folder {tmp_path / 'gone'}"):
        check_teachers(tiny_teacher_dir, [tmp_path / "gone"])
    three = make_tiny_teacher("three", label_names=("negative", "neutral", "positive"))
    with pytest.raises(ConfigError, match=rf"label.teachers\[1\]: {three} has 3 labels but the run's teacher has 2"):
        check_teachers(tiny_teacher_dir, [same, three])
    swapped = make_tiny_teacher("swapped", label_names=("positive", "negative"))
    with pytest.raises(ConfigError, match=rf"label.teachers\[0\]: {swapped} orders its labels \['positive', "
                                          rf"'negative'\] but the run's teacher \['negative', 'positive'\]"):
        check_teachers(tiny_teacher_dir, [swapped])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"label.teachers\[0\]: .*empty has no config.json or no model weights"):
        check_teachers(tiny_teacher_dir, [tmp_path / "empty"])
