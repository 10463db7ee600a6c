"""Stage ``export`` on a hand-built finished run: every model in ONNX and ExecuTorch, within atol
of PyTorch at unseen shapes, with the variants' meta.json as pipeline.evaluation.variants lays them out."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from compress.backends import load_model_folder
from pipeline.stages import export
from pipeline.config.compress_sections import ExportConfig
from pipeline.evaluation.variants import featurizer, load_variant, read_meta, run_models, stage_variants
from students.base import BuildInputs
from students.registry import build_student

from test_train import build_run, sentences

STUDENT = {"family": "bilstm", "embed_dim": 32, "hidden_dim": 8, "max_length": 8}
"""A small BiLSTM: ExecuTorch unrolls it over max_length steps, so short keeps lowering fast."""


def finished_run(tmp_path, **sections):
    """A run as the train stage leaves it: teacher, an untrained KD student (weights from a seed),
    and the config sections given (``export=ExportConfig(...)``, ...)."""
    cfg, run_dir = build_run(tmp_path, student=STUDENT)
    cfg = cfg.model_copy(update=sections)
    torch.manual_seed(0)
    texts, _ = sentences(32, seed=1)
    student = build_student(cfg.train.student, BuildInputs(run_dir.teacher_dir, texts, num_labels=2))
    student.save(run_dir.student_dir("kd"))
    return cfg, run_dir


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory):
    """A finished run after the export stage (both formats), and its summary."""
    cfg, run_dir = finished_run(tmp_path_factory.mktemp("run"), export=ExportConfig(parity_rows=9, atol=1e-4))
    return cfg, run_dir, export.run(cfg, run_dir)


@pytest.mark.slow  # the module's export: about 60 s of CPU (ExecuTorch lowering), minutes on a loaded machine
def test_every_model_in_both_formats_within_atol(exported_run):
    cfg, run_dir, summary = exported_run
    assert list(run_models(run_dir)) == ["teacher", "kd"]
    names = {f"{model}/{backend}-fp32" for model in ("teacher", "kd") for backend in ("onnxruntime", "executorch")}
    assert set(summary["variants"]) == names
    for name, result in summary["variants"].items():
        assert result["max_abs_diff"] <= 1e-4
        assert [batch for batch, _ in result["shapes"]] == [1, 3, 5]  # 9 rows, never the export's batch of 2
        assert (run_dir.root / result["file"]).stat().st_size / 2**20 == pytest.approx(result["size_mb"], abs=1e-3)
    metas = {meta.name: meta for meta in stage_variants(run_dir, "export")}
    assert set(metas) == names
    kd_pte = metas["kd/executorch-fp32"]
    assert (kd_pte.file, kd_pte.source, kd_pte.parent, kd_pte.family, kd_pte.precision, kd_pte.method) == (
        "export/kd-executorch/model.pte", "train/kd", "kd", "bilstm", "fp32", "export")
    assert kd_pte.settings["fixed_length"] == STUDENT["max_length"]
    assert metas["teacher/onnxruntime-fp32"].input_names == ["input_ids", "attention_mask", "token_type_ids"]
    assert metas["teacher/executorch-fp32"].settings["fixed_length"] is None
    assert metas["kd/onnxruntime-fp32"].settings["parity"]["max_abs_diff"] == summary["variants"][
        "kd/onnxruntime-fp32"]["max_abs_diff"]


@pytest.mark.slow  # shares the export above
def test_load_variant_and_featurizer_give_the_models_logits(exported_run):
    cfg, run_dir, _ = exported_run
    texts, _ = sentences(6, seed=7)
    for meta in stage_variants(run_dir, "export"):
        features = featurizer(run_dir, meta, cfg.teacher.max_length)(texts)
        assert all(array.dtype == np.int64 for array in features.values())
        model = load_model_folder(run_dir.root / meta.source)
        with torch.no_grad():
            expected = model(**{name: torch.from_numpy(features[name]) for name in meta.input_names}).logits
        np.testing.assert_allclose(load_variant(run_dir, meta, threads=1).predict(features), expected.numpy(),
                                   atol=1e-4)


@pytest.mark.slow  # shares the export above
def test_a_truncated_export_fails_parity_naming_the_file(exported_run, tmp_path):
    from compress.parity import check_parity
    from core.errors import ArtifactError

    cfg, run_dir, _ = exported_run
    meta = read_meta(run_dir.root / "export" / "kd-onnx")
    broken = tmp_path / "model.onnx"
    broken.write_bytes((run_dir.root / meta.file).read_bytes()[:1000])
    model = load_model_folder(run_dir.root / meta.source)
    batches = export.parity_batches(export.model_featurizer(model, run_dir.root / meta.source),
                                   sentences(4, 3)[0], None)
    with pytest.raises(ArtifactError, match="cannot load it") as error:
        check_parity(model, broken, "onnx", batches)
    assert error.value.path == broken


def test_token_teacher_exports_its_subtoken_logits(tiny_token_teacher_dir, tmp_path):
    from pipeline.artifacts import RunDir

    run_dir = RunDir(tmp_path)
    folder = tmp_path / "finetune" / "teacher"
    shutil.copytree(tiny_token_teacher_dir, folder)
    model = load_model_folder(folder)
    assert type(model).__name__ == "BertForTokenClassification"
    featurize = export.model_featurizer(model, folder)
    words = [text.split() for text in sentences(11, seed=4)[0]]
    meta, result = export.export_variant(run_dir, "teacher", folder, model, "onnx", featurize(words[:2]),
                                         export.parity_batches(featurize, words[2:], None), ExportConfig(), None,
                                         export.TextRows(words[2:], False, 32))
    assert result["max_abs_diff"] <= 1e-4 and [b for b, _ in result["shapes"]] == [1, 3, 5]
    logits = load_variant(run_dir, meta, 1).predict(featurizer(run_dir, meta, 32)(words[:3]))
    assert logits.ndim == 3 and logits.shape[0] == 3 and logits.shape[2] == 7  # [B, T sub-tokens, 7 tags]
    assert "text_graph" not in meta.settings or meta.settings["text_graph"] is None  # word rows: no text graph
    assert meta.settings["ort"]["parity"]["max_abs_diff"] <= 1e-4


@pytest.mark.slow  # the teacher's dynamo export and the BiLSTM's: 15-40 s on a loaded 2-core machine
def test_onnx_exports_get_text_graphs_and_ort_files(tmp_path):
    """The stage writes model_text.onnx and the .ort files beside each ONNX graph, checked on the
    parity rows (ids equal, logits within atol), and meta.json records them."""
    from compress.ort_format import session
    from compress.text_graph import TEXT_INPUT

    cfg, run_dir = finished_run(tmp_path, export=ExportConfig(formats=["onnx"], parity_rows=5))
    export.run(cfg, run_dir)
    rows = sentences(3, seed=11)[0]
    for meta in stage_variants(run_dir, "export"):
        folder = (run_dir.root / meta.file).parent
        assert sorted(p.name for p in folder.iterdir()) == [
            "meta.json", "model.onnx", "model.ort", "model.required_operators.config", "model_text.onnx",
            "model_text.ort", "model_text.required_operators.config"]
        text = meta.settings["text_graph"]
        assert text["check"] == {"rows": 5, "ids_equal": 5, "max_abs_diff": pytest.approx(0, abs=1e-4)}
        assert "ai.onnx.contrib:BertTokenizer" in text["ort"]["operators"]
        assert text["max_length"] == (cfg.teacher.max_length if meta.model == "teacher" else STUDENT["max_length"])
        from_text = np.concatenate([session(folder / "model_text.ort", custom_ops=True).run(
            None, {TEXT_INPUT: np.array([row])})[0] for row in rows])
        expected = np.concatenate([load_variant(run_dir, meta, 1).predict(featurizer(
            run_dir, meta, cfg.teacher.max_length)([row])) for row in rows])
        np.testing.assert_allclose(from_text, expected, atol=1e-4)
