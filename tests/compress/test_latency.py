"""Latency, throughput, size, memory and machine description of variants (values, not comparisons)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from tiny_onnx import LSTM_INPUTS, random_features

from compress.backends import load_predictor
from compress.latency import machine_info, measure, measure_variant, peak_rss_mb, reset_peak_rss, size_mb


def sentences(count: int = 5) -> list[dict]:
    return [random_features(1, LSTM_INPUTS, seed=seed, seq_len=4 + seed) for seed in range(count)]


def test_measure_returns_ordered_percentiles_and_throughput(tiny_lstm_onnx):
    stats = measure(load_predictor("onnxruntime", tiny_lstm_onnx, 1), sentences(), random_features(32, LSTM_INPUTS),
                    runs=20, warmup=2)
    assert 0 < stats["p50_ms"] <= stats["p99_ms"] and stats["mean_ms"] > 0
    assert stats["throughput_eps"] > 0


def test_measure_needs_sentences(tiny_lstm_onnx):
    with pytest.raises(ValueError, match="at least one batch-1 sentence"):
        measure(load_predictor("onnxruntime", tiny_lstm_onnx, 1), [], random_features(32, LSTM_INPUTS), runs=5, warmup=0)


def test_measure_variant_runs_each_thread_count_in_a_fresh_process(tiny_lstm_onnx):
    report = measure_variant("onnxruntime", tiny_lstm_onnx, sentences(), random_features(32, LSTM_INPUTS),
                             runs=10, warmup=1, threads=(1, 2))
    assert report["size_mb"] == pytest.approx(os.path.getsize(tiny_lstm_onnx) / 2**20)
    assert sorted(report["by_threads"]) == [1, 2]
    for stats in report["by_threads"].values():
        assert 0 < stats["p50_ms"] <= stats["p99_ms"] and stats["throughput_eps"] > 0
        assert stats["peak_rss_mb"] > 20 and stats["peak_rss_mb"] >= stats["model_rss_mb"]


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
