"""Stage ``benchmark`` on a hand-built finished run: a tiny random BERT teacher, its ONNX export and
a dynamic int8 copy of that, and a dev table; the JSON summary, the Pareto plot, the report's
section and the offline W&B run's table. One timing comparison, of two variants hundreds of
times apart in work."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from compress.onnx_export import export_onnx
from compress.quantize import quantize_dynamic_int8
from compress.slicing import load_pruned
from compress.traceable import example_features
from heavy_onnx import export_matmul_chain
from core.errors import ArtifactError
from core.hf_checkpoint import load_tokenizer
from pipeline.stages import benchmark, evaluate
from pipeline.evaluation import report, report_compress
from pipeline.artifacts import RunDir
from pipeline.cli.main import main
from pipeline.config.loading import validate_config
from pipeline.observability.tracking import Tracker
from pipeline.evaluation.variants import VariantMeta, variant_folder, write_meta
from wandb_offline import logged_values, wandb_files
from test_train import sentences, write_table

BENCHMARK = {"runs": 5, "warmup": 1, "latency_rows": 4, "batch_size": 8, "throughput_runs": 1, "threads": [1, 0]}
VARIANT_KEYS = {"name", "model", "backend", "precision", "parent", "method", "family", "size_mb", "parameters",
                "dev_accuracy", "dev_agreement", "threads", "speedup_vs_teacher_best", "size_ratio_vs_teacher_best",
                "accuracy_ratio_vs_teacher"}
THREAD_KEYS = {"p50_ms", "p99_ms", "throughput_eps", "peak_rss_mb"}


def build_run(root, teacher_dir, tracking: str = "disabled"):
    """A run as the data and finetune stages leave it: 16 train rows, 24 dev rows and the teacher folder."""
    cfg = validate_config({"name": "b", "output_dir": str(root), "seed": 0,
                           "data": {"train": {"path": "x.tsv"}, "dev": {"path": "y.tsv"}, "labels": [0, 1]},
                           "teacher": {"model": str(teacher_dir), "max_length": 32},
                           "evaluate": {"latency_runs": 3, "latency_warmup": 1},
                           "benchmark": BENCHMARK, "tracking": {"mode": tracking}})
    run_dir = RunDir(cfg.run_dir)
    write_table(run_dir.split_file("train"), *sentences(16, seed=1))
    write_table(run_dir.split_file("dev"), *sentences(24, seed=2))
    shutil.copytree(teacher_dir, run_dir.teacher_dir)
    return cfg, run_dir


def onnx_variant(run_dir: RunDir, file_bytes: bytes | None = None) -> VariantMeta:
    """Export the teacher to ONNX as the export stage would (or write ``file_bytes`` as its file)."""
    folder = variant_folder(run_dir, "export", "teacher", "onnx")
    model = load_pruned(run_dir.teacher_dir).eval()
    if file_bytes is None:
        settings = export_onnx(model, folder / "model.onnx", example_features(
            model, ["a good film", "bad plot"], tokenizer=load_tokenizer(run_dir.teacher_dir)))
    else:
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(file_bytes)
        settings = {"input_names": ["input_ids", "attention_mask", "token_type_ids"]}
    meta = VariantMeta(name="teacher/onnxruntime-fp32", model="teacher", backend="onnxruntime", precision="fp32",
                       file="export/teacher-onnx/model.onnx", source="finetune/teacher", parent="teacher",
                       method="export", input_names=settings["input_names"], settings=settings)
    write_meta(folder, meta)
    return meta


def int8_variant(run_dir: RunDir) -> VariantMeta:
    """ONNX Runtime dynamic int8 of the ONNX export, as the quantize stage would write it."""
    folder = variant_folder(run_dir, "quantize", "teacher", "int8-dynamic")
    settings = quantize_dynamic_int8(variant_folder(run_dir, "export", "teacher", "onnx") / "model.onnx",
                                     folder / "model.onnx", "teacher", num_heads=2, hidden_size=32)
    meta = VariantMeta(name="teacher/onnxruntime-int8-dynamic", model="teacher", backend="onnxruntime",
                       precision="int8-dynamic", file="quantize/teacher-int8-dynamic/model.onnx",
                       source="finetune/teacher", parent="teacher/onnxruntime-fp32", method="quantize",
                       input_names=["input_ids", "attention_mask", "token_type_ids"], settings=settings)
    write_meta(folder, meta)
    return meta


@pytest.fixture(scope="module")
def measured(tmp_path_factory, tiny_teacher_dir):
    """The run, and the benchmark stage's summary published as its manifest."""
    cfg, run_dir = build_run(tmp_path_factory.mktemp("bench"), tiny_teacher_dir, tracking="offline")
    onnx_variant(run_dir)
    int8_variant(run_dir)
    summary = benchmark.run(cfg, run_dir)
    return cfg, run_dir, run_dir.publish("benchmark", "fp", summary, 1.0)


