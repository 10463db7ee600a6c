"""What makes a stage stale: its inputs' content, not their location or modification time."""

import os
import shutil

from pipeline.artifacts import fingerprint
from pipeline.config_loading import validate_config
from pipeline.runner import stage_inputs


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
