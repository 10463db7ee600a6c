"""The Python API as a notebook uses it (issue 25): an `sst2-quick`-shaped config over the tiny teacher
and generated rows, run twice in one process (another name, another override), the results read,
a third call that reuses the first run, then the student loaded and asked about three sentences."""

import logging
import os
import sys

import pytest
import torch
import yaml

from core.errors import ArtifactError, ConfigError
from pipeline import api
from pipeline.artifacts import RunDir
from pipeline.observability.console import LOG_DIR_ENV
from students.registry import load_student as load_bare_student
from wandb_offline import wandb_files

WORDS = {1: ["good", "great", "fine", "lovely"], 0: ["bad", "awful", "poor", "dull"]}
SENTENCES = ["a great and lovely film", "an awful , dull plot", "the acting was fine"]
STAGES = ["data", "finetune", "label", "train", "evaluate"]


def write_sst2(root, rows: int) -> None:
    """``root/sst2/{train,dev}.tsv`` as SST-2 has them (``sentence``, ``label``), ``rows`` train rows."""
    (root / "sst2").mkdir(parents=True)
    for split, count in (("train", rows), ("dev", 16)):
        lines = [f"a {WORDS[i % 2][i % 4]} film number {i}\t{i % 2}" for i in range(count)]
        (root / "sst2" / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(lines) + "\n")


def tiny_config(root, teacher_dir) -> dict:
    """`sst2-quick` (a dict with its ``base``) shrunk to the tiny teacher and 40 generated rows."""
    write_sst2(root / "data", rows=40)
    return {"base": "sst2-quick", "name": "notebook-a", "output_dir": str(root / "runs"),
            "data": {"root": str(root / "data"), "train": {"limit": 24}, "unlabeled": {"skip": 24, "limit": 16}},
            "teacher": {"model": str(teacher_dir), "max_length": 16},
            "finetune": {"batch_size": 8}, "label": {"shard_rows": 16, "num_actors": 1},
            "train": {"epochs": 1, "batch_size": 8, "ce_only_baseline": False,
                      "student": {"family": "bilstm", "embed_dim": 32, "hidden_dim": 8, "max_length": 16,
                                  "init_from_teacher_embeddings": False}},
            "evaluate": {"latency_runs": 2, "latency_warmup": 0}, "ray": {"num_cpus": 2},
            "tracking": {"mode": "offline"}}


def process_state():
    """What a run must leave as it found it: Ray, the root logger, the log-folder variable, stderr."""
    import ray
    import wandb

    root = logging.getLogger()
    return (ray.is_initialized(), root.handlers[:], root.level, os.environ.get(LOG_DIR_ENV), sys.stderr,
            os.fstat(2).st_ino, wandb.run)


@pytest.mark.slow  # two tiny runs through evaluate, each starting and stopping a local Ray instance
def test_two_runs_in_one_process_then_the_student_predicts(tmp_path, tiny_teacher_dir, one_torch_thread):
    config = tiny_config(tmp_path, tiny_teacher_dir)
    state = process_state()

    first = api.run(config)  # a dict, with a base, W&B offline
    assert process_state() == state
    assert first.run_dir == tmp_path / "runs" / "notebook-a" and list(first.stages) == STAGES
    assert {stage: result.status for stage, result in first.stages.items()} == dict.fromkeys(STAGES, "ran")
    run = RunDir(first.run_dir)
    assert {stage: r.wall_s for stage, r in first.stages.items()} == {s: run.manifest(s)["wall_s"] for s in STAGES}
    assert set(first.models) == {"teacher", "kd"} and first.variants == {} and first.score_key is None
    evaluated = run.manifest("evaluate")["models"]
    for name, model in first.models.items():
        assert model.scores == {"dev_accuracy": evaluated[name]["dev_accuracy"]}
        assert 0 <= model.scores["dev_accuracy"] <= 1 and model.parameters == evaluated[name]["parameters"] > 0
        assert model.p50_ms == evaluated[name]["latency"]["p50_ms"] > 0
    assert first.models["kd"].folder == run.student_dir("kd") and first.models["teacher"].folder == run.teacher_dir
    assert "student, KD" in first.report.read_text() and "stage train: done" in first.log_file.read_text()
    assert len(wandb_files(first.run_dir)) == 1  # the offline W&B run, finished (wandb.run is None again)
    # lstat: W&B links logs/debug-core.log to its process-wide service log, which the second run writes
    written = {path: path.lstat().st_mtime_ns for path in first.run_dir.rglob("*") if path.is_file()}

    second = api.run(config, ["name=notebook-b", "train.epochs=2", "tracking.mode=disabled"])
    assert process_state() == state
    assert second.run_dir == tmp_path / "runs" / "notebook-b"
    assert {stage: result.status for stage, result in second.stages.items()} == dict.fromkeys(STAGES, "ran")
    assert len(second.stages["train"].manifest["kd"]["history"]) == 2
    assert len(first.stages["train"].manifest["kd"]["history"]) == 1
    assert {path: path.lstat().st_mtime_ns for path in written} == written  # the first run's folder untouched
    assert all(0 <= model.scores["dev_accuracy"] <= 1 for model in second.models.values())

    yaml_file = tmp_path / "notebook-a.yaml"  # the first config again, as a YAML file: every stage reused
    yaml_file.write_text(yaml.safe_dump(config))
    third = api.run(yaml_file, {"tracking.mode": "disabled"})
    assert process_state() == state
    assert {stage: result.status for stage, result in third.stages.items()} == dict.fromkeys(STAGES, "reused")
    assert third.models == first.models and third.run_dir == first.run_dir

    names = ["negative", "positive"]  # sst2's data.label_names, read from the run's config.yaml
    student = api.load_student(first.models["kd"].folder)
    predictions = student.predict(SENTENCES)
    bare = load_bare_student(first.models["kd"].folder)
    with torch.no_grad():
        logits = bare(**bare.featurize(SENTENCES)).logits  # [3, 2]
    assert [p.label for p in predictions] == [names[i] for i in logits.argmax(-1).tolist()]
    for prediction, row in zip(predictions, torch.softmax(logits, -1).tolist()):
        assert list(prediction.probabilities) == names
        assert sum(prediction.probabilities.values()) == pytest.approx(1, abs=1e-6)
        assert list(prediction.probabilities.values()) == pytest.approx(row, abs=1e-5)
    teacher = api.load_student(first.models["teacher"].folder).predict(SENTENCES[:1], None)
    assert teacher[0].label in names and sum(teacher[0].probabilities.values()) == pytest.approx(1, abs=1e-6)


