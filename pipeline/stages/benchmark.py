"""Stage ``benchmark``: every variant of the run measured the same way, in one process.

The variants are the PyTorch fp32 form of every model of :func:`pipeline.evaluation.variants.run_models`
(teacher, ``kd``, ``ce_only``, pruned models) and every variant of the ``export`` and
``quantize`` stages. Each is loaded through :func:`pipeline.evaluation.variants.load_variant` and fed by
:func:`pipeline.evaluation.variants.featurizer`, and gets:

- its dev score over the whole dev split (:func:`pipeline.evaluation.scoring.predict_with`, length-sorted
  batches of ``batch_size``, capped at an ExecuTorch program's ``max_batch``);
- for each thread count: batch-1 p50/p99 (ms) over the first ``latency_rows`` dev sentences,
  timed as the evaluate stage times its models (:func:`compress.latency.measure`, whose module
  docstring says how), throughput (examples/s) on the first ``batch_size`` dev rows, and peak
  RSS (MB);
- its size on disk (MB; weight files only, not tokenizer files) and, for PyTorch, parameters.

Peak RSS is measured in this process, not a fresh one per variant (:func:`compress.latency.
measure_variant`'s way): a fresh process re-imports torch, transformers and the runtimes, which
costs seconds to tens of seconds per variant and thread count on a loaded 2-core machine. Here
the kernel's peak (``VmHWM``) is reset before each load (:func:`compress.latency.reset_peak_rss`),
so each figure is the process's peak while that variant loads and runs: like a fresh process,
it includes the interpreter and every runtime library (all three backends' here, a few hundred
MB that every variant shares), and the model, its runtime's arenas and activations.
"""

from __future__ import annotations

import gc
import io
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from compress.latency import machine_info, measure, peak_rss_mb, reset_peak_rss, size_mb
from compress.pareto import pareto_front
from compress.pareto_plot import plot_pareto
from core.artifacts import atomic_write_json
from core.errors import ArtifactError, DistillError
from pipeline.artifacts import RunDir
from pipeline.config.compress_sections import BenchmarkConfig
from pipeline.config.sections import RunConfig
from pipeline.config.sections import task_kind
from pipeline.evaluation.bundle import ORT_SUFFIX, write_bundles
from pipeline.evaluation.scoring import (Split, agreement, batch1_features, dev_metric_name, predict_with, read_split,
                                        score)
from pipeline.tasks import tag_names
from pipeline.evaluation.variants import (META_FILE, VariantMeta, featurizer, load_variant, model_family, read_meta,
                               run_models, stage_variants)
from teachers.token_alignment import NO_SUBTOKEN

log = logging.getLogger(__name__)

VARIANT_STAGES = ("export", "quantize")
"""Stages whose variants are measured beside the PyTorch models."""
WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".data", ".pte")
"""Files of a model folder counted in its size on disk (not tokenizer or vocabulary files)."""
ACCURACY_TOLERANCE = 0.01
"""A teacher variant is a baseline candidate when its dev score is within this of the teacher fp32's."""
PARETO_PNG = "pareto.png"


def run(cfg: RunConfig, run_dir: RunDir) -> dict[str, Any]:
    """Measure every variant of a run whose earlier stages are finished; draw the Pareto plot;
    write a bundle per shipped model (:func:`pipeline.evaluation.bundle.write_bundles`).

    Returns:
        the summary of :func:`measure_run`, plus ``pareto_png`` (relative to the run folder) and
        ``bundles`` ({model: ``ship/<model>``}).

    Raises:
        ArtifactError: a variant's file is missing or corrupted (naming it), or the dev split is missing.
        DistillError: any other load or run error of a variant (see :func:`pipeline.evaluation.variants.load_variant`).
    """
    summary = measure_run(cfg, run_dir)
    png = write_pareto(summary, run_dir.stage_dir("benchmark") / PARETO_PNG)
    bundles = write_bundles(cfg, run_dir, summary, latency_key(summary["machine"]["threads"]))
    return {**summary, "pareto_png": str(png.relative_to(run_dir.root)), "bundles": bundles}


def bench_latency(cfg: RunConfig, out_file: Path) -> dict[str, Any]:
    """``distill bench latency``: :func:`measure_run` alone, written to ``out_file`` (JSON) with its
    Pareto plot beside it (same name, ``.png``); returns the summary."""
    summary = measure_run(cfg, RunDir(cfg.run_dir))
    write_pareto(summary, out_file.with_suffix(".png"))
    atomic_write_json(out_file, summary)
    return summary


