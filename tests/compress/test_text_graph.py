"""Text-in graphs (the tokenizer as onnxruntime-extensions operators in front of the id graph) and
``.ort`` files: ids equal to the models' own featurizers, logits equal to the id graphs'."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from tiny_architectures import sentences
from transformers import AutoModelForSequenceClassification

from compress.onnx_export import export_onnx
from compress.ort_format import config_operators, convert_to_ort, ort_parity, session
from compress.text_graph import (TEXT_INPUT, check_text_graph, export_text_graph, tokenizer_model, tokenizer_source,
                                 unsupported_reason, wordpiece_settings)
from compress.traceable import example_features, model_featurizer
from core.errors import ConfigError
from students.base import BuildInputs
from students.bilstm import BiLSTMStudentConfig, build_bilstm_student
from students.cnn_lstm import CNNLSTMTaggerConfig, build_cnn_lstm_tagger

EDGE_TEXTS = ["A GOOD film, isn't it?!", "café naïve Über résumé", "the plot\tis  thin \n and long",
              "漢字 mixed with words", "supercalifragilisticexpialidocious and unknownwordz", "",
              " ".join(["word"] * 40)]
"""Upper case, punctuation, accents (stripped when lower-casing), whitespace runs, Chinese characters
(split one per token), long unknown words, an empty row, and a row over the max length."""


def texts(count: int = 12, seed: int = 3) -> list[str]:
    return [" ".join(words) for words in sentences(count, seed)] + EDGE_TEXTS


@pytest.fixture(scope="module")
def teacher(tiny_teacher_dir, tmp_path_factory):
    """The tiny BERT teacher (real MiniLM WordPiece tokenizer), its id graph and its text graph at max length 12."""
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()
    folder = tmp_path_factory.mktemp("teacher_graphs")
    featurize = model_featurizer(model, tiny_teacher_dir)
    export_onnx(model, folder / "model.onnx", featurize(["a good film", "a bad film indeed"]))
    settings = export_text_graph(model, tiny_teacher_dir, folder / "model.onnx", folder / "model_text.onnx", 12)
    return model, folder, settings


@pytest.mark.slow  # the teacher fixture's dynamo export: 10-30 s on a loaded 2-core machine
def test_wordpiece_text_graph_gives_the_tokenizers_ids_and_the_id_graphs_logits(teacher, tiny_teacher_dir):
    from pipeline.evaluation.scoring import teacher_featurizer

    model, folder, settings = teacher
    assert (settings["input"], settings["tokenizer"], settings["max_length"]) == ("text", "wordpiece", 12)
    rows = texts()
    featurize = teacher_featurizer(tiny_teacher_dir, 12)
    check = check_text_graph(model, tiny_teacher_dir, featurize, folder / "model.onnx", folder / "model_text.onnx",
                             rows, 12)
    assert check["rows"] == check["ids_equal"] == len(rows)
    assert check["max_abs_diff"] < 1e-5
    logits = session(folder / "model_text.onnx", custom_ops=True).run(None, {TEXT_INPUT: np.array([EDGE_TEXTS[-1]])})[0]
    with torch.no_grad():
        expected = model(**featurize([EDGE_TEXTS[-1]])).logits  # truncated to 12 tokens: [CLS] 10 words [SEP]
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-5)
    assert featurize([EDGE_TEXTS[-1]])["input_ids"].shape == (1, 12)


@pytest.mark.slow  # shares the teacher fixture
def test_another_max_length_gives_other_ids(teacher, tiny_teacher_dir):
    """The check can fail: the featurizer truncating to 8 tokens disagrees with the graph's 12 on long rows."""
    from pipeline.evaluation.scoring import teacher_featurizer

    model, folder, _ = teacher
    check = check_text_graph(model, tiny_teacher_dir, teacher_featurizer(tiny_teacher_dir, 8), folder / "model.onnx",
                             folder / "model_text.onnx", ["a good film", EDGE_TEXTS[-1]], 12)
    assert check["ids_equal"] == 1


@pytest.mark.parametrize("architecture", ["bert", "mpnet", "distilbert"])
def test_generated_wordpiece_vocabularies_and_their_special_tokens(tiny_encoder, architecture):
    """BERT's [CLS]/[SEP], MPNet's <s>/</s> (ids 0 and 2) and DistilBERT's vocabularies give the
    Hugging Face ids, read from each tokenizer.json."""
    folder = tiny_encoder(architecture)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    source = tokenizer_source(model, folder, max_length=10)
    graph = onnx.helper.make_model(onnx.helper.make_graph(
        [], "ids", [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.INT64, [None, None])
                    for n in source.input_names], []), opset_imports=[onnx.helper.make_opsetid("", 18)])
    tokenizer = session(tokenizer_model(source, graph), custom_ops=True)
    names = [o.name for o in tokenizer.get_outputs()]
    assert names == source.input_names
    for row in texts(8, seed=5):
        got = dict(zip(names, tokenizer.run(None, {TEXT_INPUT: np.array([row])})))
        expected = source.tokenizer([row], truncation=True, max_length=10, return_tensors="np")
        for name in names:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=f"{architecture} {name} {row!r}")


