"""Quantization of tiny BERT and LSTM ONNX classifiers: files load in ONNX Runtime, are smaller, and
agree with fp32; the BERT optimizer fuses; bad families and inputs raise ConfigError."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
import torch.ao.nn.quantized.dynamic as dynamic
from tiny_onnx import BERT_INPUTS, LSTM_INPUTS, TinyLSTMClassifier, random_features, tiny_bert

from compress.backends import OnnxRuntimePredictor
from compress.quantize import convert_fp16, quantize_dynamic_int8, quantize_static_int8, quantize_torch_dynamic
from core.errors import ConfigError

MODELS = {"bert": ("tiny_bert_onnx", "transformer", BERT_INPUTS), "lstm": ("tiny_lstm_onnx", "bilstm", LSTM_INPUTS)}
BERT_SHAPE = {"num_heads": 4, "hidden_size": 64}


def agreement(reference: str, candidate: str, input_names: list[str], rows: int = 200) -> float:
    """Fraction of ``rows`` random inputs on which the two files' argmax predictions agree."""
    features = random_features(rows, input_names, seed=1)
    expected = OnnxRuntimePredictor(reference, threads=1).predict(features)
    actual = OnnxRuntimePredictor(candidate, threads=1).predict(features)
    assert actual.shape == expected.shape == (rows, 2) and actual.dtype == np.float32
    return float((actual.argmax(1) == expected.argmax(1)).mean())


@pytest.mark.parametrize("model", sorted(MODELS))
def test_dynamic_int8_is_smaller_and_agrees(request, tmp_path, model):
    fixture, family, inputs = MODELS[model]
    fp32 = request.getfixturevalue(fixture)
    int8 = tmp_path / "int8" / "model.onnx"
    settings = quantize_dynamic_int8(fp32, int8, family, **(BERT_SHAPE if model == "bert" else {}))
    assert os.path.getsize(int8) < 0.5 * os.path.getsize(fp32)
    assert agreement(fp32, int8, inputs) >= 0.9
    assert settings["weight_type"] == "QInt8" and settings["per_channel"] is True
    if model == "bert":  # the optimizer fused every layer but the embeddings, and the fused ops were quantized
        assert settings["fused"] == {"Attention": 2, "BiasGelu": 2, "LayerNormalization": 1, "SkipLayerNormalization": 4}
        assert settings["ops_after"]["QAttention"] == 2 and "QEmbedLayerNormalization" not in settings["ops_after"]
        tables = {init.name: init.data_type for init in onnx.load(str(int8)).graph.initializer}
        assert tables["bert.embeddings.word_embeddings.weight_quantized"] == onnx.TensorProto.UINT8  # the vocabulary
        assert {tables[f"bert.embeddings.{name}_embeddings.weight"] for name in ("position", "token_type")} == {
            onnx.TensorProto.FLOAT}  # added to every token: fp32
        assert len(settings["tables_kept_fp32"]) == 2
    else:
        assert settings["ops_after"]["DynamicQuantizeLSTM"] == 1


@pytest.mark.parametrize("model", sorted(MODELS))
def test_static_int8_is_smaller_and_agrees(request, tmp_path, model):
    fixture, family, inputs = MODELS[model]
    fp32 = request.getfixturevalue(fixture)
    int8 = tmp_path / "qdq" / "model.onnx"
    calibration = [random_features(16, inputs, seed=seed) for seed in range(10, 14)]
    settings = quantize_static_int8(fp32, int8, calibration, family)
    assert os.path.getsize(int8) < 0.6 * os.path.getsize(fp32)
    assert agreement(fp32, int8, inputs) >= 0.9
    assert settings["format"] == "QDQ" and settings["ops_after"]["QuantizeLinear"] >= 1
    kept = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert model != "bert" or {"LayerNormalization", "Erf", "Softmax"} <= kept  # kept fp32
    assert model != "lstm" or "LSTM" in kept  # no QDQ LSTM kernel: stays fp32


def test_static_int8_percentile_calibration_agrees(tiny_bert_onnx, tmp_path):
    int8 = tmp_path / "model.onnx"
    calibration = [random_features(16, BERT_INPUTS, seed=seed) for seed in range(10, 12)]
    settings = quantize_static_int8(tiny_bert_onnx, int8, calibration, "transformer", calibration="percentile")
    assert settings["calibration"] == "percentile"
    assert agreement(tiny_bert_onnx, int8, BERT_INPUTS) >= 0.9


@pytest.mark.parametrize("model", sorted(MODELS))
def test_fp16_is_half_size_and_agrees(request, tmp_path, model):
    fixture, _, inputs = MODELS[model]
    fp32 = request.getfixturevalue(fixture)
    fp16 = tmp_path / "model.onnx"
    convert_fp16(fp32, fp16)
    assert 0.45 < os.path.getsize(fp16) / os.path.getsize(fp32) < 0.6
    assert agreement(fp32, fp16, inputs) >= 0.95


def test_unknown_family_names_family_and_method(tiny_bert_onnx, tmp_path):
    with pytest.raises(ConfigError, match="dynamic int8 .*'gpt2'"):
        quantize_dynamic_int8(tiny_bert_onnx, tmp_path / "m.onnx", "gpt2")
    with pytest.raises(ConfigError, match="static int8 .*'gpt2'"):
        quantize_static_int8(tiny_bert_onnx, tmp_path / "m.onnx", [], "gpt2")


def test_bert_dynamic_needs_its_shape(tiny_bert_onnx, tmp_path):
    with pytest.raises(ConfigError, match="'transformer' needs num_heads and hidden_size"):
        quantize_dynamic_int8(tiny_bert_onnx, tmp_path / "m.onnx", "transformer")


def test_static_calibration_needs_every_graph_input(tiny_bert_onnx, tmp_path):
    with pytest.raises(ConfigError, match="lacks graph inputs \\['token_type_ids'\\]"):
        quantize_static_int8(tiny_bert_onnx, tmp_path / "m.onnx", [random_features(4, LSTM_INPUTS)], "transformer")


def test_requantizing_a_quantized_graph_is_refused(tiny_lstm_onnx, tmp_path):
    int8 = tmp_path / "int8.onnx"
    quantize_dynamic_int8(tiny_lstm_onnx, int8, "bilstm")
    with pytest.raises(ConfigError, match="family .bilstm.: the graph is already quantized"):
        quantize_dynamic_int8(int8, tmp_path / "again.onnx", "bilstm")


@pytest.mark.parametrize("build", [tiny_bert, lambda: TinyLSTMClassifier().eval()], ids=["bert", "lstm"])
def test_torch_dynamic_quantizes_linear_and_lstm_and_agrees(build):
    torch.manual_seed(0)
    model = build()
    is_lstm = isinstance(model, TinyLSTMClassifier)
    features = {k: torch.from_numpy(v) for k, v in random_features(200, LSTM_INPUTS if is_lstm else BERT_INPUTS, seed=1).items()}
    quantized = quantize_torch_dynamic(model)
    modules = list(quantized.modules())
    assert any(isinstance(m, dynamic.Linear) for m in modules)
    assert not any(isinstance(m, (torch.nn.Linear, torch.nn.LSTM)) for m in modules)  # all replaced
    assert any(isinstance(m, dynamic.LSTM) for m in modules) is is_lstm
    with torch.inference_mode():
        expected, actual = (getattr(m(**features), "logits", m(**features)) for m in (model, quantized))
    assert (expected.argmax(1) == actual.argmax(1)).float().mean() >= 0.9
