"""Pareto front of accuracy (up) against latency (down)."""

from __future__ import annotations

from compress.pareto import pareto_front

POINTS = [
    {"name": "teacher fp32", "accuracy": 0.92, "latency_ms": 20.0},
    {"name": "teacher int8", "accuracy": 0.91, "latency_ms": 8.0},
    {"name": "student fp32", "accuracy": 0.89, "latency_ms": 6.0},
    {"name": "student int8", "accuracy": 0.89, "latency_ms": 3.0},   # beats student fp32 (same accuracy, faster)
    {"name": "pruned fp16", "accuracy": 0.85, "latency_ms": 9.0},    # beaten by teacher int8 on both
    {"name": "bilstm", "accuracy": 0.80, "latency_ms": 1.0},
    {"name": "bilstm copy", "accuracy": 0.80, "latency_ms": 1.0},    # exact tie: both stay
]


def test_front_keeps_only_undominated_points_fastest_first():
    names = [p["name"] for p in pareto_front(POINTS)]
    assert names == ["bilstm", "bilstm copy", "student int8", "teacher int8", "teacher fp32"]


def test_front_of_one_point_and_of_none():
    assert pareto_front(POINTS[:1]) == POINTS[:1]
    assert pareto_front([]) == []

