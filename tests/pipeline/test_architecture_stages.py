"""The label, train and prune stages (local Ray, DeepSpeed on the CPU) on a tiny teacher of each
architecture (tests/tiny_architectures.py): the teacher's logits, hidden states and attention maps
reach the label shards, a transformer student of the teacher's architecture learns from all three,
a BiLSTM student from an MPNet or DistilBERT teacher's embeddings, and a BERT or MPNet teacher and student are pruned
(a RoBERTa or DistilBERT run with a prune section is refused); a student that starts from another
pretrained checkpoint (its own tokenizer) is trained, pruned and exported under an MPNet teacher."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_architectures import good_bad
from tiny_architectures import ARCHITECTURES
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, BertForSequenceClassification

from compress.vocabulary import used_token_ids

from core.artifacts import read_json
from core.errors import ConfigError
from pipeline.artifacts import RunDir
from pipeline.config.loading import validate_config
from pipeline.stages import export, label, prune, train
from students.registry import load_student

ROWS = 160
PRUNE = {"heads": 0.5, "ffn": 0.5, "iterations": 1, "score_rows": 64, "recovery_epochs": 1, "recovery_rows": 64,
         "batch_size": 32, "lr": 1e-3, "sensitivity": [], "layer_drop": 1}
TRANSFORMER = {"family": "transformer", "num_layers": 1, "layer_init": "uniform", "max_length": 32}
LAYER_TERMS = {"ce": {"weight": 0.5}, "kd": {"weight": 0.5}, "hidden": {"layer_map": {2: 1}},
               "attention": {"layer_map": {2: 1}}}


def run_config(tmp_path, student: dict, loss: dict, prune_section: dict | None = None, **sections):
    """A run over the hand-written splits, emitting layer 2's hidden states and attention maps;
    ``sections`` adds others (``export``)."""
    return validate_config({
        "name": "t", "output_dir": str(tmp_path), "seed": 0, "teacher": {"max_length": 32},
        "data": {"train": {"path": "x.tsv"}, "dev": {"path": "y.tsv"}, "labels": [0, 1]},
        "label": {"shard_rows": 96, "num_actors": 1, "emit": {"hidden_layers": [2], "attention_layers": [2]}},
        "train": {"epochs": 3, "batch_size": 16, "lr": 5e-3, "ce_only_baseline": False, "student": student,
                  "loss": loss},
        "prune": prune_section, "tracking": {"mode": "disabled"}, **sections})


def write_split(path, texts: list[str], labels: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": pa.array(range(len(texts)), pa.int64()), "text": texts,
                             "label": pa.array(labels, pa.int64())}), path)


@pytest.mark.slow  # a label run, two Ray Train runs and a prune run: 1.5-7 minutes per architecture on 2 cores
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_label_train_and_prune_stages(architecture, tiny_encoder, tmp_path, ray_local):
    prunable = architecture in ("bert", "mpnet")
    cfg = run_config(tmp_path, TRANSFORMER, LAYER_TERMS, PRUNE if prunable else None)
    run_dir = RunDir(cfg.run_dir)
    texts, labels = good_bad(ROWS, seed=11)
    write_split(run_dir.split_file("transfer"), texts, labels)
    write_split(run_dir.split_file("train"), texts[:96], labels[:96])
    write_split(run_dir.split_file("dev"), *good_bad(32, seed=12))
    shutil.copytree(tiny_encoder(architecture, initializer_range=0.02), run_dir.teacher_dir)

    assert label.run(cfg, run_dir)["rows"] == ROWS
    index = read_json(run_dir.shard_index)
    table = pa.concat_tables([pq.read_table(run_dir.stage_dir("label") / e["file"]) for e in index["shards"]])
    tokenizer = AutoTokenizer.from_pretrained(run_dir.teacher_dir)
    teacher = AutoModelForSequenceClassification.from_pretrained(run_dir.teacher_dir).eval()
    rows = table.slice(0, 4).to_pylist()
    with torch.no_grad():
        direct = teacher(**tokenizer([r["text"] for r in rows], padding=True, truncation=True, max_length=32,
                                     return_tensors="pt"), output_hidden_states=True)
    np.testing.assert_allclose(np.array([r["logits"] for r in rows]), direct.logits.numpy(), atol=1e-5)
    for i, row in enumerate(rows):
        hidden = np.array(row["hidden_2"], dtype=np.float32).reshape(row["length"], 32)  # fp16 storage
        np.testing.assert_allclose(hidden, direct.hidden_states[2][i, :row["length"]].numpy(), atol=2e-2)
        assert len(row["attention_2"]) == 4 * row["length"] ** 2  # [H, T, T] of the real tokens

    history = train.run(cfg, run_dir)["kd"]["history"]
    assert {"loss_kd", "loss_hidden", "loss_attention"} <= set(history[0])
    assert all(math.isfinite(h[k]) for h in history for k in h)
    assert history[-1]["loss"] < history[0]["loss"]
    student = load_student(run_dir.student_dir("kd"))
    assert type(student.model) is type(teacher) and student.teacher_layers == [2]

    if prunable:
        summary = prune.run(cfg, run_dir)
        assert set(summary["models"]) == {"teacher", "kd"}
        for name, layers in (("teacher", 2), ("kd", 1)):
            result = summary["models"][name]
            assert (result["heads_before"], result["heads_after"]) == (4 * layers, 2 * layers)
            assert result["ffn_after"] == 32 * layers and result["parameters_after"] < result["parameters_before"]
        assert summary["layer_drop"]["layers_after"] == 1
    else:
        pruning = run_config(tmp_path, TRANSFORMER, LAYER_TERMS, PRUNE)
        with pytest.raises(ConfigError, match=f"^prune: pruning slices bert and mpnet models, and the teacher is "
                                              f"'{architecture}'; remove the prune section$"):
            prune.run(pruning, run_dir)

    if architecture in ("bert", "roberta"):  # BERT's embedding table: test_train.py's teacher-embedding test
        return
    bilstm = run_config(tmp_path, {"family": "bilstm", "embed_dim": 32, "hidden_dim": 16, "max_length": 32,
                                   "init_from_teacher_embeddings": True},
                        {"ce": {"weight": 0.5}, "kd": {"weight": 0.5}})
    history = train.run(bilstm, run_dir.for_stage("bilstm"))["kd"]["history"]  # its own Ray Train storage
    assert history[-1]["loss"] < history[0]["loss"]
    embedding = load_student(run_dir.student_dir("kd")).encoder.embedding.weight
    assert embedding.shape == teacher.get_input_embeddings().weight.shape


@pytest.mark.slow  # a label run, a Ray Train run, a prune run and three ONNX exports: 75 s on 2 shared cores
def test_a_student_from_another_checkpoint_trains_prunes_and_exports(tiny_encoder, tmp_path, ray_local):
    checkpoint = tiny_encoder("bert", head=None, hidden_size=48, num_hidden_layers=6)  # MiniLM's role
    student = {**TRANSFORMER, "num_layers": 2, "init_checkpoint": str(checkpoint)}
    prune_section = {**PRUNE, "models": ["kd"], "layer_drop": None}
    cfg = run_config(tmp_path, student, {"ce": {"weight": 0.5}, "kd": {"weight": 0.5}}, prune_section,
                     export={"formats": ["onnx"]})
    run_dir = RunDir(cfg.run_dir)
    texts, labels = good_bad(ROWS, seed=11)
    write_split(run_dir.split_file("transfer"), texts, labels)
    write_split(run_dir.split_file("train"), texts[:96], labels[:96])
    write_split(run_dir.split_file("dev"), *good_bad(32, seed=12))
    shutil.copytree(tiny_encoder("mpnet", initializer_range=0.02), run_dir.teacher_dir)
    label.run(cfg, run_dir)

    history = train.run(cfg, run_dir)["kd"]["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    kd = load_student(run_dir.student_dir("kd"))
    assert type(kd.model) is BertForSequenceClassification and kd.hidden_size == 48
    assert (kd.init_checkpoint, kd.teacher_layers) == (str(checkpoint), [3, 6])

    summary = prune.run(cfg, run_dir)["models"]["kd"]
    own = AutoTokenizer.from_pretrained(checkpoint)  # the vocabulary is cut to the student's ids, not the teacher's
    kept = used_token_ids(own, texts, None, 32)
    pruned_dir = run_dir.stage_dir("prune") / "kd-pruned"
    assert AutoConfig.from_pretrained(pruned_dir).pruning["vocab"] == kept and summary["vocab_after"] == len(kept)
    assert kept != used_token_ids(AutoTokenizer.from_pretrained(run_dir.teacher_dir), texts, None, 32)
    assert AutoTokenizer.from_pretrained(pruned_dir).get_vocab() == own.get_vocab()

    variants = export.run(cfg, run_dir)["variants"]
    assert set(variants) == {"teacher/onnxruntime-fp32", "kd/onnxruntime-fp32", "kd-pruned/onnxruntime-fp32"}
    inputs = {name: read_json(run_dir.stage_dir("export") / f"{name}-onnx" / "meta.json")["input_names"]
              for name in ("teacher", "kd", "kd-pruned")}
    assert inputs["teacher"] == ["input_ids", "attention_mask"]  # MPNet reads no segment ids, the BERT student does
    assert inputs["kd"] == inputs["kd-pruned"] == ["input_ids", "attention_mask", "token_type_ids"]
