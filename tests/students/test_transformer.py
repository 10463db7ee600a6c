"""The transformer student: layer selection, weight copies, outputs, save/load, size checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import (AutoModel, AutoModelForSequenceClassification, AutoTokenizer, BertConfig,
                          BertForSequenceClassification)

from core.errors import ConfigError
from students.base import BuildInputs
from students.registry import load_student
from students.transformer import (TransformerStudent, TransformerStudentConfig, build_transformer_student,
                                  layer_similarities, selected_teacher_layers)

SENTENCES = ["a good film", "a bad , bad and boring film that goes on", "fine"]
IDENTITY_LAYERS = (2, 5)
"""Layers of the crafted teacher whose output equals their input."""


def small(**overrides) -> TransformerStudentConfig:
    return TransformerStudentConfig(**{"num_layers": 3, "max_length": 16, "dropout": 0.0, **overrides})


def save_teacher(folder: Path, model: BertForSequenceClassification, tokenizer_dir: Path) -> Path:
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def deep_teacher(tmp_path_factory, tiny_teacher_dir) -> Path:
    """A random-weight 6-layer BERT classifier (hidden 32, 2 labels) with the MiniLM tokenizer."""
    torch.manual_seed(1)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=6, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2, initializer_range=0.2)
    return save_teacher(tmp_path_factory.mktemp("deep_teacher"), BertForSequenceClassification(config),
                        tiny_teacher_dir)


@pytest.fixture(scope="module")
def crafted_teacher(tmp_path_factory, deep_teacher, tiny_teacher_dir) -> Path:
    """The 6-layer teacher with layers 2 and 5 made identities: their attention-output and FFN-output
    projections are zero, so each sublayer returns LayerNorm(input) = input (LayerNorm is at its init)."""
    model = BertForSequenceClassification.from_pretrained(deep_teacher)
    with torch.no_grad():
        for layer in IDENTITY_LAYERS:
            block = model.bert.encoder.layer[layer - 1]
            for dense in (block.attention.output.dense, block.output.dense):
                dense.weight.zero_()
                dense.bias.zero_()
    return save_teacher(tmp_path_factory.mktemp("crafted_teacher"), model, tiny_teacher_dir)


@pytest.mark.parametrize(("strategy", "expected"), [
    ("drop_top", [1, 2, 3]),
    ("drop_bottom", [4, 5, 6]),
    ("drop_alternate", [2, 4, 6]),
    ("drop_symmetric", [1, 2, 6]),
    ("uniform", [2, 4, 6]),
    ("random", []),
])
def test_selected_layers_6_to_3(strategy, expected):
    assert selected_teacher_layers(strategy, 6, 3) == expected


@pytest.mark.parametrize(("strategy", "expected"), [
    ("drop_top", [1, 2, 3, 4]),
    ("drop_bottom", [9, 10, 11, 12]),
    ("drop_alternate", [2, 4, 8, 12]),  # odd layers 11..1 go first, then positions 5 and 3 of 2,4,..,12
    ("drop_symmetric", [1, 2, 11, 12]),
    ("uniform", [3, 6, 9, 12]),
    ("random", []),
])
def test_selected_layers_12_to_4(strategy, expected):
    assert selected_teacher_layers(strategy, 12, 4) == expected


def test_selected_layers_follow_the_papers_12_to_8_examples():
    # Sajjad et al. 2020: with K = 4, odd-alternate drops 5, 7, 9, 11 and symmetric drops 5-8.
    assert selected_teacher_layers("drop_alternate", 12, 8) == [1, 2, 3, 4, 6, 8, 10, 12]
    assert selected_teacher_layers("drop_symmetric", 12, 8) == [1, 2, 3, 4, 9, 10, 11, 12]
    assert selected_teacher_layers("uniform", 6, 6) == [1, 2, 3, 4, 5, 6]


def test_contribution_drops_the_most_similar_layers():
    similarities = [0.2, 0.9, 0.1, 0.5, 0.95, 0.3]
    assert selected_teacher_layers("drop_contribution", 6, 3, similarities) == [1, 3, 6]
    similarities_12 = [0.1, 0.2, 0.3, 0.99, 0.4, 0.98, 0.5, 0.97, 0.6, 0.96, 0.7, 0.95]
    assert selected_teacher_layers("drop_contribution", 12, 4, similarities_12) == [1, 2, 3, 5]
    # a tie drops the higher layer first
    assert selected_teacher_layers("drop_contribution", 4, 3, [0.5, 0.9, 0.9, 0.1]) == [1, 2, 4]


def test_selected_layers_errors():
    with pytest.raises(ValueError, match="one similarity per teacher layer"):
        selected_teacher_layers("drop_contribution", 6, 3)
    with pytest.raises(ValueError, match="unknown layer_init"):
        selected_teacher_layers("drop_middle", 6, 3)
    with pytest.raises(ConfigError, match="train.student.num_layers"):
        selected_teacher_layers("uniform", 6, 8)
    assert selected_teacher_layers("random", 6, 8) == []


def test_layer_similarities_find_identity_layers(crafted_teacher):
    model = BertForSequenceClassification.from_pretrained(crafted_teacher).eval()
    similarities = layer_similarities(model.bert, AutoTokenizer.from_pretrained(crafted_teacher), SENTENCES,
                                      max_length=16, batch_size=2)
    assert similarities.shape == (6,) and similarities.dtype == torch.float32
    for layer in IDENTITY_LAYERS:
        assert similarities[layer - 1].item() == pytest.approx(1.0, abs=1e-5)
    others = [similarities[layer - 1].item() for layer in range(1, 7) if layer not in IDENTITY_LAYERS]
    assert max(others) < 0.99


def test_contribution_student_copies_the_most_changing_layers(crafted_teacher):
    with pytest.raises(ValueError, match="transfer_texts"):
        build_transformer_student(small(num_layers=4, layer_init="drop_contribution"),
                                  BuildInputs(crafted_teacher, num_labels=2))
    student = build_transformer_student(small(num_layers=4, layer_init="drop_contribution"),
                                        BuildInputs(crafted_teacher, SENTENCES, 2))
    assert student.teacher_layers == [1, 3, 4, 6]


@pytest.mark.parametrize("strategy", ["drop_alternate", "drop_symmetric", "uniform"])
def test_copied_weights_equal_the_chosen_teacher_layers(deep_teacher, strategy):
    teacher = BertForSequenceClassification.from_pretrained(deep_teacher)
    student = build_transformer_student(small(layer_init=strategy), BuildInputs(deep_teacher, num_labels=2))
    assert student.teacher_layers == selected_teacher_layers(strategy, 6, 3)
    pairs = [(student.model.bert.encoder.layer[i], teacher.bert.encoder.layer[t - 1])
             for i, t in enumerate(student.teacher_layers)]
    pairs += [(student.model.bert.embeddings, teacher.bert.embeddings),
              (student.model.bert.pooler, teacher.bert.pooler), (student.model.classifier, teacher.classifier)]
    for student_module, teacher_module in pairs:
        teacher_state = teacher_module.state_dict()
        for name, tensor in student_module.state_dict().items():
            assert torch.equal(tensor, teacher_state[name]), name


def test_random_init_copies_no_layer_but_the_embeddings(deep_teacher):
    teacher = BertForSequenceClassification.from_pretrained(deep_teacher)
    student = build_transformer_student(small(layer_init="random", intermediate_size=48),
                                        BuildInputs(deep_teacher, num_labels=2))
    assert student.teacher_layers == []
    assert student.model.config.intermediate_size == 48
    assert torch.equal(student.model.bert.embeddings.word_embeddings.weight,
                       teacher.bert.embeddings.word_embeddings.weight)
    for student_layer in student.model.bert.encoder.layer:
        query = student_layer.attention.self.query.weight  # [32, 32], the teacher's shape
        assert not any(torch.equal(query, layer.attention.self.query.weight) for layer in teacher.bert.encoder.layer)


def test_new_label_count_keeps_the_students_own_classifier(deep_teacher):
    student = build_transformer_student(small(), BuildInputs(deep_teacher, num_labels=3))
    assert student.model.classifier.weight.shape == (3, 32)
    assert student.model.config.num_labels == 3


def test_size_conflicts_raise_config_errors(deep_teacher):
    with pytest.raises(ConfigError, match="train.student.layer_init"):
        build_transformer_student(small(hidden_size=16, num_heads=2), BuildInputs(deep_teacher, num_labels=2))
    with pytest.raises(ConfigError, match="train.student.layer_init"):
        build_transformer_student(small(num_heads=4), BuildInputs(deep_teacher, num_labels=2))
    with pytest.raises(ConfigError, match="train.student.num_heads"):
        build_transformer_student(small(hidden_size=30, num_heads=4, layer_init="random"),
                                  BuildInputs(deep_teacher, num_labels=2))
    with pytest.raises(ConfigError, match="train.student.max_length"):
        build_transformer_student(small(max_length=128), BuildInputs(deep_teacher, num_labels=2))


def test_narrow_student_builds_with_random_layers(deep_teacher):
    student = build_transformer_student(small(hidden_size=16, num_heads=4, intermediate_size=24, layer_init="random"),
                                        BuildInputs(deep_teacher, num_labels=2))
    student.output_hidden_states = True
    out = student(**student.featurize(SENTENCES))
    assert out.logits.shape == (3, 2)
    assert [h.shape[-1] for h in out.hidden_states] == [16] * 4


def test_featurize_and_forward_shapes(tiny_teacher_dir):
    student = build_transformer_student(small(num_layers=2), BuildInputs(tiny_teacher_dir, num_labels=2)).eval()
    features = student.featurize([SENTENCES[1] * 2, "fine"], pairs=["yes", "no"])  # row 0 has 24 tokens
    assert set(features) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(v.dtype == torch.int64 and v.shape == features["input_ids"].shape for v in features.values())
    assert features["token_type_ids"].max() == 1  # the second sentence is segment 1
    assert features["input_ids"].shape[1] == 16  # truncated at max_length

    out = student(**features)
    assert out.logits.shape == (2, 2) and out.logits.dtype == torch.float32
    assert out.hidden_states == () and out.attentions == ()
    assert student.model.config._attn_implementation == "sdpa"

    student.output_hidden_states = True
    student.output_attentions = True
    assert student.model.config._attn_implementation == "eager"
    out_all = student(**features)
    T = features["input_ids"].shape[1]
    assert [h.shape for h in out_all.hidden_states] == [(2, T, 32)] * 3
    assert [a.shape for a in out_all.attentions] == [(2, 2, T, T)] * 2
    assert all(t.dtype == torch.float32 for t in (*out_all.hidden_states, *out_all.attentions))
    rows = out_all.attentions[0].sum(dim=-1)  # [B, H, T]: post-softmax rows sum to 1
    torch.testing.assert_close(rows, torch.ones_like(rows))
    torch.testing.assert_close(out_all.logits, out.logits, atol=1e-5, rtol=1e-5)  # eager and SDPA agree


def test_backward_reaches_every_parameter(tiny_teacher_dir):
    student = build_transformer_student(small(num_layers=2), BuildInputs(tiny_teacher_dir, num_labels=2))
    student.output_hidden_states = True
    student.output_attentions = True
    out = student(**student.featurize(SENTENCES))
    (out.logits.sum() + out.hidden_states[-1].pow(2).mean() + out.attentions[0].pow(2).mean()).backward()
    for name, param in student.named_parameters():
        if name.endswith("token_type_embeddings.weight"):
            continue  # only segment 0 is used by single sentences
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


def test_save_load_round_trip(tmp_path, deep_teacher):
    student = build_transformer_student(small(layer_init="drop_alternate"), BuildInputs(deep_teacher, num_labels=2)).eval()
    features = student.featurize(SENTENCES)
    with torch.no_grad():
        expected = student(**features).logits
    folder = student.save(tmp_path / "student")

    meta = json.loads((folder / "student.json").read_text())
    assert meta["family"] == "transformer" and meta["teacher_layers"] == [2, 4, 6] and meta["num_labels"] == 2
    assert (folder / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".student.tmp-*"))

    loaded = load_student(folder)
    assert isinstance(loaded, TransformerStudent) and not loaded.training
    assert loaded.cfg == student.cfg and loaded.teacher_layers == [2, 4, 6]
    with torch.no_grad():
        assert torch.equal(loaded(**loaded.featurize(SENTENCES)).logits, expected)

    hf_model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert isinstance(hf_model, BertForSequenceClassification) and hf_model.config.num_hidden_layers == 3
    with torch.no_grad():
        assert torch.equal(hf_model(**features).logits, expected)


@pytest.mark.parametrize(("name", "stage"), [("student-zero1.json", 1), ("student-zero2.json", 2)])
def test_shipped_student_deepspeed_configs_parse(name, stage):
    from deepspeed.runtime.config import DeepSpeedConfig

    shipped = json.loads((Path(__file__).resolve().parents[2] / "clusters" / "deepspeed" / name).read_text())
    assert "bf16" not in shipped and "fp16" not in shipped  # precision comes from train.precision
    parsed = DeepSpeedConfig(shipped)  # one process: train_batch_size = micro batch x accumulation
    assert (parsed.zero_optimization_stage, parsed.train_micro_batch_size_per_gpu, parsed.train_batch_size,
            parsed.gradient_clipping) == (stage, 64, 64, 1.0)


def layers_equal(student_layer: torch.nn.Module, source_layer: torch.nn.Module) -> bool:
    source_state = source_layer.state_dict()
    return all(torch.equal(tensor, source_state[name]) for name, tensor in student_layer.state_dict().items())


@pytest.fixture(scope="module")
def minilm_like(tiny_encoder) -> tuple[Path, Path]:
    """An MPNet teacher (hidden 32, 2 layers) and a bare BERT checkpoint of another width and depth
    (hidden 48, 6 layers) whose WordPiece pieces are the teacher's with ids shifted by one, as
    MiniLM-L6's are all-mpnet-base-v2's shifted by four."""
    return tiny_encoder("mpnet"), tiny_encoder("bert", head=None, hidden_size=48, num_hidden_layers=6)


def test_init_checkpoint_student_starts_from_the_checkpoint(minilm_like, tmp_path):
    teacher_dir, checkpoint = minilm_like
    student = build_transformer_student(small(num_layers=2, init_checkpoint=str(checkpoint)),
                                        BuildInputs(teacher_dir, num_labels=3, init_dir=checkpoint)).eval()
    source = AutoModel.from_pretrained(checkpoint)
    assert type(student.model) is BertForSequenceClassification and student.hidden_size == 48
    assert student.model.config.num_hidden_layers == 2 and student.teacher_layers == [3, 6]  # uniform 2 of 6
    assert all(layers_equal(student.model.bert.encoder.layer[i], source.encoder.layer[t - 1])
               for i, t in enumerate(student.teacher_layers))
    assert not layers_equal(student.model.bert.encoder.layer[0], source.encoder.layer[0])
    assert layers_equal(student.model.bert.embeddings, source.embeddings)
    assert student.model.classifier.weight.shape == (3, 48)  # a new head for the run's labels

    features = student.featurize(SENTENCES)
    own = AutoTokenizer.from_pretrained(checkpoint)(SENTENCES, padding=True, truncation=True, max_length=16,
                                                    return_tensors="pt")
    teachers = AutoTokenizer.from_pretrained(teacher_dir)(SENTENCES, padding=True, truncation=True, max_length=16,
                                                          return_tensors="pt")
    assert torch.equal(features["input_ids"], own["input_ids"]) and "token_type_ids" in features
    assert features["input_ids"].shape == teachers["input_ids"].shape  # the same pieces ...
    assert not torch.equal(features["input_ids"], teachers["input_ids"])  # ... under other ids

    with torch.no_grad():
        expected = student(**features).logits
    folder = student.save(tmp_path / "student")
    meta = json.loads((folder / "student.json").read_text())
    assert (meta["init_checkpoint"], meta["teacher_layers"]) == (str(checkpoint), [3, 6])
    loaded = load_student(folder)
    assert loaded.init_checkpoint == str(checkpoint) and loaded.teacher_layers == [3, 6]
    assert torch.equal(loaded.featurize(SENTENCES)["input_ids"], own["input_ids"])
    with torch.no_grad():
        assert torch.equal(loaded(**loaded.featurize(SENTENCES)).logits, expected)


def test_init_checkpoint_sizes_and_layers_are_the_checkpoints(minilm_like):
    teacher_dir, checkpoint = minilm_like
    inputs = BuildInputs(teacher_dir, num_labels=2, init_dir=checkpoint)
    with pytest.raises(ConfigError, match=r"^train\.student\.num_layers: layer_init 'uniform' copies checkpoint "
                                          r"layers, so it needs 1 to 6 layers \(the checkpoint's\); got 7"):
        build_transformer_student(small(num_layers=7, init_checkpoint=str(checkpoint)), inputs)
    with pytest.raises(ConfigError, match=r"^train\.student\.layer_init: 'uniform' copies checkpoint layers, which "
                                          r"needs the checkpoint's sizes \{'hidden_size': 48"):
        build_transformer_student(small(hidden_size=32, init_checkpoint=str(checkpoint)), inputs)
    with pytest.raises(ValueError, match="needs its folder in BuildInputs.init_dir"):
        build_transformer_student(small(init_checkpoint=str(checkpoint)), BuildInputs(teacher_dir, num_labels=2))
    narrow = build_transformer_student(small(num_layers=4, hidden_size=24, num_heads=4, layer_init="random",
                                             init_checkpoint=str(checkpoint)), inputs)
    assert (narrow.hidden_size, narrow.model.config.intermediate_size, narrow.teacher_layers) == (24, 96, [])
