"""A bundle written from a crafted benchmark manifest (no Ray, no measurement): which models ship,
which variants are picked, the files linked, SHA256SUMS as ``sha256sum -c`` reads it, and the
model card's front matter and table."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from core.errors import ArtifactError
from pipeline.cli.main import main
from pipeline.evaluation.bundle import picks, shipped_models, write_bundles
from pipeline.evaluation.variants import VariantMeta, variant_folder, write_meta
from test_benchmark import build_run

NAMES = ["input_ids", "attention_mask", "token_type_ids"]
# name -> (backend, precision, folder suffix, files, dev accuracy, 1-thread p50 ms)
VARIANTS = {
    "teacher/onnxruntime-fp32": ("onnxruntime", "fp32", "onnx", ["model.onnx", "model.ort", "model_text.onnx"], 0.90, 2.0),
    "teacher/onnxruntime-fp16": ("onnxruntime", "fp16", "fp16", ["model.onnx"], 0.87, 1.5),
    "teacher/onnxruntime-int8-dynamic": ("onnxruntime", "int8-dynamic", "int8-dynamic", ["model.onnx"], 0.88, 1.0),
    "teacher/executorch-fp32": ("executorch", "fp32", "executorch", ["model.pte"], 0.90, 3.0),
}


def row(name: str, model: str, backend: str, precision: str, accuracy: float, p50: float) -> dict:
    """One variant of a benchmark manifest, the fields the bundle reads."""
    return {"name": name, "model": model, "backend": backend, "precision": precision,
            "method": "export" if precision == "fp32" else "quantize", "dev_accuracy": accuracy, "size_mb": 1.0,
            "threads": {"1": {"p50_ms": p50}}}


@pytest.fixture()
def crafted(tmp_path, tiny_teacher_dir):
    """A run with the tiny teacher, dummy variant files and their metas, and a manifest of them
    plus a PyTorch-only student ``kd`` on the front."""
    cfg, run_dir = build_run(tmp_path, tiny_teacher_dir)
    variants = [row("teacher", "teacher", "pytorch", "fp32", 0.90, 9.0), row("kd", "kd", "pytorch", "fp32", 0.85, 0.5)]
    for name, (backend, precision, suffix, files, accuracy, p50) in VARIANTS.items():
        stage = "export" if precision == "fp32" else "quantize"
        folder = variant_folder(run_dir, stage, "teacher", suffix)
        folder.mkdir(parents=True)
        for file in files:
            (folder / file).write_bytes(f"{name}/{file}".encode())
        write_meta(folder, VariantMeta(name=name, model="teacher", backend=backend, precision=precision,
                                       file=run_dir.relative(folder / files[0]), source="finetune/teacher",
                                       input_names=NAMES, settings={"fixed_length": 32 if suffix == "executorch"
                                                                    else None}))
        variants.append(row(name, "teacher", backend, precision, accuracy, p50))
    summary = {"score_key": "dev_accuracy", "variants": variants, "machine": {"cpu_model": "test CPU"},
               "pareto": ["kd", "teacher/onnxruntime-int8-dynamic", "teacher/onnxruntime-fp32"]}
    return cfg, run_dir, summary


def test_the_front_of_each_runtime_is_picked_for_each_shipped_model(crafted):
    _, _, summary = crafted
    assert shipped_models(summary) == ["teacher"]  # kd is on the front but has nothing to ship
    assert [p["name"] for p in picks(summary, "teacher", "1")] == [
        "teacher/onnxruntime-int8-dynamic", "teacher/onnxruntime-fp32", "teacher/executorch-fp32"]


def test_a_bundle_holds_the_picks_tokenizer_spec_and_checksums(crafted):
    cfg, run_dir, summary = crafted
    assert write_bundles(cfg, run_dir, summary, "1") == {"teacher": "ship/teacher"}
    bundle = run_dir.root / "ship" / "teacher"
    info = json.loads((bundle / "bundle.json").read_text())
    assert [a["name"] for a in info["artifacts"]] == [
        "onnxruntime-int8-dynamic/model.onnx", "onnxruntime-fp32/model.onnx", "executorch-fp32/model.pte",
        "onnxruntime-fp32/model.ort", "onnxruntime-fp32/model_text.onnx"]
    assert [a["input"] for a in info["artifacts"]] == ["ids", "ids", "ids", "ids", "text"]
    assert info["artifacts"][3]["measured_as"] == "onnxruntime-fp32/model.onnx"
    assert not (bundle / "onnxruntime-fp16").exists()  # dominated by int8 dynamic
    assert (bundle / "executorch-fp32" / "model.pte").read_bytes() == b"teacher/executorch-fp32/model.pte"
    assert (bundle / "labels.txt").read_text() == "0\n1\n" and info["labels"] == ["0", "1"]
    tokenizer = {f.name for f in (bundle / "tokenizer").iterdir()}
    assert "tokenizer.json" in tokenizer and not any(f.endswith(".safetensors") for f in tokenizer)
    spec = json.loads((bundle / "input_spec.json").read_text())
    assert spec["max_length"] == 32 and spec["padding"] == {"side": "right", "input_ids": 0, "attention_mask": 0,
                                                            "token_type_ids": 0}
    assert spec["artifacts"]["executorch-fp32/model.pte"]["fixed_length"] == 32
    assert [i["name"] for i in spec["artifacts"]["onnxruntime-fp32/model.onnx"]["inputs"]] == NAMES
    assert spec["artifacts"]["onnxruntime-fp32/model_text.onnx"]["inputs"] == [
        {"name": "text", "dtype": "string", "shape": [1]}]
    listed = (bundle / "SHA256SUMS").read_text().splitlines()
    assert len(listed) == sum(1 for f in bundle.rglob("*") if f.is_file()) - 1
    ok = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=bundle, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (bundle / "labels.txt").write_text("0\n2\n")
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=bundle, capture_output=True).returncode


def test_a_variant_that_changes_predictions_is_never_shipped_and_the_bundle_says_so(crafted):
    cfg, run_dir, summary = crafted
    for v in summary["variants"]:
        v["dev_agreement"] = 0.99 if v["name"] == "teacher/onnxruntime-int8-dynamic" else 1.0
    assert [p["name"] for p in picks(summary, "teacher", "1")] == [
        "teacher/onnxruntime-fp16", "teacher/onnxruntime-fp32", "teacher/executorch-fp32"]
    write_bundles(cfg, run_dir, summary, "1")
    bundle = run_dir.root / "ship" / "teacher"
    assert json.loads((bundle / "bundle.json").read_text())["not_shipped"] == {"teacher/onnxruntime-int8-dynamic": 0.99}
    assert not (bundle / "onnxruntime-int8-dynamic").exists()
    assert "teacher/onnxruntime-int8-dynamic (99.0 %)" in (bundle / "README.md").read_text()


def test_the_ort_files_own_benchmark_row_times_it_in_the_bundle_but_is_never_a_pick(crafted):
    cfg, run_dir, summary = crafted
    ort = {**row("teacher/onnxruntime-fp32-ort", "teacher", "onnxruntime", "fp32", 0.90, 0.9), "method": "ort"}
    summary = {**summary, "variants": summary["variants"] + [ort],
               "pareto": summary["pareto"] + ["teacher/onnxruntime-fp32-ort"]}
    assert "teacher/onnxruntime-fp32-ort" not in [p["name"] for p in picks(summary, "teacher", "1")]
    write_bundles(cfg, run_dir, summary, "1")
    info = json.loads((run_dir.root / "ship" / "teacher" / "bundle.json").read_text())
    timed = {a["name"]: a for a in info["artifacts"]}
    assert (timed["onnxruntime-fp32/model.ort"]["p50_ms"], timed["onnxruntime-fp32/model.ort"]["measured_as"]) == (
        0.9, None)
    assert timed["onnxruntime-fp32/model_text.onnx"]["measured_as"] == "onnxruntime-fp32/model.onnx"
    assert not (run_dir.root / "ship" / "teacher" / "onnxruntime-fp32-ort").exists()


def test_the_model_card_has_front_matter_metrics_and_the_table(crafted):
    cfg, run_dir, summary = crafted
    write_bundles(cfg, run_dir, summary, "1")
    card = (run_dir.root / "ship" / "teacher" / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "onnxruntime" and meta["metrics"] == ["accuracy"]
    assert {"onnx", "executorch", "int8-dynamic", "fp32"} <= set(meta["tags"])
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert [(m["name"], m["value"]) for m in metrics] == [
        ("dev accuracy (onnxruntime-int8-dynamic/model.onnx)", 0.88), ("dev accuracy (onnxruntime-fp32/model.onnx)", 0.9),
        ("dev accuracy (executorch-fp32/model.pte)", 0.9)]
    assert "| `onnxruntime-int8-dynamic/model.onnx` | onnxruntime | int8-dynamic | ids | 0.8800 | 1.00 |" in body
    assert "distill run " in body and "test CPU" in body
    assert 'load_program("executorch-fp32/model.pte")' in body and 'InferenceSession("onnxruntime-fp32/model.ort")' in body
    assert "LiteRT" in body and "Not built in this bundle" in body


def test_predict_on_a_folder_that_is_no_bundle_says_so_in_one_line(tmp_path, capsys):
    assert main(["predict", str(tmp_path), "a fine film"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(tmp_path) in err and "not a bundle" in err
