"""Reading an offline W&B run back: the records of its ``run-*.wandb`` files.

wandb 0.31 no longer ships ``wandb.sdk.internal.datastore``; its LevelDB-log format is read
here and each record parsed with ``wandb.proto.wandb_internal_pb2``.
"""

import json
import struct
import time
from pathlib import Path

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


def wandb_files(run_root: Path) -> list[Path]:
    """The run's offline ``.wandb`` files, oldest first (one per ``distill run`` that tracked)."""
    return sorted(run_root.glob("wandb/offline-run-*/run-*.wandb"), key=lambda f: f.parent.name)


def finished_records(wandb_file: Path, wait_s: float = 60.0) -> list:
    """Every record of ``wandb_file``, once it holds the run's closing ``exit`` record.

    W&B's service writes the file on its own schedule after ``run.finish()`` returns, so this
    waits up to ``wait_s``.
    """
    deadline = time.monotonic() + wait_s
    while not any(r.WhichOneof("record_type") == "exit" for r in wandb_records(wandb_file)):
        assert time.monotonic() < deadline, f"{wandb_file}: no exit record after {wait_s} s"
        time.sleep(0.5)
    return list(wandb_records(wandb_file))


def decoded(items) -> dict:
    """``{key: JSON-decoded value}`` of history or summary items, internal ``_`` keys left out."""
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in items if not (item.key or "").startswith("_")}


def logged_values(wandb_file: Path) -> tuple[list[dict], dict]:
    """``(history rows, final summary)`` of one finished offline run file, values JSON-decoded."""
    history, summary = [], {}
    for record in finished_records(wandb_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append(decoded(record.history.item))
        elif kind == "summary":
            summary.update(decoded(record.summary.update))
    return history, summary
