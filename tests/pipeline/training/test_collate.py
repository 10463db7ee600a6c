"""Padding of the teacher's stored per-token signals to a batch (see core.schema for the layout)."""

import warnings

import numpy as np
import torch

from pipeline.training.collate import pad_attention, pad_matrices, pad_words


def test_padding_of_stored_per_token_signals():
    lengths = np.array([2, 1])
    hidden = np.array([np.arange(6, dtype=np.float16), np.arange(3, dtype=np.float16) + 10], dtype=object)
    padded = pad_matrices(hidden, lengths, width=3)  # D = 3
    assert padded.shape == (2, 3, 3) and padded.dtype == torch.float32
    assert padded[0, :2].flatten().tolist() == [0, 1, 2, 3, 4, 5] and padded[0, 2].abs().sum() == 0
    assert padded[1, 0].tolist() == [10, 11, 12] and padded[1, 1:].abs().sum() == 0
    maps = np.array([np.arange(8, dtype=np.float16), np.array([1, 2], dtype=np.float16)], dtype=object)  # H = 2
    padded = pad_attention(maps, lengths, width=2)
    assert padded.shape == (2, 2, 2, 2)
    assert padded[0].flatten().tolist() == list(range(8))
    assert padded[1, :, 0, 0].tolist() == [1, 2] and padded[1, :, 1].abs().sum() == 0


def test_read_only_rows_as_ray_hands_them_are_padded_without_warnings_or_aliasing():
    rows = [np.arange(4, dtype=np.float32), np.arange(2, dtype=np.float32) + 7]  # word logits, C = 2
    for row in rows:
        row.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        padded = pad_matrices(np.array(rows, dtype=object), np.array([2, 1]), width=4)  # wider than any row
        mask = pad_words(np.array([np.array([True]), None], dtype=object), 3, False)
    assert padded.shape == (2, 4, 2) and padded[1, 0].tolist() == [7, 8] and padded[:, 2:].abs().sum() == 0
    padded[0, 0, 0] = 99.0
    assert rows[0][0] == 0  # the batch is a copy
    assert mask.dtype == torch.bool and mask.tolist() == [[True, False, False], [False, False, False]]
