"""Stage ``prune``: structured pruning of the run's BERT models, then KD recovery."""

from __future__ import annotations

from pipeline.artifacts import RunDir
from pipeline.config import RunConfig


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    """Not written yet."""
    raise NotImplementedError
