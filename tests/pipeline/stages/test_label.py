"""The label stage: shard plan, per-shard manifest, soft-label values, resume, sentence pairs
and several teachers."""

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.stages import data, finetune, label
from core.artifacts import read_json, sha256_file
from pipeline.artifacts import RunDir
from pipeline.config.loading import validate_config
from pipeline.runner import stage_fingerprint
from core.errors import ConfigError

ROWS = 50


def test_plan_covers_every_row_once():
    plan = label.plan_shards(50, 16)
    assert [(s["start"], s["stop"]) for s in plan] == [(0, 16), (16, 32), (32, 48), (48, 50)]
    assert [s["shard"] for s in plan] == [0, 1, 2, 3]
    assert label.plan_shards(32, 16)[-1] == {"shard": 1, "start": 16, "stop": 32}


def test_shards_shrink_so_that_every_actor_gets_one():
    assert label.shard_size(4000, 8192, 2) == 2000  # one 8,192-row shard would idle an actor
    assert label.shard_size(4001, 8192, 2) == 2001
    assert label.shard_size(67_349, 8192, 2) == 8192  # enough shards already: unchanged
    assert label.shard_size(3, 8192, 8) == 1


def test_tensor_parallel_is_checked_before_any_work(run_dir):
    cfg, run = run_dir
    raw = cfg.model_dump(mode="json")
    with pytest.raises(ConfigError, match="label.tensor_parallel: 2 needs CUDA"):
        label.run(validate_config({**raw, "label": {**raw["label"], "tensor_parallel": 2}}), run)  # no Ray needed
    assert not run.shard_index.exists()
    with pytest.raises(ConfigError, match="tensor_parallel > 1 needs engine: inference"):
        validate_config({**raw, "label": {**raw["label"], "tensor_parallel": 2, "engine": "zero"}})


@pytest.fixture
def run_dir(tmp_path, tiny_teacher_dir):
    cfg = validate_config({"name": "t", "output_dir": str(tmp_path), "teacher": {"max_length": 32},
                           "label": {"shard_rows": 16, "num_actors": 2, "max_batch_size": 8},
                           "data": {"train": {"path": "x.tsv"}, "dev": {"path": "y.tsv"}, "labels": [0, 1]}})
    run = RunDir(cfg.run_dir)
    words = ["good", "bad", "a rather long and winding sentence about a film", "ok", "dull plot"]
    table = pa.table({"id": np.arange(ROWS), "text": [f"{words[i % 5]} {i}" for i in range(ROWS)],
                      "label": [i % 2 if i < 20 else -1 for i in range(ROWS)]})
    pq.write_table(table, run.split_file("transfer"))
    shutil.copytree(tiny_teacher_dir, run.teacher_dir)
    return cfg, run


def read_all(run):
    index = read_json(run.shard_index)
    return pa.concat_tables([pq.read_table(run.stage_dir("label") / e["file"]) for e in index["shards"]])


def test_every_row_is_labeled_once_with_the_teachers_logits(run_dir, ray_local):
    cfg, run = run_dir
    summary = label.run(cfg, run)
    assert summary["shards"] == 4 and summary["rows"] == ROWS and summary["num_labels"] == 2
    # start-up: the actor's process starts, imports, loads the teacher, then takes its first shard
    startup = summary["startup"]
    assert 0 <= startup["to_actor_process_s"] < startup["to_first_shard_s"]
    assert startup["actor_imports_s"] > 0 and startup["teacher_load_s"] > 0
    assert startup["teacher_load_s"] < startup["to_first_shard_s"]  # the slowest actor's; the first shard waits
    index = read_json(run.shard_index)
    assert [e["rows"] for e in index["shards"]] == [16, 16, 16, 2]
    for entry in index["shards"]:
        assert sha256_file(run.stage_dir("label") / entry["file"]) == entry["sha256"]
    table = read_all(run)
    assert sorted(table.column("id").to_pylist()) == list(range(ROWS))
    assert table.column("label").to_pylist()[:20] == [i % 2 for i in range(20)]
    expected = direct_logits(run.teacher_dir, table.column("text").to_pylist())  # a plain transformers forward
    np.testing.assert_allclose(stored_logits(table), expected, atol=1e-5)
    # memory: each actor's peak RSS (torch, DeepSpeed, the teacher, a shard) beside the teacher's fp32 weights
    from transformers import AutoModelForSequenceClassification

    weights = AutoModelForSequenceClassification.from_pretrained(run.teacher_dir).parameters()
    assert summary["teacher_fp32_mb"] == pytest.approx(sum(p.numel() for p in weights) * 4 / 1e6, abs=0.05)
    peaks = summary["actor_peak_rss_mb"]
    assert 1 <= len(peaks) <= 2 and all(200 < rss < 8000 for rss in peaks)
    assert min(peaks) > 10 * summary["teacher_fp32_mb"]  # a 4 MB teacher: the process's own libraries dominate
    assert max(peaks) == round(max(e["peak_rss_mb"] for e in index["shards"]), 1)


