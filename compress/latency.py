"""CPU latency, throughput, size and memory of a variant, and the machine they were measured on.

    stats = measure(predictor, sentences_batch1, batch32, runs=200, warmup=20)
    report = measure_variant("onnxruntime", "variants/int8", sentences_batch1, batch32, runs=200, warmup=20)

Latency is wall-clock time of ``predict`` at batch 1 over real sentences, cycling through them
(so lengths vary as in use); throughput is examples/s at batch 32. :func:`measure_variant` runs
each thread count in a fresh spawned process, so one variant's allocations, thread pools and
process-wide settings (``torch.set_num_threads``) never leak into another's numbers, and reports
that process's peak RSS.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import multiprocessing
import os
import platform
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import psutil

CPU_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "fma")
"""Instruction-set flags that decide which int8/fp32 kernels ONNX Runtime and PyTorch pick."""
PACKAGES = ("torch", "onnxruntime", "onnx", "executorch", "transformers", "numpy")


def measure(predictor, feature_batches_batch1: list[dict[str, np.ndarray]], feature_batch32: dict[str, np.ndarray],
            runs: int, warmup: int, throughput_runs: int | None = None) -> dict[str, float]:
    """Batch-1 latency percentiles and batch-32 throughput of one loaded predictor.

    Args:
        predictor: a :class:`compress.backends.Predictor`.
        feature_batches_batch1: one feature dict per real sentence (int64 [1, T]), cycled through.
        feature_batch32: one feature dict of 32 rows (int64 [32, T]).
        runs: timed batch-1 calls; warmup: untimed calls before them (and before throughput).
        throughput_runs: timed batch-32 calls; default max(3, runs // 10).

    Returns:
        ``p50_ms``, ``p99_ms``, ``mean_ms`` (batch 1, milliseconds) and ``throughput_eps``
        (examples per second at batch 32).

    Raises:
        ValueError: no sentences, or runs < 1.
    """
    if not feature_batches_batch1 or runs < 1:
        raise ValueError("measure needs at least one batch-1 sentence and runs >= 1")
    sentences = itertools.cycle(feature_batches_batch1)
    for _ in range(warmup):
        predictor.predict(next(sentences))
    latencies_ms = np.empty(runs)
    for i in range(runs):
        features = next(sentences)
        start = time.perf_counter()
        predictor.predict(features)
        latencies_ms[i] = (time.perf_counter() - start) * 1e3
    rows = len(next(iter(feature_batch32.values())))
    throughput_runs = throughput_runs or max(3, runs // 10)
    predictor.predict(feature_batch32)
    start = time.perf_counter()
    for _ in range(throughput_runs):
        predictor.predict(feature_batch32)
    seconds = time.perf_counter() - start
    return {"p50_ms": float(np.percentile(latencies_ms, 50)), "p99_ms": float(np.percentile(latencies_ms, 99)),
            "mean_ms": float(latencies_ms.mean()), "throughput_eps": rows * throughput_runs / seconds}


def size_mb(path: str | Path) -> float:
    """Size on disk in MB (2^20 bytes, as every size in the run) of a file, or of every file under a folder."""
    path = Path(path)
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 2**20


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set size (Linux ``VmHWM``, by writing 5 to
    ``/proc/self/clear_refs``), so :func:`peak_rss_mb` reports the peak from now on.

    Returns:
        False where the kernel does not allow it (not Linux, or before 4.0); the peak then
        stays the process's lifetime peak.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (10^6 bytes): ``VmHWM`` since the last
    :func:`reset_peak_rss`, else the lifetime peak (``ru_maxrss``)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6  # kB (KiB) in /proc
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # Linux reports KiB


def _measure_in_this_process(backend: str, path: str, threads: int, batches1, batch32, runs: int, warmup: int) -> dict:
    """Load and measure one variant here (the body of the spawned process); adds memory figures."""
    from compress.backends import load_predictor

    before_mb = psutil.Process().memory_info().rss / 1e6
    predictor = load_predictor(backend, path, threads)
    stats = measure(predictor, batches1, batch32, runs, warmup)
    after_mb = psutil.Process().memory_info().rss / 1e6
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # Linux reports KiB
    return stats | {"peak_rss_mb": peak_mb, "model_rss_mb": after_mb - before_mb}


def measure_variant(backend: str, path: str | Path, feature_batches_batch1: list[dict[str, np.ndarray]],
                    feature_batch32: dict[str, np.ndarray], runs: int, warmup: int,
                    threads: tuple[int, ...] | None = None) -> dict:
    """Measure one variant on disk at 1 thread and at all cores, each in a fresh process.

    Args:
        backend: a key of :data:`compress.backends.BACKENDS`.
        path: the variant's model file or folder.
        feature_batches_batch1, feature_batch32, runs, warmup: as in :func:`measure`.
        threads: thread counts to measure; default (1, all cores).

    Returns:
        ``size_mb`` (the path on disk) and ``by_threads`` {threads: :func:`measure`'s dict plus
        ``peak_rss_mb`` (peak resident memory of the whole fresh process: interpreter, runtime
        libraries, model and activations) and ``model_rss_mb`` (resident memory added by loading
        and running the model, measured with psutil)}.
    """
    threads = threads or tuple(sorted({1, os.cpu_count() or 1}))
    by_threads = {}
    for count in threads:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            by_threads[count] = pool.submit(_measure_in_this_process, backend, str(path), count,
                                            feature_batches_batch1, feature_batch32, runs, warmup).result()
    return {"backend": backend, "size_mb": size_mb(path), "by_threads": by_threads}


def _cpuinfo() -> dict[str, str]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo ({} off Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return {}
    first = cpuinfo.read_text().split("\n\n")[0]
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first.splitlines())}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """Where numbers were measured: CPU model, cores, SIMD flags, OS, package versions.

    Returns:
        ``cpu_model``, ``logical_cores``, ``physical_cores``, ``cpu_flags`` (those of
        :data:`CPU_FLAGS` present), ``platform``, ``python`` and ``versions`` {package: version or None}.
    """
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    return {"cpu_model": info.get("model name", platform.processor()), "logical_cores": os.cpu_count(),
            "physical_cores": psutil.cpu_count(logical=False), "cpu_flags": [f for f in CPU_FLAGS if f in flags],
            "platform": platform.platform(), "python": platform.python_version(),
            "versions": {package: _version(package) for package in PACKAGES}}
