"""``distill bench label``: teacher labeling throughput against a naive baseline, in one run.

Labels the same transfer-set rows three ways and prints a table (and writes JSON):

    naive            a plain transformers loop: pad every row to 128 tokens, batches of 32,
                     input order, ``torch.inference_mode`` (what a first script does)
    label stage      :func:`pipeline.stages.label.run` emitting logits: Ray Data actor pool,
                     ``deepspeed.init_inference``, length-sorted dynamic batching; timed twice:
                     the stage's wall time (starting the actors included: each imports torch,
                     transformers and DeepSpeed and loads the teacher) and its labeling window
                     (first shard started to last shard written), which is timed like the
                     naive loop, whose model is loaded before its clock starts
    label + signals  the same, also emitting the hidden states and attention maps of two
                     teacher layers (``label.emit``; eager attention, so the maps exist)

With ``engines`` (``distill bench label --engines inference,zero``) the label stage runs once per
DeepSpeed engine (``label.engine``; ``zero`` keeps ``label.offload`` and ``label.nvme_path``, so
``--set label.offload=nvme --set label.nvme_path=DIR`` measures NVMe offload) in place of the one
``label stage`` way.

For each: examples/s, the speed-up over naive, for the label stage its start-up (the stage's
wall time less its labeling window: Ray Data planning, actor processes started, their imports,
the teachers loaded), the teacher's achieved FLOP/s on the real
(non-padding) tokens as a fraction of a float32 matmul peak measured on this machine in the
same run, and for the label stage the stored bytes per example, in all and per signal.
FLOPs count the encoder's matrix multiplications (Kaplan et al. 2020 style): per layer and
sequence of T tokens, ``2 T (4 d^2 + 2 d f) + 4 T^2 d``. Memory: each way's peak resident set
size (MB, 10^6 bytes; :func:`compress.latency.peak_rss_mb`): a label actor's (the largest of the
stage's actors), the naive loop's process's from its model's load (its peak reset before), beside
the teacher's float32 weights (:func:`teachers.checkpoint.fp32_weight_mb`) and their ratio.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from compress.latency import peak_rss_mb, reset_peak_rss
from pipeline.stages import label
from core.artifacts import atomic_write_json
from pipeline.artifacts import RunDir
from pipeline.config.loading import validate_config
from pipeline.config.sections import RunConfig
from core.errors import ArtifactError
from pipeline.runner import start_ray
from students.architectures import config_field
from teachers.checkpoint import fp32_weight_mb
from teachers.signals import SignalsConfig, check_signals

log = logging.getLogger(__name__)

NAIVE_PAD_TO = 128
NAIVE_BATCH = 32


def matmul_peak_flops(size: int = 2048, repeats: int = 10, clock: Callable[[], float] = time.perf_counter) -> float:
    """Best float32 FLOP/s of a ``size x size`` matmul on this machine (torch's current threads):
    2 size^3 FLOPs over the shortest of ``repeats`` timed runs (seconds read from ``clock``)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        began = clock()
        a @ b
        best = min(best, clock() - began)
    return 2 * size**3 / best


def encoder_flops(config, lengths: np.ndarray) -> float:
    """Matmul FLOPs of a BERT-style encoder forward over sequences of the given token counts.

    Args:
        config: the encoder's transformers config (BERT, MPNet, RoBERTa, DistilBERT: hidden size,
            FFN width and layer count, in its own field names).
        lengths: int array [N] of tokens per sequence (as run, padding included or not).
    """
    d, layers = config.hidden_size, config.num_hidden_layers
    f = getattr(config, config_field(config, "intermediate_size"))
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


def label_stage_seconds(cfg: RunConfig, transfer: pa.Table, teacher_dir: Path) -> tuple[float, dict[str, Any]]:
    """Wall time of :func:`pipeline.stages.label.run` on ``transfer`` in a throw-away run directory.

    Returns:
        Seconds (start-up of the actors included) and the stage's summary.
    """
    with tempfile.TemporaryDirectory() as tmp:
        bench_run = RunDir(Path(tmp) / "bench")
        pq.write_table(transfer.select(["id", "text", "label"]), bench_run.split_file("transfer"))
        bench_run.teacher_dir.symlink_to(teacher_dir.resolve(), target_is_directory=True)  # not a copy of GBs
        began = time.perf_counter()
        summary = label.run(cfg, bench_run)
        return time.perf_counter() - began, summary


def way_result(seconds: float, rows: int, naive_s: float, useful_flops: float, peak_flops: float) -> dict[str, Any]:
    """One way's row of the table: seconds, examples/s, speed-up over naive, useful GFLOP/s and
    their fraction of the matmul peak, unrounded (:func:`render` rounds for the table)."""
    return {"seconds": seconds, "examples_per_s": rows / seconds, "speedup_vs_naive": naive_s / seconds,
            "useful_gflops_per_s": useful_flops / seconds / 1e9, "fraction_of_peak": useful_flops / seconds / peak_flops}


def engine_ways(cfg: RunConfig, engines: list[str] | None) -> dict[str, RunConfig]:
    """The label-stage ways: ``{"label stage": cfg}``, or with ``engines`` one config per engine,
    named ``label: inference``, ``label: zero/cpu``, ``label: zero/nvme`` (the offload of ``cfg``).

    Raises:
        ConfigError: an engine is not one of ``label.engine``'s, or ``zero`` with ``offload: nvme``
            and no ``nvme_path`` (one line naming the field).
    """
    if not engines:
        return {"label stage": cfg}
    raw = cfg.model_dump(mode="json")
    ways = {}
    for engine in engines:
        engine_cfg = validate_config({**raw, "label": {**raw["label"], "engine": engine}}, f"--engines {engine}")
        ways[f"label: {engine}{'/' + cfg.label.offload if engine == 'zero' else ''}"] = engine_cfg
    return ways


def naive_way(teacher_dir: Path, texts: list[str]) -> tuple[float, float | None]:
    """:func:`naive_loop`'s seconds and this process's peak RSS (MB) from its model's load, or
    None where the kernel does not let the peak be reset (it would be the process's lifetime peak)."""
    was_reset = reset_peak_rss()
    seconds = naive_loop(teacher_dir, texts)
    return seconds, peak_rss_mb() if was_reset else None


def bench_label(cfg: RunConfig, rows: int, out_file: Path, emit_layers: tuple[int, int] | None = (3, 6),
                engines: list[str] | None = None) -> dict[str, Any]:
    """Run the ways on the first ``rows`` transfer-set rows of a run whose label inputs exist.

    Args:
        cfg: the run config; its run directory must hold ``data/transfer.parquet`` and the
            fine-tuned teacher (run ``distill run CONFIG --until finetune`` first).
        rows: transfer-set rows to label.
        out_file: where the JSON result goes.
        emit_layers: teacher layers whose hidden states and attention maps the third way emits;
            None leaves the third way out (a whole split's hidden states take gigabytes).
        engines: ``label.engine`` values to run the stage with, one way each (:func:`engine_ways`);
            None runs it once with ``cfg``'s engine.

    Returns:
        The result written to ``out_file``.

    Raises:
        ArtifactError: the run directory lacks the transfer set or the teacher, or has fewer rows.
        ConfigError: ``emit_layers`` are not layers of the teacher, or ``engines`` names an
            engine that the config does not allow (see :func:`engine_ways`).
    """
    from transformers import AutoConfig, AutoTokenizer

    run = RunDir(cfg.run_dir)
    run.require("finetune")
    transfer = pq.read_table(run.split_file("transfer")).slice(0, rows)
    if len(transfer) < rows:
        raise ArtifactError(run.split_file("transfer"), f"has {len(transfer)} rows, fewer than --rows {rows}")
    teacher_config = AutoConfig.from_pretrained(run.teacher_dir)
    signals = SignalsConfig(hidden_layers=list(emit_layers or ()), attention_layers=list(emit_layers or ()))
    check_signals(signals, teacher_config)
    stage_ways = engine_ways(cfg, engines)
    texts = transfer.column("text").to_pylist()
    real_lengths = np.asarray([len(ids) for ids in AutoTokenizer.from_pretrained(run.teacher_dir)(
        texts, truncation=True, max_length=cfg.teacher.max_length)["input_ids"]])
    useful_flops = encoder_flops(teacher_config, real_lengths)
    start_ray(cfg)  # after the input checks, so a missing run fails at once
    peak = matmul_peak_flops()

    naive_s, naive_rss = naive_way(run.teacher_dir, texts)
    if emit_layers is not None:
        stage_ways["label + signals"] = cfg.model_copy(update={"label": cfg.label.model_copy(update={"emit": signals})})
    result = {"rows": rows, "teacher": str(run.teacher_dir), "matmul_peak_gflops": round(peak / 1e9, 1),
              "threads": torch.get_num_threads(), "emit_layers": list(emit_layers or ()),
              "teacher_fp32_mb": round(fp32_weight_mb(run.teacher_dir), 1),
              "ways": {"naive": {**way_result(naive_s, rows, naive_s, useful_flops, peak), "peak_rss_mb": naive_rss}}}
    for name, way_cfg in stage_ways.items():
        seconds, summary = label_stage_seconds(way_cfg, transfer, run.teacher_dir)
        result["ways"][name] = {**way_result(seconds, rows, naive_s, useful_flops, peak),
                                "startup_s": seconds - summary["labeling_window_s"],
                                "labeling": way_result(summary["labeling_window_s"], rows, naive_s, useful_flops, peak),
                                "stored_bytes_per_example": summary["stored_bytes_per_example"],
                                "signal_bytes_per_example": summary["signal_bytes_per_example"],
                                "peak_rss_mb": max(summary["actor_peak_rss_mb"])}
    atomic_write_json(out_file, result)
    return result


def render(result: dict[str, Any]) -> str:
    """The result as a plain-text table, then the bytes per example of each signal."""
    lines = [f"label benchmark: {result['rows']} rows, fp32 matmul peak {result['matmul_peak_gflops']} GFLOP/s "
             f"({result['threads']} threads); signals of layers {result['emit_layers'] or 'none'}",
             f"{'way':<16} {'seconds':>8} {'start-up s':>10} {'examples/s':>11} {'speed-up':>9} {'GFLOP/s':>8} "
             f"{'of peak':>8} {'stored B/ex':>12}"]
    for name, way in result["ways"].items():
        stored = way.get("stored_bytes_per_example")
        rows = [(name, way)] + ([("  labeling only", way["labeling"])] if "labeling" in way else [])
        for title, timing in rows:
            startup = timing.get("startup_s")
            lines.append(f"{title:<16} {timing['seconds']:>8.2f} {'-' if startup is None else f'{startup:.2f}':>10} "
                         f"{timing['examples_per_s']:>11.1f} {timing['speedup_vs_naive']:>8.2f}x "
                         f"{timing['useful_gflops_per_s']:>8.2f} {timing['fraction_of_peak']:>7.1%} "
                         f"{'-' if stored is None else f'{stored:,.1f}':>12}")
    lines.append("start-up: the stage's wall time less its labeling window (Ray Data planning, actors started, "
                 "their imports, teachers loaded); labeling only: from the first shard's start to the last "
                 "shard's write (the naive loop is also timed with its model loaded)")
    for name, way in result["ways"].items():
        if "signal_bytes_per_example" in way:
            signals = ", ".join(f"{k} {v:,.1f}" for k, v in way["signal_bytes_per_example"].items())
            lines.append(f"bytes/example, {name}: {signals}")
    return "\n".join(lines + memory_lines(result))


def memory_lines(result: dict[str, Any]) -> list[str]:
    """The memory table: per way (those that measured it) examples/s, peak RSS MB, the teacher's
    float32 weights MB and peak RSS / weights; empty for a result without the teacher's size."""
    weights = result.get("teacher_fp32_mb")
    if weights is None:
        return []
    lines = [f"{'way':<16} {'examples/s':>11} {'peak RSS MB':>12} {'fp32 weights MB':>16} {'RSS/weights':>12}"]
    for name, way in result["ways"].items():
        rss = way.get("peak_rss_mb")
        lines.append(f"{name:<16} {way['examples_per_s']:>11.1f} {'-' if rss is None else f'{rss:,.1f}':>12} "
                     f"{weights:>16,.1f} {'-' if rss is None else f'{rss / weights:.2f}':>12}")
    lines.append("peak RSS: a label actor's (the largest of the stage's), the naive loop's process's from its "
                 "model's load; MB = 10^6 bytes")
    return lines
