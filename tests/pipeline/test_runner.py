"""What makes a stage stale: its inputs' content (not their location or modification time), its
config sections and the versions of the libraries that shape it; ``--dry-run`` says which."""

import os
import shutil

import yaml

from pipeline import artifacts
from pipeline.artifacts import RunDir, fingerprint, library_versions
from pipeline.cli.main import main
from pipeline.config.loading import validate_config
from pipeline.runner import STAGE_LIBRARIES, STAGES, run_pipeline, stage_inputs


def data_fingerprint(root):
    cfg = validate_config({"name": "t", "data": {"root": str(root), "train": {"path": "train.tsv"},
                                                 "dev": {"path": "dev.tsv"}, "labels": [0, 1]}})
    return fingerprint("data", stage_inputs(cfg, "data"))


def test_data_stage_fingerprint_follows_file_content_only(tmp_path):
    first = tmp_path / "a"
    first.mkdir()
    (first / "train.tsv").write_text("sentence\tlabel\ngood\t1\n")
    (first / "dev.tsv").write_text("sentence\tlabel\nbad\t0\n")
    original = data_fingerprint(first)

    os.utime(first / "train.tsv", (0, 0))  # touched
    copy = tmp_path / "b"
    shutil.copytree(first, copy)  # moved elsewhere
    assert data_fingerprint(first) == original == data_fingerprint(copy)

    (copy / "train.tsv").write_text("sentence\tlabel\ngood\t0\n")  # same size, other content
    assert data_fingerprint(copy) != original


def test_one_stage_list_runs_the_stages_a_config_has_sections_for(tmp_path):
    single = validate_config({"name": "t", "data": {"train": {"path": "a"}, "dev": {"path": "b"}, "labels": [0, 1]}})
    multi = validate_config({"name": "mt", "tasks": {"sst": str(tmp_path)}})
    assert [stage for stage in STAGES if single.runs_stage(stage)] == ["data", "finetune", "label", "train",
                                                                         "evaluate"]
    assert [stage for stage in STAGES if multi.runs_stage(stage)] == ["train", "evaluate"]  # the rest: its sources'
    # a single-task run's train inputs are what they were before multi-task runs shared the stage list
    assert stage_inputs(single, "train") == {"config section train": single.train, "config seed": single.seed}


def test_a_library_upgrade_or_a_config_change_reruns_what_it_shapes_and_dry_run_says_why(
        pair_task, tiny_teacher_dir, monkeypatch, capsys):
    """The data stage counts tokenizers' version, finetune does not: a (patched) tokenizers upgrade
    redoes data and, after it, finetune; ``--dry-run`` names the library, then a changed
    ``finetune.lr`` names that section only, and nothing runs."""
    cfg = pair_task.config(teacher={"model": str(tiny_teacher_dir), "max_length": 16}, tracking={"mode": "disabled"})
    config_file = pair_task.root / "c.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    first = run_pipeline(cfg, until="finetune")
    installed = first["data"]["fingerprint_parts"]["versions"]
    assert installed == library_versions(["distill", *STAGE_LIBRARIES["data"]]) and installed["distill"] is not None
    assert first["finetune"]["fingerprint_parts"]["upstream"] == first["data"]["fingerprint"]

    def dry(*extra):
        assert main(["run", str(config_file), "--until", "finetune", "--dry-run", *extra]) == 0
        return capsys.readouterr().out.splitlines()

    assert dry() == ["data      reuse", "finetune  reuse"]
    real = artifacts.library_versions
    monkeypatch.setattr(artifacts, "library_versions",
                        lambda names: {**real(names), **({"tokenizers": "99.0"} if "tokenizers" in names else {})})
    assert dry() == [f"data      rerun: tokenizers {installed['tokenizers']} -> 99.0",
                     "finetune  rerun: upstream stage data reruns"]
    assert {stage: m["finished_at"] for stage, m in first.items()} == {
        stage: RunDir(cfg.run_dir).manifest(stage)["finished_at"] for stage in first}  # the dry run ran nothing

    upgraded = run_pipeline(cfg, until="finetune")
    assert all(upgraded[stage]["fingerprint"] != first[stage]["fingerprint"] for stage in first)
    assert upgraded["data"]["fingerprint_parts"]["versions"]["tokenizers"] == "99.0"
    assert dry() == ["data      reuse", "finetune  reuse"]
    assert dry("--set", "finetune.lr=1e-3") == ["data      reuse", "finetune  rerun: config section finetune changed"]
    assert dry("--force", "data") == ["data      rerun: forced with --force",
                                      "finetune  rerun: upstream stage data reruns"]
