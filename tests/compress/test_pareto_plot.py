"""The Pareto plot: zoomed score axis with the failed variants listed, labels on the front only, apart."""

from __future__ import annotations

import pytest
from matplotlib.text import Text

from compress.pareto import pareto_front
from compress.pareto_plot import pareto_figure, plot_pareto, zoom


def variant(model: str, backend: str, precision: str, accuracy: float, latency_ms: float, size_mb: float) -> dict:
    name = model if (backend, precision) == ("pytorch", "fp32") else f"{model}/{backend}-{precision}"
    return {"name": name, "model": model, "backend": backend, "precision": precision, "accuracy": accuracy,
            "latency_ms": latency_ms, "size_mb": size_mb}


# a 4-class task: the teacher at 0.83, students a few points under it, a front of close points
# with long names, and a layer-dropped teacher that failed (0.51, fast, so on the front).
VARIANTS = [
    variant("teacher", "pytorch", "fp32", 0.830, 13.4, 86.7),
    variant("teacher", "onnxruntime", "fp32", 0.830, 7.9, 87.5),
    variant("teacher", "onnxruntime", "int8-dynamic", 0.829, 3.2, 21.9),
    variant("teacher", "executorch", "fp32", 0.830, 7.7, 86.8),
    variant("kd", "pytorch", "fp32", 0.811, 4.4, 59.6),
    variant("kd", "onnxruntime", "int8-dynamic", 0.812, 0.95, 15.0),
    variant("kd", "onnxruntime", "int8-static", 0.810, 1.10, 15.0),
    variant("kd-pruned", "onnxruntime", "int8-dynamic", 0.802, 0.65, 6.1),
    variant("kd-pruned", "onnxruntime", "int8-static", 0.8028, 0.72, 6.1),
    variant("kd-pruned", "executorch", "fp32", 0.805, 1.37, 23.4),
    variant("kd-pruned", "pytorch", "int8-dynamic", 0.806, 2.9, 20.0),
    variant("teacher-layer-drop", "onnxruntime", "int8-dynamic", 0.51, 0.60, 15.0),
]


@pytest.fixture(scope="module")
def figure():
    import matplotlib.pyplot as plt

    figure = pareto_figure(VARIANTS, reference=0.830, window=0.05)
    figure.canvas.draw()
    yield figure
    plt.close(figure)


def test_zoom_keeps_variants_within_the_window_and_lists_the_rest_best_first():
    drawn, listed = zoom(VARIANTS + [variant("ce_only", "pytorch", "fp32", 0.6, 4.0, 59.6)], 0.830, 0.05)
    assert [v["name"] for v in listed] == ["ce_only", "teacher-layer-drop/onnxruntime-int8-dynamic"]
    assert len(drawn) == len(VARIANTS) - 1 and min(v["accuracy"] for v in drawn) == 0.802
    assert [v["name"] for v in zoom(VARIANTS, None, 0.015)[0]] == ["teacher", "teacher/onnxruntime-fp32",
                                                                   "teacher/onnxruntime-int8-dynamic",
                                                                   "teacher/executorch-fp32"]


def test_score_axis_is_zoomed_past_the_failed_variant_which_is_listed_beside(figure):
    score_axes, size_axes, side = figure.axes
    low, high = score_axes.get_ylim()
    assert 0.79 < low < 0.802 and 0.830 < high < 0.85
    drawn_y = sorted(y for line in score_axes.lines[:-1] for y in line.get_ydata())
    assert len(drawn_y) == len(VARIANTS) - 1 and drawn_y[0] == 0.802
    assert sorted(x for line in size_axes.lines for x in line.get_xdata())[0] == 0.65  # not the failed 0.60 ms
    listing = "\n".join(text.get_text() for text in side.texts)
    assert "teacher-layer-drop/onnxruntime-int8-dynamic  0.5100" in listing and "kd " not in listing


def test_only_the_front_is_named_and_no_label_overlaps_another_or_a_point(figure):
    score_axes = figure.axes[0]
    drawn = [v for v in VARIANTS if v["accuracy"] > 0.6]
    front = [p["name"] for p in pareto_front(VARIANTS) if p["accuracy"] > 0.6]
    assert sorted(text.get_text() for text in score_axes.texts) == sorted(front)
    assert "kd-pruned/onnxruntime-int8-dynamic" in front and "teacher" not in front  # a crowded corner, a beaten one
    renderer = figure.canvas.get_renderer()
    frame = score_axes.get_window_extent(renderer)
    boxes = [Text.get_window_extent(text, renderer) for text in score_axes.texts]  # the text, not its leader line
    for i, box in enumerate(boxes):
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        assert not any(box.overlaps(other) for other in boxes[i + 1:])
        for v in drawn:
            x, y = score_axes.transData.transform((v["latency_ms"], v["accuracy"]))
            assert not (box.x0 - 7 < x < box.x1 + 7 and box.y0 - 7 < y < box.y1 + 7), (box, v["name"])


def test_plot_is_written_as_png(tmp_path):
    png = plot_pareto(VARIANTS, tmp_path / "plots" / "pareto.png", reference=0.830)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
