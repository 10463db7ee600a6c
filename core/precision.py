"""The one place where CPU and GPU settings differ: device, precision, distributed backend.

``precision = auto`` picks bf16 on a CUDA device that supports it, fp16 with a gradient
scaler on an older CUDA device, and fp32 on a CPU (bf16 on a CPU without AMX/AVX512-BF16
runs about 180x slower than fp32 here, so auto never picks it there). An explicit choice is
honoured, with a warning when it is slow or unsupported on the hardware. So are int8 weights'
7-bit ``reduce_range``, by the CPU's int8 dot-product instructions
(:func:`select_int8_reduce_range`). Every decision is logged with its reason.

The optimizer is chosen here too (:func:`make_optimizer`): NVIDIA apex's ``FusedAdam`` when
asked for and installed on CUDA, else torch's fused ``AdamW``.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

log = logging.getLogger(__name__)

PrecisionName = Literal["auto", "fp32", "fp16", "bf16"]

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Precision:
    """A resolved precision choice.

    Attributes:
        name: "fp32", "fp16" or "bf16".
        device: "cuda" or "cpu".
        reason: why this was chosen, for the logs.
    """

    name: Literal["fp32", "fp16", "bf16"]
    device: Literal["cpu", "cuda"]
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype of activations under autocast (or of the weights for inference)."""
        return _DTYPES[self.name]

    @property
    def autocast(self) -> bool:
        """Whether training runs under ``torch.autocast``."""
        return self.name != "fp32"

    @property
    def needs_grad_scaler(self) -> bool:
        """fp16 training needs loss scaling; bf16 and fp32 do not."""
        return self.name == "fp16"

    def autocast_context(self) -> torch.autocast:
        """``torch.autocast`` for this device and dtype (a no-op when fp32)."""
        return torch.autocast(device_type=self.device, dtype=self.dtype, enabled=self.autocast)


