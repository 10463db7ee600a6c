"""The accuracy/latency Pareto front of a set of variants (its plot: :mod:`compress.pareto_plot`).

A variant is a dict with at least ``name``, ``accuracy`` (higher is better) and ``latency_ms``
(lower is better), e.g. the benchmark's batch-1 p50 at one thread.
"""

from __future__ import annotations


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

