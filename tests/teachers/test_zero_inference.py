"""ZeRO-Inference: its config, the teacher built partitioned and filled a tensor at a time."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

from core.errors import ConfigError
from core.precision import select_precision
from teachers.checkpoint import weight_sizes
from teachers.inference import TeacherInference
from teachers.zero_inference import load_partitioned, zero_inference_config

FP32 = select_precision("fp32", "test")
SHIPPED = Path(__file__).resolve().parents[2] / "clusters" / "deepspeed"


def test_nvme_buffers_hold_the_largest_weight_and_overrides_win(tmp_path):
    nvme = zero_inference_config(FP32, "nvme", tmp_path, {}, largest_weight=976_704)
    assert nvme["zero_optimization"] == {
        "stage": 3, "memory_efficient_linear": False,
        "stage3_max_reuse_distance": 0, "stage3_max_live_parameters": 976_704,
        "offload_param": {"device": "nvme", "pin_memory": False, "nvme_path": str(tmp_path), "buffer_size": 976_704}}
    assert "stage3_max_reuse_distance" not in zero_inference_config(FP32, "cpu", None, {}, 976_704)["zero_optimization"]
    cpu = zero_inference_config(FP32, "cpu", None, {"zero_optimization": {"stage": 3}}, largest_weight=976_704)
    # a DeepSpeed JSON's section replaces the generated one, but keeps F.linear alone unless it says otherwise
    assert cpu["zero_optimization"] == {"memory_efficient_linear": False, "stage": 3}
    chosen = zero_inference_config(FP32, "cpu", None, {"zero_optimization": {"memory_efficient_linear": True}})
    assert chosen["zero_optimization"] == {"memory_efficient_linear": True}


def test_the_tiny_teachers_largest_weight_is_its_word_embedding(tiny_teacher_dir):
    sizes = weight_sizes(tiny_teacher_dir)
    assert max(sizes) == 30522 * 32 and sum(sizes) == sum(
        p.numel() for p in AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).parameters())


def test_partitioned_teacher_holds_the_checkpoints_weights(tiny_teacher_dir):
    zero = zero_inference_config(FP32, "cpu", None, {})
    model = load_partitioned(tiny_teacher_dir, AutoModelForSequenceClassification, zero, {})
    assert all(hasattr(p, "ds_id") for p in model.parameters())  # every parameter partitioned by zero.Init
    assert model.bert.embeddings.word_embeddings.weight.numel() == 0  # this process holds no copy of it
    texts = ["a fine film", "dull", "a long and winding sentence about nothing much"]
    plain = TeacherInference(tiny_teacher_dir, FP32, max_length=32).logits(texts)
    zero_logits = TeacherInference(tiny_teacher_dir, FP32, max_length=32, engine="zero", offload="cpu").logits(texts)
    np.testing.assert_allclose(zero_logits, plain, atol=1e-6)  # the weights, not a random draw


@pytest.mark.parametrize("shipped", [None, "label-zero-inference-cpu.json"])
def test_building_a_partitioned_teacher_leaves_torch_linear_alone(tiny_teacher_dir, monkeypatch, shipped):
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", linear)  # put back after a failure, for the tests after it
    overrides = json.loads((SHIPPED / shipped).read_text()) if shipped else {}
    load_partitioned(tiny_teacher_dir, AutoModelForSequenceClassification,
                     zero_inference_config(FP32, "cpu", None, overrides), {})
    assert torch.nn.functional.linear is linear  # else a later torch.export in this process finds no aten.linear
    graph = torch.export.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),)).graph
    assert any(node.target is torch.ops.aten.linear.default for node in graph.nodes)


def test_a_checkpoint_without_a_parameter_is_refused_by_name(make_tiny_teacher):
    folder = make_tiny_teacher("headless")
    weights = load_file(folder / "model.safetensors")
    del weights["classifier.weight"]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"no weights for classifier\.weight \(of 1 parameters\); ZeRO-Inference"):
        load_partitioned(folder, AutoModelForSequenceClassification, zero_inference_config(FP32, "cpu", None, {}), {})