def test_every_variant_has_every_field(measured):
    _, run_dir, summary = measured
    variants = {v["name"]: v for v in summary["variants"]}
    assert list(variants) == ["teacher", "teacher/onnxruntime-fp32", "teacher/onnxruntime-int8-dynamic"]
    assert summary["score_key"] == "dev_accuracy" and summary["dev_rows"] == 24
    assert summary["machine"]["threads"] == {"1": 1, "all": summary["machine"]["logical_cores"]}
    assert {"cpu_model", "cpu_flags", "versions", "physical_cores"} <= set(summary["machine"])
    for v in variants.values():
        assert set(v) == VARIANT_KEYS
        assert set(v["threads"]) == {"1", "all"}
        for figures in v["threads"].values():
            assert set(figures) == THREAD_KEYS
            assert figures["throughput_eps"] > 0 and 100 < figures["peak_rss_mb"] < 16000
        assert 0 <= v["dev_accuracy"] <= 1 and v["size_mb"] > 0
    teacher = variants["teacher"]
    assert teacher["parameters"] == sum(p.numel() for p in load_pruned(run_dir.teacher_dir).parameters())
    assert variants["teacher/onnxruntime-fp32"]["parameters"] is None
    # the same model on two runtimes predicts the same classes
    assert variants["teacher/onnxruntime-fp32"]["dev_accuracy"] == teacher["dev_accuracy"]
    assert variants["teacher/onnxruntime-fp32"]["dev_agreement"] == teacher["dev_agreement"] == 1.0
    assert 0.5 <= variants["teacher/onnxruntime-int8-dynamic"]["dev_agreement"] <= 1.0
    weights_mb = (run_dir.teacher_dir / "model.safetensors").stat().st_size / 2**20
    assert teacher["size_mb"] == pytest.approx(weights_mb, abs=1e-4)
    assert variants["teacher/onnxruntime-int8-dynamic"]["size_mb"] < teacher["size_mb"] / 2


def test_the_tasks_metric_heads_each_row_with_accuracy_beside_it(measured):
    cfg, run_dir, summary = measured
    meta = next(m for m in benchmark.all_variants(run_dir) if m.name == "teacher/onnxruntime-fp32")
    dev = benchmark.read_split(run_dir.split_file("dev"), benchmark.task_kind(cfg.data))
    bench = benchmark.BenchmarkConfig(runs=2, warmup=0, latency_rows=2, throughput_runs=1, threads=[1])
    row, predictions = benchmark.measure_one(run_dir, meta, dev, None, bench, {"1": 1}, 32, "f1")
    assert len(predictions) == len(dev.gold) == 24
    measured_row = next(v for v in summary["variants"] if v["name"] == meta.name)
    assert {key for key in row if key.startswith("dev_")} == {"dev_f1", "dev_accuracy"}
    assert row["dev_accuracy"] == measured_row["dev_accuracy"] and 0 <= row["dev_f1"] <= 1


def test_an_ort_file_beside_an_fp32_export_is_a_variant_of_its_own():
    export = VariantMeta(name="kd/onnxruntime-fp32", model="kd", backend="onnxruntime", precision="fp32",
                         file="export/kd-onnx/model.onnx", source="train/kd", parent="kd", method="export",
                         family="bilstm", input_names=["input_ids"], settings={"ort": {"file": "model.ort"}, "opset": 18})
    ort = benchmark.ort_variant(export)
    assert (ort.name, ort.file, ort.parent, ort.method) == (
        "kd/onnxruntime-fp32-ort", "export/kd-onnx/model.ort", "kd/onnxruntime-fp32", "ort")
    assert (ort.backend, ort.precision, ort.source, ort.input_names) == ("onnxruntime", "fp32", "train/kd", ["input_ids"])


