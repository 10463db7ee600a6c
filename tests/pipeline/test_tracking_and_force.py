"""A tiny real run through finetune: ``--force`` redoes the stages after the forced one, and the
offline W&B run holds the manifests' numbers (read back from its ``run-*.wandb`` file)."""

import json
import struct
import time
from pathlib import Path

from pipeline.artifacts import RunDir
from pipeline.runner import run_pipeline

WANDB_BLOCK = 32768
"""The .wandb file is a LevelDB log (W&B's datastore): 32 KiB blocks of records, each with a
7-byte header (CRC-32C, length, type), after a 7-byte file header ``:W&B``, magic, version."""
FULL, LAST = 1, 4


def wandb_records(path: Path):
    """The protobuf records (``wandb_internal_pb2.Record``) of an offline run's ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = WANDB_BLOCK - pos % WANDB_BLOCK
        if left < 7:  # a block's tail too short for a header is zero padding
            pos += left
            continue
        _, length, kind = struct.unpack_from("<IHB", data, pos)
        if kind == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def logged_values(run_root: Path, wait_s: float = 60.0) -> tuple[list[dict], dict]:
    """``(history rows, final summary)`` of the run's one offline W&B run, values JSON-decoded.

    W&B's service writes the file on its own schedule after ``run.finish()`` returns, so this
    waits (up to ``wait_s``) for the run's closing ``exit`` record.
    """
    (wandb_file,) = run_root.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + wait_s
    while not any(r.WhichOneof("record_type") == "exit" for r in wandb_records(wandb_file)):
        assert time.monotonic() < deadline, f"{wandb_file}: no exit record after {wait_s} s"
        time.sleep(0.5)
    history, summary = [], {}
    for record in wandb_records(wandb_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item if not (item.key or "").startswith("_")})
        elif kind == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.summary.update})
    return history, summary


def test_force_redoes_later_stages_and_wandb_holds_the_manifests_numbers(pair_task, tiny_teacher_dir):
    cfg = pair_task.config(teacher={"model": str(tiny_teacher_dir), "max_length": 16},
                           finetune={"force": True, "epochs": 2, "batch_size": 2})
    run = RunDir(cfg.run_dir)
    first = run_pipeline(cfg, until="finetune")
    history, summary = logged_values(run.root)
    assert [row["finetune/loss"] for row in history if "finetune/loss" in row] == first["finetune"]["loss_history"]
    assert summary["data/wall_s"] == first["data"]["wall_s"]
    assert summary["finetune/wall_s"] == first["finetune"]["wall_s"]

    def written_ns():
        return {stage: (run.root / stage / "manifest.json").stat().st_mtime_ns for stage in first}

    before = written_ns()
    again = run_pipeline(cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"mode": "disabled"})}),
                         until="finetune")
    assert written_ns() == before and again == first  # fresh stages are reused as they are
    forced = run_pipeline(cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"mode": "disabled"})}),
                          until="finetune", force=("data",))
    after = written_ns()
    assert all(after[stage] != before[stage] for stage in ("data", "finetune"))  # finetune follows data
    assert forced["finetune"]["steps"] == first["finetune"]["steps"] == 4  # 4 rows / batch 2 * 2 epochs