def test_actor_peak_rss_is_each_actors_largest_in_order_of_appearance():
    entries = [{"node_id": "a", "pid": 7, "peak_rss_mb": 500.04}, {"node_id": "a", "pid": 8, "peak_rss_mb": 610.0},
               {"node_id": "a", "pid": 7, "peak_rss_mb": 520.0}, {"node_id": "b", "pid": 7, "peak_rss_mb": 480.0}]
    assert label.actor_peak_rss(entries) == [520.0, 610.0, 480.0]  # a pid on another node is another actor
    assert label.actor_peak_rss([]) == []


def test_rerun_verifies_and_redoes_only_bad_shards(run_dir, ray_local):
    cfg, run = run_dir
    label.run(cfg, run)
    before = read_all(run).sort_by("id")
    kept = {i: run.shard_file(i).stat().st_mtime_ns for i in (0, 3)}
    with open(run.shard_file(1), "ab") as fh:  # corrupt: checksum no longer matches
        fh.write(b"junk")
    run.shard_file(2).unlink()  # lost
    summary = label.run(cfg, run)
    assert summary["rows_labeled_now"] == 32
    assert {i: run.shard_file(i).stat().st_mtime_ns for i in (0, 3)} == kept
    after = read_all(run).sort_by("id")
    assert after.column("id").to_pylist() == list(range(ROWS))
    np.testing.assert_allclose(np.stack(after.column("logits").to_numpy(zero_copy_only=False)),
                               np.stack(before.column("logits").to_numpy(zero_copy_only=False)), atol=1e-6)
    assert label.run(cfg, run)["rows_labeled_now"] == 0 and label.run(cfg, run)["startup"] is None
    assert label.run(cfg, run)["actor_peak_rss_mb"] == []  # no actor ran


def test_emitted_signals_are_stored_per_row_in_fp16(run_dir, ray_local):
    cfg, run = run_dir
    emit = {"hidden_layers": [0, 2], "attention_layers": [2], "attention_heads": [0], "logits_top_k": 1}
    raw = cfg.model_dump(mode="json")
    train = {**raw["train"], "loss": {"ce": {"weight": 1.0}, "kd": None}}  # top-k logits cannot feed a KD term
    cfg = validate_config({**raw, "label": {**raw["label"], "num_actors": 1, "emit": emit}, "train": train})
    summary = label.run(cfg, run)
    table = read_all(run).sort_by("id")
    assert table.column_names == ["id", "text", "label", "topk_values", "topk_indices", "length",
                                  "hidden_0", "hidden_2", "attention_2"]
    assert table.schema.field("hidden_2").type == pa.list_(pa.float16())
    lengths = np.asarray(table.column("length"))
    hidden_size = 32  # the tiny teacher's
    assert [len(h) for h in table.column("hidden_2").to_pylist()] == (lengths * hidden_size).tolist()
    assert [len(a) for a in table.column("attention_2").to_pylist()] == (lengths**2).tolist()  # one head
    full = direct_logits(run.teacher_dir, table.column("text").to_pylist())
    np.testing.assert_array_equal(np.stack(table.column("topk_indices").to_numpy(zero_copy_only=False))[:, 0],
                                  full.argmax(1))
    per_example = summary["signal_bytes_per_example"]
    assert set(per_example) == {"topk_values", "topk_indices", "length", "hidden_0", "hidden_2", "attention_2"}
    fp16_values = lengths.mean() * hidden_size * 2
    assert fp16_values <= per_example["hidden_2"] <= fp16_values + 8  # values + a 4-byte offset per row


