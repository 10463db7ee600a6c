"""Parity of an exported file with the PyTorch model it came from; failures raise.

    check_parity(model, "model.onnx", "onnx", [example_features(model, texts) for texts in batches])

Check at batch sizes and lengths other than the export's (e.g. export at batch 2 length 8, check
batches of 1, 3 and 5 rows of lengths 5, 17 and 31): that is where a graph with a shape baked in
differs. The reference is the model's own forward (packed LSTMs included), not the export view.
fp32 files are held to ``max |diff| <= atol`` on the logits (``mode="logits"``); int8 files to
a fraction of equal argmax predictions (``mode="predictions"``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.errors import ArtifactError, ConfigError
from compress.backends import (ExecuTorchPredictor, LiteRTPredictor, OnnxRuntimePredictor, Predictor,
                               PyTorchPredictor)
from compress.traceable import family_of, input_names_of

BACKENDS = ("onnx", "executorch", "litert", "pytorch")
"""What a checked file is: an ONNX file, an ExecuTorch program, a LiteRT flatbuffer, or a PyTorch
model folder."""
MODES = ("logits", "predictions")


def model_logits(model: torch.nn.Module, features: dict[str, torch.Tensor], task: str | None = None) -> torch.Tensor:
    """The PyTorch model's own logits, float32 [B, C] or [B, T or W, C], without gradients."""
    kwargs = dict(features, task=task) if task is not None else dict(features)
    with torch.no_grad():
        return model.eval()(**kwargs).logits.float()


def exported_predictor(path: Path, backend: str, input_names: list[str]) -> Predictor:
    """The :mod:`compress.backends` predictor of an exported file (one thread; a PyTorch folder on
    torch's current threads), fed ``input_names``.

    Raises:
        ArtifactError: the file is missing or does not load, or takes other inputs than
            ``input_names`` (another model's file).
    """
    if backend == "onnx":
        predictor = OnnxRuntimePredictor(path, threads=1)
        if predictor.input_names != input_names:
            raise ArtifactError(path, f"takes inputs {predictor.input_names}, the model {input_names}; "
                                      "it was exported from another model")
        return predictor
    if backend == "pytorch":
        return PyTorchPredictor(path, threads=torch.get_num_threads())
    if backend == "litert":
        return LiteRTPredictor(path, threads=1, input_names=input_names)
    return ExecuTorchPredictor(path, threads=1, input_names=input_names)


def predicted_logits(predictor: Predictor, features: dict[str, torch.Tensor], path: Path) -> torch.Tensor:
    """A predictor's logits of torch features; ArtifactError naming ``path`` if it rejects their shapes."""
    arrays = {name: tensor.numpy() for name, tensor in features.items()}
    try:
        return torch.from_numpy(predictor.predict(arrays)).float()
    except (ArtifactError, ConfigError):
        raise
    except Exception as error:  # ONNX Runtime raises its own Fail/InvalidArgument types
        raise ArtifactError(path, f"rejected inputs of shapes {[a.shape for a in arrays.values()]} "
                                  f"({error})") from error


