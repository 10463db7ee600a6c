"""The benchmark's Pareto plot: accuracy against latency, and size against latency, at a glance.

A variant is a dict with ``name``, ``accuracy`` (higher is better), ``latency_ms`` (lower is
better), ``size_mb``, ``model`` (the trained model it comes from), ``backend`` (runtime) and
``precision``. Colour says the model, marker shape the runtime and marker fill the precision, so
that no point needs a label; only the front (:func:`compress.pareto.pareto_front`) is labelled,
its labels set in the empty region above its staircase (:func:`label_front`). The accuracy axis is
zoomed to the variants within ``window`` of the reference (the teacher's score): a failed
variant (e.g. 0.51 on a task whose teacher has 0.83) would squeeze every useful one into one
line, so it is left out of both panels and listed beside them with its score.
"""

from __future__ import annotations

import math
from pathlib import Path

from compress.pareto import pareto_front

WINDOW = 0.15
"""Default zoom: variants scoring more than this below the reference are listed, not drawn."""
RUNTIME_MARKERS = {"pytorch": "o", "onnxruntime": "s", "executorch": "^", "litert": "D"}
"""Marker shape per runtime; any other runtime gets ``OTHER_MARKER``."""
OTHER_MARKER = "P"
PRECISION_FILLS = {"fp32": "full", "fp16": "left", "int8-dynamic": "none", "int8-static": "bottom"}
"""Marker fill per precision (matplotlib ``fillstyle``); any other precision gets ``OTHER_FILL``."""
OTHER_FILL = "top"
DPI = 120
"""Resolution of the figure and its PNG (label offsets are laid out in its pixels)."""
LISTED = 20
"""Most variants named in the list of those not drawn (the rest counted)."""
LABEL_SIZE = 8
"""Font size (points) of the front's labels."""
LABEL_PAD = 10
"""Gap (display pixels) between a label and its point, the staircase or the axes' edge."""
LABEL_GAP = 4
"""Gap (display pixels) between stacked labels."""


def zoom(variants: list[dict], reference: float | None, window: float = WINDOW) -> tuple[list[dict], list[dict]]:
    """Split variants into those drawn and those listed beside the plot.

    Args:
        variants: dicts with ``accuracy``.
        reference: the score the window hangs from (the teacher's); None: the best variant's.
        window: how far below ``reference`` (in score units, 0.15 = 15 points) a variant is still drawn.

    Returns:
        ``(drawn, listed)``: ``listed`` holds the variants under ``reference - window``, best first.
    """
    top = max((v["accuracy"] for v in variants), default=0.0) if reference is None else reference
    drawn = [v for v in variants if v["accuracy"] >= top - window]
    listed = sorted((v for v in variants if v["accuracy"] < top - window), key=lambda v: -v["accuracy"])
    return drawn, listed


