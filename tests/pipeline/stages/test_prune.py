"""Stage ``prune`` on a hand-built finished run: a tiny random 4-head BERT teacher (and a transformer
student), the soft labels of :mod:`test_train`'s "good"/"bad" task written by hand."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from compress.slicing import kept_heads, load_pruned, pruning_state
from compress.vocabulary import unkept_token_share, used_token_ids
from core.errors import ConfigError
from core.schema import TaskKind
from pipeline.evaluation import scoring
from pipeline.stages import evaluate, prune
from pipeline.artifacts import RunDir
from pipeline.config.sections import RunConfig
from pipeline.config.loading import validate_config
from pipeline.config.sections import task_kind
from pipeline.runner import run_pipeline, stage_fingerprint
from pipeline.training.shards import soft_label_files
from pipeline.evaluation.variants import read_meta, run_models
from students.terms import LossConfig
from students.transformer import TransformerStudent
from test_train import MINILM, build_run

HEADS, FFN = 4, 64
PRUNE = {"heads": 0.5, "ffn": 0.5, "iterations": 2, "score_rows": 64, "recovery_epochs": 1.5,
         "recovery_rows": 128, "batch_size": 32, "lr": 1e-3, "sensitivity": [0.5], "layer_drop": 1}
RECOVERY_STEPS = round(1.5 * math.ceil(128 / 32))  # 1.5 epochs over 4 batches of the first 128 rows
FINETUNE = {"epochs": 2, "batch_size": 16, "lr": 1e-3}  # the teacher's fine-tuning, which the layer-drop repeats
LAYER_DROP_STEPS = 2 * math.ceil(128 / 16)  # 2 epochs over the 128 labeled rows, 16 a batch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on one thread: on a shared 2-core machine more threads make them far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_bert(layers: int, seed: int) -> BertForSequenceClassification:
    """A random BERT classifier: hidden 32, 4 heads, FFN 64, the MiniLM vocabulary, 2 labels."""
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=layers, num_attention_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=64, num_labels=2))


def finished_run(tmp_path, student: dict, **prune_section) -> tuple[RunConfig, RunDir]:
    """:func:`test_train.build_run`'s run with a 2-layer 4-head teacher and a ``prune`` section
    (``PRUNE`` updated by ``prune_section``); with a transformer student, a 1-layer one in train/kd/."""
    cfg, run_dir = build_run(tmp_path, student=student)
    cfg = validate_config({**cfg.model_dump(mode="json"), "prune": {**PRUNE, **prune_section},
                           "finetune": FINETUNE, "tracking": {"mode": "disabled"},
                           "evaluate": {"latency_runs": 2, "latency_warmup": 0}})
    shutil.rmtree(run_dir.teacher_dir)
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    tiny_bert(layers=2, seed=0).save_pretrained(run_dir.teacher_dir)
    tokenizer.save_pretrained(run_dir.teacher_dir)
    if student["family"] == "transformer":
        student = TransformerStudent(tiny_bert(layers=1, seed=1), tokenizer, cfg.train.student, [])
        student.save(run_dir.student_dir("kd"))
    return cfg, run_dir


TRANSFORMER = {"family": "transformer", "num_layers": 1, "max_length": 16}
BILSTM = {"family": "bilstm", "embed_dim": 32, "hidden_dim": 32, "max_length": 16}


def transfer_vocabulary(run_dir: RunDir, max_length: int) -> int:
    """How many ids the tokenizer gives the transfer set's texts (specials included)."""
    texts, _ = prune.transfer_texts(soft_label_files(run_dir, 2, LossConfig()), TaskKind.SENTENCE)
    return len(used_token_ids(AutoTokenizer.from_pretrained(MINILM), texts, None, max_length))