def real_positions(features: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
    """bool mask of the predictions to compare: per row [B], or per position [B, T] where the
    attention mask lines up with per-position logits (all positions otherwise)."""
    mask = features.get("attention_mask")
    if logits.dim() == 3 and mask is not None and tuple(mask.shape) == tuple(logits.shape[:2]):
        return mask.bool()
    return torch.ones(logits.shape[:-1], dtype=torch.bool)


def check_parity(reference_model: torch.nn.Module, exported_path: str | Path, backend: str,
                 feature_batches: list[dict[str, torch.Tensor]], atol: float = 1e-4, mode: str = "logits",
                 min_agreement: float = 1.0, task: str | None = None, predictor: Predictor | None = None) -> dict:
    """Run the model and its exported file on the same batches and compare the logits.

    Args:
        reference_model: the PyTorch model the file was exported from (any family).
        exported_path: the ``.onnx``, ``.pte`` or ``.tflite`` file (a model folder for ``"pytorch"``).
        backend: ``"onnx"``, ``"executorch"``, ``"litert"`` or ``"pytorch"`` (e.g. a quantized copy, see
            ``predictor``).
        feature_batches: batches from :func:`compress.traceable.example_features`, at batch
            sizes and lengths not used at export time.
        atol: largest allowed max |PyTorch - exported| logit difference, in ``mode="logits"``.
        mode: ``"logits"`` (fp32 files) or ``"predictions"`` (int8 files: argmax agreement).
        min_agreement: smallest allowed fraction of equal predictions over real rows/positions,
            in ``mode="predictions"``.
        task: the multitask head the file was exported for.
        predictor: the file already loaded (e.g. :func:`compress.quantize.quantize_torch_dynamic`'s
            model in a :class:`compress.backends.PyTorchPredictor`); None loads ``exported_path``.

    Returns:
        ``{"backend", "mode", "max_abs_diff", "agreement", "shapes"}``: the largest difference
        and the agreement over all batches, and each batch's first input shape ``[B, T]``.

    Raises:
        ConfigError: an unknown backend or mode, or no batches.
        ArtifactError: the file is missing, corrupt, another model's, or fails parity (the
            message names the batch and length).
    """
    if backend not in BACKENDS or mode not in MODES:
        raise ConfigError(f"parity check of family {family_of(reference_model)}: backend {backend!r} / mode {mode!r}; "
                          f"choose a backend from {list(BACKENDS)} and a mode from {list(MODES)}")
    if not feature_batches:
        raise ConfigError("parity check needs at least one feature batch")
    path, names = Path(exported_path), input_names_of(reference_model, task)
    predictor = predictor or exported_predictor(path, backend, names)
    max_diff, agree, total, shapes = 0.0, 0, 0, []
    for features in feature_batches:
        expected = model_logits(reference_model, features, task)
        got = predicted_logits(predictor, features, path)
        batch, length = features[names[0]].shape[:2]
        shapes.append([int(batch), int(length)])
        if got.shape != expected.shape:
            raise ArtifactError(path, f"parity failed: logits {tuple(got.shape)}, PyTorch {tuple(expected.shape)} at "
                                      f"batch {batch} length {length}; it was exported from another model")
        diff = (got - expected).abs().max().item()
        mask = real_positions(features, expected)
        same = (got.argmax(-1) == expected.argmax(-1))[mask]
        agree, total, max_diff = agree + int(same.sum()), total + same.numel(), max(max_diff, diff)
        if mode == "logits" and not diff <= atol:  # NaN fails too
            raise ArtifactError(path, f"parity failed: max |diff| {diff:.3g} at batch {batch} length {length}; "
                                      f"allowed {atol:g} ({backend}, logits)")
        if mode == "predictions" and same.float().mean().item() < min_agreement:
            raise ArtifactError(path, f"parity failed: prediction agreement {same.float().mean().item():.3f} at batch "
                                      f"{batch} length {length}; required {min_agreement:g} ({backend})")
    return {"backend": backend, "mode": mode, "max_abs_diff": max_diff, "agreement": agree / max(total, 1),
            "shapes": shapes}


EXPORT_ROWS = 2
"""Dev rows of the example the graphs are traced with (batch 2: every variable axis above 1)."""


def parity_batches(featurize, texts: list, pairs: list[str] | None) -> list[dict[str, torch.Tensor]]:
    """The rows in batches of 1, 3, 5, ... rows (odd, so never the export's batch of 2; at most
    31, under ExecuTorch's largest batch), each padded to its own longest row."""
    batches, start, size = [], 0, 1
    while start < len(texts):
        batches.append(featurize(texts[start:start + size], pairs[start:start + size] if pairs else None))
        start, size = start + size, min(size + 2, 31)
    return batches
