"""LiteRT ``.tflite`` (the optional ``[litert]`` extra) of a BiLSTM student and a BERT classifier:
fp32 equal to PyTorch at batch sizes and lengths unseen at export, dynamic int8 smaller and
predicting as its model. Skipped where the extra is not installed (the main environment: it pins
pydantic 2.11); run them in an environment that has it::

    python -m venv --system-site-packages /tmp/litert-venv && /tmp/litert-venv/bin/pip install litert-torch ai-edge-litert
    /tmp/litert-venv/bin/python -m pytest -m "slow or not slow" tests/compress/test_litert.py
"""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from compress.backends import LiteRTPredictor, load_model_folder  # noqa: E402
from compress.litert_export import export_litert  # noqa: E402
from compress.parity import check_parity  # noqa: E402
from compress.traceable import example_features  # noqa: E402
from core.errors import ArtifactError, ConfigError  # noqa: E402
from core.hf_checkpoint import load_tokenizer  # noqa: E402
from students.base import BuildInputs  # noqa: E402
from students.bilstm import BiLSTMStudentConfig, build_bilstm_student  # noqa: E402

pytestmark = pytest.mark.slow  # each conversion: 4-8 s on an idle 2-core machine, 1-3 min on a loaded one

WORDS = ("the film is a good one but its plot is thin and the cast does what it can with a script that goes on "
         "and on until nobody in the room cares about who did it").split()
EXAMPLE = [" ".join(WORDS[:5]), " ".join(WORDS[3:8])]
CHECK = [[" ".join(WORDS[i:i + n]) for i, n in spans] for spans in
         (((0, 3),), ((0, 9), (2, 3), (5, 6)), ((0, 10), (1, 2), (4, 8), (9, 7), (3, 6)))]
"""Batches of 1, 3 and 5 rows, unseen at export, all within the fixed length."""
FIXED_LENGTH = 12
"""The BiLSTM's max_length and the BERT's fixed length: each row is padded to it."""
SIZE_RATIO = 0.5
"""Largest int8 / fp32 size of the BiLSTM's .tflite (its 30,522 x 16 embeddings and LSTM weights int8)."""
MIN_AGREEMENT = 8 / 9
"""Of the 9 rows of :data:`CHECK`, at most one prediction may flip in int8."""


@pytest.fixture(scope="module")
def models(tiny_teacher_dir):
    """A BiLSTM student over the MiniLM WordPiece vocabulary and a 1-layer BERT (hidden 32,
    weights drawn at 0.2 so that its logits are apart), each with its featurizer."""
    torch.manual_seed(0)
    texts = [" ".join(WORDS[i:i + 9]) for i in range(0, len(WORDS) - 9)]
    bilstm = build_bilstm_student(BiLSTMStudentConfig(embed_dim=16, hidden_dim=8, max_length=FIXED_LENGTH,
                                                      vocab="teacher"), BuildInputs(tiny_teacher_dir, texts, 2)).eval()
    config = BertConfig.from_pretrained(tiny_teacher_dir, num_hidden_layers=1, initializer_range=0.2)
    bert, tokenizer = BertForSequenceClassification(config).eval(), load_tokenizer(tiny_teacher_dir)
    return {"bilstm": (bilstm, lambda rows: example_features(bilstm, rows)),
            "teacher": (bert, lambda rows: example_features(bert, rows, tokenizer=tokenizer))}


@pytest.fixture(scope="module")
def files(models, tmp_path_factory):
    """``files(case, quantize)``: the case's ``.tflite`` and its settings, made once."""
    folder, made = tmp_path_factory.mktemp("tflite"), {}

    def make(case: str, quantize: bool):
        if (case, quantize) not in made:
            model, featurize = models[case]
            path = folder / f"{case}-{'int8' if quantize else 'fp32'}.tflite"
            made[case, quantize] = path, export_litert(model, path, featurize(EXAMPLE), fixed_length=FIXED_LENGTH,
                                                       quantize=quantize)
        return made[case, quantize]
    return make


