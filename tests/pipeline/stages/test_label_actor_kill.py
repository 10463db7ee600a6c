"""A label actor killed mid-shard: Ray restarts it, the shard is retried, and every row is
labeled exactly once with the teacher's logits."""

import os
import shutil
import signal
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_label import direct_logits, read_all, stored_logits

from core.artifacts import read_json
from pipeline.stages import label
from pipeline.artifacts import RunDir
from pipeline.config.loading import validate_config

pytestmark = pytest.mark.serial  # deadlines and killed processes: CI runs it alone (.ci/run)

ROWS, SHARD_ROWS = 600, 50


def label_run(tmp_path, teacher_dir, **label_section):
    """A run folder with a transfer set of ``ROWS`` rows and the teacher, as the data and finetune stages leave it."""
    cfg = validate_config({"name": "t", "output_dir": str(tmp_path), "teacher": {"max_length": 32},
                           "label": {"shard_rows": SHARD_ROWS, "num_actors": 1, "max_batch_size": 4, **label_section},
                           "data": {"train": {"path": "x.tsv"}, "dev": {"path": "y.tsv"}, "labels": [0, 1]}})
    run = RunDir(cfg.run_dir)
    words = ["good", "bad", "a rather long and winding sentence about a film", "ok", "dull plot"]
    pq.write_table(pa.table({"id": np.arange(ROWS), "text": [f"{words[i % 5]} {i}" for i in range(ROWS)],
                             "label": [-1] * ROWS}), run.split_file("transfer"))
    shutil.copytree(teacher_dir, run.teacher_dir)
    return cfg, run


def shard_entries(run):
    return read_json(run.shard_index)["shards"] if run.shard_index.exists() else []


def check_every_row_once(run):
    """Every row labeled once, each shard listed and stored once, no temporary file left; returns the table."""
    index = read_json(run.shard_index)
    assert [e["shard"] for e in index["shards"]] == list(range(ROWS // SHARD_ROWS))
    assert sorted(p.name for p in run.stage_dir("label").iterdir() if p.name != "shards.json") == \
        [e["file"] for e in index["shards"]]
    table = read_all(run)
    ids = table.column("id").to_pylist()
    assert len(ids) == ROWS and sorted(ids) == list(range(ROWS))  # none lost, none duplicated
    return table


@pytest.mark.slow  # about 30 s: a labeling, its actor killed and restarted
def test_label_actor_killed_mid_shard_is_restarted_and_the_shard_written_once(tmp_path, tiny_teacher_dir, ray_local):
    cfg, run = label_run(tmp_path, tiny_teacher_dir)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(label.run(cfg, run)))
    thread.start()
    deadline = time.monotonic() + 240
    while not (done := shard_entries(run)):
        assert thread.is_alive() and time.monotonic() < deadline, "labeling ended or stalled before the kill"
        time.sleep(0.02)
    killed_pid = done[0]["pid"]  # the one actor, busy with the next shard
    os.kill(killed_pid, signal.SIGKILL)
    killed_at, done_at_kill = time.time(), len(shard_entries(run))
    thread.join(timeout=600)
    assert not thread.is_alive() and outcome["rows"] == ROWS

    assert done_at_kill < ROWS // SHARD_ROWS, "the actor was killed after its last shard"
    entries = shard_entries(run)
    assert len({e["pid"] for e in entries}) == 2  # one kill, one restarted actor process
    table = check_every_row_once(run)
    retried = [e for e in entries if e["began_at"] > killed_at]
    assert all(e["pid"] != killed_pid for e in retried)
    # the shard in flight at the kill and the rest began after it; the shards recorded before the
    # kill are not redone (a busy machine may let the actor finish a few more that the driver had
    # not recorded yet: CI once saw 3 finished against 1 recorded)
    assert done_at_kill <= ROWS // SHARD_ROWS - len(retried) < ROWS // SHARD_ROWS
    expected = direct_logits(run.teacher_dir, table.column("text").to_pylist())  # an uninterrupted forward
    np.testing.assert_allclose(stored_logits(table), expected, atol=1e-5)
    print(f"killed 1 actor with {done_at_kill} shards done; {len(retried)} labeled after the restart")