def test_a_bpe_tokenizer_is_refused_naming_the_operator(tiny_encoder):
    from transformers import AutoTokenizer

    with pytest.raises(ConfigError, match="BertTokenizer operator needs"):
        wordpiece_settings(AutoTokenizer.from_pretrained(tiny_encoder("roberta")))


def test_sentencepiece_bilstm_text_graph_and_ort(tiny_teacher_dir, tmp_path):
    torch.manual_seed(0)
    transfer = [" ".join(words) for words in sentences(300, seed=1)]
    config = BiLSTMStudentConfig(embed_dim=16, hidden_dim=8, max_length=10, vocab="sentencepiece", vocab_size=120)
    model = build_bilstm_student(config, BuildInputs(tiny_teacher_dir, transfer, 3)).eval()
    export_onnx(model, tmp_path / "model.onnx", example_features(model, transfer[:2]))
    settings = export_text_graph(model, tmp_path, tmp_path / "model.onnx", tmp_path / "model_text.onnx")
    assert (settings["tokenizer"], settings["max_length"]) == ("sentencepiece", 10)
    rows = [row for row in texts(20, seed=9) if row]  # an empty row gives the id graph no position at all
    check = check_text_graph(model, tmp_path, model.featurize, tmp_path / "model.onnx", tmp_path / "model_text.onnx",
                             rows)
    assert check["ids_equal"] == check["rows"] == len(rows) and check["max_abs_diff"] < 1e-5
    assert any(len(row.split()) > 10 for row in rows)  # truncation checked
    info = convert_to_ort(tmp_path / "model_text.onnx", custom_ops=True)
    assert "ai.onnx.contrib:SentencepieceTokenizer" in info["operators"] and "ai.onnx:LSTM" in info["operators"]
    parity = ort_parity(tmp_path / "model_text.onnx", tmp_path / info["file"],
                        [{TEXT_INPUT: np.array([row])} for row in rows], custom_ops=True)
    assert parity["rows"] == len(rows) and parity["max_abs_diff"] < 1e-6 and parity["agreement"] == 1.0


def test_models_without_a_one_string_tokenizer_say_why(tiny_teacher_dir, tiny_token_teacher_dir):
    from transformers import AutoModelForTokenClassification

    tagger = build_cnn_lstm_tagger(CNNLSTMTaggerConfig(word_embed_dim=8, word_vocab_size=30, char_embed_dim=4,
                                                       char_filters=6, char_kernel=3, max_word_chars=6, hidden_dim=7),
                                   BuildInputs(tiny_teacher_dir, [["a", "film"], ["the", "cast"]], 9))
    assert "character ids" in unsupported_reason(tagger)
    token_teacher = AutoModelForTokenClassification.from_pretrained(tiny_token_teacher_dir)
    assert "tags words" in unsupported_reason(token_teacher)
    pairs = build_bilstm_student(BiLSTMStudentConfig(embed_dim=8, hidden_dim=4), BuildInputs(
        tiny_teacher_dir, ["a film"], 2, sentence_pairs=True))
    with pytest.raises(ConfigError, match="no text graph for family bilstm: a sentence-pair"):
        tokenizer_source(pairs, tiny_teacher_dir)


def test_ort_file_and_its_operator_config(tiny_bert_onnx, tmp_path):
    import shutil

    onnx_path = tmp_path / "model.onnx"
    shutil.copy(tiny_bert_onnx, onnx_path)
    info = convert_to_ort(onnx_path)
    assert (info["file"], info["operators_config"]) == ("model.ort", "model.required_operators.config")
    assert info["operators"] == config_operators(tmp_path / info["operators_config"])
    assert "ai.onnx:Gather" in info["operators"] and not any("contrib" in op for op in info["operators"])
    generator = torch.Generator().manual_seed(0)
    feeds = [{"input_ids": torch.randint(0, 100, (b, t), generator=generator).numpy(),
              "attention_mask": np.ones((b, t), np.int64), "token_type_ids": np.zeros((b, t), np.int64)}
             for b, t in ((1, 5), (3, 9))]
    parity = ort_parity(onnx_path, tmp_path / "model.ort", feeds)
    assert parity["rows"] == 4 and parity["max_abs_diff"] < 1e-5