@pytest.mark.parametrize("case", ["bilstm", "teacher"])
def test_fp32_tflite_equals_pytorch_at_unseen_batches_and_lengths(models, files, case):
    model, featurize = models[case]
    path, settings = files(case, False)
    assert settings["fixed_length"] == FIXED_LENGTH and settings["max_batch"] == 1
    assert settings["quantization"] is None and settings["input_names"] == list(featurize(EXAMPLE))
    report = check_parity(model, path, "litert", [featurize(rows) for rows in CHECK], atol=1e-4)
    assert report["max_abs_diff"] <= 1e-4 and report["agreement"] == 1.0
    assert [batch for batch, _ in report["shapes"]] == [1, 3, 5]  # the export's batch is 1, its length fixed:
    assert all(length < FIXED_LENGTH for _, length in report["shapes"][:2])  # every row padded to it


def test_dynamic_int8_bilstm_is_at_most_half_the_fp32_file_and_predicts_alike(models, files):
    model, featurize = models["bilstm"]
    (fp32, _), (int8, settings) = files("bilstm", False), files("bilstm", True)
    ratio = int8.stat().st_size / fp32.stat().st_size
    report = check_parity(model, int8, "litert", [featurize(rows) for rows in CHECK], mode="predictions",
                          min_agreement=MIN_AGREEMENT)
    print(f"bilstm .tflite: fp32 {fp32.stat().st_size} B, int8 {int8.stat().st_size} B ({ratio:.3f}), "
          f"agreement {report['agreement']:.3f}, max |diff| {report['max_abs_diff']:.3g}")
    assert settings["quantization"] == "dynamic_int8"
    assert ratio <= SIZE_RATIO
    assert 0 < report["max_abs_diff"] < 0.5  # quantized: no longer equal, still close


def test_predictor_rejects_rows_longer_than_the_fixed_length_and_another_models_inputs(models, files):
    path, settings = files("bilstm", False)
    predictor = LiteRTPredictor(path, 1, settings["input_names"])
    long_row = {name: array.numpy() for name, array in models["teacher"][1]([" ".join(WORDS)]).items()}
    with pytest.raises(ConfigError, match=f"takes at most {FIXED_LENGTH} tokens"):
        predictor.predict(long_row)
    with pytest.raises(ArtifactError, match="another model"):
        LiteRTPredictor(path, 1, ["input_ids", "attention_mask", "token_type_ids"])


def test_export_stage_writes_a_token_teachers_tflite_that_the_benchmark_loads(tiny_token_teacher_dir, tmp_path):
    """A variant of the export stage, loaded through its meta.json as the benchmark loads it: the
    sub-token logits [B, T, 7] come back cut to each batch's length (the file's are [1, L, 7])."""
    from pipeline.artifacts import RunDir
    from pipeline.config.compress_sections import ExportConfig
    from pipeline.evaluation.variants import load_variant
    from pipeline.stages import export

    run_dir, folder = RunDir(tmp_path), tmp_path / "finetune" / "teacher"
    shutil.copytree(tiny_token_teacher_dir, folder)
    model = load_model_folder(folder)
    featurize = export.model_featurizer(model, folder)
    words = [WORDS[i:i + n] for i, n in ((0, 5), (3, 5), (0, 3), (0, 9), (2, 3), (5, 6))]
    batches = export.parity_batches(featurize, words[2:], None)
    meta, result = export.export_variant(run_dir, "teacher", folder, model, "litert", featurize(words[:2]), batches,
                                         ExportConfig(), export.teacher_length(model, FIXED_LENGTH, batches))
    assert meta.backend == "litert" and meta.file == "export/teacher-litert/model.tflite"
    assert meta.settings["fixed_length"] == FIXED_LENGTH and result["max_abs_diff"] <= 1e-4
    features = {name: tensor.numpy() for name, tensor in featurize(words[3:6]).items()}
    logits = load_variant(run_dir, meta, 1).predict(features)
    assert logits.shape == (3, features["input_ids"].shape[1], 7)
    with torch.no_grad():
        expected = model(**{name: torch.from_numpy(array) for name, array in features.items()}).logits.numpy()
    assert abs(logits - expected).max() <= 1e-4