def device_name() -> Literal["cpu", "cuda"]:
    """"cuda" when a CUDA device is visible to this process, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def distributed_backend() -> str:
    """torch.distributed backend for this hardware: nccl on CUDA, gloo on CPU."""
    return "nccl" if device_name() == "cuda" else "gloo"


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """This CPU's feature flags (Linux ``/proc/cpuinfo``), or None where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return frozenset(word for line in text.splitlines() if line.startswith("flags") for word in line.split()[2:])


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AMX or AVX512-BF16)."""
    return bool((cpu_flags() or frozenset()) & {"amx_bf16", "avx512_bf16"})


INT8_DOT_PRODUCT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
"""x86 flags of an int8 dot-product instruction that sums u8 x s8 products in 32 bits."""


def select_int8_reduce_range(requested: bool | Literal["auto"], stage: str) -> tuple[bool, str]:
    """Whether int8 weights keep 7 bits (ONNX Runtime's ``reduce_range``), and why; logged.

    ONNX Runtime's quantization guide: an x86-64 CPU without VNNI multiplies uint8 activations by
    int8 weights with AVX2's ``vpmaddubsw``, which adds two products into a saturating int16, so
    full-range weights can overflow; 7-bit weights cannot. On a tiny random BERT here (AMD EPYC,
    AVX2 only) the dynamic int8 teacher's largest logit error was 0.44 with 8-bit weights and 0.13
    with 7-bit ones. CPUs with VNNI (or AMX) and ARM CPUs sum in 32 bits and keep all 8 bits.

    Args:
        requested: True or False (the deployment CPU is known), or "auto" (decide by this CPU,
            where the variants are checked and benchmarked; x86 CPUs whose flags cannot be read
            get 7 bits, which is safe on every CPU).
        stage: the stage asking, named in the log line.

    Returns:
        (reduce_range, reason).
    """
    flags = cpu_flags()
    x86 = platform.machine().lower() in {"x86_64", "amd64", "i386", "i686"}
    saturates = x86 and not (flags or frozenset()) & INT8_DOT_PRODUCT_FLAGS
    if requested != "auto":
        choice = (requested, "requested in config")
        if saturates and not requested:
            log.warning("%s: reduce_range false on an x86 CPU without VNNI; its int8 products can saturate", stage)
    elif not x86:
        choice = (False, f"auto: {platform.machine()} CPU sums int8 products in 32 bits")
    elif flags is None:
        choice = (True, "auto: x86 CPU whose flags cannot be read; 7-bit weights are safe on every CPU")
    elif saturates:
        choice = (True, "auto: x86 CPU without VNNI (AVX2 int8 products can saturate int16)")
    else:
        choice = (False, f"auto: x86 CPU with {sorted(flags & INT8_DOT_PRODUCT_FLAGS)[0]}")
    log.info("%s: int8 reduce_range %s (%s)", stage, *choice)
    return choice


def select_precision(requested: PrecisionName, stage: str) -> Precision:
    """Resolve a configured precision against the hardware, and log the decision.

    Args:
        requested: "auto", "fp32", "fp16" or "bf16".
        stage: the stage asking, named in the log line.

    Returns:
        The :class:`Precision` to use.
    """
    device = device_name()
    if requested == "auto":
        if device == "cuda":
            if torch.cuda.is_bf16_supported():
                choice = Precision("bf16", device, "auto: CUDA device supports bf16")
            else:
                choice = Precision("fp16", device, "auto: CUDA device without bf16; fp16 with a grad scaler")
        elif cpu_has_fast_bf16():
            choice = Precision("fp32", device, "auto: CPU; fp32 is the safe default even with AMX")
        else:
            choice = Precision("fp32", device, "auto: CPU without fast bf16 (bf16 would be ~180x slower)")
    else:
        choice = Precision(requested, device, "requested in config")
        if device == "cpu" and requested == "bf16" and not cpu_has_fast_bf16():
            log.warning("%s: bf16 requested on a CPU without fast bf16; expect a large slowdown", stage)
        if device == "cpu" and requested == "fp16":
            log.warning("%s: fp16 requested on a CPU; autocast fp16 on CPU is slow and may be unsupported", stage)
    log.info("%s: precision %s on %s (%s)", stage, choice.name, choice.device, choice.reason)
    return choice


APEX_INSTALL = ('pip install -v --no-build-isolation --config-settings "--build-option=--cpp_ext" '
                '--config-settings "--build-option=--cuda_ext" git+https://github.com/NVIDIA/apex')
"""How to build NVIDIA apex with its CUDA kernels (it is not on PyPI; see its README)."""


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, precision: Precision,
                   use_apex: bool) -> torch.optim.Optimizer:
    """AdamW with decoupled weight decay (Loshchilov & Hutter 2019), as a fused kernel.

    With ``use_apex`` on a CUDA device and NVIDIA apex importable: ``apex.optimizers.FusedAdam``
    (``adam_w_mode=True``, the same update). Otherwise ``torch.optim.AdamW(fused=True)``, which
    torch supports on both devices this project runs on (CPU and CUDA). When apex was asked for
    but cannot be used, a warning says why, once per process.

    Args:
        params: the parameters (or parameter groups) to optimise, already on ``precision.device``.
        lr: learning rate.
        weight_decay: decoupled weight decay.
        precision: the resolved precision; its device decides whether apex can be used.
        use_apex: ``train.apex``.

    Returns:
        The optimizer; which one is logged.
    """
    if use_apex:
        try:
            apex_optimizers = importlib.import_module("apex.optimizers")
        except ImportError:
            _warn_apex_unusable("NVIDIA apex is not installed. It is not on PyPI (the 'apex' package there is "
                                f"unrelated); build it from source: {APEX_INSTALL}")
        else:
            if precision.device == "cuda":
                log.info("optimizer: apex FusedAdam (adam_w_mode) on cuda")
                return apex_optimizers.FusedAdam(params, lr=lr, weight_decay=weight_decay, adam_w_mode=True)
            _warn_apex_unusable(f"apex FusedAdam runs on CUDA only and this run is on {precision.device}")
    log.info("optimizer: torch AdamW (fused) on %s", precision.device)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


@functools.cache
def _warn_apex_unusable(reason: str) -> None:
    """Log, once per process and reason, that train.apex is ignored and torch's fused AdamW is used."""
    log.warning("train.apex: %s; using torch's fused AdamW instead", reason)


GRADIENT_CLIP_NORM = 1.0
"""Largest global L2 norm of the gradients in training, under either strategy (DeepSpeed's
``gradient_clipping``, ``torch.nn.utils.clip_grad_norm_`` otherwise)."""


def deepspeed_config(micro_batch_size: int, zero_stage: int, precision: Precision, overrides: Path | None,
                     **extra: Any) -> dict[str, Any]:
    """A DeepSpeed engine config for this hardware, with a user's JSON on top.

    Args:
        micro_batch_size: rows per worker and step.
        zero_stage: ZeRO stage 0, 1 or 2.
        precision: fp16/bf16 turn on DeepSpeed's mixed precision; fp32 leaves both off.
        overrides: a DeepSpeed JSON file (e.g. ``clusters/deepspeed/*.json``) whose keys replace
            the generated ones, or None.
        extra: further generated keys (e.g. a ``scheduler``).

    Returns:
        The config dict. On a CPU, ZeRO's gradient reduce-scatter is off: the gloo backend has no
        reduce-scatter, so gradients are all-reduced instead.
    """
    zero: dict[str, Any] = {"stage": zero_stage}
    if precision.device == "cpu":
        zero["reduce_scatter"] = False
    generated = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": GRADIENT_CLIP_NORM,
        "zero_optimization": zero,
        "fp16": {"enabled": precision.name == "fp16"},
        "bf16": {"enabled": precision.name == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        **extra,
    }
    if overrides is not None:
        generated.update(json.loads(Path(overrides).read_text()))
    return generated
