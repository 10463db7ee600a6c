"""Export of every family to ONNX and ExecuTorch, parity at unseen batch sizes and lengths, and
the failures: corrupted files, another model's file, unsupported models."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from compress.executorch_export import ExecuTorchModel, export_executorch
from compress.onnx_export import export_onnx
from compress.parity import check_parity, model_logits
from compress.traceable import LogitsOnly, example_features, input_names_of
from core.errors import ArtifactError, ConfigError
from students.base import BuildInputs
from students.bilstm import BiLSTMStudentConfig, build_bilstm_student
from students.cnn_lstm import CNNLSTMTaggerConfig, build_cnn_lstm_tagger
from students.multitask import MultiTaskLSTMConfig, build_multitask_student
from students.transformer import TransformerStudentConfig, build_transformer_student

WORDS = ("the film is a good one but its plot is thin and the cast does what it can with a script that goes on "
         "and on until nobody in the room cares about who did it").split()
EXPORT_TEXTS = [" ".join(WORDS[:5]), " ".join(WORDS[3:8])]  # batch 2, about 7 positions
CHECK_TEXTS = [[" ".join(WORDS[:3])], [" ".join(WORDS[i:i + n]) for i, n in ((0, 9), (2, 3), (5, 6))],
               [" ".join(WORDS[i:i + n]) for i, n in ((0, 13), (1, 2), (4, 11), (9, 7), (3, 6))]]
"""Batches of 1, 3 and 5 rows of about 5, 11 and 15 positions, padded within each batch."""
FIXED_LENGTH = 16
"""The LSTM families' length in ExecuTorch (their max_length; cnn_lstm's fixed_length). Lowering
to XNNPACK takes time per unrolled step, so it is short here."""
SLOW_EXECUTORCH = {"bilstm", "multitask_lstm:sst2", "multitask_lstm:ner", "cnn_lstm"}
"""Cases whose ExecuTorch export took over 30 s (minutes on a loaded 2-core machine)."""
CASES = ["teacher", "transformer", "bilstm", "multitask_lstm:sst2", "multitask_lstm:ner", "cnn_lstm"]
"""A family, with the multitask head after the colon: one sentence head, one token head."""


@pytest.fixture(scope="module")
def models(tiny_teacher_dir):
    """Tiny real models of every family, built by the families' builders, in eval mode."""
    torch.manual_seed(0)
    texts = [" ".join(WORDS[i:i + 9]) for i in range(0, len(WORDS) - 9)]
    lstm = {"embed_dim": 16, "hidden_dim": 8, "max_length": FIXED_LENGTH, "vocab": "teacher"}
    multitask = build_multitask_student(MultiTaskLSTMConfig(**lstm, attention_dim=6),
                                        BuildInputs(tiny_teacher_dir, texts,
                                                    tasks={"sst2": ("sentence", 2), "ner": ("token", 5)}))
    built = {"teacher": AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir),
             "transformer": build_transformer_student(TransformerStudentConfig(num_layers=1, max_length=64),
                                                      BuildInputs(tiny_teacher_dir, texts, 2)),
             "bilstm": build_bilstm_student(BiLSTMStudentConfig(**lstm), BuildInputs(tiny_teacher_dir, texts, 3)),
             "multitask_lstm:sst2": multitask, "multitask_lstm:ner": multitask,
             "cnn_lstm": build_cnn_lstm_tagger(CNNLSTMTaggerConfig(word_embed_dim=8, word_vocab_size=30,
                                                                   char_embed_dim=4, char_filters=6, char_kernel=3,
                                                                   max_word_chars=6, hidden_dim=7, num_layers=2),
                                               BuildInputs(tiny_teacher_dir, [text.split() for text in texts], 9))}
    return {case: model.eval() for case, model in built.items()}


def task_of(case: str) -> str | None:
    return case.partition(":")[2] or None


def check_batches(model, case: str) -> list[dict[str, torch.Tensor]]:
    return [example_features(model, texts, task_of(case)) for texts in CHECK_TEXTS]


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    """``exported(case, backend)``: the case's file, exported once at batch 2 (and its settings)."""
    folder, files = tmp_path_factory.mktemp("exported"), {}

    def export(case: str, backend: str):
        if (case, backend) not in files:
            model, task = models[case], task_of(case)
            features = example_features(model, EXPORT_TEXTS, task)
            path = folder / f"{case.replace(':', '-')}.{'onnx' if backend == 'onnx' else 'pte'}"
            settings = (export_onnx(model, path, features, task=task) if backend == "onnx" else
                        export_executorch(model, path, features, task=task,
                                          fixed_length=FIXED_LENGTH if case == "cnn_lstm" else None))
            files[case, backend] = path, settings
        return files[case, backend]
    return export


