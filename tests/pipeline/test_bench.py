"""The label benchmark's arithmetic and table; the measurement itself is `distill bench label`."""

from types import SimpleNamespace

import numpy as np

from pipeline.bench import encoder_flops, matmul_peak_flops, render


def test_encoder_flops_by_hand():
    config = SimpleNamespace(hidden_size=4, intermediate_size=8, num_hidden_layers=2)
    # one sequence of 3 tokens: per layer 2*3*(4*16 + 2*4*8) + 4*9*4 = 6*128 + 144 = 912
    assert encoder_flops(config, np.array([3])) == 2 * 912
    # padding costs quadratically in attention: 6 tokens > twice 3 tokens
    assert encoder_flops(config, np.array([6])) > 2 * encoder_flops(config, np.array([3]))


def test_matmul_peak_is_a_positive_rate():
    assert 1e6 < matmul_peak_flops(size=128, repeats=2) < 1e15


def test_render_lists_both_ways_with_ratio():
    way = {"seconds": 2.0, "examples_per_s": 50.0, "speedup_vs_naive": 1.0, "useful_gflops_per_s": 1.5,
           "fraction_of_peak": 0.01}
    text = render({"rows": 100, "matmul_peak_gflops": 150.0, "threads": 2,
                   "ways": {"naive": way, "label stage": {**way, "speedup_vs_naive": 8.5}}})
    assert "100 rows" in text and "150.0 GFLOP/s" in text
    assert text.splitlines()[-1].split()[:2] == ["label", "stage"] and "8.50x" in text
