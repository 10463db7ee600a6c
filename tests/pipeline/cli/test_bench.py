"""The label benchmark: its arithmetic, its table, and one real three-way run on the tiny teacher."""

import shutil
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.artifacts import read_json
from pipeline.artifacts import RunDir
from pipeline.cli.bench_label import bench_label, encoder_flops, engine_ways, matmul_peak_flops, render, way_result
from pipeline.config.loading import validate_config
from core.errors import ConfigError


def test_encoder_flops_by_hand():
    config = SimpleNamespace(hidden_size=4, intermediate_size=8, num_hidden_layers=2)
    # one sequence of 3 tokens: per layer 2*3*(4*16 + 2*4*8) + 4*9*4 = 6*128 + 144 = 912
    assert encoder_flops(config, np.array([3])) == 2 * 912
    # padding costs quadratically in attention: 6 tokens > twice 3 tokens
    assert encoder_flops(config, np.array([6])) > 2 * encoder_flops(config, np.array([3]))


def test_matmul_peak_is_2n3_flops_over_the_shortest_run():
    # a clock whose runs take 0.5, 0.25 and 1.0 s: the peak is 2 * 64^3 FLOPs over 0.25 s
    ticks = iter([0.0, 0.5, 1.0, 1.25, 2.0, 3.0])
    assert matmul_peak_flops(size=64, repeats=3, clock=lambda: next(ticks)) == 2 * 64**3 / 0.25


def test_way_result_by_hand():
    # 100 rows in 4 s against a 20 s naive run; 8e9 useful FLOPs on a 10 GFLOP/s peak
    assert way_result(4.0, 100, 20.0, 8e9, 10e9) == {
        "seconds": 4.0, "examples_per_s": 25.0, "speedup_vs_naive": 5.0, "useful_gflops_per_s": 2.0,
        "fraction_of_peak": 0.2}


def test_render_lists_three_ways_with_ratio_and_bytes():
    way = {"seconds": 2.0, "examples_per_s": 50.0, "speedup_vs_naive": 1.0, "useful_gflops_per_s": 1.5,
           "fraction_of_peak": 0.01}
    stage = {**way, "speedup_vs_naive": 8.5, "stored_bytes_per_example": 61.0, "startup_s": 1.25,
             "signal_bytes_per_example": {"logits": 8.0}, "labeling": {**way, "speedup_vs_naive": 9.25}}
    text = render({"rows": 100, "matmul_peak_gflops": 150.0, "threads": 2, "emit_layers": [3, 6],
                   "ways": {"naive": way, "label stage": stage,
                            "label + signals": {**stage, "stored_bytes_per_example": 12_345.0}}})
    lines = text.splitlines()
    assert "100 rows" in lines[0] and "150.0 GFLOP/s" in lines[0] and "[3, 6]" in lines[0]
    assert lines[2].split()[0] == "naive" and lines[2].split()[-1] == "-"
    assert lines[3].split()[:2] == ["label", "stage"] and "8.50x" in lines[3] and lines[3].endswith("61.0")
    assert lines[3].split()[3] == "1.25" and lines[2].split()[2] == "-"  # start-up: the stage only
    assert lines[4].split()[:2] == ["labeling", "only"] and "9.25x" in lines[4]
    assert lines[5].endswith("12,345.0")
    assert lines[7].startswith("start-up: the stage's wall time less its labeling window")
    assert lines[8] == "bytes/example, label stage: logits 8.0"


@pytest.fixture
def finetuned_run(tmp_path, tiny_teacher_dir):
    cfg = validate_config({"name": "b", "output_dir": str(tmp_path), "teacher": {"max_length": 32},
                           "label": {"num_actors": 1},
                           "data": {"train": {"path": "x.tsv"}, "dev": {"path": "y.tsv"}, "labels": [0, 1]}})
    run = RunDir(cfg.run_dir)
    words = ["good", "bad", "a rather long and winding sentence about a film", "ok", "dull plot"]
    pq.write_table(pa.table({"id": np.arange(30), "text": [f"{words[i % 5]} {i}" for i in range(30)],
                             "label": [i % 2 for i in range(30)]}), run.split_file("transfer"))
    shutil.copytree(tiny_teacher_dir, run.teacher_dir)
    run.publish("finetune", "test", {}, 0.0)
    return cfg, run


def test_layers_the_teacher_lacks_fail_before_any_work(finetuned_run, tmp_path):
    cfg, _ = finetuned_run
    with pytest.raises(ConfigError, match="hidden_layers"):
        bench_label(cfg, 30, tmp_path / "label.json", emit_layers=(3, 6))  # the tiny teacher has 2 layers
    assert not (tmp_path / "label.json").exists()


