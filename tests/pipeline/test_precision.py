"""Precision selection: one place decides, by hardware, and says why."""

import logging

import pytest
import torch

from pipeline import precision
from pipeline.precision import select_precision


@pytest.fixture
def cuda(monkeypatch):
    def set_cuda(available: bool, bf16: bool = False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    return set_cuda


def test_auto_on_cpu_is_fp32_and_logged(cuda, caplog):
    cuda(False)
    with caplog.at_level(logging.INFO, logger="pipeline.precision"):
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
    with caplog.at_level(logging.WARNING, logger="pipeline.precision"):
        choice = select_precision("bf16", "finetune")
    assert choice.name == "bf16" and choice.device == "cpu"
    assert "expect a large slowdown" in caplog.text


def test_backend_follows_device(cuda):
    cuda(False)
    assert precision.distributed_backend() == "gloo"
    cuda(True)
    assert precision.distributed_backend() == "nccl"
