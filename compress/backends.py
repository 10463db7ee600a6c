"""One small interface over every runtime a variant can ship on: PyTorch, ONNX Runtime, ExecuTorch,
LiteRT (the optional ``[litert]`` extra).

Each backend's ``load(path_or_model, threads)`` returns a :class:`Predictor`, so the benchmark
measures every variant the same way::

    predictor = BACKENDS["onnxruntime"]("variants/int8", threads=1)   # folder with model.onnx
    logits = predictor.predict({"input_ids": ids, "attention_mask": mask})   # float32 [B, C]

Inputs are int64 numpy arrays keyed by feature name (extra keys are ignored); outputs are the
logits as a float32 numpy array ([B, C], or [B, T, C] for taggers).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from core.artifacts import read_json
from core.errors import ArtifactError, ConfigError
from compress.slicing import load_pruned
from students.base import META_FILE as STUDENT_META_FILE
from students.registry import load_student

log = logging.getLogger(__name__)

META_FILE = "meta.json"
FEATURE_NAMES = ("input_ids", "attention_mask", "token_type_ids", "word_ids", "char_ids",
                 "pair_input_ids", "pair_attention_mask")
"""Every feature a model family's featurizer makes (students/ and the BERT teacher)."""


class Predictor(Protocol):
    """A loaded model on one runtime.

    Attributes:
        input_names: the features :meth:`predict` feeds the model, in the model's order.
        threads: the threads it runs with (intra-op; process-wide for PyTorch and ExecuTorch).
    """

    input_names: list[str]
    threads: int

    def predict(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Logits float32 [B, C] (or [B, T, C]) of int64 features [B, T] (char_ids [B, W, L])."""


def _select(features: dict[str, np.ndarray], names: list[str], where: str) -> list[np.ndarray]:
    """The arrays of ``names`` in order, as contiguous int64; ConfigError naming the missing ones."""
    missing = [name for name in names if name not in features]
    if missing:
        raise ConfigError(f"{where} needs features {missing} (it takes {names}); featurize with the variant's family")
    return [np.ascontiguousarray(features[name], dtype=np.int64) for name in names]


def _model_file(path: str | Path, filename: str) -> Path:
    """``path`` itself if a file, else ``path / filename``; ArtifactError if it does not exist."""
    path = Path(path)
    file = path / filename if path.is_dir() else path
    if not file.is_file():
        raise ArtifactError(file, f"missing; export the variant ({filename}) first")
    return file


def _variant_meta(model_file: Path) -> dict:
    """The ``meta.json`` beside a model file, or {} when there is none."""
    meta_file = model_file.parent / META_FILE
    return read_json(meta_file) if meta_file.is_file() else {}


class OnnxRuntimePredictor:
    """An ONNX file on ONNX Runtime's CPU provider, all graph optimizations on.

    Args:
        path: ``model.onnx`` or a variant folder holding it.
        threads: intra-op threads (inter-op 1, sequential execution).

    Raises:
        ArtifactError: the file is missing or ONNX Runtime cannot load it (corrupted, unknown op).
    """

    def __init__(self, path: str | Path, threads: int):
        import onnxruntime as ort

        self.path, self.threads = _model_file(path, "model.onnx"), threads
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # ORT raises its own Fail/InvalidGraph/InvalidProtobuf types
            raise ArtifactError(self.path, f"ONNX Runtime cannot load it ({error}); re-export the variant") from error
        self.input_names = [i.name for i in self.session.get_inputs()]

    def predict(self, features: dict[str, np.ndarray]) -> np.ndarray:
        feeds = dict(zip(self.input_names, _select(features, self.input_names, str(self.path))))
        return self.session.run(None, feeds)[0]


class PyTorchPredictor:
    """An fp32 or PyTorch-quantized model run eagerly under ``torch.inference_mode``.

    Args:
        path_or_model: an ``nn.Module`` whose output is a tensor or has ``.logits`` (a Student or
            a Hugging Face classifier), a student folder (``student.json``) or a Hugging Face folder.
        threads: ``torch.set_num_threads`` (process-wide).

    The input names are the features of :data:`FEATURE_NAMES` that the model's forward takes;
    ``predict`` passes those present in the batch (optional pair features may be absent).
    """

    def __init__(self, path_or_model: str | Path | nn.Module, threads: int):
        torch.set_num_threads(threads)
        self.threads = threads
        self.model = path_or_model if isinstance(path_or_model, nn.Module) else load_model_folder(path_or_model)
        self.model.eval()
        parameters = inspect.signature(self.model.forward).parameters
        self.input_names = [name for name in parameters if name in FEATURE_NAMES]

    def predict(self, features: dict[str, np.ndarray]) -> np.ndarray:
        present = [name for name in self.input_names if name in features]
        inputs = {name: torch.from_numpy(array) for name, array in zip(present, _select(features, present, "model"))}
        with torch.inference_mode():
            output = self.model(**inputs)
        return getattr(output, "logits", output).float().numpy()


def load_model_folder(folder: str | Path) -> nn.Module:
    """The PyTorch model of a student folder (``student.json``, through the registry) or of a
    Hugging Face BERT classifier folder (``config.json``), pruned (:func:`compress.slicing.load_pruned`)
    or not, in eval mode.

    Raises:
        ArtifactError: the folder has neither file, or its weights do not load.
    """
    folder = Path(folder)
    if (folder / STUDENT_META_FILE).is_file():
        return load_student(folder).eval()
    if not (folder / "config.json").is_file():
        raise ArtifactError(folder, f"has neither {STUDENT_META_FILE} nor config.json; pass a student or Hugging Face folder")
    return load_pruned(folder)


class ExecuTorchPredictor:
    """A ``.pte`` program run by ExecuTorch's Python runtime (``executorch.runtime.Runtime``).

    The program has no input names: they are given, or read from ``input_names`` of the
    ``meta.json`` beside it. A program written by :func:`compress.executorch_export.export_executorch`
    describes its own padding through constant methods (``fixed_length``, ``padded_inputs``,
    ``pads_output``; a program without them is taken as dynamic): inputs are right-padded with 0
    (padding id, mask 0) to the fixed length and per-position logits cut back to the input's.
    The program must accept the batch size given (a dynamic batch up to its ``max_batch``).

    Args:
        path: ``model.pte`` or a variant folder holding it (and ``meta.json``).
        threads: size of ExecuTorch's shared threadpool (XNNPACK kernels), process-wide.
        input_names: the program's inputs in order; None reads them from ``meta.json``.

    Raises:
        ArtifactError: the program is missing or cannot load, its input names are unknown, or
            it takes another number of inputs (another model's program).
    """

    def __init__(self, path: str | Path, threads: int, input_names: list[str] | None = None):
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
        from executorch.runtime import Runtime

        self.path = _model_file(path, "model.pte")
        if input_names is None:
            input_names = _variant_meta(self.path).get("input_names")
            if not input_names:
                raise ArtifactError(self.path.parent / META_FILE,
                                    "must list input_names, the .pte program's input order")
        self.input_names, self.threads = list(input_names), threads
        with runtime_notes_logged():
            _unsafe_reset_threadpool(threads)
        try:
            program = Runtime.get().load_program(self.path)
            self.method = program.load_method("forward")
            padded = "fixed_length" in program.method_names
            self.fixed_length = int(program.load_method("fixed_length").execute([])[0]) if padded else 0
            self.padded_inputs = ([bool(p) for p in program.load_method("padded_inputs").execute([])] if padded
                                  else [False] * len(self.input_names))
            self.pads_output = padded and bool(program.load_method("pads_output").execute([])[0])
            inputs = self.method.metadata.num_inputs()
        except Exception as error:  # the runtime raises RuntimeError/ValueError by cause
            raise ArtifactError(self.path, f"ExecuTorch cannot load it ({error}); re-export the variant") from error
        if inputs != len(self.input_names):
            raise ArtifactError(self.path, f"takes {inputs} inputs, given {self.input_names}; "
                                           "it was exported from another model")

    def predict(self, features: dict[str, np.ndarray]) -> np.ndarray:
        arrays = _select(features, self.input_names, str(self.path))
        length = arrays[0].shape[1]
        if self.fixed_length:
            if length > self.fixed_length:
                raise ConfigError(f"{self.path} takes at most {self.fixed_length} tokens, got {length}; "
                                  "truncate to the exported length")
            arrays = [np.pad(a, [(0, 0), (0, self.fixed_length - length)] + [(0, 0)] * (a.ndim - 2)) if pad else a
                      for a, pad in zip(arrays, self.padded_inputs)]
        try:
            logits = self.method.execute([torch.from_numpy(a) for a in arrays])[0].numpy()
        except Exception as error:  # the runtime raises RuntimeError on shapes it cannot take
            raise ArtifactError(self.path, f"ExecuTorch rejected inputs of shapes {[a.shape for a in arrays]} "
                                           f"({error})") from error
        return logits[:, :length] if self.pads_output else logits


class LiteRTPredictor:
    """A ``.tflite`` file of :func:`compress.litert_export.export_litert` on LiteRT's interpreter
    (``ai_edge_litert``, the ``[litert]`` extra; XNNPACK on the CPU).

    The file takes batch 1 with every input at one fixed length (axis 1 of its input shapes):
    each row is right-padded with 0 (padding id, mask 0) to it and run alone, and per-position
    logits (a rank-3 output) are cut back to the input's length. The file has no input names:
    they are given, or read from ``input_names`` of the ``meta.json`` beside it.

    Args:
        path: ``model.tflite`` or a variant folder holding it (and ``meta.json``).
        threads: the interpreter's threads.
        input_names: the file's inputs in order; None reads them from ``meta.json``.

    Raises:
        ConfigError: the extra is not installed.
        ArtifactError: the file is missing or does not load, its input names are unknown, or it
            takes another number of inputs (another model's file).
    """

    def __init__(self, path: str | Path, threads: int, input_names: list[str] | None = None):
        from compress.litert_extra import require_litert

        require_litert()
        from ai_edge_litert.interpreter import Interpreter

        self.path, self.threads = _model_file(path, "model.tflite"), threads
        input_names = input_names or _variant_meta(self.path).get("input_names")
        if not input_names:
            raise ArtifactError(self.path.parent / META_FILE, "must list input_names, the .tflite's input order")
        self.input_names = list(input_names)
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
            self.interpreter.allocate_tensors()
            self.runner = self.interpreter.get_signature_runner()
        except Exception as error:  # the interpreter raises ValueError/RuntimeError by cause
            raise ArtifactError(self.path, f"LiteRT cannot load it ({error}); re-export the variant") from error
        details = self.runner.get_input_details()
        self.keys = sorted(details, key=lambda key: int(key.rpartition("_")[2]))  # args_0, args_1, ...
        self.dtypes = [details[key]["dtype"] for key in self.keys]
        self.fixed_length = int(details[self.keys[0]]["shape"][1])
        if len(self.keys) != len(self.input_names):
            raise ArtifactError(self.path, f"takes {len(self.keys)} inputs, given {self.input_names}; "
                                           "it was exported from another model")

    def predict(self, features: dict[str, np.ndarray]) -> np.ndarray:
        arrays = _select(features, self.input_names, str(self.path))
        length = arrays[0].shape[1]
        if length > self.fixed_length:
            raise ConfigError(f"{self.path} takes at most {self.fixed_length} tokens, got {length}; "
                              "truncate to the exported length")
        arrays = [np.pad(a, [(0, 0), (0, self.fixed_length - length)] + [(0, 0)] * (a.ndim - 2)) for a in arrays]
        rows = [next(iter(self.runner(**{key: array[row:row + 1].astype(dtype) for key, array, dtype
                                         in zip(self.keys, arrays, self.dtypes)}).values()))
                for row in range(len(arrays[0]))]
        logits = np.concatenate(rows).astype(np.float32)
        return logits[:, :length] if logits.ndim == 3 else logits


@contextlib.contextmanager
def runtime_notes_logged() -> Iterator[None]:
    """ExecuTorch's notes during the block (``[threadpool.cpp:66] Resetting threadpool to N
    threads.``, its first cpuinfo probes) go to this module's logger at DEBUG, one record a line:
    a run's log file, never its console.

    Its pybind11 bindings write them through Python's ``sys.stderr`` as it is at the call, not
    to descriptor 2, so :func:`pipeline.observability.console.native_stderr_to` cannot move them;
    ``sys.stderr`` is swapped for a buffer here (process-wide, for the block only).
    """
    notes = io.StringIO()
    with contextlib.redirect_stderr(notes):
        yield
    for line in notes.getvalue().splitlines():
        log.debug("executorch: %s", line)


BACKENDS: dict[str, Callable[..., Predictor]] = {
    "pytorch": PyTorchPredictor,
    "onnxruntime": OnnxRuntimePredictor,
    "executorch": ExecuTorchPredictor,
    "litert": LiteRTPredictor,
}
"""Backend name -> ``load(path_or_model, threads) -> Predictor``."""


def load_predictor(backend: str, path_or_model: str | Path | nn.Module, threads: int) -> Predictor:
    """``BACKENDS[backend](path_or_model, threads)``; ConfigError naming the backend if unknown."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is unknown; choose from {sorted(BACKENDS)}")
    return BACKENDS[backend](path_or_model, threads)