def test_one_run_measures_three_ways_and_the_bytes_of_each_signal(finetuned_run, tmp_path, ray_local):
    cfg, run = finetuned_run
    result = bench_label(cfg, 24, tmp_path / "label.json", emit_layers=(1, 2))
    assert read_json(tmp_path / "label.json") == result
    assert list(result["ways"]) == ["naive", "label stage", "label + signals"]
    naive, stage, signals = result["ways"].values()
    assert naive["speedup_vs_naive"] == 1.0 and "stored_bytes_per_example" not in naive
    peak = result["matmul_peak_gflops"] * 1e9
    for way in (stage, signals):  # values follow from the measured seconds; no race between timings
        # seconds are rounded to 0.01 s, so examples x seconds lands within 0.005 s of throughput of 24
        assert way["examples_per_s"] * way["seconds"] == pytest.approx(24, abs=0.005 * way["examples_per_s"] + 0.05)
        assert way["speedup_vs_naive"] == pytest.approx(naive["seconds"] / way["seconds"], rel=0.01, abs=0.01)
        assert way["fraction_of_peak"] == pytest.approx(
            naive["fraction_of_peak"] * naive["seconds"] / way["seconds"], rel=0.05, abs=1e-4)
        # the labeling window leaves out the actors' start-up, so it is a part of the stage's time
        assert 0 < way["labeling"]["seconds"] <= way["seconds"]
        assert way["startup_s"] == pytest.approx(way["seconds"] - way["labeling"]["seconds"], abs=0.02)
        labeling = way["labeling"]
        assert labeling["examples_per_s"] * labeling["seconds"] == pytest.approx(
            24, abs=0.005 * labeling["examples_per_s"] + 0.05)
    assert naive["useful_gflops_per_s"] * 1e9 / peak == pytest.approx(naive["fraction_of_peak"], rel=0.05, abs=2e-4)
    assert stage["signal_bytes_per_example"] == {"logits": 8.0}  # 2 float32 logits
    from transformers import AutoTokenizer

    texts = pq.read_table(run.split_file("transfer")).column("text").to_pylist()[:24]
    lengths = np.asarray([len(ids) for ids in AutoTokenizer.from_pretrained(run.teacher_dir)(texts)["input_ids"]])
    per_example = signals["signal_bytes_per_example"]
    assert set(per_example) == {"logits", "length", "hidden_1", "hidden_2", "attention_1", "attention_2"}
    # fp16 values plus a 4-byte list offset per row: hidden [T, 32], attention [2 heads, T, T]
    assert per_example["hidden_2"] == pytest.approx(lengths.mean() * 32 * 2 + 4, abs=0.5)
    assert per_example["attention_1"] == pytest.approx((2 * lengths**2).mean() * 2 + 4, abs=0.5)
    assert signals["stored_bytes_per_example"] > 10 * stage["stored_bytes_per_example"]


def test_render_adds_a_memory_table_of_every_way_beside_the_teachers_weights():
    way = {"seconds": 2.0, "examples_per_s": 50.0, "speedup_vs_naive": 1.0, "useful_gflops_per_s": 1.5,
           "fraction_of_peak": 0.01}
    stage = {**way, "stored_bytes_per_example": 8.0, "startup_s": 1.0, "signal_bytes_per_example": {"logits": 8.0},
             "labeling": way}
    text = render({"rows": 100, "matmul_peak_gflops": 150.0, "threads": 2, "emit_layers": [],
                   "teacher_fp32_mb": 1340.6,
                   "ways": {"naive": {**way, "peak_rss_mb": 2100.0}, "label: inference": {**stage, "peak_rss_mb": 2600.0},
                            "label: zero/nvme": {**stage, "examples_per_s": 3.5, "peak_rss_mb": 670.3}}})
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if "fp32 weights MB" in line)
    assert lines[header].split() == ["way", "examples/s", "peak", "RSS", "MB", "fp32", "weights", "MB", "RSS/weights"]
    assert lines[header + 1].split() == ["naive", "50.0", "2,100.0", "1,340.6", "1.57"]
    assert lines[header + 2].split() == ["label:", "inference", "50.0", "2,600.0", "1,340.6", "1.94"]
    assert lines[header + 3].split() == ["label:", "zero/nvme", "3.5", "670.3", "1,340.6", "0.50"]  # under its weights
    assert lines[header + 4].startswith("peak RSS: a label actor's")