def direct_logits(folder, texts, text_pairs=None) -> np.ndarray:
    """Logits [N, C] float64 of a plain transformers forward, one unpadded row at a time."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    pairs = text_pairs or [None] * len(texts)
    with torch.inference_mode():
        return np.concatenate([model(**tokenizer([t], None if p is None else [p], truncation=True, max_length=32,
                                                 return_tensors="pt")).logits.double().numpy()
                               for t, p in zip(texts, pairs)])


def stored_logits(table) -> np.ndarray:
    return np.stack(table.column("logits").to_numpy(zero_copy_only=False)).astype(np.float64)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def with_label(cfg, **changes):
    raw = cfg.model_dump(mode="json")
    return validate_config({**raw, "label": {**raw["label"], **changes}})


def staged(cfg, run):
    """The run directory as the runner hands it to the label stage: with the stage's fingerprint."""
    return run.for_stage(stage_fingerprint(cfg, "label", upstream=""))


def test_extra_teachers_soft_labels_are_combined(run_dir, second_tiny_teacher_dir, ray_local):
    cfg, run = run_dir
    texts = pq.read_table(run.split_file("transfer")).column("text").to_pylist()
    own, other = direct_logits(run.teacher_dir, texts), direct_logits(second_tiny_teacher_dir, texts)
    assert np.abs(own - other).max() > 0.5  # the two teachers disagree clearly
    cfg = with_label(cfg, num_actors=1, shard_rows=25, teachers=[str(second_tiny_teacher_dir)])
    assert label.run(cfg, staged(cfg, run))["rows_labeled_now"] == ROWS
    np.testing.assert_allclose(stored_logits(read_all(run).sort_by("id")), (own + other) / 2, atol=1e-5)

    summary = label.run(with_label(cfg, combine="mean_probs"), staged(with_label(cfg, combine="mean_probs"), run))
    assert summary["rows_labeled_now"] == ROWS  # another combine mode: a new plan, every shard relabeled
    stored = stored_logits(read_all(run).sort_by("id"))
    mean_probs = (softmax(own) + softmax(other)) / 2
    np.testing.assert_allclose(stored, np.log(mean_probs), atol=1e-5)
    np.testing.assert_allclose(softmax(stored), mean_probs, atol=1e-6)
    assert np.abs(softmax(stored) - softmax((own + other) / 2)).max() > 1e-3  # the modes differ

    mean_probs_cfg = with_label(cfg, combine="mean_probs")
    assert label.run(mean_probs_cfg, staged(mean_probs_cfg, run))["rows_labeled_now"] == 0
    alone = with_label(cfg, teachers=[])
    assert label.run(alone, staged(alone, run))["rows_labeled_now"] == ROWS  # teacher removed: relabel


def test_a_mismatched_teacher_fails_before_any_shard(run_dir, make_tiny_teacher):
    cfg, run = run_dir
    swapped = make_tiny_teacher("swapped", label_names=("positive", "negative"))
    with pytest.raises(ConfigError, match=rf"label.teachers\[0\]: {swapped} orders its labels"):
        label.run(with_label(cfg, teachers=[str(swapped)]), run)
    assert not run.shard_index.exists()


def test_a_pair_task_is_finetuned_and_labeled_on_the_pair_encoding(pair_task, tiny_teacher_dir, ray_local):
    cfg = pair_task.config(teacher={"model": str(tiny_teacher_dir), "max_length": 32},
                           # batch 1: epoch 1 of two steps (warm-up from LR 0) left the weights as they were in
                           # one run, and a tie of the dev scores keeps epoch 1
                           finetune={"force": True, "epochs": 2, "batch_size": 1, "lr": 1e-3},
                           label={"shard_rows": 4, "num_actors": 1})
    run = RunDir(cfg.run_dir)
    data.run(cfg, run)
    tuned = finetune.run(cfg, run)
    assert tuned["finetuned"] and tuned["steps"] == 8
    assert len(tuned["dev_scores"]) == 2 and all(0 <= v <= 1 for v in tuned["dev_scores"])  # dev accuracy per epoch
    label.run(cfg, run)
    table = read_all(run).sort_by("id")
    transfer = pq.read_table(run.split_file("transfer"))
    assert table.column_names == ["id", "text", "text_pair", "label", "logits"]
    assert table.select(transfer.column_names).to_pydict() == transfer.to_pydict()
    expected = direct_logits(run.teacher_dir, transfer.column("text").to_pylist(),
                             transfer.column("text_pair").to_pylist())
    np.testing.assert_allclose(stored_logits(table), expected, atol=1e-5)
    assert np.abs(expected - direct_logits(tiny_teacher_dir, transfer.column("text").to_pylist(),
                                           transfer.column("text_pair").to_pylist())).max() > 1e-4  # it was tuned


