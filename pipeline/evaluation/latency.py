"""Batch-1 latency of a model on this machine, as percentiles in milliseconds."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch


def batch1_latency_ms(forward: Callable[[dict[str, torch.Tensor]], torch.Tensor],
                      inputs: Sequence[dict[str, torch.Tensor]], runs: int, warmup: int) -> dict[str, float]:
    """Time ``runs`` single-example forward passes after ``warmup`` untimed ones.

    Args:
        forward: the model call; its output is not used.
        inputs: batch-1 inputs (``input_ids`` [1, T] int64, ``attention_mask`` [1, T] int64),
            cycled in order, so every model sees the same sentences.
        runs: timed passes.
        warmup: untimed passes first.

    Returns:
        ``{"p50_ms", "p99_ms", "mean_ms"}`` wall-clock milliseconds, under ``torch.inference_mode``
        with the process's torch thread count.
    """
    timings = np.empty(runs)
    with torch.inference_mode():
        for i in range(warmup):
            forward(inputs[i % len(inputs)])
        for i in range(runs):
            began = time.perf_counter()
            forward(inputs[i % len(inputs)])
            timings[i] = (time.perf_counter() - began) * 1000
    return {"p50_ms": round(float(np.percentile(timings, 50)), 3),
            "p99_ms": round(float(np.percentile(timings, 99)), 3),
            "mean_ms": round(float(timings.mean()), 3)}
