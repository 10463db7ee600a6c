"""The accuracy/latency Pareto front of a set of variants, and its plot.

A variant is a dict with at least ``name``, ``accuracy`` (higher is better) and ``latency_ms``
(lower is better), e.g. the benchmark's batch-1 p50 at one thread.
"""

from __future__ import annotations

from pathlib import Path


def pareto_front(points: list[dict]) -> list[dict]:
    """The variants no other variant beats: none is at least as accurate and at least as fast, and
    strictly better in one of the two.

    Args:
        points: dicts with ``accuracy`` and ``latency_ms`` (plus anything else, kept).

    Returns:
        the front, fastest first (so accuracy rises along it); ties in both values all stay.
    """
    def dominates(a: dict, b: dict) -> bool:
        return (a["accuracy"] >= b["accuracy"] and a["latency_ms"] <= b["latency_ms"]
                and (a["accuracy"] > b["accuracy"] or a["latency_ms"] < b["latency_ms"]))

    front = [p for p in points if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda p: (p["latency_ms"], -p["accuracy"]))


def plot_pareto(variants: list[dict], png_path: str | Path, title: str = "Accuracy vs CPU latency") -> Path:
    """Scatter every variant (latency ms, log x; accuracy y), each labelled with its name, and draw
    the front as a step line; written as a PNG with matplotlib's Agg backend.

    Args:
        variants: dicts with ``name``, ``accuracy`` and ``latency_ms``.
        png_path: file to write (its folder is created).

    Returns:
        ``png_path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.scatter([v["latency_ms"] for v in variants], [v["accuracy"] for v in variants], color="tab:blue", zorder=3)
    for v in variants:
        axes.annotate(v["name"], (v["latency_ms"], v["accuracy"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = pareto_front(variants)
    axes.step([p["latency_ms"] for p in front], [p["accuracy"] for p in front], where="post",
              color="tab:red", label="Pareto front")
    axes.set_xscale("log")
    axes.set_xlabel("batch-1 latency (ms, log scale)")
    axes.set_ylabel("accuracy")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(png_path, dpi=120)
    plt.close(figure)
    return png_path