def tokenizer_featurize(folder, max_length: int):
    """The featurizer of a saved model's tokenizer (as the stage's)."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return lambda texts, pairs=None: dict(tokenizer(texts, pairs, padding=True, truncation=True,
                                                    max_length=max_length, return_tensors="pt"))


def test_teacher_and_transformer_student_pruned_recovered_and_saved(tmp_path):
    cfg, run_dir = finished_run(tmp_path, TRANSFORMER)
    summary = prune.run(cfg, run_dir)

    assert set(summary["models"]) == {"teacher", "kd"}
    dev = scoring.read_split(run_dir.split_file("dev"), task_kind(cfg.data))
    for name, layers, max_length in (("teacher", 2, cfg.teacher.max_length), ("kd", 1, 16)):
        result = summary["models"][name]
        heads, neurons = HEADS * layers, FFN * layers
        assert (result["heads_before"], result["ffn_before"], result["vocab_before"]) == (heads, neurons, 30522)
        assert result["heads_after"] == heads - round(0.5 * heads)
        assert result["ffn_after"] == neurons - round(0.5 * neurons)
        assert result["vocab_after"] == transfer_vocabulary(run_dir, max_length) < 200
        assert result["parameters_after"] < result["parameters_before"] - 29_000 * 32
        assert [step["step"] for step in result["steps"]] == [0, 1, 2]
        assert result["steps"][1]["heads_left"] == heads - round(0.5 * heads / 2)
        assert result["recovery_steps"] == RECOVERY_STEPS
        assert math.isfinite(result["recovery_loss_first"]) and math.isfinite(result["recovery_loss_last"])
        for key in ("dev_accuracy_before", "dev_accuracy_structured", "dev_accuracy_pruned", "dev_accuracy_recovered"):
            assert 0 <= result[key] <= 1
        assert result["dev_unkept_token_share"] == round(unkept_token_share(
            AutoTokenizer.from_pretrained(MINILM), dev.texts, load_pruned(run_dir.stage_dir("prune") / f"{name}-pruned")
            .get_input_embeddings().kept_ids(), max_length=max_length), 4)
        assert result["plots"] == [f"sensitivity-{name}.png", f"head_importance-{name}.png"]
        for plot in result["plots"]:
            assert (run_dir.stage_dir("prune") / plot).read_bytes()[:4] == b"\x89PNG"

        folder = run_dir.stage_dir("prune") / f"{name}-pruned"
        reloaded = load_pruned(folder)
        kinds = ("parameters", "heads", "ffn", "vocab")
        assert prune.structure(reloaded) == {key: result[f"{key}_after"] for key in kinds}
        reloaded_accuracy = prune.dev_accuracy(reloaded, tokenizer_featurize(folder, max_length), dev)
        assert reloaded_accuracy == result["dev_accuracy_recovered"]
        meta = read_meta(folder)
        assert (meta.name, meta.model, meta.parent, meta.method, meta.backend, meta.precision) == (
            f"{name}-pruned", f"{name}-pruned", name, "prune", "pytorch", "fp32")
        assert meta.file == meta.source == f"prune/{name}-pruned"
        assert meta.family == ("teacher" if name == "teacher" else "transformer")
        assert meta.settings["kept_heads"] == kept_heads(reloaded)
        assert sum(meta.settings["heads_per_layer"]) == result["heads_after"]
        assert meta.settings["neurons_per_layer"] == pruning_state(reloaded)["intermediate_sizes"]
        assert meta.settings["vocab_size"] == result["vocab_after"]
        assert meta.settings["recovery"]["steps"] == RECOVERY_STEPS
        assert (meta.settings["recovery"]["warmup_ratio"], meta.settings["recovery"]["weight_decay"]) == (0.06, 0.01)

    baseline = summary["layer_drop"]
    assert (baseline["layers_before"], baseline["layers_after"], baseline["dropped"]) == (2, 1, [1])
    assert baseline["parameters_after"] < baseline["parameters_before"]
    assert baseline["recovery_steps"] == LAYER_DROP_STEPS
    assert 0 <= baseline["dev_accuracy_finetuned"] <= 1
    layerdrop = run_dir.stage_dir("prune") / "teacher-layerdrop"
    assert load_pruned(layerdrop).config.num_hidden_layers == 1
    meta = read_meta(layerdrop)
    assert (meta.method, meta.parent, meta.family, meta.settings["dropped_layers"]) == (
        "layer_drop", "teacher", "teacher", [1])
    recipe = meta.settings["recovery"]
    assert (recipe["epochs"], recipe["batch_size"], recipe["lr"], recipe["warmup_ratio"], recipe["steps"]) == (
        2, 16, 1e-3, 0.06, LAYER_DROP_STEPS)
    assert list(run_models(run_dir)) == ["teacher", "kd", "kd-pruned", "teacher-layerdrop", "teacher-pruned"]


def test_vocabulary_cut_gives_the_share_of_dev_tokens_it_turns_into_unk(tmp_path):
    cfg, run_dir = finished_run(tmp_path, TRANSFORMER)
    target = prune.load_prunable(cfg, run_dir, "kd")
    dev = scoring.Split(["good film zebra", "bad plot"], None, [1, 0])  # no zebra in the transfer set

    share = prune.cut_vocabulary(target, soft_label_files(run_dir, 2, LossConfig()), TaskKind.SENTENCE, dev)

    assert share == 1 / 5
    assert prune.structure(target.model)["vocab"] == transfer_vocabulary(run_dir, 16)


def test_bilstm_student_is_left_out_and_the_teacher_pruned(tmp_path):
    cfg, run_dir = finished_run(tmp_path, BILSTM, iterations=1, vocabulary=False, sensitivity=[],
                                recovery_epochs=0, layer_drop=None)
    assert cfg.prune.models == ["teacher"]  # prune.models left out: the kd student only when it is a transformer
    summary = prune.run(cfg, run_dir)

    assert set(summary["models"]) == {"teacher"} and summary["layer_drop"] is None
    teacher = summary["models"]["teacher"]
    assert (teacher["heads_after"], teacher["ffn_after"], teacher["vocab_after"]) == (4, 64, 30522)
    assert teacher["recovery_steps"] == 0 and teacher["recovery_loss_first"] is None
    assert teacher["dev_accuracy_recovered"] == teacher["dev_accuracy_pruned"] == teacher["dev_accuracy_structured"]
    assert teacher["dev_unkept_token_share"] == 0.0
    assert teacher["plots"] == ["head_importance-teacher.png"]
    assert sorted(p.name for p in run_dir.stage_dir("prune").iterdir()) == ["head_importance-teacher.png",
                                                                            "teacher-pruned"]


def test_layer_drop_of_every_teacher_layer_fails_before_work(tmp_path):
    cfg, run_dir = finished_run(tmp_path, BILSTM, layer_drop=2)
    with pytest.raises(ConfigError, match=r"prune\.layer_drop: 2 of the teacher's 2 layers"):
        prune.run(cfg, run_dir)
    assert not (run_dir.root / "prune").exists()


def test_token_task_is_refused_when_the_config_is_read():
    with pytest.raises(ConfigError, match="prune: pruning covers sentence and pair classifiers.*remove the prune "
                                          "section"):
        validate_config({"name": "t", "data": {"task": "token", "train": {"path": "a"}, "dev": {"path": "b"},
                                               "labels": ["O", "B-PER", "I-PER"]},
                         "train": {"student": {"family": "cnn_lstm"}}, "prune": {}})


def test_runner_runs_prune_once_and_then_reuses_it(tmp_path):
    cfg, run_dir = finished_run(tmp_path, BILSTM, iterations=1, sensitivity=[], recovery_epochs=0.5,
                                layer_drop=None)
    upstream = ""
    summaries = {"data": {"train": {"rows": 128}, "transfer": {"rows": 384, "label_counts": {"-1": 256}}},
                 "evaluate": evaluate.run(cfg, run_dir)}
    for stage in ("data", "finetune", "label", "train", "evaluate"):  # what the stages before would publish
        upstream = stage_fingerprint(cfg, stage, upstream)
        run_dir.publish(stage, upstream, summaries.get(stage, {}), 0.0)

    first = run_pipeline(cfg, until="prune")
    assert list(first) == ["data", "finetune", "label", "train", "evaluate", "prune"]
    assert first["prune"]["models"]["teacher"]["heads_after"] == 4
    meta_file = run_dir.stage_dir("prune") / "teacher-pruned" / "meta.json"
    written = meta_file.stat().st_mtime_ns

    again = run_pipeline(cfg, until="prune")
    assert again["prune"] == first["prune"]
    assert meta_file.stat().st_mtime_ns == written  # reused, not pruned again
