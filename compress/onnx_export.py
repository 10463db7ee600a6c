"""ONNX export of every family, with dynamic batch and sequence axes, for ONNX Runtime servers.

    export_onnx(model, "model.onnx", example_features(model, texts))  # -> settings for meta.json

Exporters, per family (the choice was measured on tiny models, batch 2 length 8 at export,
checked at batch 1-5 and lengths 5-31):

- teacher, transformer: ``torch.onnx.export(dynamo=True)`` (``torch.export``, then onnxscript).
  The TorchScript exporter (``dynamo=False``) traces transformers 5's attention-mask
  construction into constants: its BERT disagreed with PyTorch by up to 1.7e-2 at other shapes;
  the dynamo export matches to 1e-8.
- bilstm, multitask_lstm, cnn_lstm: the TorchScript exporter (``dynamo=False``), which maps each
  unidirectional ``nn.LSTM`` of :class:`compress.traceable.MaskedBiLSTM` to an ONNX ``LSTM`` node
  over any sequence length. ``torch.export`` unrolls ``nn.LSTM`` over the example's time steps,
  so the dynamo exporter fixes the sequence length (its graph failed with "invalid expand
  shape" at other lengths).

Every family keeps dynamic batch and sequence axes here (unlike ExecuTorch, see
:mod:`compress.executorch_export`).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import onnx
import torch

from core.artifacts import atomic_path
from core.errors import ConfigError
from compress.traceable import LSTM_FAMILIES, LogitsOnly, family_of, input_axes, input_names_of, output_axes

DEFAULT_OPSET = 18
"""ONNX opset of the exported graphs (the dynamo exporter's default; ONNX Runtime 1.17+ runs it)."""
OUTPUT_NAME = "logits"


def check_example(model: torch.nn.Module, example_features: dict[str, torch.Tensor], task: str | None,
                  backend: str) -> list[str]:
    """The input names, after checking ``example_features`` against the model's graph inputs.

    ``torch.export`` treats axes of size 0 or 1 as constants, so every variable axis of the
    example must be at least 2 long.

    Raises:
        ConfigError: names differ from :func:`input_names_of`, or a variable axis is shorter than 2.
    """
    names, expected = list(example_features), input_names_of(model, task)
    if names != expected:
        raise ConfigError(f"{backend} export of family {family_of(model)}: example features are {names}, the graph "
                          f"takes {expected}; build them with compress.traceable.example_features")
    for name, axes in input_axes(names).items():
        short = [axis for axis in axes if example_features[name].shape[axis] < 2]
        if short:
            raise ConfigError(f"{backend} export: example {name} has shape {tuple(example_features[name].shape)}; "
                              f"use at least 2 rows and 2 positions so that axes {short} stay dynamic")
    return names


def dynamic_shapes(names: list[str], fixed: dict[str, int] | None = None,
                   max_sizes: dict[str, int] | None = None) -> tuple[dict[int, torch.export.Dim], ...]:
    """``torch.export`` dynamic shapes of the inputs ``names`` (one ``Dim`` per axis name, so that
    axes of one name stay equal), leaving out the axis names in ``fixed``; wrap the result in a
    1-tuple for :meth:`LogitsOnly.forward`'s ``*features``.

    Args:
        names: graph inputs, in order.
        fixed: axis names exported at a fixed size.
        max_sizes: upper bounds by axis name (ExecuTorch plans memory for them).
    """
    fixed, max_sizes = fixed or {}, max_sizes or {}
    dims: dict[str, torch.export.Dim] = {}
    shapes = []
    for axes in input_axes(names).values():
        shapes.append({axis: dims.setdefault(name, torch.export.Dim(name, max=max_sizes.get(name) or torch.inf))
                       for axis, name in axes.items() if name not in fixed})
    return tuple(shapes)


def name_output_axes(proto: onnx.ModelProto, axes: dict[int, str]) -> None:
    """Mark the logits' variable axes symbolic: the exporter may record the example's sizes there,
    which ONNX Runtime then warns about on every other shape."""
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    for axis, name in axes.items():
        dims[axis].Clear()
        dims[axis].dim_param = name


def export_onnx(model: torch.nn.Module, out_path: str | Path, example_features: dict[str, torch.Tensor],
                opset: int = DEFAULT_OPSET, task: str | None = None) -> dict:
    """Write the model's logits graph as ONNX, with dynamic axes, and check it.

    Args:
        model: any family (see :mod:`compress.traceable`); put in eval mode.
        out_path: the ``.onnx`` file, written atomically.
        example_features: int64 tensors from :func:`compress.traceable.example_features`, with
            every variable axis at least 2 long (e.g. batch 2, length 8).
        opset: ONNX opset version.
        task: the multitask head to export.

    Returns:
        Settings for ``meta.json``: ``input_names``, ``output_name``, ``dynamic_axes`` ({input:
        {axis: name}}), ``opset``, ``exporter``, ``export_s`` (seconds), ``size_mb``.

    Raises:
        ConfigError: bad example features, an unknown family, a missing task, or onnxscript
            not installed; ``torch.onnx`` errors pass through with the family named.
        onnx.checker.ValidationError: the written graph is not valid ONNX.
    """
    if importlib.util.find_spec("onnxscript") is None:
        raise ConfigError("onnx export uses torch.onnx's dynamo exporter, which needs onnxscript; pip install onnxscript")
    names = check_example(model, example_features, task, "onnx")
    view, out_path, start = LogitsOnly(model, names, task), Path(out_path), time.perf_counter()
    axes = output_axes(model, task)
    with atomic_path(out_path) as tmp:
        try:
            if view.family in LSTM_FAMILIES:
                torch.onnx.export(view, tuple(example_features.values()), str(tmp), input_names=names,
                                  output_names=[OUTPUT_NAME], dynamic_axes={**input_axes(names), OUTPUT_NAME: axes},
                                  opset_version=opset, dynamo=False)
            else:
                torch.onnx.export(view, tuple(example_features.values()), str(tmp), input_names=names,
                                  output_names=[OUTPUT_NAME], dynamic_shapes=(dynamic_shapes(names),),
                                  opset_version=opset, dynamo=True, external_data=False, verbose=False)
        except Exception as error:  # torch.onnx.errors and torch.export errors: name what failed
            raise ConfigError(f"family {view.family} does not export to backend onnx ({type(error).__name__}; "
                              f"see the chained error)") from error
        proto = onnx.load(str(tmp))
        name_output_axes(proto, axes)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    return {"input_names": names, "output_name": OUTPUT_NAME, "dynamic_axes": input_axes(names), "opset": opset,
            "exporter": "torch.onnx dynamo", "export_s": round(time.perf_counter() - start, 2),
            "size_mb": round(out_path.stat().st_size / 2**20, 3)}