def test_engine_ways_name_one_config_per_engine(finetuned_run, tmp_path):
    cfg, _ = finetuned_run
    assert engine_ways(cfg, None) == {"label stage": cfg}
    ways = engine_ways(cfg, ["inference", "zero"])
    assert list(ways) == ["label: inference", "label: zero/cpu"]
    assert [w.label.engine for w in ways.values()] == ["inference", "zero"]
    raw = cfg.model_dump(mode="json")
    nvme = validate_config({**raw, "label": {**raw["label"], "offload": "nvme", "nvme_path": str(tmp_path)}})
    assert list(engine_ways(nvme, ["zero"])) == ["label: zero/nvme"]
    assert engine_ways(nvme, ["zero"])["label: zero/nvme"].label.nvme_path == tmp_path
    no_path = validate_config({**raw, "label": {**raw["label"], "offload": "nvme"}})  # fine for engine: inference
    with pytest.raises(ConfigError, match="--engines zero.*nvme_path"):
        engine_ways(no_path, ["inference", "zero"])
    with pytest.raises(ConfigError, match="--engines fast.*label.engine"):
        engine_ways(cfg, ["fast"])


@pytest.mark.slow  # two label runs, one building a ZeRO engine, and the naive loop: about a minute
def test_engines_run_one_way_each_with_their_actors_peak_memory(finetuned_run, tmp_path, ray_local):
    cfg, run = finetuned_run
    result = bench_label(cfg, 24, tmp_path / "label.json", emit_layers=None, engines=["inference", "zero"])
    assert list(result["ways"]) == ["naive", "label: inference", "label: zero/cpu"]
    from transformers import AutoModelForSequenceClassification

    parameters = AutoModelForSequenceClassification.from_pretrained(run.teacher_dir).parameters()
    assert result["teacher_fp32_mb"] == pytest.approx(sum(p.numel() for p in parameters) * 4 / 1e6, abs=0.05)
    for name, way in result["ways"].items():  # torch and the teacher in one process: hundreds of MB, a 4 MB teacher
        assert 200 < way["peak_rss_mb"] < 8000, name
        assert way["examples_per_s"] * way["seconds"] == pytest.approx(24, abs=0.005 * way["examples_per_s"] + 0.05)
    table = render(result).splitlines()
    header = next(i for i, line in enumerate(table) if "fp32 weights MB" in line)
    assert [line.split()[0] for line in table[header + 1:header + 4]] == ["naive", "label:", "label:"]
    assert table[header + 3].split()[1] == "zero/cpu"


def test_readback_streams_a_quarter_then_all_shards_and_reports_memory(tmp_path, ray_local, tiny_teacher_dir):
    """Shards with hidden states and attention maps of layer 2, streamed for a 1-layer transformer student."""
    from pipeline.cli import bench_readback
    from pipeline.stages import label

    cfg = validate_config({
        "name": "t", "output_dir": str(tmp_path), "teacher": {"max_length": 16},
        "data": {"train": {"path": "x.tsv"}, "dev": {"path": "y.tsv"}, "labels": [0, 1]},
        "label": {"shard_rows": 25, "num_actors": 1, "emit": {"hidden_layers": [2], "attention_layers": [2]}},
        "train": {"batch_size": 8, "student": {"family": "transformer", "num_layers": 1, "max_length": 16},
                  "loss": {"hidden": {"layer_map": {2: 1}}, "attention": {"layer_map": {2: 1}}}}})
    run = RunDir(cfg.run_dir)
    pq.write_table(pa.table({"id": list(range(100)), "text": [f"a film {i} of some length" for i in range(100)],
                             "label": [i % 2 for i in range(100)]}), run.split_file("transfer"))
    shutil.copytree(tiny_teacher_dir, run.teacher_dir)
    run.publish("label", "x", label.run(cfg, run), 1.0)

    result = bench_readback.bench_readback(cfg, tmp_path / "readback.json")
    quarter, whole = result["passes"]
    assert (quarter["shards"], quarter["rows"]) == (1, 25) and (whole["shards"], whole["rows"]) == (4, 100)
    assert "hidden_2" in result["columns"] and "attention_2" in result["columns"]
    assert whole["float32_mb"] > quarter["float32_mb"] and whole["disk_mb"] > 3 * quarter["disk_mb"]
    assert 100 < whole["peak_rss_mb"] < 4000
    assert 50 < whole["peak_private_mb"] <= whole["peak_rss_mb"]  # private memory is a part of RSS
    assert read_json(tmp_path / "readback.json") == result
    assert "peak RSS MB" in bench_readback.render(result) and "peak private MB" in bench_readback.render(result)


def test_private_memory_grows_with_an_allocation():
    from pipeline.cli.bench_readback import private_memory_mb

    before = private_memory_mb()
    block = bytearray(200 * 2**20)  # 200 MB, touched
    block[::4096] = b"x" * len(block[::4096])
    assert private_memory_mb() - before > 150
