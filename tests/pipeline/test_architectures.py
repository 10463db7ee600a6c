"""Any Hugging Face encoder as teacher (issue 23): tiny random BERT, MPNet, RoBERTa and DistilBERT
(tests/tiny_architectures.py, tokenizers of generated vocabularies) through fine-tuning, labeling
(logits, hidden states, attention maps; word logits of a token task), the transformer student of
the teacher's own architecture, pruning (BERT and MPNet; the others refused at config time),
ONNX and ExecuTorch export, and dynamic int8 quantization. Stage runs are in
test_architecture_stages.py."""

from __future__ import annotations

import random

import datasets
import numpy as np
import pytest
import torch
from tiny_architectures import ARCHITECTURES, WORDS, sentences
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

from compress.backends import load_model_folder
from compress.executorch_export import export_executorch
from compress.importance import masked
from compress.onnx_export import export_onnx
from compress.parity import check_parity, parity_batches
from compress.quantize import quantize_dynamic_int8
from compress.slicing import kept_heads, load_pruned, prune_ffn_neurons, prune_heads, prunable_encoder
from compress.traceable import example_features, input_names_of, model_featurizer
from core.errors import ConfigError
from core.precision import select_precision
from pipeline.config.rules import prune_architecture_problems
from pipeline.config.compress_sections import PruneConfig
from pipeline.stages.quantize import encoder_shape
from students.architectures import encoder_layers
from students.base import BuildInputs
from students.bilstm import BiLSTMStudentConfig, build_bilstm_student
from students.registry import load_student
from students.transformer import TransformerStudentConfig, build_transformer_student, check_fits_teacher
from teachers.ensemble import check_teachers, combine_logits
from teachers.finetune import FinetuneConfig, finetune_classifier
from teachers.inference import ClsOnlyBertClassifier, TeacherInference
from teachers.signals import SignalsConfig
from teachers.token_alignment import encode_words, first_subtoken_index

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TAGS = ["O", "B-X", "I-X"]
FP32 = select_precision("fp32", "test")


def good_bad(count: int, seed: int) -> tuple[list[str], list[int]]:
    """Sentences of generated words holding "good" (label 1) or "bad" (label 0)."""
    rng, texts, labels = random.Random(seed), [], []
    for _ in range(count):
        label, words = rng.randrange(2), rng.choices(WORDS, k=rng.randint(3, 7))
        words.insert(rng.randrange(len(words) + 1), "good" if label else "bad")
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def backwards(text: str) -> str:
    """The words of ``text`` in reverse order: a pair's second sentence."""
    return " ".join(reversed(text.split()))