def pareto_figure(variants: list[dict], title: str = "Accuracy vs CPU latency", score_label: str = "accuracy",
                  reference: float | None = None, window: float = WINDOW):
    """Build the two-panel figure (matplotlib Agg): left, score against batch-1 p50 (ms, log x)
    with the front as a step line and its variants labelled; right, size on disk (MB, log y)
    against the same latency axis; beside them the legends and the variants not drawn
    (:func:`zoom`), ``name  score`` a line.

    Args:
        variants: dicts as in the module docstring.
        title: the figure's title.
        score_label: the score's name on the y axis (e.g. ``accuracy``, ``entity f1``).
        reference: the teacher's score for :func:`zoom` (None: the best variant's).
        window: see :func:`zoom`.

    Returns:
        the ``matplotlib.figure.Figure``: ``axes[0]`` score/latency, ``axes[1]`` size/latency,
        ``axes[2]`` the legends and the list (its texts). The caller closes it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    drawn, listed = zoom(variants, reference, window)
    front = [p for p in pareto_front(variants) if p in drawn]
    colours = {model: plt.get_cmap("tab10")(i % 10) for i, model in enumerate(dict.fromkeys(v["model"] for v in variants))}
    figure, (score_axes, size_axes, side) = plt.subplots(
        1, 3, figsize=(15, 6), dpi=DPI, gridspec_kw={"width_ratios": [3.2, 2.2, 1.5]})
    for v in drawn:
        style = dict(marker=RUNTIME_MARKERS.get(v["backend"], OTHER_MARKER), color=colours[v["model"]],
                     fillstyle=PRECISION_FILLS.get(v["precision"], OTHER_FILL), markersize=9, markeredgewidth=1.5,
                     linestyle="none", zorder=3)
        score_axes.plot([v["latency_ms"]], [v["accuracy"]], **style)
        size_axes.plot([v["latency_ms"]], [v["size_mb"]], **style)
    score_axes.step([p["latency_ms"] for p in front], [p["accuracy"] for p in front], where="post",
                    color="black", linestyle="--", linewidth=0.8, zorder=2)
    for axes, ylabel in ((score_axes, score_label), (size_axes, "size on disk (MB, log scale)")):
        axes.set_xscale("log")
        axes.set_xlabel("batch-1 p50 latency (ms, log scale)")
        axes.set_ylabel(ylabel)
        axes.grid(True, which="major", alpha=0.3)
    size_axes.set_yscale("log")
    for axis in (score_axes.xaxis, size_axes.xaxis, size_axes.yaxis):
        axis.set_major_formatter(FuncFormatter(log_label))
        axis.set_minor_formatter(FuncFormatter(log_label))
    score_axes.set_title(f"{score_label} against latency: the Pareto front (dashed) named", fontsize=10)
    size_axes.set_title("size against latency", fontsize=10)
    cut = "the teacher's" if reference is not None else "the best"
    side_panel(side, drawn, colours, listed, f"not drawn: more than {window * 100:.0f} points\nunder {cut} {score_label}:")
    figure.suptitle(title)
    figure.tight_layout()
    label_front(score_axes, front, colours)
    return figure


def log_label(value: float, _position=None) -> str:
    """A log axis' tick label: 1, 2 and 5 of each decade written plainly (0.5, 20, 100), no other."""
    mantissa = value / 10 ** math.floor(math.log10(value)) if value > 0 else 0
    return f"{value:g}" if any(abs(mantissa - m) < 1e-6 for m in (1, 2, 5)) else ""


def label_front(axes, front: list[dict], colours: dict) -> None:
    """Name each front variant on ``axes`` where no point can be: above and left of the front's
    staircase (a point there would dominate a front variant). A label sits left of its point
    (beside it, or raised over the staircase and over earlier labels with a leader line dropped
    from its bottom edge; at the axes' left edge when there is no room left of the point), in its
    model's colour (``colours``); the top of the score axis is raised until every label fits.
    Call once the figure's layout is final.
    """
    renderer = axes.figure.canvas.get_renderer()
    for _ in range(4):
        boxes, texts = [], []
        for i, p in enumerate(front):  # lower labels drawn over the leader lines of those stacked above them
            box = label_box(axes, p, front, boxes, renderer)
            boxes.append(box)
            texts.append(annotate(axes, p, box, colours[p["model"]], zorder=5 - i / len(front)))
        frame = axes.get_window_extent(renderer)
        top = max((box[3] for box in boxes), default=frame.y1)
        if top <= frame.y1 - LABEL_PAD:
            return
        for text in texts:
            text.remove()
        low, high = axes.get_ylim()
        axes.set_ylim(low, high + (top - frame.y1 + 2 * LABEL_PAD) / frame.height * (high - low) * 1.2)


