"""A multi-task LSTM student trained on a sentence task and a tagging task at once, from two
finished single-task runs, through the train and evaluate stages; and the multi-task config.

The source runs are written as the data, finetune and label stages leave them, with teacher
logits that follow each task's rule: a sentence is positive when it holds "good"; a city
name is ``B-LOC``, every other word ``O``.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from core.artifacts import atomic_write_json, sha256_file
from pipeline.artifacts import RunDir
from pipeline.config.sections import MultiTaskRunConfig
from pipeline.config.loading import validate_config
from core.errors import ArtifactError, ConfigError
from pipeline.runner import run_pipeline
from test_token_task import saved_student_figures
from test_train import sentences  # the sentence rule of the train stage's tests

FILLER = "the movie plot was quite a story film scenes music really very met in from said".split()
CITIES = ["Paris", "Berlin", "Tokyo", "Lagos"]
TAGS = ["O", "B-LOC"]


def sentence_rows(count: int, seed: int) -> dict[str, list]:
    texts, labels = sentences(count, seed)
    return {"text": texts, "label": labels}


def tagged_rows(count: int, seed: int) -> dict[str, list]:
    rng = random.Random(seed)
    sentences = []
    for _ in range(count):
        words = rng.choices(FILLER, k=rng.randint(2, 6))
        words.insert(rng.randrange(len(words) + 1), rng.choice(CITIES))
        sentences.append(words)
    return {"tokens": sentences, "tags": [[int(w in CITIES) for w in words] for words in sentences]}


def rule_logits(rows: dict[str, list]) -> dict[str, pa.Array]:
    """The teacher's columns of a label shard: logits that follow the rule (per word for tags)."""
    if "text" in rows:
        return {"logits": pa.array([[-3.0, 3.0] if y else [3.0, -3.0] for y in rows["label"]], pa.list_(pa.float32()))}
    flat = [[v for tag in tags for v in ([-3.0, 3.0] if tag else [3.0, -3.0])] for tags in rows["tags"]]
    return {"logits": pa.array(flat, pa.list_(pa.float32())),
            "num_words": pa.array([len(t) for t in rows["tokens"]], pa.int32()),
            "word_mask": pa.array([[True] * len(t) for t in rows["tokens"]], pa.list_(pa.bool_()))}


def write_rows(path: Path, rows: dict[str, list], extra: dict[str, pa.Array] | None = None) -> None:
    count = len(next(iter(rows.values())))
    columns = {"id": pa.array(range(count), pa.int64())}
    for name, values in rows.items():
        columns[name] = pa.array(values, {"text": pa.string(), "label": pa.int64(), "tokens": pa.list_(pa.string()),
                                          "tags": pa.list_(pa.int64())}[name])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({**columns, **(extra or {})}), path)


