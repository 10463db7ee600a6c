"""Backends: one Predictor interface over ONNX Runtime, PyTorch and ExecuTorch, same logits everywhere."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_onnx import BERT_INPUTS, LSTM_INPUTS, VOCAB, TinyLSTMClassifier, export, random_features, tiny_bert

from compress.backends import BACKENDS, load_predictor
from core.errors import ArtifactError, ConfigError


@pytest.mark.parametrize("fixture,inputs", [("tiny_bert_onnx", BERT_INPUTS), ("tiny_lstm_onnx", LSTM_INPUTS)])
def test_onnxruntime_same_logits_at_one_and_two_threads(request, fixture, inputs):
    path = request.getfixturevalue(fixture)
    features = random_features(32, inputs, seed=2) | {"unused": np.zeros((32, 1), dtype=np.int64)}
    one, two = (load_predictor("onnxruntime", path, threads) for threads in (1, 2))
    assert one.input_names == inputs
    logits = one.predict(features)
    assert logits.shape == (32, 2) and logits.dtype == np.float32
    np.testing.assert_allclose(two.predict(features), logits, atol=1e-5)


def test_pytorch_folder_and_onnxruntime_export_agree(tmp_path):
    torch.manual_seed(0)
    model = tiny_bert()
    model.save_pretrained(tmp_path / "hf")
    export(model, BERT_INPUTS, tmp_path / "model.onnx")
    features = random_features(16, BERT_INPUTS, seed=3)
    eager = BACKENDS["pytorch"](tmp_path / "hf", threads=1)
    assert eager.input_names == BERT_INPUTS
    exported = BACKENDS["onnxruntime"](tmp_path, 1)  # the variant folder form: finds model.onnx
    np.testing.assert_allclose(eager.predict(features), exported.predict(features), atol=1e-4)


def test_pytorch_module_takes_only_its_features():
    torch.manual_seed(0)
    model = TinyLSTMClassifier().eval()
    predictor = load_predictor("pytorch", model, threads=2)
    assert predictor.input_names == LSTM_INPUTS
    features = random_features(8, BERT_INPUTS, seed=4)  # token_type_ids is ignored
    with torch.inference_mode():
        expected = model(*(torch.from_numpy(features[name]) for name in LSTM_INPUTS)).numpy()
    np.testing.assert_allclose(predictor.predict(features), expected)


def test_errors_name_the_problem(tmp_path, tiny_lstm_onnx):
    with pytest.raises(ConfigError, match="backend 'tflite' is unknown"):
        load_predictor("tflite", tiny_lstm_onnx, 1)
    with pytest.raises(ArtifactError, match="missing"):
        load_predictor("onnxruntime", tmp_path, 1)
    (tmp_path / "model.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ArtifactError, match="ONNX Runtime cannot load it"):
        load_predictor("onnxruntime", tmp_path, 1)
    with pytest.raises(ConfigError, match=r"needs features \['attention_mask'\]"):
        load_predictor("onnxruntime", tiny_lstm_onnx, 1).predict(random_features(2, ["input_ids"]))


class MeanPoolClassifier(torch.nn.Module):
    """Embedding -> masked mean -> Linear: padding-invariant, so a padded program must match it."""

    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(VOCAB, 16)
        self.head = torch.nn.Linear(16, 2)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).float()  # [B, T, 1]
        return self.head((self.embedding(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1))


@pytest.mark.slow  # about 30 s, mostly importing and lowering with executorch.exir
def test_executorch_pads_to_the_fixed_length(tmp_path):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    torch.manual_seed(0)
    model = MeanPoolClassifier().eval()
    example = tuple(torch.from_numpy(a) for a in random_features(1, LSTM_INPUTS, seq_len=16).values())
    program = to_edge_transform_and_lower(  # the padding settings export_executorch stores in the program
        torch.export.export(model, example), partitioner=[XnnpackPartitioner()],
        constant_methods={"fixed_length": 16, "padded_inputs": [1, 1], "pads_output": 0})
    (tmp_path / "model.pte").write_bytes(program.to_executorch().buffer)
    (tmp_path / "meta.json").write_text(json.dumps({"input_names": LSTM_INPUTS}))
    predictor = load_predictor("executorch", tmp_path, threads=1)
    features = random_features(1, LSTM_INPUTS, seed=5, seq_len=7)
    with torch.inference_mode():
        expected = model(*(torch.from_numpy(features[name]) for name in LSTM_INPUTS)).numpy()
    np.testing.assert_allclose(predictor.predict(features), expected, atol=1e-5)
    with pytest.raises(ConfigError, match="at most 16 tokens, got 20"):
        predictor.predict(random_features(1, LSTM_INPUTS, seq_len=20))
