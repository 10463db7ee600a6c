"""The report's opening: the headline table (teacher, best student, shipped student) and the links
to the stage reports.

The teacher and the best student (the student model with the highest first score of the evaluate
stage) come from the evaluate stage; the shipped student is the fastest student variant on the
benchmark's Pareto front that runs outside PyTorch (what :mod:`pipeline.evaluation.bundle` ships),
present when the benchmark stage ran. With a benchmark, every row's size and p50 are the
benchmark's (batch 1, one thread), so the three rows compare like for like; without one they are
the evaluate stage's (PyTorch, batch 1).
"""

from __future__ import annotations

from typing import Any

from pipeline.artifacts import MANIFEST

TEACHER = "teacher"


def headline_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline's rows of a single-task run: ``role``, ``model``, ``score`` (the evaluate
    stage's first score key), ``size_mb`` (MB) and ``p50_ms`` (ms; None where not measured).

    Returns:
        Teacher, best student and, with a benchmark, shipped student; [] for a multi-task run or
        a run without an evaluate stage.
    """
    evaluation = metrics.get("evaluate")
    if not evaluation or "tasks" in evaluation:
        return []
    key, models = evaluation.get("score_keys", ["dev_accuracy"])[0], evaluation["models"]
    students = [name for name in models if name != TEACHER]
    picks = [("teacher", TEACHER)] if TEACHER in models else []
    if students:
        picks.append(("best student", max(students, key=lambda name: models[name][key])))
    benchmark = metrics.get("benchmark")
    variants = {v["name"]: v for v in benchmark["variants"]} if benchmark else {}
    rows = [{"role": role, "model": name, "score": models[name][key], **_measures(variants.get(name), models[name])}
            for role, name in picks]
    shipped = _shipped_variant(benchmark) if benchmark else None
    if shipped is not None:
        rows.append({"role": "shipped student", "model": shipped["name"], "score": shipped[benchmark["score_key"]],
                     **_measures(shipped, None)})
    return rows


def headline_lines(metrics: dict[str, Any]) -> list[str]:
    """Markdown: the headline table (:func:`headline_rows`) and a line of links to each stage's
    manifest and each shipped model's card; [] when there is no headline."""
    rows = headline_rows(metrics)
    if not rows:
        return []
    key = metrics["evaluate"].get("score_keys", ["dev_accuracy"])[0].replace("_", " ").replace(" f1", " F1")
    where = "benchmark, batch 1, one thread" if metrics.get("benchmark") else "PyTorch, batch 1"
    lines = ["## Headline", "", f"| | model | {key} | size (MB) | p50 (ms, {where}) |", "|---|---|---:|---:|---:|"]
    for row in rows:
        p50 = "-" if row["p50_ms"] is None else f"{row['p50_ms']:.2f}"
        lines.append(f"| {row['role']} | {row['model']} | {row['score']:.4f} | {row['size_mb']:.1f} | {p50} |")
    links = [f"[{stage}]({stage}/{MANIFEST})" for stage in metrics]
    bundles = (metrics.get("benchmark") or {}).get("bundles", {})
    links += [f"[model card: {model}]({folder}/README.md)" for model, folder in bundles.items()]
    return [*lines, "", f"Stage reports: {' · '.join(links)}. The same report with its plots: "
                        f"[report.html](report.html)."]


def _measures(variant: dict[str, Any] | None, model: dict[str, Any] | None) -> dict[str, Any]:
    """``size_mb`` and ``p50_ms`` of a benchmark variant (one thread) when given, else of an evaluate model."""
    if variant is not None:
        threads = variant["threads"]
        return {"size_mb": variant["size_mb"], "p50_ms": threads["1" if "1" in threads else next(iter(threads))]["p50_ms"]}
    return {"size_mb": model["size_mb"], "p50_ms": (model.get("latency") or {}).get("p50_ms")}


def _shipped_variant(benchmark: dict[str, Any]) -> dict[str, Any] | None:
    """The fastest student variant on the Pareto front outside PyTorch, else None."""
    front = [v for v in benchmark["variants"] if v["name"] in benchmark["pareto"] and v["model"] != TEACHER
             and v["backend"] != "pytorch"]
    return min(front, key=lambda v: _measures(v, None)["p50_ms"], default=None)
