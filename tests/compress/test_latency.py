"""Latency, throughput, size, memory and machine description of variants: percentiles of calls
whose delays the test sets (``time.sleep``, so each call takes at least its delay), and one
ordering of two models 800x apart in work."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from heavy_onnx import export_matmul_chain
from tiny_onnx import LSTM_INPUTS, random_features

from compress.backends import load_predictor
from compress.latency import machine_info, measure, measure_variant, peak_rss_mb, reset_peak_rss, size_mb


def sentences(count: int = 5) -> list[dict]:
    return [random_features(1, LSTM_INPUTS, seed=seed, seq_len=4 + seed) for seed in range(count)]


class SleepingPredictor:
    """A predictor whose call sleeps for the sum of its rows' ``delay_ms`` (float [B, 1], ms) and
    returns zero logits float32 [B, 2]: a call takes at least that long, and not much longer."""

    input_names = ["delay_ms"]
    threads = 1

    def predict(self, features: dict[str, np.ndarray]) -> np.ndarray:
        time.sleep(float(features["delay_ms"].sum()) / 1e3)
        return np.zeros((len(features["delay_ms"]), 2), dtype=np.float32)


def delays(*ms: float) -> list[dict[str, np.ndarray]]:
    return [{"delay_ms": np.array([[d]])} for d in ms]


def test_measure_percentiles_and_throughput_of_known_delays():
    # 10 runs over 10 sentences: each timed once, whatever the warmup; 9 return at once, 1 sleeps 100 ms
    stats = measure(SleepingPredictor(), delays(0, 0, 0, 0, 100, 0, 0, 0, 0, 0), {"delay_ms": np.ones((32, 1))},
                    runs=10, warmup=3, throughput_runs=2)
    assert stats["p99_ms"] >= 0.91 * 100  # numpy's p99 of 10 samples: 0.09 of the 9th + 0.91 of the slowest
    assert stats["mean_ms"] >= 100 / 10
    assert stats["p50_ms"] < stats["mean_ms"] / 2  # the median is an instant call's, not the mean or the slowest
    # a batch of 32 rows sleeps 32 ms: at most 1000 rows/s, and not 32x fewer (batches/s)
    assert 1000 / 10 < stats["throughput_eps"] <= 1000


def test_measure_needs_sentences(tiny_lstm_onnx):
    with pytest.raises(ValueError, match="at least one batch-1 sentence"):
        measure(load_predictor("onnxruntime", tiny_lstm_onnx, 1), [], random_features(32, LSTM_INPUTS), runs=5, warmup=0)


@pytest.mark.slow  # three spawned processes, each importing torch: 100 s on a loaded 2-core machine
def test_measure_variant_runs_each_thread_count_in_a_fresh_process(tiny_lstm_onnx, tmp_path):
    chain = export_matmul_chain(tmp_path / "chain.onnx", LSTM_INPUTS)
    report = measure_variant("onnxruntime", tiny_lstm_onnx, sentences(), random_features(32, LSTM_INPUTS),
                             runs=10, warmup=1, threads=(1, 2))
    slow = measure_variant("onnxruntime", chain, sentences(), random_features(32, LSTM_INPUTS), runs=10, warmup=1,
                           threads=(1,))
    assert report["size_mb"] == pytest.approx(os.path.getsize(tiny_lstm_onnx) / 2**20)
    assert sorted(report["by_threads"]) == [1, 2]
    for stats in report["by_threads"].values():
        assert stats["peak_rss_mb"] > 20 and stats["peak_rss_mb"] >= stats["model_rss_mb"]
    # the figures are the named file's: 800x the work is far slower (240x in p50 when written; 10x asserted)
    assert slow["by_threads"][1]["p50_ms"] > 10 * report["by_threads"][1]["p50_ms"]
    assert slow["by_threads"][1]["throughput_eps"] < report["by_threads"][1]["throughput_eps"] / 10


def test_size_of_a_folder_sums_its_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"x" * 2**20)
    (tmp_path / "sub" / "b.bin").write_bytes(b"x" * 2**19)
    assert size_mb(tmp_path) == pytest.approx(1.5)
    assert size_mb(tmp_path / "a.bin") == pytest.approx(1.0)


def test_machine_info_names_cpu_and_versions():
    info = machine_info()
    assert info["logical_cores"] == os.cpu_count() and info["cpu_model"]
    assert set(info["cpu_flags"]) <= {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
                                      "amx_tile", "amx_int8", "fma"}
    assert info["versions"]["onnxruntime"] and info["versions"]["torch"]


def test_peak_rss_resets_to_what_runs_after():
    block = np.ones(40_000_000)  # 320 MB resident
    with_block = peak_rss_mb()
    del block
    assert reset_peak_rss()
    assert peak_rss_mb() < with_block - 250
