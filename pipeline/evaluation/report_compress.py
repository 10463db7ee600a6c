"""The report's sections of the compression stages: the benchmark's table of every variant, with
its machine and Pareto plot, and the prune stage's table and sensitivity plots."""

from __future__ import annotations

from typing import Any

PRUNE_PLOT_PREFIX = "sensitivity-"
"""The prune stage's plots that the report shows (accuracy against the share pruned)."""


def sections(metrics: dict[str, Any]) -> list[str]:
    """Markdown lines of the prune and benchmark sections, for the stages present in ``metrics``."""
    lines = []
    if metrics.get("prune"):
        lines += ["", *prune_section(metrics["prune"])]
    if metrics.get("benchmark"):
        lines += ["", *benchmark_section(metrics["benchmark"])]
    return lines


def benchmark_section(summary: dict[str, Any]) -> list[str]:
    """"Compressed and exported variants": the table, the machine line and the Pareto plot."""
    lines = ["## Compressed and exported variants", "", machine_line(summary["machine"]), "",
             benchmark_table(summary), "",
             f"Ratios are against the teacher's best variant, **{summary['baseline']}** (the fastest teacher variant "
             f"within 1 point of the PyTorch fp32 teacher). Pareto front: {', '.join(summary['pareto'])}."]
    if "pareto_png" in summary:
        lines += ["", f"![accuracy vs latency]({summary['pareto_png']})"]
    return lines


def machine_line(machine: dict[str, Any]) -> str:
    """One line: CPU model, cores, SIMD flags, thread counts and runtime versions."""
    versions = ", ".join(f"{name} {version}" for name, version in machine["versions"].items() if version)
    threads = ", ".join(f"{key}={count}" for key, count in machine["threads"].items())
    return (f"Machine: {machine['cpu_model']}, {machine['physical_cores']} physical / {machine['logical_cores']} "
            f"logical cores, flags {' '.join(machine['cpu_flags']) or 'none'}; threads {threads}; {versions}.")


def benchmark_table(summary: dict[str, Any]) -> str:
    """Markdown table of every variant: score, batch-1 p50/p99 at one thread, p50 at all cores,
    throughput and peak RSS at all cores, size and the ratios to the teacher's best variant."""
    threads = summary["machine"]["threads"]
    one = "1" if "1" in threads else next(iter(threads))
    every = "all" if "all" in threads else one
    score_title = summary["score_key"].replace("_", " ")
    batch = summary.get("batch_size", "")
    lines = [f"| variant | backend | precision | {score_title} | p50 ms ({one} thr) | p99 ms ({one} thr) | "
             f"p50 ms ({every}) | throughput batch {batch} ({every}, ex/s) | size MB | peak RSS MB ({every}) | "
             "speed-up | size ratio |", "|---|---|---|" + "---:|" * 9]
    for v in summary["variants"]:
        lines.append(f"| {v['name']} | {v['backend']} | {v['precision']} | {v[summary['score_key']]:.4f} | "
                     f"{v['threads'][one]['p50_ms']:.2f} | {v['threads'][one]['p99_ms']:.2f} | "
                     f"{v['threads'][every]['p50_ms']:.2f} | {v['threads'][every]['throughput_eps']:.1f} | "
                     f"{v['size_mb']:.2f} | {v['threads'][every]['peak_rss_mb']:.0f} | "
                     f"{v['speedup_vs_teacher_best']:.2f}x | {v['size_ratio_vs_teacher_best']:.3f} |")
    return "\n".join(lines)


def prune_section(summary: dict[str, Any]) -> list[str]:
    """"Pruned models": what each kept, its parameters and dev accuracy before, with heads and FFN
    neurons pruned, with the vocabulary cut too, and recovered, and the sensitivity plots."""
    lines = ["## Pruned models", "",
             "| model | heads kept | FFN neurons kept | vocabulary kept | parameters | dev acc before | heads/FFN "
             "pruned | and vocabulary cut | recovered |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in summary["models"].items():
        structured = m.get("dev_accuracy_structured", m["dev_accuracy_pruned"])  # absent in older runs' records
        lines.append(f"| {name} | {m['heads_after']}/{m['heads_before']} | {m['ffn_after']}/{m['ffn_before']} | "
                     f"{m['vocab_after']}/{m['vocab_before']} | {m['parameters_after']:,} "
                     f"(of {m['parameters_before']:,}) | {m['dev_accuracy_before']:.4f} | {structured:.4f} | "
                     f"{m['dev_accuracy_pruned']:.4f} | {m['dev_accuracy_recovered']:.4f} |")
    drop = summary.get("layer_drop")  # None when prune.layer_drop is unset
    if drop:
        lines.append(f"| teacher-layerdrop (Sajjad et al. 2020) | layers {drop['layers_after']}/"
                     f"{drop['layers_before']} | | | {drop['parameters_after']:,} (of {drop['parameters_before']:,}) | "
                     f"{drop['dev_accuracy_before']:.4f} | {drop['dev_accuracy_dropped']:.4f} | | "
                     f"{drop['dev_accuracy_finetuned']:.4f} |")
    plots = [plot for m in summary["models"].values() for plot in m["plots"] if plot.startswith(PRUNE_PLOT_PREFIX)]
    lines += [line for plot in plots for line in ("", f"![{plot[:-4]}](prune/{plot})")]
    return lines
