"""Random-initialised teachers of a named size: the parameter formula, the block-by-block save,
and ``distill teacher random`` on a tiny shape."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from pipeline.cli.main import main
from core.hf_checkpoint import load_tokenizer
from teachers.checkpoint import DEFAULT_TEACHER, fp32_weight_mb, resolve_teacher
from teachers.random_init import SHAPES, Shape, bert_config, parameter_count, save_random_teacher

VOCAB = 30522  # MiniLM's WordPiece vocabulary, whose tokenizer the teachers carry


@pytest.mark.parametrize("name, low, high", [("bert-large", 330e6, 340e6), ("1.3b", 1.25e9, 1.30e9)])
def test_named_shapes_have_their_size_and_the_formula_counts_the_real_model(name, low, high):
    with torch.device("meta"):  # the full-size model's parameters, without memory
        model = BertForSequenceClassification(bert_config(SHAPES[name], VOCAB))
    counted = sum(p.numel() for p in model.parameters())
    assert counted == parameter_count(SHAPES[name], VOCAB)
    assert low < counted < high


def test_resized_keeps_bert_proportions():
    assert SHAPES["bert-large"].resized(layers=2) == Shape(2, 1024, 16, 4096)
    assert SHAPES["1.3b"].resized(layers=3, hidden=128) == Shape(3, 128, 2, 512)
    assert SHAPES["1.3b"].resized(hidden=32) == Shape(24, 32, 1, 128)  # under 64 wide: one head


def test_blocks_are_saved_one_shard_each_and_load_as_a_drawn_classifier(tmp_path):
    shape = Shape(layers=2, hidden=32, heads=2, ffn=64)
    folder = save_random_teacher(tmp_path / "teacher", shape, seed=3)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == [f"model-0000{i}-of-00005.safetensors" for i in range(1, 6)]  # embeddings, 2 layers, pooler, head
    assert index["weight_map"]["bert.encoder.layer.1.output.dense.weight"] == "model-00003-of-00005.safetensors"
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    count = sum(p.numel() for p in model.parameters())
    assert type(model) is BertForSequenceClassification and count == parameter_count(shape, VOCAB)
    assert index["metadata"]["total_size"] == 4 * count and fp32_weight_mb(folder) == 4 * count / 1e6
    assert model.config.id2label == {0: "negative", 1: "positive"}
    query = model.bert.encoder.layer[1].attention.self.query
    assert query.weight.std().item() == pytest.approx(0.02, rel=0.1)  # transformers' init, normal(0, 0.02)
    assert query.bias.abs().max().item() == 0 and model.bert.embeddings.LayerNorm.weight.min().item() == 1
    again = AutoModelForSequenceClassification.from_pretrained(save_random_teacher(tmp_path / "again", shape, seed=3))
    torch.testing.assert_close(again.classifier.weight, model.classifier.weight, rtol=0, atol=0)  # seeded
    tokenizer = load_tokenizer(folder)  # MiniLM's, copied
    encoded = tokenizer(["a good film"], return_tensors="pt")
    assert encoded["input_ids"].tolist() == load_tokenizer(resolve_teacher(DEFAULT_TEACHER))(["a good film"])["input_ids"]
    assert model.config.vocab_size == len(tokenizer) == VOCAB
    with torch.inference_mode():
        logits = model.eval()(**encoded).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


def test_the_command_writes_a_tiny_shape_and_refuses_without_out(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert main(["teacher", "random", "--shape", "bert-large", "--out", str(out), "--layers", "2",
                 "--hidden", "64"]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == parameter_count(Shape(2, 64, 1, 256), VOCAB)
    assert model.config.num_attention_heads == 1 and model.config.intermediate_size == 256
    assert main(["teacher", "random", "--shape", "1.3b"]) == 2
    assert capsys.readouterr().err.strip().endswith("distill teacher random needs --shape (bert-large or 1.3b) "
                                                    "and --out DIR")