def measure_run(cfg: RunConfig, run_dir: RunDir) -> dict[str, Any]:
    """Measure every variant of the run (see the module docstring).

    Returns:
        ``{"machine", "score_key", "dev_rows", "latency_rows", "batch_size", "variants", "pareto",
        "baseline"}``: ``machine`` is
        :func:`compress.latency.machine_info` plus ``threads`` {key: thread count}; ``score_key``
        is ``dev_<data.metric>`` (``dev_accuracy`` when unset, ``dev_entity_f1`` for token tasks);
        each variant is a dict with ``name, model, backend, precision, parent, method, family,
        size_mb, parameters`` (None unless PyTorch), the score and beside it ``dev_accuracy``,
        ``dev_agreement`` (the fraction of dev rows it predicts as its model's PyTorch fp32 variant
        does, in the same batches of ``batch_size`` rows), ``threads`` {"1"|"all"|"<n>": {p50_ms,
        p99_ms, throughput_eps, peak_rss_mb}} and ``speedup_vs_teacher_best``, ``size_ratio_vs_teacher_best``,
        ``accuracy_ratio_vs_teacher``; ``pareto`` names the variants on the front of score vs
        1-thread p50 (:func:`latency_key`), fastest first; ``baseline`` names the teacher's best variant.
    """
    bench = cfg.benchmark or BenchmarkConfig()
    tags = tag_names(cfg)
    metric = dev_metric_name(tags, cfg.data.scored_metric)
    score_key = f"dev_{metric}"
    dev = read_split(run_dir.split_file("dev"), task_kind(cfg.data))
    threads = thread_counts(bench.threads)
    metas = all_variants(run_dir)
    torch_threads = torch.get_num_threads()
    variants, reference = [], {}  # model -> its PyTorch fp32 dev predictions (measured first)
    try:
        for meta in tqdm(metas, desc="benchmark", unit="variant"):
            row, predictions = measure_one(run_dir, meta, dev, tags, bench, threads, cfg.teacher.max_length, metric)
            if meta.backend == "pytorch" and meta.precision == "fp32":
                reference[meta.model] = predictions
            row["dev_agreement"] = round(agreement(predictions, reference.get(meta.model, predictions)), 4)
            variants.append(row)
            first = variants[-1]["threads"][latency_key(threads)]
            log.info("benchmark: %s %s %.4f, p50 %.2f ms, %.2f MB", meta.name, score_key, variants[-1][score_key],
                     first["p50_ms"], variants[-1]["size_mb"])
    finally:
        torch.set_num_threads(torch_threads)
    fp32_parameters = {v["model"]: v["parameters"] for v in variants
                       if v["backend"] == "pytorch" and v["precision"] == "fp32"}
    for v in variants:  # a PyTorch model quantized on load holds the fp32 model's parameters, packed
        if v["backend"] == "pytorch" and v["precision"] != "fp32":
            v["parameters"] = fp32_parameters[v["model"]]
    baseline = add_ratios(variants, score_key, latency_key(threads))
    points = pareto_points(variants, score_key, latency_key(threads))
    return {"machine": {**machine_info(), "threads": threads}, "score_key": score_key, "dev_rows": len(dev.texts),
            "latency_rows": min(bench.latency_rows, len(dev.texts)), "batch_size": bench.batch_size,
            "variants": variants, "pareto": [p["name"] for p in pareto_front(points)], "baseline": baseline}


def thread_counts(threads: list[int]) -> dict[str, int]:
    """``{"1": 1, "all": os.cpu_count()}`` from the config's ``[1, 0]`` (0 = all cores)."""
    cores = os.cpu_count() or 1
    return {("all" if count == 0 else str(count)): (cores if count == 0 else count) for count in threads}


def latency_key(threads: dict[str, int]) -> str:
    """The thread count whose batch-1 p50 ranks variants (baseline, Pareto front): "1" if measured."""
    return "1" if "1" in threads else next(iter(threads))


