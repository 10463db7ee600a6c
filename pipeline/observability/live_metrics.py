"""Live training rows into the run's one W&B run, from the driver and from Ray Train's rank 0.

The driver owns the W&B run (:class:`pipeline.observability.tracking.Tracker`); the runner makes it the
:data:`active` one while stages run. The finetune stage runs in the driver and logs each step
through a :class:`Stream`. The train stage runs in Ray Train workers: rank 0 batches its rows
in a :class:`RowSink` and puts them on a ``ray.util.queue.Queue``, which a driver thread of
:func:`relay` drains into a :class:`Stream` while ``trainer.fit()`` runs, so there is one W&B
run with one writer and monotonic steps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.util.queue import Queue

    from pipeline.observability.tracking import Tracker

active: Tracker | None = None
"""The tracker of the pipeline being run (set by :func:`activated`), None when tracking is off."""

FLUSH_S = 1.0
"""Seconds rank 0 buffers its rows before sending them to the driver."""


@contextmanager
def activated(tracker: Tracker | None) -> Iterator[None]:
    """Make ``tracker`` the :data:`active` one for the duration of the block."""
    global active
    active = tracker
    try:
        yield
    finally:
        active = None


class Stream:
    """The rows of one step metric ``<namespace>/step``, kept non-decreasing.

    A row's ``step`` is its local step (the optimizer step; an epoch's row shares its last
    step); it is logged at that step plus an offset which grows whenever a row would land below
    the last step logged to the metric (a rerun of the stage, a worker restarted from a
    checkpoint), so the curve continues above it.

    Args:
        tracker: the open W&B run.
        namespace: ``finetune`` or ``train/<student>``.
    """

    def __init__(self, tracker: Tracker, namespace: str):
        self.tracker, self.namespace = tracker, namespace
        self.metric = tracker.define_steps(namespace)
        self.base = 0

    def log(self, rows: list[dict[str, float]]) -> None:
        """Log rows (``{"step": int, key: float, ...}``) in order."""
        for row in rows:
            last = self.tracker.steps.last.get(self.metric, -1)
            if self.base + row["step"] < last:
                self.base = last + 1 - row["step"]
        self.tracker.log_rows(self.namespace, rows, self.base)

    def __call__(self, row: dict[str, float]) -> None:
        """Log one row (the callback of :func:`teachers.finetune.train_steps`)."""
        self.log([row])


def local_stream(namespace: str) -> Stream | None:
    """A :class:`Stream` into the active run, or None when tracking is off."""
    return Stream(active, namespace) if active is not None else None


@contextmanager
def relay(namespace: str) -> Iterator[Queue | None]:
    """A queue for Ray Train's rank 0 (:class:`RowSink`), drained into ``namespace`` by a driver
    thread until the block ends; None when tracking is off."""
    if active is None:
        yield None
        return
    from ray.util.queue import Queue

    queue, stream, done = Queue(actor_options={"num_cpus": 0}), Stream(active, namespace), threading.Event()

    def drain() -> None:
        while True:
            try:
                stream.log(queue.get(timeout=0.5))
            except Empty:
                if done.is_set():
                    return

    thread = threading.Thread(target=drain, name=f"wandb-{namespace}", daemon=True)
    thread.start()
    try:
        yield queue
    finally:
        done.set()
        thread.join()
        queue.shutdown()


class RowSink:
    """Rank 0's side of :func:`relay`: buffers rows and sends them every :data:`FLUSH_S` seconds.

    Args:
        queue: the relay's queue.
    """

    def __init__(self, queue: Queue):
        self.queue, self.rows, self.sent = queue, [], time.monotonic()

    def add(self, row: dict[str, Any]) -> None:
        """Buffer one row (``{"step": int, key: float, ...}``); send the buffer when it is due."""
        self.rows.append(row)
        if time.monotonic() - self.sent >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Send the buffered rows now."""
        if self.rows:
            self.queue.put(self.rows)
        self.rows, self.sent = [], time.monotonic()
