"""Precision and optimizer selection: one place decides, by hardware, and says why."""

import logging
import sys
import types

import pytest
import torch

from core import precision
from core.precision import Precision, make_optimizer, select_precision


@pytest.fixture
def cuda(monkeypatch):
    def set_cuda(available: bool, bf16: bool = False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    return set_cuda


def test_auto_on_cpu_is_fp32_and_logged(cuda, caplog):
    cuda(False)
    with caplog.at_level(logging.INFO, logger="core.precision"):
        choice = select_precision("auto", "train")
    assert (choice.name, choice.device, choice.dtype) == ("fp32", "cpu", torch.float32)
    assert not choice.autocast and not choice.needs_grad_scaler
    assert "train: precision fp32 on cpu" in caplog.text


def test_auto_on_cuda_prefers_bf16_then_fp16_with_scaler(cuda):
    cuda(True, bf16=True)
    assert select_precision("auto", "x").name == "bf16"
    cuda(True, bf16=False)
    choice = select_precision("auto", "x")
    assert choice.name == "fp16" and choice.needs_grad_scaler and choice.autocast


def test_explicit_bf16_on_a_slow_cpu_warns(cuda, monkeypatch, caplog):
    cuda(False)
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="core.precision"):
        choice = select_precision("bf16", "finetune")
    assert choice.name == "bf16" and choice.device == "cpu"
    assert "expect a large slowdown" in caplog.text


def test_backend_follows_device(cuda):
    cuda(False)
    assert precision.distributed_backend() == "gloo"
    cuda(True)
    assert precision.distributed_backend() == "nccl"


def test_auto_on_cpu_stays_fp32_even_with_amx(cuda, monkeypatch):
    cuda(False)
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    choice = select_precision("auto", "train")
    assert (choice.name, choice.device, choice.autocast) == ("fp32", "cpu", False)


class FakeFusedAdam:
    """Stands in for apex.optimizers.FusedAdam: records its arguments."""

    def __init__(self, params, **kwargs):
        self.params, self.kwargs = list(params), kwargs


@pytest.mark.parametrize(("machine", "flags", "expected"), [
    ("x86_64", {"avx2", "fma"}, (True, "without VNNI")),  # AVX2's vpmaddubsw sums into a saturating int16
    ("x86_64", {"avx2", "avx512_vnni"}, (False, "with avx512_vnni")),
    ("x86_64", {"avx2", "avx_vnni"}, (False, "with avx_vnni")),
    ("x86_64", None, (True, "cannot be read")),  # e.g. an Intel Mac: 7 bits are safe everywhere
    ("aarch64", None, (False, "aarch64 CPU")),
])
def test_int8_reduce_range_follows_the_cpus_int8_dot_product(monkeypatch, caplog, machine, flags, expected):
    monkeypatch.setattr(precision.platform, "machine", lambda: machine)
    monkeypatch.setattr(precision, "cpu_flags", lambda: None if flags is None else frozenset(flags))
    with caplog.at_level(logging.INFO, logger="core.precision"):
        reduce_range, why = precision.select_int8_reduce_range("auto", "dynamic int8")
    assert reduce_range is expected[0] and expected[1] in why
    assert f"dynamic int8: int8 reduce_range {expected[0]}" in caplog.text


def test_int8_reduce_range_off_where_it_saturates_is_honoured_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    with caplog.at_level(logging.INFO, logger="core.precision"):
        assert precision.select_int8_reduce_range(False, "static int8") == (False, "requested in config")
    assert "can saturate" in caplog.text
    caplog.clear()
    assert precision.select_int8_reduce_range(True, "static int8") == (True, "requested in config")
    assert "can saturate" not in caplog.text


def test_cpu_flags_are_this_machines():
    flags = precision.cpu_flags()
    assert flags is None or "fpu" in flags or precision.platform.machine() != "x86_64"


@pytest.fixture
def apex(monkeypatch):
    """Install (True) or hide (False) a fake ``apex.optimizers``; the once-only warning is reset."""
    precision._warn_apex_unusable.cache_clear()

    def set_apex(importable: bool):
        module = types.ModuleType("apex.optimizers")
        module.FusedAdam = FakeFusedAdam
        monkeypatch.setitem(sys.modules, "apex", types.ModuleType("apex") if importable else None)
        monkeypatch.setitem(sys.modules, "apex.optimizers", module if importable else None)
    yield set_apex
    precision._warn_apex_unusable.cache_clear()


CUDA = Precision("bf16", "cuda", "test")
CPU = Precision("fp32", "cpu", "test")


def params():
    return [torch.nn.Parameter(torch.zeros(3))]


def test_apex_fused_adam_when_asked_on_cuda(apex):
    apex(True)
    opt = make_optimizer(params(), lr=1e-3, weight_decay=0.01, precision=CUDA, use_apex=True)
    assert isinstance(opt, FakeFusedAdam)
    assert opt.kwargs == {"lr": 1e-3, "weight_decay": 0.01, "adam_w_mode": True}
    assert isinstance(make_optimizer(params(), 1e-3, 0.01, CUDA, use_apex=False), torch.optim.AdamW)


def test_missing_apex_warns_once_and_uses_fused_adamw(apex, caplog):
    apex(False)
    with caplog.at_level(logging.WARNING, logger="core.precision"):
        first = make_optimizer(params(), lr=1e-3, weight_decay=0.0, precision=CUDA, use_apex=True)
        second = make_optimizer(params(), lr=1e-3, weight_decay=0.0, precision=CUDA, use_apex=True)
    for opt in (first, second):
        assert type(opt) is torch.optim.AdamW and opt.defaults["fused"] is True
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "not on PyPI" in warnings[0] and "git+https://github.com/NVIDIA/apex" in warnings[0]
    assert "using torch's fused AdamW" in warnings[0]


def test_apex_on_cpu_falls_back_with_a_warning(apex, caplog):
    apex(True)
    with caplog.at_level(logging.WARNING, logger="core.precision"):
        opt = make_optimizer(params(), lr=1e-3, weight_decay=0.0, precision=CPU, use_apex=True)
    assert type(opt) is torch.optim.AdamW and opt.defaults["fused"] is True
    assert "apex FusedAdam runs on CUDA only and this run is on cpu" in caplog.text


def test_fused_adamw_steps_on_cpu():
    weight = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = make_optimizer([weight], lr=0.1, weight_decay=0.0, precision=CPU, use_apex=False)
    weight.grad = torch.tensor([2.0, -3.0])
    opt.step()
    # First Adam step moves each weight by lr * sign(grad) (bias-corrected m / sqrt(v) = +-1).
    assert weight.detach().tolist() == pytest.approx([0.9, -0.9], abs=1e-6)
