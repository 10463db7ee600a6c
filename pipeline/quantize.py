"""Stage ``quantize``: int8 and fp16 variants of every ONNX export."""

from __future__ import annotations

from pipeline.artifacts import RunDir
from pipeline.config import RunConfig


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    """Not written yet."""
    raise NotImplementedError
