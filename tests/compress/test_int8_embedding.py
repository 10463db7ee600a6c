"""The int8 vocabulary table of the ExecuTorch and LiteRT int8 programs: each row within half a
quantization step, a pruned vocabulary's remap kept, and only the largest table turned int8."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification

from compress.int8_embedding import Int8Embedding, with_int8_vocabulary


def test_int8_embedding_is_within_half_a_step_of_each_row():
    torch.manual_seed(0)
    table = torch.nn.Embedding(50, 8, padding_idx=0)
    quantized = Int8Embedding(table)
    ids = torch.tensor([[0, 3, 49], [7, 7, 1]])
    step = table.weight.detach().abs().amax(dim=1) / 127  # [50]
    error = (quantized(ids) - table(ids)).abs()  # [2, 3, 8]
    assert quantized.weight_int8.dtype == torch.int8 and quantized.weight_int8.abs().max() == 127
    assert (error <= step[ids].unsqueeze(-1) / 2 + 1e-7).all()
    assert quantized(torch.tensor([0])).abs().max() == 0  # the padding row stays 0


def test_int8_embedding_keeps_a_pruned_vocabularys_remap():
    from compress.vocabulary import RemappedEmbedding

    torch.manual_seed(0)
    remap = torch.tensor([0, 2, 2, 1, 2])  # ids 1, 2 and 4 were not kept: they read [UNK]'s row 2
    table = RemappedEmbedding(torch.randn(3, 4), remap, unk_id=2, padding_idx=None)
    ids = torch.tensor([[0, 1, 3, 4]])
    assert torch.allclose(Int8Embedding(table)(ids), table(ids), atol=table.weight.abs().max().item() / 127)


def test_only_the_vocabulary_table_turns_int8_and_the_model_is_left_unchanged():
    config = BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16)
    model = BertForSequenceClassification(config).eval()
    copy = with_int8_vocabulary(model)
    tables = {name: type(module) for name, module in copy.named_modules()
              if isinstance(module, (torch.nn.Embedding, Int8Embedding))}
    assert {name.rsplit(".", 1)[-1]: kind for name, kind in tables.items()} == {
        "word_embeddings": Int8Embedding, "position_embeddings": torch.nn.Embedding,
        "token_type_embeddings": torch.nn.Embedding}
    assert all(isinstance(module, torch.nn.Embedding) for name, module in model.named_modules() if name in tables)