@pytest.fixture(scope="module")
def finetuned(tiny_encoder, tmp_path_factory):
    """``finetuned(architecture, task)``: the bare tiny encoder fine-tuned as a sequence-pair
    classifier ("sequence") or a word tagger ("token") by DeepSpeed, once per module."""
    done = {}

    def make(architecture: str, task: str):
        if (architecture, task) not in done:
            out = tmp_path_factory.mktemp(f"{architecture}_{task}") / "teacher"
            if task == "token":
                words = sentences(48, seed=3)
                rows = [{"tokens": s, "tags": [int(w == "good") + int(len(w) > 4) for w in s]} for s in words]
                names = TAGS
            else:
                texts, labels = good_bad(48, seed=1)
                rows = [{"text": t, "text_pair": backwards(t), "label": y} for t, y in zip(texts, labels)]
                names = ["negative", "positive"]
            base = tiny_encoder(architecture, head=None, initializer_range=0.02)  # BERT's usual init: trains
            result = finetune_classifier(base, datasets.Dataset.from_list(rows), names, out,
                                         FinetuneConfig(epochs=6, batch_size=16, lr=1e-2, warmup_ratio=0.0),
                                         FP32, max_length=32, seed=0, task=task)
            done[architecture, task] = out, result
        return done[architecture, task]

    return make


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_finetuned_pair_teacher_labels_as_its_own_forward(architecture, finetuned):
    folder, result = finetuned(architecture, "sequence")
    assert result["loss_history"][-1] < 0.6 * result["loss_history"][0]  # the head and the encoder learned
    texts, _ = good_bad(7, seed=2)
    pairs = [backwards(t) for t in texts]
    signals = SignalsConfig(hidden_layers=[0, 2], attention_layers=[2], dtype="fp32")
    out = TeacherInference(folder, FP32, max_length=32, max_batch_size=3, signals=signals).outputs(texts, pairs)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager").eval()
    assert type(model).__name__.lower().startswith(architecture)
    for i, (text, pair) in enumerate(zip(texts, pairs)):  # one row at a time: no padding
        encoded = tokenizer(text, pair, truncation=True, max_length=32, return_tensors="pt")
        assert ("token_type_ids" in encoded) is (architecture == "bert")
        with torch.no_grad():
            direct = model(**encoded, output_hidden_states=True, output_attentions=True)
        np.testing.assert_allclose(out["logits"][i], direct.logits[0].numpy(), atol=1e-5)
        assert out["length"][i] == encoded["input_ids"].shape[1]
        for layer in (0, 2):
            np.testing.assert_allclose(out[f"hidden_{layer}"][i], direct.hidden_states[layer][0].numpy(), atol=1e-4)
        np.testing.assert_allclose(out["attention_2"][i], direct.attentions[1][0].numpy(), atol=1e-5)
        np.testing.assert_allclose(out["attention_2"][i].sum(-1), 1.0, atol=1e-5)

    logits_only = TeacherInference(folder, FP32, max_length=32)  # the [CLS]-only last layer: BERT only
    assert isinstance(logits_only.forward, ClsOnlyBertClassifier) is (architecture == "bert")
    np.testing.assert_allclose(logits_only.logits(texts, pairs), out["logits"], atol=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_token_teacher_tags_each_word_by_its_first_subtoken(architecture, finetuned):
    folder, result = finetuned(architecture, "token")
    assert result["loss_history"][-1] < 0.6 * result["loss_history"][0]
    words = sentences(5, seed=4)  # glued words split into several sub-tokens
    out = TeacherInference(folder, FP32, max_length=32, task="token").word_logits(words)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForTokenClassification.from_pretrained(folder).eval()
    encoded = encode_words(tokenizer, words, max_length=32)
    with torch.no_grad():
        logits = model(**encoded).logits  # [B, T, C]
    split_words = 0
    for row, sentence in enumerate(words):
        first = first_subtoken_index(encoded.word_ids(row), len(sentence))
        np.testing.assert_allclose(out["logits"][row], logits[row, first].numpy(), atol=1e-5)
        assert out["word_mask"][row].all() and out["logits"][row].shape == (len(sentence), len(TAGS))
        word_ids = encoded.word_ids(row)
        split_words += sum(word_ids.count(w) > 1 for w in range(len(sentence)))
        if architecture == "roberta":  # byte-level BPE: every word as in running text, after a space
            tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"][row][first])
            assert all(token.startswith("Ġ") for token in tokens), tokens
    assert split_words > 0


@pytest.mark.slow  # two DeepSpeed inference engines and a BPE trained: about 20 s on a loaded 2-core machine
def test_teachers_of_other_architectures_label_together(tiny_encoder):
    mpnet, roberta = tiny_encoder("mpnet"), tiny_encoder("roberta", seed=1)
    check_teachers(mpnet, [roberta])  # the same labels in the same order: accepted
    texts = good_bad(5, seed=13)[0]
    each = [TeacherInference(folder, FP32, max_length=32).logits(texts) for folder in (mpnet, roberta)]
    for folder, logits in zip((mpnet, roberta), each):  # each through its own tokenizer
        tokenizer = AutoTokenizer.from_pretrained(folder)
        with torch.no_grad():
            direct = AutoModelForSequenceClassification.from_pretrained(folder).eval()(
                **tokenizer(texts, padding=True, return_tensors="pt")).logits
        np.testing.assert_allclose(logits, direct.numpy(), atol=1e-5)
    np.testing.assert_allclose(combine_logits(each, "mean_logits"), (each[0] + each[1]) / 2, atol=1e-6)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_transformer_student_is_the_teachers_architecture(architecture, tiny_encoder, tmp_path):
    folder = tiny_encoder(architecture)
    teacher = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    texts, _ = good_bad(6, seed=5)
    student = build_transformer_student(TransformerStudentConfig(num_layers=1, layer_init="drop_bottom", max_length=32),
                                        BuildInputs(folder, texts, num_labels=2)).eval()
    assert type(student.model) is type(teacher) and student.teacher_layers == [2]
    copied = zip(encoder_layers(student.model)[0].state_dict().items(), encoder_layers(teacher)[1].state_dict().items())
    assert all(name == other and torch.equal(a, b) for (name, a), (other, b) in copied)
    head = [name for name in teacher.state_dict() if not name.startswith(teacher.base_model_prefix + ".")]
    assert head and all(torch.equal(student.model.state_dict()[n], teacher.state_dict()[n]) for n in head)
    features = student.featurize(texts)
    assert list(features) == input_names_of(student) == ["input_ids", "attention_mask"] + (
        ["token_type_ids"] if architecture == "bert" else [])
    logits = student(**features).logits
    student.output_hidden_states = student.output_attentions = True
    outputs = student(**features)
    torch.testing.assert_close(outputs.logits, logits, atol=1e-5, rtol=0)
    length = features["input_ids"].shape[1]
    assert len(outputs.hidden_states) == 2 and outputs.attentions[0].shape == (6, 4, length, length)
    student.output_attentions = False
    reloaded = load_student(student.save(tmp_path / "student")).eval()
    torch.testing.assert_close(reloaded(**features).logits, logits, atol=1e-6, rtol=0)

    narrow_cfg = TransformerStudentConfig(num_layers=2, hidden_size=16, num_heads=2, intermediate_size=32,
                                          layer_init="random", max_length=32)
    narrow = build_transformer_student(narrow_cfg, BuildInputs(folder, texts, num_labels=3))
    assert type(narrow.model) is type(teacher) and narrow.hidden_size == 16 and narrow.teacher_layers == []
    assert narrow.eval()(**narrow.featurize(texts)).logits.shape == (6, 3)


def test_transformer_student_of_another_architecture_is_refused_from_its_config(tiny_encoder):
    config = AutoConfig.for_model("electra", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64)
    with pytest.raises(ConfigError, match=r"^train\.student\.family: transformer students are built from bert, mpnet, "
                                          r"roberta, distilbert teachers; .* is 'electra': use family bilstm$"):
        check_fits_teacher(TransformerStudentConfig(), config)
    with pytest.raises(ConfigError, match=r"max_length: 65 exceeds the teacher's 64 position embeddings"):
        check_fits_teacher(TransformerStudentConfig(max_length=65), AutoConfig.from_pretrained(tiny_encoder("roberta")))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_bilstm_student_starts_from_the_teachers_embeddings(architecture, tiny_encoder):
    folder = tiny_encoder(architecture)
    student = build_bilstm_student(BiLSTMStudentConfig(embed_dim=32, hidden_dim=8, max_length=16,
                                                       init_from_teacher_embeddings=True),
                                   BuildInputs(folder, good_bad(8, seed=6)[0], num_labels=2))
    teacher = AutoModelForSequenceClassification.from_pretrained(folder)
    torch.testing.assert_close(student.encoder.embedding.weight, teacher.get_input_embeddings().weight)
    assert student.eval()(**student.featurize(good_bad(3, seed=7)[0])).logits.shape == (3, 2)


@pytest.mark.slow  # the ONNX export: 35-45 s per architecture on a loaded 2-core machine
@pytest.mark.parametrize("architecture", ["bert", "mpnet"])
def test_pruned_heads_and_neurons_equal_masking_them_and_survive_a_reload(architecture, tiny_encoder, tmp_path):
    folder = tiny_encoder(architecture)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    features = dict(AutoTokenizer.from_pretrained(folder)(good_bad(5, seed=8)[0], padding=True, return_tensors="pt"))
    head_mask = torch.ones(2, 4)
    head_mask[0, [1, 3]] = 0
    head_mask[1] = 0  # every head of layer 2
    neuron_masks = [torch.ones(64), torch.ones(64)]
    neuron_masks[1][:10] = 0
    with torch.no_grad(), masked(model, head_mask, neuron_masks):
        expected = model(**features).logits
    prune_heads(model, {0: [1, 3], 1: [0, 1, 2, 3]})
    prune_ffn_neurons(model, {1: list(range(10))})
    with torch.no_grad():
        torch.testing.assert_close(model(**features).logits, expected, atol=1e-5, rtol=0)
    assert kept_heads(model) == [[0, 2], []]
    model.save_pretrained(tmp_path / "pruned")
    AutoTokenizer.from_pretrained(folder).save_pretrained(tmp_path / "pruned")
    reloaded = load_pruned(tmp_path / "pruned")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**features).logits, expected, atol=1e-5, rtol=0)
    featurize = model_featurizer(reloaded, tmp_path / "pruned")  # the kept-heads position bias exports too
    texts = good_bad(11, seed=9)[0]
    export_onnx(reloaded, tmp_path / "pruned.onnx", featurize(texts[:2]))
    assert check_parity(reloaded, tmp_path / "pruned.onnx", "onnx", parity_batches(featurize, texts[2:], None),
                        atol=1e-4)["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("architecture", ["roberta", "distilbert"])
def test_pruning_another_architecture_is_refused_with_one_line(architecture, tiny_encoder):
    folder = tiny_encoder(architecture)
    problems = prune_architecture_problems(PruneConfig(), AutoConfig.from_pretrained(folder))
    assert problems == [f"prune: pruning slices bert and mpnet models, and the teacher is '{architecture}'; "
                        "remove the prune section"]
    assert prune_architecture_problems(None, AutoConfig.from_pretrained(folder)) == []
    with pytest.raises(TypeError, match="is not a model of bert, mpnet"):
        prunable_encoder(AutoModelForSequenceClassification.from_pretrained(folder))


@pytest.mark.slow  # ONNX export, int8 and an ExecuTorch lowering of two models: 30-90 s per architecture here
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_teacher_and_student_export_and_quantize(architecture, tiny_encoder, tmp_path):
    folder = tiny_encoder(architecture, label_names=("a", "b", "c"))
    texts = good_bad(12, seed=10)[0]
    student = build_transformer_student(TransformerStudentConfig(num_layers=1, max_length=32),
                                        BuildInputs(folder, texts, num_labels=3))
    for name, model in {"teacher": load_model_folder(folder), "student": student.eval()}.items():
        featurize = model_featurizer(model, folder)
        example, batches = featurize(texts[:2]), parity_batches(featurize, texts[2:], None)
        assert list(example) == list(example_features(model, texts[:2], tokenizer=student.tokenizer))
        onnx_file = tmp_path / f"{name}.onnx"
        export_onnx(model, onnx_file, example)
        assert check_parity(model, onnx_file, "onnx", batches, atol=1e-4)["max_abs_diff"] <= 1e-4
        settings = quantize_dynamic_int8(onnx_file, tmp_path / f"{name}-int8.onnx", "teacher" if name == "teacher"
                                         else "transformer", **encoder_shape(model))
        assert settings["optimizer_model_type"] == "bert" and "MatMulInteger" in settings["ops_after"]
        # the position (and segment) tables stay fp32 Gathers: MPNet's read the graph's own position ids
        assert settings["tables_kept_fp32"] and "EmbedLayerNormalization" not in settings["fused"]
        report = check_parity(model, tmp_path / f"{name}-int8.onnx", "onnx", batches, mode="predictions",
                              min_agreement=0.0)
        # int8 noise of a few hundredths; a random
        # model's near-tied logits may still flip an argmax or two of the 10 rows
        assert report["max_abs_diff"] < 0.15 and report["agreement"] >= 0.7
    teacher = load_model_folder(folder)
    featurize = model_featurizer(teacher, folder)
    export_executorch(teacher, tmp_path / "teacher.pte", featurize(texts[:2]))
    assert check_parity(teacher, tmp_path / "teacher.pte", "executorch", parity_batches(featurize, texts[2:], None),
                        atol=1e-4)["max_abs_diff"] <= 1e-4
