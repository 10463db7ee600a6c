"""``distill bench label``: teacher labeling throughput against a naive baseline, in one run.

Labels the same transfer-set rows two ways and prints a table (and writes JSON):

    naive        a plain transformers loop: pad every row to 128 tokens, batches of 32, input
                 order, ``torch.inference_mode`` (what a first script does)
    label stage  :func:`pipeline.label.run`: Ray Data actor pool, ``deepspeed.init_inference``,
                 length-sorted dynamic batching; wall time includes starting the actors

For each: examples/s, the speed-up over naive, and the teacher's achieved FLOP/s on the real
(non-padding) tokens as a fraction of a float32 matmul peak measured on this machine in the
same run. FLOPs count the encoder's matrix multiplications (Kaplan et al. 2020 style):
per layer and sequence of T tokens, ``2 T (4 d^2 + 2 d f) + 4 T^2 d``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline import label
from pipeline.artifacts import RunDir, atomic_write_json
from pipeline.config import RunConfig
from pipeline.errors import ArtifactError
from pipeline.runner import start_ray

log = logging.getLogger(__name__)

NAIVE_PAD_TO = 128
NAIVE_BATCH = 32


def matmul_peak_flops(size: int = 2048, repeats: int = 10) -> float:
    """Best float32 FLOP/s of a ``size x size`` matmul on this machine (torch's current threads)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - began)
    return 2 * size**3 / best


def encoder_flops(config, lengths: np.ndarray) -> float:
    """Matmul FLOPs of a BERT-style encoder forward over sequences of the given token counts.

    Args:
        config: a transformers ``BertConfig``-like object (hidden_size, intermediate_size,
            num_hidden_layers).
        lengths: int array [N] of tokens per sequence (as run, padding included or not).
    """
    d, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    lengths = lengths.astype(np.float64)
    per_layer = 2 * lengths * (4 * d * d + 2 * d * f) + 4 * lengths**2 * d
    return float(layers * per_layer.sum())


def naive_loop(teacher_dir: Path, texts: list[str]) -> float:
    """Seconds to label ``texts`` with a plain transformers loop (pad to 128, batch 32, input order)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    began = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(texts), NAIVE_BATCH):
            batch = tokenizer(texts[start:start + NAIVE_BATCH], padding="max_length", truncation=True,
                              max_length=NAIVE_PAD_TO, return_tensors="pt")
            model(**batch).logits.numpy()
    return time.perf_counter() - began


def bench_label(cfg: RunConfig, rows: int, out_file: Path) -> dict[str, Any]:
    """Run both ways on the first ``rows`` transfer-set rows of a run whose label inputs exist.

    Args:
        cfg: the run config; its run directory must hold ``data/transfer.parquet`` and the
            fine-tuned teacher (run ``distill run CONFIG --until finetune`` first).
        rows: transfer-set rows to label.
        out_file: where the JSON result goes.

    Returns:
        The result written to ``out_file``.

    Raises:
        ArtifactError: the run directory lacks the transfer set or the teacher.
    """
    from transformers import AutoConfig, AutoTokenizer

    run = RunDir(cfg.run_dir)
    run.require("finetune")
    transfer = pq.read_table(run.split_file("transfer")).slice(0, rows)
    if len(transfer) < rows:
        raise ArtifactError(run.split_file("transfer"), f"has {len(transfer)} rows, fewer than --rows {rows}")
    texts = transfer.column("text").to_pylist()
    teacher_config = AutoConfig.from_pretrained(run.teacher_dir)
    real_lengths = np.asarray([len(ids) for ids in AutoTokenizer.from_pretrained(run.teacher_dir)(
        texts, truncation=True, max_length=cfg.teacher.max_length)["input_ids"]])
    useful_flops = encoder_flops(teacher_config, real_lengths)
    start_ray(cfg)  # after the input checks, so a missing run fails at once
    peak = matmul_peak_flops()

    naive_s = naive_loop(run.teacher_dir, texts)
    with tempfile.TemporaryDirectory() as tmp:
        bench_run = RunDir(Path(tmp) / "bench")
        pq.write_table(transfer.select(["id", "text", "label"]), bench_run.split_file("transfer"))
        shutil.copytree(run.teacher_dir, bench_run.teacher_dir)
        began = time.perf_counter()
        label.run(cfg, bench_run)
        stage_s = time.perf_counter() - began
    result = {"rows": rows, "teacher": str(run.teacher_dir), "matmul_peak_gflops": round(peak / 1e9, 1),
              "threads": torch.get_num_threads(), "ways": {}}
    for name, seconds in (("naive", naive_s), ("label stage", stage_s)):
        result["ways"][name] = {"seconds": round(seconds, 2), "examples_per_s": round(rows / seconds, 1),
                                "speedup_vs_naive": round(naive_s / seconds, 2),
                                "useful_gflops_per_s": round(useful_flops / seconds / 1e9, 2),
                                "fraction_of_peak": round(useful_flops / seconds / peak, 4)}
    atomic_write_json(out_file, result)
    return result


def render(result: dict[str, Any]) -> str:
    """The result as a plain-text table."""
    lines = [f"label benchmark: {result['rows']} rows, fp32 matmul peak {result['matmul_peak_gflops']} GFLOP/s "
             f"({result['threads']} threads)",
             f"{'way':<12} {'seconds':>8} {'examples/s':>11} {'speed-up':>9} {'GFLOP/s':>8} {'of peak':>8}"]
    for name, way in result["ways"].items():
        lines.append(f"{name:<12} {way['seconds']:>8.2f} {way['examples_per_s']:>11.1f} "
                     f"{way['speedup_vs_naive']:>8.2f}x {way['useful_gflops_per_s']:>8.2f} "
                     f"{way['fraction_of_peak']:>7.1%}")
    return "\n".join(lines)
