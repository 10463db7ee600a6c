"""A labeling run killed with SIGKILL resumes to exactly the result of an uninterrupted run."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.artifacts import read_json
from pipeline.artifacts import RunDir

pytestmark = pytest.mark.serial  # deadlines and killed processes: CI runs it alone (.ci/run)

ROWS, SHARD_ROWS = 12_000, 400


def write_inputs(root, teacher_dir):
    words = ["good", "bad", "a long and winding sentence about a film", "fine", "dull plot", "great acting"]
    rows = [f"{words[i % 6]} {i}\t{i % 2}\n" for i in range(ROWS)]
    (root / "train.tsv").write_text("sentence\tlabel\n" + "".join(rows[:200]))
    (root / "dev.tsv").write_text("sentence\tlabel\n" + "".join(rows[:20]))
    (root / "extra.tsv").write_text("sentence\tlabel\n" + "".join(rows[200:]))
    config = {"name": "kill", "tracking": {"mode": "disabled"}, "ray": {"num_cpus": 2},
              "teacher": {"model": str(teacher_dir), "max_length": 32},
              "label": {"shard_rows": SHARD_ROWS, "num_actors": 1, "max_batch_size": 4},
              "data": {"root": str(root), "train": {"path": "train.tsv"}, "dev": {"path": "dev.tsv"},
                       "unlabeled": {"path": "extra.tsv"}, "labels": [0, 1]}}
    return config


def distill(config, output_dir, config_file):
    config_file.write_text(json.dumps({**config, "output_dir": str(output_dir)}))
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli.main", "run", str(config_file), "--until", "label"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def soft_labels(run):
    index = read_json(run.shard_index)
    table = pa.concat_tables([pq.read_table(run.stage_dir("label") / e["file"]) for e in index["shards"]])
    return table.sort_by("id")


@pytest.mark.slow  # about 100 s: a labeling process started, killed and resumed
def test_sigkill_mid_run_then_rerun_labels_every_row_exactly_once(tmp_path, tiny_teacher_dir):
    config = write_inputs(tmp_path, tiny_teacher_dir)
    killed_run = RunDir(tmp_path / "killed" / "kill")
    process = distill(config, tmp_path / "killed", tmp_path / "a.json")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if killed_run.shard_index.exists() and len(read_json(killed_run.shard_index)["shards"]) >= 2:
            break
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the driver, its local Ray and the labeling actor
    process.wait()
    done_before = len(read_json(killed_run.shard_index)["shards"])
    total = math.ceil(ROWS / SHARD_ROWS)
    assert 2 <= done_before < total, f"{done_before} of {total} shards were done when killed"

    assert distill(config, tmp_path / "killed", tmp_path / "a.json").wait(timeout=300) == 0
    assert distill(config, tmp_path / "clean", tmp_path / "b.json").wait(timeout=300) == 0

    resumed, clean = soft_labels(killed_run), soft_labels(RunDir(tmp_path / "clean" / "kill"))
    assert resumed.column("id").to_pylist() == list(range(ROWS))
    assert resumed.column("text").to_pylist() == clean.column("text").to_pylist()
    np.testing.assert_allclose(np.stack(resumed.column("logits").to_numpy(zero_copy_only=False)),
                               np.stack(clean.column("logits").to_numpy(zero_copy_only=False)), atol=1e-6)
    assert not list(killed_run.stage_dir("label").glob(".*tmp*")), "a temporary shard file was left behind"
