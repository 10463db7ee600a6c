"""ONNX Runtime's mobile format: an ``.ort`` file beside an ``.onnx`` one, with the operator list
that a reduced-size ONNX Runtime build takes, and its parity with the ``.onnx`` file.

    convert_to_ort("export/kd-onnx/model.onnx")   # -> model.ort, model.required_operators.config
    ort_parity("model.onnx", "model.ort", [{"input_ids": ids, "attention_mask": mask}])

The conversion is ``onnxruntime.tools.convert_onnx_models_to_ort`` (the Python API of
``python -m onnxruntime.tools.convert_onnx_models_to_ort``): ONNX Runtime optimises the graph
("fixed" optimisation style, all levels, the x86-only NCHWc layout left out for ``arm``) and
saves it as a FlatBuffer that the mobile packages (onnxruntime-android, onnxruntime-objc) load
without the ONNX protobuf parser. The ``.config`` file lists each operator (domain, opset, type)
the model uses; ``tools/ci_build/build.py --include_ops_by_config`` builds a runtime of only
those. A text graph (:mod:`compress.text_graph`) is converted with onnxruntime-extensions'
operator library registered, and its ``.config`` names the ``ai.onnx.contrib`` operators too.
"""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

import numpy as np
import onnx

from core.errors import ArtifactError

TARGET_PLATFORM = "arm"
"""Phones: ``arm`` (no x86 NCHWc layout, int8 QDQ kept as signed int8); ``amd64`` for x86 hosts."""
CONFIG_SUFFIX = ".required_operators.config"


def convert_to_ort(onnx_path: str | Path, custom_ops: bool = False, target_platform: str = TARGET_PLATFORM) -> dict:
    """Write ``<stem>.ort`` and ``<stem>.required_operators.config`` beside an ``.onnx`` file.

    Args:
        onnx_path: the ``.onnx`` file (fp32 or int8).
        custom_ops: register onnxruntime-extensions' operators (a text graph).
        target_platform: ``arm`` or ``amd64`` (see :data:`TARGET_PLATFORM`).

    Returns:
        ``{"file", "operators_config", "operators", "convert_s", "size_mb"}``: the ``.ort`` and
        ``.config`` file names, the operator types it lists (``domain:op``, sorted), seconds, MB.

    Raises:
        ArtifactError: ONNX Runtime cannot convert the file (the message names it).
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    onnx_path, start = Path(onnx_path), time.perf_counter()
    library = None
    if custom_ops:
        from onnxruntime_extensions import get_library_path

        library = Path(get_library_path())
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per step
            convert_onnx_models_to_ort(onnx_path, optimization_styles=[OptimizationStyle.Fixed],
                                       custom_op_library_path=library, target_platform=target_platform)
    except Exception as error:  # ORT raises its own Fail/InvalidGraph types
        raise ArtifactError(onnx_path, f"ONNX Runtime cannot convert it to .ort ({error})") from error
    ort_path, config = onnx_path.with_suffix(".ort"), onnx_path.with_suffix(CONFIG_SUFFIX)
    if not ort_path.is_file() or not config.is_file():
        raise ArtifactError(onnx_path, f"the .ort conversion wrote no {ort_path.name} / {config.name}")
    return {"file": ort_path.name, "operators_config": config.name, "operators": config_operators(config),
            "convert_s": round(time.perf_counter() - start, 2), "size_mb": round(ort_path.stat().st_size / 2**20, 3)}


def config_operators(config: Path) -> list[str]:
    """The ``domain:op`` types of a required-operators file (lines ``domain;opset;op1,op2``)."""
    operators = set()
    for line in config.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            domain, _, ops = line.split(";", 2)
            operators.update(f"{domain}:{op}" for op in ops.split(","))
    return sorted(operators)


def ort_parity(onnx_path: str | Path, ort_path: str | Path, feeds: list[dict[str, np.ndarray]],
               custom_ops: bool = False) -> dict:
    """Run an ``.onnx`` file and its ``.ort`` on the same feeds (one thread each) and compare.

    Args:
        onnx_path, ort_path: the pair. feeds: input name -> array (int64 ids [B, T], or a
            string tensor [1] for a text graph). custom_ops: register onnxruntime-extensions.

    Returns:
        ``{"rows", "max_abs_diff", "agreement"}``: rows fed, the largest |output difference|
        (logits), the share of equal argmax predictions.

    Raises:
        ArtifactError: the ``.ort`` does not load or rejects the feeds.
    """
    reference, converted = session(onnx_path, custom_ops), session(ort_path, custom_ops)
    rows, same, max_diff = 0, 0, 0.0
    for feed in feeds:
        expected = reference.run(None, feed)[0]
        try:
            got = converted.run(None, feed)[0]
        except Exception as error:  # ORT's own error types
            raise ArtifactError(Path(ort_path), f"rejected inputs {[a.shape for a in feed.values()]} ({error})") from error
        rows += expected.shape[0]
        same += int((got.argmax(-1) == expected.argmax(-1)).all(axis=tuple(range(1, expected.ndim - 1))).sum())
        max_diff = max(max_diff, float(np.abs(got - expected).max()))
    return {"rows": rows, "max_abs_diff": max_diff, "agreement": same / max(rows, 1)}


def session(path: str | Path | onnx.ModelProto, custom_ops: bool = False):
    """A one-thread ONNX Runtime CPU session of an ``.onnx`` or ``.ort`` file (or an in-memory
    model), with onnxruntime-extensions' operators registered when ``custom_ops``.

    Raises:
        ArtifactError: ONNX Runtime cannot load it.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    if custom_ops:
        from onnxruntime_extensions import get_library_path

        options.register_custom_ops_library(get_library_path())
    model = path.SerializeToString() if isinstance(path, onnx.ModelProto) else str(path)
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT's own error types
        where = Path("<in-memory model>") if isinstance(path, onnx.ModelProto) else Path(path)
        raise ArtifactError(where, f"ONNX Runtime cannot load it ({error})") from error
