"""Stage ``quantize`` on a hand-built finished run exported to ONNX: every method's variant of
every model, with its meta and its prediction agreement; a corrupted export fails by name."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from core.errors import ArtifactError
from pipeline.stages import export, quantize
from pipeline.artifacts import RunDir
from pipeline.config.compress_sections import ExportConfig, QuantizeConfig
from pipeline.evaluation.variants import load_variant, stage_variants
from students.registry import load_student

from test_export_stage import finished_run
from test_train import sentences

MIN_AGREEMENT = 0.9
"""Both models are trained on the run's "good"/"bad" rule until their logits are far apart, so
int8 and fp16 should flip none of their predictions; 2 flips of the 20 parity rows are allowed."""


def fit(model: torch.nn.Module, features: dict[str, torch.Tensor], labels: list[int], steps: int = 60) -> float:
    """Train ``model`` (``model(**features).logits`` float [B, 2]) on ``labels`` with full-batch
    Adam (lr 1e-2) and cross-entropy for ``steps`` steps, on one thread (30x faster than two for
    these tiny models on a busy 2-core machine); leaves it in eval mode; the last loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.train()
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(**features).logits, torch.tensor(labels))
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return loss.item()


def trained_run(tmp_path, **sections):
    """:func:`finished_run` with its teacher and KD student trained on its 128 train rows."""
    cfg, run_dir = finished_run(tmp_path, **sections)
    texts, labels = sentences(128, seed=1)  # the run's train split
    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_pretrained(run_dir.teacher_dir)
    tokenizer = AutoTokenizer.from_pretrained(run_dir.teacher_dir)
    assert fit(teacher, dict(tokenizer(texts, padding=True, return_tensors="pt")), labels) < 0.05
    teacher.save_pretrained(run_dir.teacher_dir)
    student = load_student(run_dir.student_dir("kd"))
    assert fit(student, student.featurize(texts), labels) < 0.05
    student.save(run_dir.student_dir("kd"))
    return cfg, run_dir


@pytest.fixture(scope="module")
def quantized_run(tmp_path_factory):
    cfg, run_dir = trained_run(tmp_path_factory.mktemp("run"), export=ExportConfig(formats=["onnx"], parity_rows=20),
                               quantize=QuantizeConfig(calibration_rows=40, min_agreement=MIN_AGREEMENT))
    export.run(cfg, run_dir)
    return cfg, run_dir, quantize.run(cfg, run_dir)


def test_every_method_of_every_model(quantized_run):
    cfg, run_dir, summary = quantized_run
    precisions = {"onnxruntime-int8-dynamic", "onnxruntime-int8-static", "onnxruntime-fp16", "pytorch-int8-dynamic"}
    names = {f"{model}/{p}" for model in ("teacher", "kd") for p in precisions}
    assert set(summary["variants"]) == names
    metas = {meta.name: meta for meta in stage_variants(run_dir, "quantize")}
    assert set(metas) == names
    for name, result in summary["variants"].items():
        assert result["agreement"] >= MIN_AGREEMENT and not result["below_min_agreement"], name
        assert result["max_abs_diff"] > 0, name  # the variant's logits are not the fp32 file's
        assert result["size_mb"] > 0
    kd = metas["kd/onnxruntime-int8-dynamic"]
    assert (kd.file, kd.parent, kd.precision, kd.method, kd.family, kd.source) == (
        "quantize/kd-int8-dynamic/model.onnx", "kd/onnxruntime-fp32", "int8-dynamic", "quantize", "bilstm", "train/kd")
    assert "LSTM" in kd.settings["op_types"] and kd.settings["ops_after"]["DynamicQuantizeLSTM"] == 2  # one a direction
    teacher = summary["variants"]["teacher/onnxruntime-int8-dynamic"]
    assert "MatMul" in teacher["op_types"] and teacher["fused"]  # the BERT optimizer ran
    static = metas["teacher/onnxruntime-int8-static"]
    assert static.settings["calibration"] == "minmax" and static.settings["per_channel"] is True
    assert metas["kd/onnxruntime-fp16"].precision == "fp16"
    fp16 = run_dir.root / metas["teacher/onnxruntime-fp16"].file
    fp32 = run_dir.root / "export/teacher-onnx/model.onnx"
    assert fp16.stat().st_size < 0.6 * fp32.stat().st_size


def test_torch_dynamic_variant_is_quantized_on_load(quantized_run):
    _, run_dir, summary = quantized_run
    meta = next(m for m in stage_variants(run_dir, "quantize") if m.name == "kd/pytorch-int8-dynamic")
    assert (meta.backend, meta.file, meta.settings["torch_dynamic"]) == ("pytorch", "train/kd", True)
    predictor = load_variant(run_dir, meta, threads=torch.get_num_threads())
    quantized = [m for m in predictor.model.modules() if type(m).__module__.startswith("torch.ao.nn.quantized")]
    assert quantized  # the LSTM and Linear layers were swapped for dynamic int8 ones


def test_corrupted_export_fails_naming_the_file(quantized_run, tmp_path):
    cfg, run_dir, _ = quantized_run
    copy = RunDir(tmp_path / "run")
    shutil.copytree(run_dir.root, copy.root)
    broken = copy.root / "export" / "kd-onnx" / "model.onnx"
    broken.write_bytes(broken.read_bytes()[:2000])
    with pytest.raises(ArtifactError, match="cannot load it") as error:
        quantize.run(cfg, copy)
    assert error.value.path == broken


def test_runner_runs_export_and_quantize_after_the_trained_stages(tmp_path):
    from pipeline.config.sections import EvaluateConfig
    from pipeline.runner import run_pipeline, stage_fingerprint

    cfg, run_dir = finished_run(tmp_path, export=ExportConfig(formats=["onnx"], parity_rows=4),
                                quantize=QuantizeConfig(methods=["dynamic_int8", "torch_dynamic_int8"],
                                                        calibration_rows=8, min_agreement=MIN_AGREEMENT),
                                evaluate=EvaluateConfig(latency_runs=2, latency_warmup=0))
    upstream = ""
    for stage, summary in (("data", {"train": {"rows": 128}, "transfer": {"rows": 384, "label_counts": {}}}),
                           ("finetune", {}), ("label", {}), ("train", {})):  # done by hand in finished_run
        upstream = stage_fingerprint(cfg, stage, upstream)
        run_dir.publish(stage, upstream, summary, 0.0)
    manifests = run_pipeline(cfg, until="quantize")
    assert set(manifests["export"]["variants"]) == {"teacher/onnxruntime-fp32", "kd/onnxruntime-fp32"}
    assert set(manifests["quantize"]["variants"]) == {f"{model}/{p}" for model in ("teacher", "kd")
                                                      for p in ("onnxruntime-int8-dynamic", "pytorch-int8-dynamic")}
    assert run_pipeline(cfg, until="quantize")["quantize"] == manifests["quantize"]  # fresh: reused


def test_encoder_shape_reads_a_transformer_students_bert(tiny_teacher_dir):
    # ONNX Runtime's transformer optimizer needs the heads, width and type of the encoder inside the student
    from pipeline.stages.quantize import encoder_shape
    from students.base import BuildInputs
    from students.transformer import TransformerStudentConfig, build_transformer_student

    student = build_transformer_student(TransformerStudentConfig(num_layers=1), BuildInputs(tiny_teacher_dir, ["a"], 2))
    assert encoder_shape(student) == {"num_heads": 2, "hidden_size": 32, "model_type": "bert"}
    assert encoder_shape(student.model) == encoder_shape(student)
