"""Stage ``quantize`` on a run exported to ExecuTorch only: int8 ``.pte`` variants of every model,
checked against their fp32 parents and measured by the benchmark; ONNX methods skipped with a line."""

from __future__ import annotations

import logging

import pytest

from pipeline.artifacts import RunDir
from pipeline.config.compress_sections import BenchmarkConfig, ExportConfig, QuantizeConfig
from pipeline.config.sections import task_kind
from pipeline.evaluation.scoring import read_split
from pipeline.evaluation.variants import stage_variants
from pipeline.stages import benchmark, export, quantize

from test_quantize_stage import MIN_AGREEMENT, trained_run


@pytest.fixture(scope="module")
def executorch_run(tmp_path_factory):
    """A trained run (BERT teacher, BiLSTM student) exported to ExecuTorch, quantized static int8."""
    cfg, run_dir = trained_run(tmp_path_factory.mktemp("run"),
                               export=ExportConfig(formats=["executorch"], parity_rows=20),
                               quantize=QuantizeConfig(methods=["dynamic_int8", "executorch_static_int8"],
                                                       calibration_rows=40, min_agreement=MIN_AGREEMENT))
    export.run(cfg, run_dir)
    return cfg, run_dir, quantize.run(cfg, run_dir)


@pytest.mark.slow  # four ExecuTorch lowerings: about 2 minutes on 2 cores, more on a loaded machine
def test_static_int8_program_of_every_model(executorch_run):
    cfg, run_dir, summary = executorch_run
    names = {"teacher/executorch-int8-static", "kd/executorch-int8-static"}  # dynamic_int8 (ONNX) skipped
    assert set(summary["variants"]) == names
    metas = {meta.name: meta for meta in stage_variants(run_dir, "quantize")}
    assert set(metas) == names
    for name, result in summary["variants"].items():
        fp32 = run_dir.root / f"export/{metas[name].model}-executorch/model.pte"
        assert result["agreement"] >= MIN_AGREEMENT and not result["below_min_agreement"], name
        assert 0 < result["max_abs_diff"], name
        assert (run_dir.root / result["file"]).stat().st_size < 0.5 * fp32.stat().st_size, name
    kd = metas["kd/executorch-int8-static"]
    assert (kd.file, kd.parent, kd.backend, kd.precision, kd.method, kd.family) == (
        "quantize/kd-executorch-int8-static/model.pte", "kd/executorch-fp32", "executorch", "int8-static",
        "quantize", "bilstm")
    assert kd.settings["calibration_rows"] == 40 and kd.settings["fixed_length"] == 8  # the student's max_length
    assert kd.settings["kept_fp32"]  # the LSTM weights, named
    assert "choose_qparams" not in kd.settings["quant_ops"]


@pytest.mark.slow
def test_benchmark_measures_the_int8_program(executorch_run):
    cfg, run_dir, summary = executorch_run
    meta = next(m for m in benchmark.all_variants(run_dir) if m.name == "kd/executorch-int8-static")
    dev = read_split(run_dir.split_file("dev"), task_kind(cfg.data), 16)
    row, _ = benchmark.measure_one(run_dir, meta, dev, None, BenchmarkConfig(runs=2, warmup=0, latency_rows=2,
                                                                          throughput_runs=1, threads=[1]),
                                {"1": 1}, 64)
    assert (row["backend"], row["precision"]) == ("executorch", "int8-static")
    assert row["size_mb"] == pytest.approx(summary["variants"][meta.name]["size_mb"], abs=1e-3)
    assert row["dev_accuracy"] >= 0.75  # the trained rule holds in int8 on 16 dev rows
    assert row["threads"]["1"]["p50_ms"] > 0


def test_methods_of_a_format_not_exported_are_skipped_with_a_line(caplog):
    with caplog.at_level(logging.INFO, logger="pipeline.stages.quantize"):
        kept = quantize.methods_by_backend(["dynamic_int8", "executorch_dynamic_int8", "torch_dynamic_int8"],
                                           {"executorch"})
    assert kept == {"executorch": ["executorch_dynamic_int8"]}
    assert "skipping dynamic_int8: the export stage wrote no onnx file" in caplog.text
    assert "skipping torch_dynamic_int8" in caplog.text


def test_no_export_a_method_takes_fails_in_one_line(tmp_path):
    from core.errors import ConfigError
    from test_export_stage import finished_run

    cfg, run_dir = finished_run(tmp_path, export=ExportConfig(formats=["executorch"]),
                                quantize=QuantizeConfig(methods=["dynamic_int8"]))
    with pytest.raises(ConfigError, match="wrote no file that quantize.methods .* take"):
        quantize.run(cfg, RunDir(run_dir.root))