@pytest.mark.slow  # 36-110 s here: two label runs, one building a ZeRO stage-3 engine per actor
def test_zero_inference_engine_labels_like_the_plain_engine(run_dir, ray_local):
    # label.engine: zero runs ZeRO-Inference (stage 3, parameters offloaded to the CPU) inside the
    # stage's actors; its stored logits equal those of the default engine
    cfg, run = run_dir
    label.run(with_label(cfg, num_actors=1), run)
    plain = read_all(run).sort_by("id")
    shutil.rmtree(run.stage_dir("label"))  # the engine is not part of the shard plan: start afresh
    summary = label.run(with_label(cfg, num_actors=1, engine="zero", offload="cpu"), run)
    zero = read_all(run).sort_by("id")
    assert summary["rows"] == ROWS and zero.column("id").to_pylist() == list(range(ROWS))
    np.testing.assert_allclose(stored_logits(zero), stored_logits(plain), atol=1e-5)


@pytest.mark.slow  # about a minute: the ZeRO engine; DeepSpeed's async_io op is built once per machine (~11 min)
def test_nvme_offload_labels_like_a_plain_forward_with_the_weights_on_disk(run_dir, ray_local, tmp_path):
    # label.offload: nvme swaps the teacher's large parameters to files under nvme_path through
    # DeepSpeed's async_io op (libaio), on this CPU machine as on a GPU node
    from deepspeed.accelerator import get_accelerator

    if not get_accelerator().create_op_builder("AsyncIOBuilder").is_compatible():
        pytest.skip("DeepSpeed's async_io op needs libaio: apt install libaio-dev")
    extensions = Path(os.environ.get("TORCH_EXTENSIONS_DIR", "~/.cache/torch_extensions")).expanduser()
    if os.environ.get("CI") == "true" and not any(extensions.glob("*/async_io/*.so")):
        pytest.skip("DeepSpeed's async_io op is not built on this machine; its first build (~11 min) would not "
                    "fit the CI budget")
    cfg, run = run_dir
    nvme = tmp_path / "nvme"
    summary = label.run(with_label(cfg, num_actors=1, engine="zero", offload="nvme", nvme_path=str(nvme)), run)
    table = read_all(run).sort_by("id")
    assert summary["rows"] == ROWS and table.column("id").to_pylist() == list(range(ROWS))
    np.testing.assert_allclose(stored_logits(table), direct_logits(run.teacher_dir, table.column("text").to_pylist()),
                               atol=1e-4)
    # parameters above DeepSpeed's persistence threshold (10^5 elements), here the word embedding, live on disk
    swapped = sorted((nvme / "zero_stage_3" / "float32params" / "rank0").glob("*.swp"))
    assert len(swapped) == 1 and swapped[0].stat().st_size >= 30522 * 32 * 4
    assert len(summary["actor_peak_rss_mb"]) == 1 and summary["actor_peak_rss_mb"][0] > summary["teacher_fp32_mb"]


def test_a_sharded_teacher_is_labeled_and_fingerprinted_by_every_weight_file(run_dir, ray_local):
    """A teacher saved in several safetensors shards: the stage's fingerprint hashes every shard,
    so a teacher whose second shard changes relabels; the logits are the teacher's own."""
    import torch
    from transformers import AutoModelForSequenceClassification

    cfg, run = run_dir
    teacher = AutoModelForSequenceClassification.from_pretrained(run.teacher_dir)
    (run.teacher_dir / "model.safetensors").unlink()
    teacher.save_pretrained(run.teacher_dir, max_shard_size="100KB")
    weight_shards = sorted(run.teacher_dir.glob("model-*-of-*.safetensors"))
    assert len(weight_shards) > 1 and not (run.teacher_dir / "model.safetensors").exists()

    first = staged(cfg, run)
    assert label.run(cfg, first)["rows_labeled_now"] == ROWS
    texts = read_all(run).sort_by("id").column("text").to_pylist()
    np.testing.assert_allclose(stored_logits(read_all(run).sort_by("id")), direct_logits(run.teacher_dir, texts),
                               atol=1e-5)
    assert label.run(cfg, staged(cfg, run))["rows_labeled_now"] == 0  # same weights: every shard kept

    with torch.no_grad():
        teacher.classifier.bias += 1.0  # the classifier lies in the last shard
    teacher.save_pretrained(run.teacher_dir, max_shard_size="100KB")
    assert staged(cfg, run).stage_fingerprint != first.stage_fingerprint
    assert label.run(cfg, staged(cfg, run))["rows_labeled_now"] == ROWS
    np.testing.assert_allclose(stored_logits(read_all(run).sort_by("id")), direct_logits(run.teacher_dir, texts),
                               atol=1e-5)
