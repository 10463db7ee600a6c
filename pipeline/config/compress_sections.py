"""Config sections of the compression and shipping stages: ``prune``, ``export``, ``quantize``
and ``benchmark``, each optional (a run without the section skips the stage).

Each stage takes the run's models (the teacher, the distilled and CE-only students, and the
pruned models of ``prune``) and writes variants beside them; ``benchmark`` measures every
variant the same way (see :mod:`pipeline.evaluation.variants`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from compress.latency import LATENCY_ROWS, RUNS, WARMUP
from core.config import Section
from core.precision import PrecisionName

PrunableModel = Literal["teacher", "kd"]
"""Models the prune stage can prune: the teacher, and the distilled student when it is a transformer."""

ExportFormat = Literal["onnx", "executorch", "litert"]
"""``litert`` needs the optional ``[litert]`` extra, so it is no default (see :mod:`compress.litert_export`)."""
QuantizeMethod = Literal["dynamic_int8", "static_int8", "fp16", "torch_dynamic_int8", "executorch_dynamic_int8",
                         "executorch_static_int8", "litert_dynamic_int8"]


class PruneConfig(Section):
    """Stage ``prune``: structured pruning of BERT-style models, then KD recovery.

    Attention heads and FFN neurons go by importance (Michel et al. 2019: |d loss / d mask| on
    ``score_rows`` transfer-set rows against the teacher's soft labels), iteratively over
    ``iterations`` steps (prune a share, re-score, repeat; TextPruner), until ``heads`` and
    ``ffn`` of them are gone; ``vocabulary`` keeps only the WordPiece ids of the transfer set.
    The weights are sliced out, so parameters and latency drop. Each pruned model is then
    recovered by KD on the stored soft labels (``recovery_epochs`` over the transfer set, or
    its first ``recovery_rows`` rows) with the train stage's optimisation recipe
    (:mod:`core.optimisation`: AdamW, ``warmup_ratio`` warm-up to ``lr`` then linear decay,
    gradients clipped to norm 1.0, ``precision`` resolved against the hardware). With
    ``layer_drop`` the teacher's top layers are also dropped and the rest fine-tuned again on the
    labeled rows without KD, by the same recipe with the teacher's ``finetune`` settings (lr,
    epochs, warm-up, weight decay, batch size; Sajjad et al. 2020), a compression baseline
    without a student.
    """

    models: list[PrunableModel] = Field(default_factory=lambda: ["teacher", "kd"], min_length=1)
    heads: float = Field(default=0.4, ge=0, lt=1, description="fraction of attention heads to remove")
    ffn: float = Field(default=0.5, ge=0, lt=1, description="fraction of FFN intermediate neurons to remove")
    vocabulary: bool = Field(default=True, description="keep only the WordPiece ids the transfer set uses (other "
                                                       "ids become [UNK]; the stage reports the dev cost)")
    iterations: int = Field(default=4, gt=0, description="prune-and-rescore steps")
    score_rows: int = Field(default=512, gt=0, description="transfer-set rows that score importance")
    recovery_epochs: float = Field(default=1.0, ge=0, description="KD epochs over the recovery rows; 0 = none")
    recovery_rows: int | None = Field(default=None, gt=0, description="first transfer-set rows; None = all")
    lr: float = Field(default=5e-5, gt=0, description="peak learning rate of the KD recovery: linear warm-up to it, "
                                                      "then linear decay to 0")
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1, description="share of the recovery steps that warm the "
                                                                      "learning rate up")
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW's decoupled weight decay in recovery")
    precision: PrecisionName = Field(default="auto", description="recovery precision; auto: bf16 on CUDA with "
                                                                 "bf16, fp16 on older CUDA, fp32 on a CPU")
    batch_size: int = Field(default=32, gt=0)
    temperature: float = Field(default=2.0, gt=0)
    layer_drop: int | None = Field(default=None, gt=0, description="teacher layers to drop (top) for the "
                                                                    "layer-dropping baseline; None = no baseline")
    sensitivity: list[float] = Field(default_factory=lambda: [0.2, 0.4, 0.6, 0.8],
                                     description="fractions of heads and of FFN neurons pruned one-shot for the "
                                                 "sensitivity curves; [] = none")


class ExportConfig(Section):
    """Stage ``export``: every model of the run to ONNX (dynamic batch and sequence axes) and to an
    ExecuTorch ``.pte`` through XNNPACK (a fixed padded length where dynamic shapes fail), each
    checked for parity against PyTorch on dev rows at batch sizes and lengths not used when
    exporting (max |logit difference| <= ``atol``); beside each ONNX graph its text-in graph
    (:mod:`compress.text_graph`) and ``.ort`` files (:mod:`compress.ort_format`). ``litert``
    (not a default: the optional ``[litert]`` extra) adds a LiteRT ``.tflite`` of batch 1 at a
    fixed length (:mod:`compress.litert_export`)."""

    formats: list[ExportFormat] = Field(default_factory=lambda: ["onnx", "executorch"], min_length=1)
    atol: float = Field(default=1e-4, gt=0, description="fp32 parity bound on logits")
    parity_rows: int = Field(default=64, gt=0, description="dev rows of the parity check")
    text_graph: bool = Field(default=True, description="also write model_text.onnx: the tokenizer "
                                                       "(onnxruntime-extensions operators) in front of the ONNX "
                                                       "graph, a string in and logits out; ids checked equal to "
                                                       "the model's featurizer on the parity rows")
    ort: bool = Field(default=True, description="also write ONNX Runtime's mobile .ort file of each ONNX "
                                                "graph, with its required-operators config, parity-checked")


class QuantizeConfig(Section):
    """Stage ``quantize``: ONNX Runtime dynamic int8 and static int8 (QDQ, calibrated on
    ``calibration_rows`` transfer-set rows), fp16 weights, and PyTorch dynamic int8 as a
    baseline, of every ONNX export; ExecuTorch int8 for XNNPACK (PT2E, dynamic, or static
    calibrated on the same rows) of every ExecuTorch export; ``litert_dynamic_int8`` (not a
    default: the ``[litert]`` extra) LiteRT's dynamic-range int8 of every ``.tflite`` export. A
    method whose format the export
    stage did not write is skipped (a log line says so). ``calibration`` and ``per_channel``
    are ONNX Runtime's settings; ExecuTorch static int8 calibrates with XNNPACKQuantizer's
    observers and takes ``per_channel`` too. A variant that agrees with its fp32 parent on fewer than
    ``min_agreement`` of the parity rows' predictions is kept for the benchmark, flagged and
    warned about (an unreadable or mismatched file fails the stage)."""

    methods: list[QuantizeMethod] = Field(
        default_factory=lambda: ["dynamic_int8", "static_int8", "fp16", "torch_dynamic_int8", "executorch_dynamic_int8",
                                 "executorch_static_int8"], min_length=1)
    calibration_rows: int = Field(default=256, gt=0)
    calibration: Literal["minmax", "percentile"] = "minmax"
    per_channel: bool = True
    reduce_range: Literal["auto", True, False] = Field(
        default="auto", description="ONNX Runtime int8 with 7-bit weights; auto: on where this CPU is x86 without "
        "VNNI (its int8 products can saturate); set it for the CPU you deploy on when that one differs")
    min_agreement: float = Field(default=0.9, ge=0, le=1)


class BenchmarkConfig(Section):
    """Stage ``benchmark``: every variant of the run in one process: dev accuracy, batch-1 p50/p99
    latency (ms) over the first ``latency_rows`` dev sentences (timed as :mod:`compress.latency` says,
    as the evaluate stage times its models), throughput at ``batch_size``
    (examples/s), with each thread count of ``threads`` (0 = all cores), size on disk (MB) and
    peak RSS (MB); a table, JSON and an accuracy-latency Pareto plot in the report."""

    runs: int = Field(default=RUNS, gt=0, description="timed batch-1 runs per variant and thread count")
    warmup: int = Field(default=WARMUP, ge=0)
    latency_rows: int = Field(default=LATENCY_ROWS, gt=0)
    batch_size: int = Field(default=32, gt=0)
    throughput_runs: int = Field(default=5, gt=0, description="timed batches for throughput")
    threads: list[int] = Field(default_factory=lambda: [1, 0], min_length=1,
                               description="torch/ORT/ExecuTorch threads; 0 = all cores")

    @model_validator(mode="after")
    def _threads_not_negative(self) -> "BenchmarkConfig":
        if any(t < 0 for t in self.threads):
            raise ValueError(f"threads must be >= 0 (0 = all cores), got {self.threads}")
        return self