def test_baseline_ratios_and_pareto(measured):
    _, run_dir, summary = measured
    variants = {v["name"]: v for v in summary["variants"]}
    baseline = variants[summary["baseline"]]
    teacher_accuracy = variants["teacher"]["dev_accuracy"]
    assert baseline["model"] == "teacher" and baseline["dev_accuracy"] >= teacher_accuracy - 0.01
    eligible = [v for v in variants.values() if v["dev_accuracy"] >= teacher_accuracy - 0.01]
    assert baseline["threads"]["1"]["p50_ms"] == min(v["threads"]["1"]["p50_ms"] for v in eligible)
    assert baseline["speedup_vs_teacher_best"] == 1.0 and baseline["size_ratio_vs_teacher_best"] == 1.0
    for v in variants.values():
        assert v["speedup_vs_teacher_best"] == pytest.approx(  # rounded to 3 decimals
            baseline["threads"]["1"]["p50_ms"] / v["threads"]["1"]["p50_ms"], rel=1e-2, abs=5e-4)
        assert v["accuracy_ratio_vs_teacher"] == pytest.approx(v["dev_accuracy"] / teacher_accuracy, abs=1e-4)
    front = set(summary["pareto"])
    assert front and front <= set(variants)
    fastest = min(variants.values(), key=lambda v: (v["threads"]["1"]["p50_ms"], -v["dev_accuracy"]))
    most_accurate = max(variants.values(), key=lambda v: (v["dev_accuracy"], -v["threads"]["1"]["p50_ms"]))
    assert {fastest["name"], most_accurate["name"]} <= front
    png = run_dir.root / summary["pareto_png"]
    assert summary["pareto_png"] == "benchmark/pareto.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_has_the_variants_section(measured):
    cfg, run_dir, summary = measured
    run_dir.publish("data", "fp", {"train": {"rows": 0}, "transfer": {"rows": 0, "label_counts": {}}}, 0.0)
    run_dir.publish("evaluate", "fp", evaluate.run(cfg, run_dir), 0.0)
    report.write(run_dir, cfg.name, ["data", "evaluate", "benchmark"])
    text = run_dir.report_file.read_text()
    section = text[text.index("## Compressed and exported variants"):]
    assert "![accuracy vs latency](benchmark/pareto.png)" in section
    assert summary["machine"]["cpu_model"] in section
    for v in summary["variants"]:
        row = next(line for line in section.splitlines() if line.startswith(f"| {v['name']} |"))
        assert f"| {v['dev_accuracy']:.4f} | {v['threads']['1']['p50_ms']:.2f} |" in row
        assert row.endswith(f"| {v['speedup_vs_teacher_best']:.2f}x | {v['size_ratio_vs_teacher_best']:.3f} |")


def test_prune_section_lists_each_model_and_its_sensitivity_plot():
    kd = {"heads_before": 24, "heads_after": 14, "ffn_before": 3072, "ffn_after": 1536, "vocab_before": 30522,
          "vocab_after": 9000, "parameters_before": 22_700_000, "parameters_after": 9_100_000,
          "dev_accuracy_before": 0.9, "dev_accuracy_structured": 0.8, "dev_accuracy_pruned": 0.7,
          "dev_accuracy_recovered": 0.88, "plots": ["sensitivity-kd.png", "head_importance-kd.png"]}
    earlier = {**kd, "plots": []}  # a record of a run pruned before the stage scored heads/FFN alone
    del earlier["dev_accuracy_structured"]
    drop = {"layers_before": 6, "layers_after": 4, "parameters_before": 22_700_000, "parameters_after": 19_000_000,
            "dev_accuracy_before": 0.91, "dev_accuracy_dropped": 0.6, "dev_accuracy_finetuned": 0.89}
    lines = report_compress.prune_section({"models": {"kd": kd, "teacher": earlier}, "layer_drop": drop})
    assert ("| kd | 14/24 | 1536/3072 | 9000/30522 | 9,100,000 (of 22,700,000) | 0.9000 | 0.8000 | 0.7000 | 0.8800 |"
            in lines)
    assert any(line.startswith("| teacher |") and line.endswith("| 0.9000 | 0.7000 | 0.7000 | 0.8800 |")
               for line in lines)
    assert any(line.startswith("| teacher-layerdrop") and "layers 4/6" in line and "0.8900" in line for line in lines)
    assert [line for line in lines if line.startswith("![")] == ["![sensitivity-kd](prune/sensitivity-kd.png)"]