def test_a_bad_config_raises_before_any_run_folder(tmp_path, tiny_teacher_dir):
    config = tiny_config(tmp_path, tiny_teacher_dir)
    with pytest.raises(ConfigError, match="did you mean train.epochs"):
        api.run(config, {"train.epoch": 2})
    with pytest.raises(ConfigError, match="validated config"):
        api.run(api.resolve_config(config, None), ["train.epochs=2"])
    assert not (tmp_path / "runs").exists()


def test_load_student_without_the_runs_labels_names_the_fix(tmp_path):
    folder = tmp_path / "copied" / "kd"
    folder.mkdir(parents=True)
    with pytest.raises(ArtifactError, match="config.yaml.*pass labels"):
        api.load_student(folder)


@pytest.mark.slow  # an ONNX export, an int8 copy of it and the benchmark stage's measurements
def test_variants_are_read_from_the_benchmark_manifest_and_a_shipped_one_predicts(tmp_path, tiny_teacher_dir, capsys):
    """A hand-built run as test_benchmark's (the tiny teacher, its ONNX export with a text graph and
    an int8 copy of that) measured by the benchmark stage: the result's variants are the manifest's,
    the ONNX variant's folder loads and predicts what the PyTorch teacher does, and so do the
    teacher's bundle through `distill predict` (every artifact checked on the dev split)."""
    from dataclasses import replace

    from compress.ort_format import convert_to_ort
    from compress.slicing import load_pruned
    from compress.text_graph import export_text_graph
    from pipeline.evaluation.variants import write_meta
    from pipeline.stages import benchmark
    from test_benchmark import build_run, int8_variant, onnx_variant

    cfg, run_dir = build_run(tmp_path, tiny_teacher_dir)
    (run_dir.root / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    meta = onnx_variant(run_dir)
    export = run_dir.root / "export" / "teacher-onnx"
    write_meta(export, replace(meta, settings={**meta.settings, "ort": convert_to_ort(export / "model.onnx")}))
    export_text_graph(load_pruned(run_dir.teacher_dir).eval(), run_dir.teacher_dir, export / "model.onnx",
                      export / "model_text.onnx", cfg.teacher.max_length)
    int8_variant(run_dir)
    manifest = run_dir.publish("benchmark", "fp", benchmark.run(cfg, run_dir), 1.0)
    result = api.read_result(cfg, {"benchmark": manifest}, {"benchmark": manifest}, run_dir.root / "log")
    assert result.stages["benchmark"].status == "reused" and result.score_key == "dev_accuracy"
    assert {name: v.folder.relative_to(run_dir.root).as_posix() for name, v in result.variants.items()} == {
        "teacher": "finetune/teacher", "teacher/onnxruntime-fp32": "export/teacher-onnx",
        "teacher/onnxruntime-fp32-ort": "export/teacher-onnx",  # the .ort file's row: its export's folder
        "teacher/onnxruntime-int8-dynamic": "quantize/teacher-int8-dynamic"}
    for row in manifest["variants"]:
        variant = result.variants[row["name"]]
        assert (variant.score, variant.size_mb, variant.p50_ms) == (row["dev_accuracy"], row["size_mb"],
                                                                     row["threads"]["1"]["p50_ms"])
    shipped = api.load_student(result.variants["teacher/onnxruntime-fp32"].folder).predict(SENTENCES)
    eager = api.load_student(run_dir.teacher_dir).predict(SENTENCES)
    assert [p.label for p in shipped] == [p.label for p in eager] and {p.label for p in eager} <= {"0", "1"}
    for ours, theirs in zip(shipped, eager):
        assert list(ours.probabilities.values()) == pytest.approx(list(theirs.probabilities.values()), abs=1e-4)
    check_bundle(run_dir.root / manifest["bundles"]["teacher"], [p.label for p in eager], capsys)


def check_bundle(bundle, labels: list[str], capsys) -> None:
    """The teacher's bundle: its fp32 ONNX graph and text graph predict the PyTorch teacher's labels
    (`distill predict`) and agree on every dev row, the text graph's ids equal the tokenizer's, and
    `--check` exits 1 exactly when an artifact (the int8 copy, if picked) falls under 99.5 % agreement."""
    from pipeline.cli import predict
    from pipeline.cli.main import main

    for artifact in ("onnxruntime-fp32/model.onnx", "onnxruntime-fp32/model_text.onnx"):
        assert main(["predict", str(bundle), *SENTENCES, "--artifact", artifact]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert [line.split("\t")[0] for line in lines] == labels
        assert [line.split("\t")[2] for line in lines] == SENTENCES
    report = predict.check(predict.open_bundle(bundle))
    listed = [a["name"] for a in predict.open_bundle(bundle).info["artifacts"]]  # the int8 copy when it is a pick
    assert report["rows"] == 24 and list(report["artifacts"]) == listed
    assert {"onnxruntime-fp32/model.onnx", "onnxruntime-fp32/model_text.onnx"} <= set(listed)
    assert report["artifacts"]["onnxruntime-fp32/model.onnx"]["agreement"] == 1.0
    assert report["artifacts"]["onnxruntime-fp32/model_text.onnx"] == {"agreement": 1.0, "ids_equal": 24}
    assert report["passed"] == all(a["agreement"] >= predict.AGREEMENT_TARGET for a in report["artifacts"].values())
    assert main(["predict", str(bundle), "--check"]) == (0 if report["passed"] else 1)
    assert "100.00%  24/24" in capsys.readouterr().out


def test_the_readmes_example_names_a_config_that_validates():
    """The README's Python example: every ``api.run(...)`` call of it takes a config that loads
    (its arguments are literals), as test_readme checks the documented commands."""
    import ast
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    (example,) = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    calls = [node for node in ast.walk(ast.parse(example)) if isinstance(node, ast.Call)
             and ast.unparse(node.func) == "api.run"]
    assert calls, "the README's example runs nothing"
    for call in calls:
        api.resolve_config(*(ast.literal_eval(arg) for arg in call.args))  # ConfigError if it does not load


def test_a_tagger_gives_each_word_the_tag_of_its_own_word_logits(tmp_path, tiny_token_teacher_dir):
    """A token task's model (the tiny token teacher, as a run's finetune stage leaves it) takes word
    lists and tags every word as the evaluate stage's WordTagger does (its first sub-token)."""
    import shutil

    from pipeline.evaluation.scoring import teacher_model

    tags = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
    folder = shutil.copytree(tiny_token_teacher_dir, tmp_path / "ner" / "finetune" / "teacher")
    (tmp_path / "ner" / "config.yaml").write_text(yaml.safe_dump(
        {"name": "ner", "data": {"task": "token", "labels": tags}, "teacher": {"max_length": 16}}))
    sentences = [["John", "lives", "in", "Paris"], ["Acme", "hired", "Mary"]]
    predictions = api.load_student(folder).predict(sentences)
    model, featurize, _ = teacher_model(folder, 16, "token")
    with torch.no_grad():
        logits = model(**featurize(sentences)).logits  # [2, 4, 7]: words of the longer sentence
    assert [p.words for p in predictions] == [tuple(words) for words in sentences]
    for prediction, words, row in zip(predictions, sentences, logits.argmax(-1).tolist()):
        assert list(prediction.tags) == [tags[i] for i in row[:len(words)]]
        assert all(sum(p.values()) == pytest.approx(1, abs=1e-6) for p in prediction.probabilities)
