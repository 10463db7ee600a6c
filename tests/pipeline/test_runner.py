"""What makes a stage stale: its inputs' content, not their location or modification time."""

import os
import shutil

from pipeline.artifacts import fingerprint
from pipeline.config.loading import validate_config
from pipeline.runner import STAGES, stage_inputs


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
    # a single-task run's train fingerprint is what it was before multi-task runs shared the stage list
    assert stage_inputs(single, "train") == [single.train, single.seed]