def test_wandb_run_holds_the_benchmark_table(measured):
    cfg, run_dir, summary = measured
    tracker = Tracker(cfg)
    tracker.log_stage("benchmark", summary)
    tracker.finish()
    (wandb_file,) = wandb_files(run_dir.root)
    history, logged_summary = logged_values(wandb_file)
    (table_ref,) = [nested(row, "benchmark/variants") for row in history if "benchmark/variants/path" in row]
    (image_ref,) = [nested(row, "benchmark/pareto") for row in history if "benchmark/pareto/path" in row]
    assert table_ref["_type"] == "table-file" and image_ref["_type"] == "image-file"
    (files,) = run_dir.root.glob("wandb/offline-run-*/files")
    table = json.loads((files / table_ref["path"]).read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [row["name"] for row in rows] == [v["name"] for v in summary["variants"]]
    for row, v in zip(rows, summary["variants"]):
        assert row["dev_accuracy"] == v["dev_accuracy"] and row["p50_ms_1"] == v["threads"]["1"]["p50_ms"]
        assert row["peak_rss_mb_all"] == v["threads"]["all"]["peak_rss_mb"]
    assert logged_summary["benchmark/baseline"] == summary["baseline"]


def test_bench_latency_command_writes_the_json(measured, capsys):
    cfg, run_dir, summary = measured
    config = run_dir.root / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["bench", "latency", str(config), "--set", "tracking.mode=disabled"]) == 0
    written = json.loads((run_dir.root / "bench" / "latency.json").read_text())
    assert [v["name"] for v in written["variants"]] == [v["name"] for v in summary["variants"]]
    assert [v["dev_accuracy"] for v in written["variants"]] == [v["dev_accuracy"] for v in summary["variants"]]
    assert (run_dir.root / "bench" / "latency.png").is_file()
    assert "| teacher/onnxruntime-fp32 | onnxruntime | fp32 |" in capsys.readouterr().out


def test_token_classifier_logits_are_taken_at_each_words_first_subtoken():
    logits = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)  # [B=2, T=4, C=3]
    first = np.array([[1, 3], [2, -1]])  # [B, W=2]; -1: a padding word
    words = benchmark.word_logits(logits, {"first_subtoken": first})
    np.testing.assert_array_equal(words, [[logits[0, 1], logits[0, 3]], [logits[1, 2], [0, 0, 0]]])
    np.testing.assert_array_equal(benchmark.word_logits(logits[:, 0], {"first_subtoken": first}), logits[:, 0])
    np.testing.assert_array_equal(benchmark.word_logits(logits, {}), logits)


def nested(row: dict, key: str) -> dict:
    """The fields of a media value in a history row (W&B stores them as ``<key>/<field>`` items)."""
    return {name[len(key) + 1:]: value for name, value in row.items() if name.startswith(key + "/")}


@pytest.mark.slow  # two ONNX exports and a benchmark run: 40 s on a loaded 2-core machine
def test_a_variant_of_650x_the_work_is_measured_far_slower(tmp_path, tiny_teacher_dir):
    cfg, run_dir = build_run(tmp_path, tiny_teacher_dir)
    cfg = cfg.model_copy(update={"benchmark": cfg.benchmark.model_copy(update={"threads": [1]})})
    onnx_variant(run_dir)  # the tiny teacher's export
    folder = variant_folder(run_dir, "export", "heavy", "onnx")
    folder.mkdir(parents=True)
    export_matmul_chain(folder / "model.onnx", ["input_ids"])  # fed the teacher's tokens
    write_meta(folder, VariantMeta(
        name="heavy/onnxruntime-fp32", model="heavy", backend="onnxruntime", precision="fp32",
        file="export/heavy-onnx/model.onnx", source="finetune/teacher", parent="teacher", method="export",
        input_names=["input_ids"]))
    variants = {v["name"]: v["threads"]["1"] for v in benchmark.run(cfg, run_dir)["variants"]}
    light, heavy = variants["teacher/onnxruntime-fp32"], variants["heavy/onnxruntime-fp32"]
    # 650x the work per token (p50 11.5 ms against 0.10 when written); 10x asserted, however busy the machine
    assert heavy["p50_ms"] > 10 * light["p50_ms"] and heavy["p99_ms"] > 10 * light["p50_ms"]
    assert heavy["throughput_eps"] < light["throughput_eps"] / 10


def test_corrupted_onnx_file_fails_naming_it(tmp_path, tiny_teacher_dir):
    cfg, run_dir = build_run(tmp_path, tiny_teacher_dir)
    meta = onnx_variant(run_dir, file_bytes=b"not an onnx graph")
    with pytest.raises(ArtifactError, match="teacher-onnx/model.onnx") as error:
        benchmark.run(cfg, run_dir)
    assert error.value.path == run_dir.root / meta.file