def label_box(axes, point: dict, front: list[dict], earlier: list[tuple], renderer) -> tuple[float, float, float, float]:
    """``(left, bottom, right, top)`` in display pixels of ``point``'s label: left of the point
    (or from the axes' left edge), its bottom above the staircase under it and above the
    ``earlier`` label boxes it would overlap."""
    to_pixels = axes.transData.transform
    x, y = to_pixels((point["latency_ms"], point["accuracy"]))
    probe = axes.text(0, 0, point["name"], fontsize=LABEL_SIZE)
    extent = probe.get_window_extent(renderer)
    probe.remove()
    left = max(x - LABEL_PAD - extent.width, axes.get_window_extent(renderer).x0 + LABEL_PAD)
    right = left + extent.width
    beside = right <= x - LABEL_PAD  # else it starts at the left edge and spans its own point
    corners = [to_pixels((p["latency_ms"], p["accuracy"])) for p in front]
    under = [cy for cx, cy in corners if (cx < x if beside else cx <= right + LABEL_PAD)]  # the staircase's steps
    bottom = max([y - extent.height / 2] + [cy + LABEL_PAD for cy in under])
    for other in sorted(earlier, key=lambda box: box[1]):  # stacked in the front's order, over any it would overlap
        if other[0] < right and left < other[2] and bottom < other[3] + LABEL_GAP:
            bottom = other[3] + LABEL_GAP
    return left, bottom, right, bottom + extent.height


def annotate(axes, point: dict, box: tuple[float, float, float, float], colour, zorder: float):
    """Write ``point``'s name at ``box`` (display pixels) in ``colour``; when it is not level with
    the point, a leader line drops from its bottom edge, straight down where the point is under it."""
    x, y = axes.transData.transform((point["latency_ms"], point["accuracy"]))
    raised = box[1] > y - (box[3] - box[1]) / 2 + 1
    points = 72 / axes.figure.dpi
    return axes.annotate(point["name"], (point["latency_ms"], point["accuracy"]),
                         xytext=((box[0] - x) * points, (box[1] - y) * points), textcoords="offset points",
                         ha="left", va="bottom", fontsize=LABEL_SIZE, zorder=zorder,
                         bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.9},
                         color=colour, arrowprops={"arrowstyle": "-", "color": colour, "linewidth": 0.7, "shrinkA": 0, "shrinkB": 5,
                                                 "relpos": (min(max((x - box[0]) / (box[2] - box[0]), 0), 1), 0)}
                         if raised else None)


def side_panel(side, drawn: list[dict], colours: dict, listed: list[dict], heading: str) -> None:
    """On the blank axes ``side``: the legends of the ``drawn`` variants' models (colour), runtimes
    (shape) and precisions (fill), then ``heading`` and the ``listed`` variants, ``name  score`` a
    line (at most ``LISTED``)."""
    from matplotlib.lines import Line2D

    def entries(key: str, style) -> list[tuple[Line2D, str]]:
        return [(Line2D([], [], linestyle="none", markersize=8, markeredgewidth=1.5, **style(value)), value)
                for value in dict.fromkeys(v[key] for v in drawn)]

    side.axis("off")
    legends = [("model (colour)", entries("model", lambda m: {"marker": "o", "color": colours[m]})),
               ("runtime (shape)", entries("backend", lambda b: {"marker": RUNTIME_MARKERS.get(b, OTHER_MARKER),
                                                                 "color": "0.3"})),
               ("precision (fill)", entries("precision", lambda p: {"marker": "o", "color": "0.3",
                                                                    "fillstyle": PRECISION_FILLS.get(p, OTHER_FILL)}))]
    top = 1.0
    for title, rows in legends:
        legend = side.legend([h for h, _ in rows], [n for _, n in rows], title=title, loc="upper left",
                             bbox_to_anchor=(0.0, top), fontsize=8, title_fontsize=8, alignment="left", frameon=False)
        side.add_artist(legend)
        top -= 0.07 + 0.045 * len(rows)
    if listed:
        lines = [heading] + [f"{v['name']}  {v['accuracy']:.4f}" for v in listed[:LISTED]]
        lines += [f"... and {len(listed) - LISTED} more"] if len(listed) > LISTED else []
        side.text(0.0, top, "\n".join(lines), fontsize=8, va="top", ha="left", transform=side.transAxes)


def plot_pareto(variants: list[dict], png_path: str | Path, title: str = "Accuracy vs CPU latency",
                score_label: str = "accuracy", reference: float | None = None, window: float = WINDOW) -> Path:
    """Write :func:`pareto_figure` of ``variants`` as a PNG (120 dpi; its folder is created); returns ``png_path``."""
    import matplotlib.pyplot as plt

    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    figure = pareto_figure(variants, title, score_label, reference, window)
    figure.savefig(png_path)
    plt.close(figure)
    return png_path
