"""CPU latency, throughput, size and memory of a variant, and the machine they were measured on.

    stats = measure(predictor, sentences_batch1, batch32, runs=RUNS, warmup=WARMUP)
    report = measure_variant("onnxruntime", "variants/int8", sentences_batch1, batch32, runs=200, warmup=20)

How a batch-1 p50 is measured, by :func:`measure`, the one harness of the project: the evaluate
stage times each model with it, the benchmark stage each variant at each thread count.

- Rows: the first :data:`LATENCY_ROWS` dev rows (``benchmark.latency_rows``, default the same),
  each featurized alone by the model's own featurizer, so every sentence keeps its own length
  and no padding; fed in dev order and cycled.
- Calls: ``warmup`` untimed calls, then ``runs`` timed ones (defaults :data:`WARMUP` and
  :data:`RUNS`; ``evaluate.latency_warmup``/``latency_runs``, ``benchmark.warmup``/``runs``).
  Each is one ``predictor.predict(features)`` (features in, logits out; PyTorch eagerly under
  ``torch.inference_mode``), timed with ``time.perf_counter``, in the calling process, with the
  model already loaded.
- Figures: ``p50_ms`` and ``p99_ms`` are numpy percentiles (linear interpolation) of the ``runs``
  wall-clock times in milliseconds, ``mean_ms`` their mean.
- Threads: the count the predictor runs with (``torch.set_num_threads``, ONNX Runtime's intra-op
  threads, ExecuTorch's threadpool), stated as ``threads`` in the result. The evaluate stage
  keeps the process's torch thread count (``latency.threads`` in its metrics); the benchmark
  stage loads each variant at each count of ``benchmark.threads``.

So a model's p50 in the evaluate stage and in the benchmark stage at the same thread count
measure the same thing, and differ only by what else the machine ran meanwhile. Throughput is
examples/s at batch 32, when a batch is given. :func:`measure_variant` runs each thread count in
a fresh spawned process, so one variant's allocations, thread pools and process-wide settings
never leak into another's numbers, and reports that process's peak RSS.
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
from typing import Any

import numpy as np
import psutil

CPU_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "fma")
"""Instruction-set flags that decide which int8/fp32 kernels ONNX Runtime and PyTorch pick."""
PACKAGES = ("torch", "onnxruntime", "onnx", "executorch", "ai-edge-litert", "transformers", "numpy")
"""Runtimes and libraries whose versions :func:`machine_info` reports (None where not installed)."""
LATENCY_ROWS = 100
"""Dev rows timed at batch 1, cycled (the evaluate stage's, and ``benchmark.latency_rows``'s default)."""
RUNS = 200
"""Timed batch-1 calls per model and thread count, by default (``evaluate.latency_runs``, ``benchmark.runs``)."""
WARMUP = 20
"""Untimed calls before them, by default (``evaluate.latency_warmup``, ``benchmark.warmup``)."""


def measure(predictor, feature_batches_batch1: list[dict[str, Any]], feature_batch32: dict[str, Any] | None,
            runs: int, warmup: int, throughput_runs: int | None = None) -> dict[str, float]:
    """Batch-1 latency percentiles (as the module docstring says) and batch-32 throughput of one
    loaded predictor.

    Args:
        predictor: a :class:`compress.backends.Predictor` (``predict`` and ``threads``).
        feature_batches_batch1: one feature dict per real sentence ([1, T] int64 arrays or
            tensors), cycled through.
        feature_batch32: one feature dict of 32 rows ([32, T]); None measures no throughput.
        runs: timed batch-1 calls; warmup: untimed calls before them (and before throughput).
        throughput_runs: timed batch-32 calls; default max(3, runs // 10).

    Returns:
        ``p50_ms``, ``p99_ms``, ``mean_ms`` (batch 1, milliseconds), ``threads`` (the predictor's
        thread count) and, with a batch, ``throughput_eps`` (examples per second at batch 32).

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
    stats = {"p50_ms": float(np.percentile(latencies_ms, 50)), "p99_ms": float(np.percentile(latencies_ms, 99)),
             "mean_ms": float(latencies_ms.mean()), "threads": predictor.threads}
    if feature_batch32 is None:
        return stats
    return stats | {"throughput_eps": throughput(predictor, feature_batch32, throughput_runs or max(3, runs // 10))}


def throughput(predictor, feature_batch: dict[str, Any], runs: int) -> float:
    """Examples per second of ``runs`` timed ``predictor.predict`` calls on one batch ([B, T]
    features), after one untimed call."""
    rows = len(next(iter(feature_batch.values())))
    predictor.predict(feature_batch)
    start = time.perf_counter()
    for _ in range(runs):
        predictor.predict(feature_batch)
    return rows * runs / (time.perf_counter() - start)


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