def source_run(root: Path, name: str, task: str, make_rows, teacher_dir: Path) -> Path:
    """A single-task run folder as ``distill run --until label`` leaves it; returns the folder."""
    cfg = validate_config({"name": name, "output_dir": str(root), "tracking": {"mode": "disabled"},
                           "data": {"task": task, "train": {"path": "x"}, "dev": {"path": "y"},
                                    "labels": TAGS if task == "token" else [0, 1]},
                           "train": {"student": {"family": "cnn_lstm" if task == "token" else "bilstm"}}})
    run = RunDir(cfg.run_dir)
    train_rows, dev_rows, unlabeled = make_rows(96, 1), make_rows(48, 2), make_rows(96, 3)
    transfer = {key: train_rows[key] + unlabeled[key] for key in train_rows}
    write_rows(run.split_file("train"), train_rows)
    write_rows(run.split_file("dev"), dev_rows)
    write_rows(run.split_file("transfer"), transfer)
    write_rows(run.shard_file(0), transfer, rule_logits(transfer))
    atomic_write_json(run.shard_index, {"num_labels": 2, "shards": [
        {"shard": 0, "file": run.shard_file(0).name, "rows": 192, "sha256": sha256_file(run.shard_file(0))}]})
    shutil.copytree(teacher_dir, run.teacher_dir)
    (run.root / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    for stage in ("data", "finetune", "label"):
        run.publish(stage, f"{stage}-fp", {}, 0.0)
    return run.root


def multitask_config(root: Path, tasks: dict[str, Path], **train_section) -> MultiTaskRunConfig:
    return validate_config({
        "name": "mt", "output_dir": str(root), "tracking": {"mode": "disabled"}, "tasks": tasks,
        "train": {"epochs": 3, "batch_size": 16, "lr": 1e-2,
                  "student": {"family": "multitask_lstm", "embed_dim": 16, "hidden_dim": 16, "attention_dim": 8,
                              "max_length": 24},
                  **train_section},
        "evaluate": {"latency_runs": 5, "latency_warmup": 1}})


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tiny_teacher_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    return {"sst": source_run(root, "sst", "sequence", sentence_rows, tiny_teacher_dir),
            "ner": source_run(root, "ner", "token", tagged_rows, tiny_teacher_dir)}


@pytest.mark.slow  # about 90 s: it keeps the default suite under 15 minutes; the parts below run in it
def test_one_student_learns_both_tasks_from_their_teachers(tmp_path, sources, ray_local):
    # no CE-only twin: it is the same fit() on the labeled files, and would double the test's time
    cfg = multitask_config(tmp_path, sources, ce_only_baseline=False)
    manifests = run_pipeline(cfg)

    trained = manifests["train"]
    assert "kd" in trained and "ce_only" not in trained
    kd = trained["kd"]
    assert kd["rows"] == 192 + 192
    assert {"dev_sst", "dev_ner", "loss_kd", "loss_ce"} <= set(kd["history"][0])
    best = max(kd["history"], key=lambda h: h["dev_score"])
    assert kd["best_dev_sst"] == best["dev_sst"] and kd["best_dev_ner"] == best["dev_ner"]
    assert best["dev_score"] == pytest.approx((best["dev_sst"] + best["dev_ner"]) / 2)

    evaluation = manifests["evaluate"]
    sst, ner = evaluation["tasks"]["sst"], evaluation["tasks"]["ner"]
    assert sst["kind"] == "sentence" and ner["kind"] == "token"
    assert sst["kd"]["dev_accuracy"] == pytest.approx(kd["best_dev_sst"], abs=1e-4)  # the published student is the best
    assert sst["kd"]["dev_accuracy"] > 0.9 and ner["kd"]["dev_entity_f1"] > 0.9
    assert "ce_only" not in sst and set(evaluation["models"]) == {"kd"}
    assert sst["teacher"] is None  # the source runs were not evaluated
    assert evaluation["latency_task"] == "sst"
    figures = saved_student_figures(RunDir(cfg.run_dir).student_dir("kd"))
    assert {key: evaluation["models"]["kd"][key] for key in figures} == figures
    # each task's trivial baseline, scored like its students; good students are not flagged
    majority = max((0, 1), key=sentence_rows(96, 1)["label"].count)
    assert ner["baseline"] == {"rule": "every word: O", "dev_entity_f1": 0.0, "dev_entity_precision": 0.0,
                               "dev_entity_recall": 0.0}
    assert sst["baseline"]["rule"] == f"majority class: {majority}"
    majority_share = sentence_rows(48, 2)["label"].count(majority) / 48
    assert sst["baseline"]["dev_accuracy"] == pytest.approx(majority_share, abs=1e-4)  # stored to 4 decimals
    assert sst["flags"] == {} and ner["flags"] == {}
    report = (RunDir(cfg.run_dir).report_file).read_text()
    assert "| ner | dev entity f1 | - |" in report and "| sst | dev accuracy | - |" in report
    assert f"| {ner['kd']['dev_entity_f1']:.4f} | - | 0.0000 |" in report  # the baseline column beside KD

    assert run_pipeline(cfg)["train"] == trained  # a rerun reuses the students


def test_missing_source_run_names_its_config_file(tmp_path, ray_local):
    cfg = multitask_config(tmp_path, {"sst": tmp_path / "nowhere"})
    with pytest.raises(ArtifactError, match=r"nowhere/config\.yaml.*tasks\.sst must name a run folder"):
        run_pipeline(cfg)


@pytest.mark.parametrize(("train_section", "message"), [
    ({"student": {"family": "bilstm"}}, "train.student.family is bilstm; a config with tasks trains"),
    ({"num_workers": 2}, "train.num_workers must be 1 for a multi-task student"),
    ({"loss": {"hidden": {"weight": 1.0, "layer_map": {1: 1}}}}, "train.loss.hidden needs a transformer student"),
])
def test_multitask_config_errors(tmp_path, train_section, message):
    raw = {"name": "mt", "tasks": {"a": str(tmp_path)}, "train": train_section}
    with pytest.raises(ConfigError, match=message):
        validate_config(raw)


def test_multitask_family_in_a_single_task_run_points_to_tasks():
    with pytest.raises(ConfigError, match="top-level tasks section"):
        validate_config({"name": "t", "data": {"train": {"path": "a"}, "dev": {"path": "b"}, "labels": [0, 1]},
                         "train": {"student": {"family": "multitask_lstm"}}})


def test_typo_in_a_multitask_config_suggests_the_field(tmp_path):
    with pytest.raises(ConfigError, match="did you mean train.epochs"):
        validate_config({"name": "mt", "tasks": {"a": str(tmp_path)}, "train": {"epoch": 2}})