def all_variants(run_dir: RunDir) -> list[VariantMeta]:
    """The PyTorch fp32 model of each of :func:`run_models`, then every export and quantize
    variant, and the ``.ort`` file beside each fp32 ONNX export (:func:`ort_variant`)."""
    metas = [model_meta(run_dir, name, folder) for name, folder in run_models(run_dir).items()]
    for stage in VARIANT_STAGES:
        metas += stage_variants(run_dir, stage)
    return metas + [ort_variant(meta) for meta in metas if meta.settings.get("ort")]


def ort_variant(meta: VariantMeta) -> VariantMeta:
    """The ONNX Runtime mobile ``.ort`` file of an fp32 ONNX export (``settings["ort"]``, written by
    :mod:`compress.ort_format`) as a variant of its own, ``<export name>-ort``, method ``ort``: ONNX
    Runtime loads it as it loads the ``.onnx`` file, so it is timed and scored like one. It travels in
    a bundle with its export's folder, never as a pick of its own."""
    ort_file = Path(meta.file).with_name(meta.settings["ort"]["file"])
    return replace(meta, name=f"{meta.name}{ORT_SUFFIX}", file=str(ort_file), parent=meta.name, method="ort",
                   settings={"ort": meta.settings["ort"]})


def model_meta(run_dir: RunDir, name: str, folder: Path) -> VariantMeta:
    """The :class:`VariantMeta` of a PyTorch model folder: its ``meta.json`` (pruned models), or
    one made here for the teacher and the trained students, which have none."""
    if (folder / META_FILE).is_file():
        return read_meta(folder)
    relative, family = str(folder.relative_to(run_dir.root)), model_family(folder)
    return VariantMeta(name=name, model=name, backend="pytorch", precision="fp32", file=relative, source=relative,
                       method="finetune" if family == "teacher" else "distill", family=family)


def load(run_dir: RunDir, meta: VariantMeta, threads: int):
    """:func:`pipeline.evaluation.variants.load_variant`, every failure as an :class:`ArtifactError` naming the file."""
    try:
        return load_variant(run_dir, meta, threads)
    except DistillError:
        raise
    except Exception as error:  # safetensors, torch and runtime errors of an unreadable file
        raise ArtifactError(run_dir.root / meta.file, f"variant {meta.name} ({meta.backend} {meta.precision}) does "
                                                      f"not load ({type(error).__name__}: {error}); redo its stage")


def measure_one(run_dir: RunDir, meta: VariantMeta, dev: Split, tags: list[str] | None, bench: BenchmarkConfig,
                threads: dict[str, int], max_length: int, metric: str = "accuracy") -> tuple[dict[str, Any], list]:
    """Dev scores (``dev_<metric>`` and, for sentence labels, ``dev_accuracy``), size, parameters and
    per-thread-count latency of one variant (see :func:`measure_run`), and its dev predictions ([N]
    class ids or tag lists); a teacher's tokenizer truncates to ``max_length`` tokens."""
    featurize = featurizer(run_dir, meta, max_length)
    batch_size = min(bench.batch_size, meta.settings.get("max_batch") or bench.batch_size)
    predictor = load(run_dir, meta, max(threads.values()))
    model = predictor.model if meta.backend == "pytorch" else None
    run_batch = predictor.predict
    predictions = predict_with(lambda batch: word_logits(run_batch(batch), batch), featurize, dev, batch_size)
    result = {"name": meta.name, "model": meta.model, "backend": meta.backend, "precision": meta.precision,
              "parent": meta.parent, "method": meta.method, "family": meta.family,
              "size_mb": round(variant_size_mb(run_dir, meta, model), 4),
              "parameters": sum(p.numel() for p in model.parameters()) if model is not None else None,
              **{f"dev_{name}": round(value, 4) for name, value in score(predictions, dev.gold, tags, metric).items()
                 if name in (metric, "accuracy")}}
    del predictor, model
    singles = batch1_features(featurize, dev, bench.latency_rows)
    batch = featurize(dev.texts[:batch_size], dev.pairs[:batch_size] if dev.pairs else None)
    result["threads"] = {}
    for key, count in threads.items():
        gc.collect()
        reset_peak_rss()
        predictor = load(run_dir, meta, count)
        stats = measure(predictor, singles, batch, bench.runs, bench.warmup, bench.throughput_runs)
        result["threads"][key] = {"p50_ms": round(stats["p50_ms"], 4), "p99_ms": round(stats["p99_ms"], 4),
                                  "throughput_eps": round(stats["throughput_eps"], 2),
                                  "peak_rss_mb": round(peak_rss_mb(), 1)}
        del predictor
    return result, predictions