@pytest.mark.parametrize("case", CASES)
def test_export_view_equals_the_models_own_forward(models, case):
    model, task = models[case], task_of(case)
    for features in check_batches(model, case):
        view = LogitsOnly(model, list(features), task)(*features.values())
        assert view.dtype == torch.float32
        torch.testing.assert_close(view, model_logits(model, features, task), atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_onnx_export_keeps_dynamic_axes_and_parity(models, exported, case):
    model, task = models[case], task_of(case)
    path, settings = exported(case, "onnx")
    assert settings["input_names"] == input_names_of(model, task)
    assert all(axes[0] == "batch" and axes[1] in ("sequence", "pair_sequence") for axes in
               (settings["dynamic_axes"][name] for name in settings["input_names"] if name != "word_starts"))
    report = check_parity(model, path, "onnx", check_batches(model, case), task=task)
    assert [batch for batch, _ in report["shapes"]] == [1, 3, 5]
    assert len({length for _, length in report["shapes"]} | {example_features(model, EXPORT_TEXTS, task)[
        settings["input_names"][0]].shape[1]}) == 4  # three lengths, none the export's
    assert report["max_abs_diff"] <= 1e-4 and report["agreement"] == 1.0


@pytest.mark.parametrize("case", [pytest.param(case, marks=pytest.mark.slow) if case in SLOW_EXECUTORCH else case
                                  for case in CASES])
def test_executorch_export_and_parity(models, exported, case):
    model, task = models[case], task_of(case)
    path, settings = exported(case, "executorch")
    assert settings["fixed_length"] == (None if case in ("teacher", "transformer") else FIXED_LENGTH)
    report = check_parity(model, path, "executorch", check_batches(model, case), task=task)
    assert [batch for batch, _ in report["shapes"]] == [1, 3, 5]
    assert report["max_abs_diff"] <= 1e-4 and report["agreement"] == 1.0


@pytest.mark.slow
def test_executorch_runner_pads_to_the_fixed_length_and_cuts_tag_logits_back(models, exported):
    path, _ = exported("cnn_lstm", "executorch")
    runner = ExecuTorchModel(path)
    assert (runner.fixed_length, runner.padded_inputs, runner.pads_output) == (FIXED_LENGTH, [True, True, True], True)
    features = example_features(models["cnn_lstm"], CHECK_TEXTS[1])
    assert runner(list(features.values())).shape == (3, 9, 9)
    with pytest.raises(ValueError, match="longer than the 16 positions"):
        runner(list(example_features(models["cnn_lstm"], [" ".join(WORDS * 2)]).values()))


@pytest.mark.parametrize("backend", ["onnx", "executorch"])
def test_truncated_file_fails_loudly(models, exported, tmp_path, backend):
    path, _ = exported("teacher", backend)
    truncated = tmp_path / path.name
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ArtifactError, match="cannot load it") as error:
        check_parity(models["teacher"], truncated, backend, check_batches(models["teacher"], "teacher"))
    assert error.value.path == truncated


@pytest.mark.parametrize("backend", ["onnx", "executorch"])
def test_another_models_file_fails_parity(models, exported, backend):
    path, _ = exported("teacher", backend)  # same inputs as the transformer student, other weights
    with pytest.raises(ArtifactError, match=r"parity failed: max \|diff\| .* at batch 1 length \d+"):
        check_parity(models["transformer"], path, backend, check_batches(models["transformer"], "transformer"))
    with pytest.raises(ArtifactError, match="another model"):  # the teacher's 3 inputs, the BiLSTM's 2
        check_parity(models["bilstm"], path, backend, check_batches(models["bilstm"], "bilstm"))


def test_prediction_mode_reports_agreement(models, exported):
    path, _ = exported("bilstm", "onnx")
    report = check_parity(models["bilstm"], path, "onnx", check_batches(models["bilstm"], "bilstm"),
                          mode="predictions", min_agreement=0.99)
    assert report["agreement"] == 1.0 and report["mode"] == "predictions"


def test_unsupported_models_and_settings_raise_config_errors(models, tmp_path):
    features = {"input_ids": torch.zeros(2, 4, dtype=torch.long)}
    with pytest.raises(ConfigError, match=r"Linear.*family None.*backends onnx and executorch"):
        export_onnx(nn.Linear(4, 2), tmp_path / "m.onnx", features)
    multitask = models["multitask_lstm:sst2"]
    with pytest.raises(ConfigError, match="family multitask_lstm exports one graph per task head"):
        export_executorch(multitask, tmp_path / "m.pte", example_features(multitask, EXPORT_TEXTS, "sst2"))
    bilstm = models["bilstm"]
    with pytest.raises(ConfigError, match="executorch export of family bilstm: example .* longer than the 4"):
        export_executorch(bilstm, tmp_path / "m.pte", example_features(bilstm, EXPORT_TEXTS), fixed_length=4)
    with pytest.raises(ConfigError, match="at least 2 rows"):
        export_onnx(bilstm, tmp_path / "m.onnx", example_features(bilstm, EXPORT_TEXTS[:1]))
