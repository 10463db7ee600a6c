"""Stage ``export``: ONNX and ExecuTorch files of every model, parity-checked."""

from __future__ import annotations

from pipeline.artifacts import RunDir
from pipeline.config import RunConfig


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    """Not written yet."""
    raise NotImplementedError