def word_logits(logits: np.ndarray, batch: dict[str, np.ndarray]) -> np.ndarray:
    """A token classifier's sub-token logits [B, T, C] as word logits [B, W, C] by the rule of
    :class:`teachers.token_alignment.WordTagger` (a word's first sub-token; zeros where it has
    none, ``first_subtoken`` -1); any other logits as they are."""
    if logits.ndim != 3 or "first_subtoken" not in batch:
        return logits
    first = batch["first_subtoken"]  # [B, W]
    words = np.take_along_axis(logits, np.maximum(first, 0)[..., None], axis=1)  # [B, W, C]
    return np.where((first == NO_SUBTOKEN)[..., None], 0.0, words)


def variant_size_mb(run_dir: RunDir, meta: VariantMeta, model: torch.nn.Module | None) -> float:
    """Size on disk (MB, 2^20 bytes) of what the variant ships: its model file, or a folder's
    weight files (:data:`WEIGHT_SUFFIXES`). PyTorch variants quantized on load (no file of their
    own) count their state dict as ``torch.save`` would write it."""
    if meta.backend == "pytorch" and meta.precision != "fp32":
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        return buffer.getbuffer().nbytes / 2**20
    path = run_dir.root / meta.file
    if path.is_file():
        return size_mb(path)
    return sum(size_mb(f) for f in sorted(path.iterdir()) if f.name.endswith(WEIGHT_SUFFIXES))


def add_ratios(variants: list[dict], score_key: str, thread_key: str) -> str:
    """Add ``speedup_vs_teacher_best``, ``size_ratio_vs_teacher_best`` and ``accuracy_ratio_vs_teacher``
    to each variant; returns the baseline's name.

    The baseline (the teacher's best variant) is the teacher variant with the lowest ``thread_key``
    p50 among those whose score is within :data:`ACCURACY_TOLERANCE` of the teacher fp32's.

    Raises:
        ArtifactError: the PyTorch teacher is not among the variants.
    """
    teacher = next((v for v in variants if v["name"] == "teacher"), None)
    if teacher is None:
        raise ArtifactError("finetune/teacher", "the benchmark needs the fine-tuned teacher; run stage finetune")
    candidates = [v for v in variants if v["model"] == "teacher"
                  and v[score_key] >= teacher[score_key] - ACCURACY_TOLERANCE]
    best = min(candidates, key=lambda v: v["threads"][thread_key]["p50_ms"])
    best_p50 = best["threads"][thread_key]["p50_ms"]
    for v in variants:
        v["speedup_vs_teacher_best"] = round(best_p50 / v["threads"][thread_key]["p50_ms"], 3)
        v["size_ratio_vs_teacher_best"] = round(v["size_mb"] / best["size_mb"], 4)
        v["accuracy_ratio_vs_teacher"] = round(v[score_key] / teacher[score_key], 4) if teacher[score_key] else None
    return best["name"]


def pareto_points(variants: list[dict], score_key: str, thread_key: str) -> list[dict]:
    """``{name, accuracy, latency_ms, size_mb, model, backend, precision}`` of each variant for
    :mod:`compress.pareto` and :mod:`compress.pareto_plot` (p50 at ``thread_key``)."""
    return [{"name": v["name"], "accuracy": v[score_key], "latency_ms": v["threads"][thread_key]["p50_ms"],
             **{key: v[key] for key in ("size_mb", "model", "backend", "precision")}} for v in variants]


def write_pareto(summary: dict[str, Any], png: Path) -> Path:
    """Plot the summary's variants (:func:`compress.pareto_plot.plot_pareto`): score and size vs
    batch-1 p50 at :func:`latency_key`'s threads, the score axis zoomed around the PyTorch teacher's score."""
    thread_key = latency_key(summary["machine"]["threads"])
    score = summary["score_key"][4:].replace("_", " ")
    teacher = next((v[summary["score_key"]] for v in summary["variants"] if v["name"] == "teacher"), None)
    return plot_pareto(pareto_points(summary["variants"], summary["score_key"], thread_key), png,
                       title=f"Dev {score} vs batch-1 p50, {thread_key} thread(s)", score_label=f"dev {score}",
                       reference=teacher)
