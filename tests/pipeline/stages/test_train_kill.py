"""A training run killed with SIGKILL after its first epoch resumes from that epoch's checkpoint."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from test_train import build_run

from pipeline.stages import train

from pipeline.training.checkpoints import TRAIN_STATE_FILE

pytestmark = pytest.mark.serial  # deadlines and killed processes: CI runs it alone (.ci/run)

SCRIPT = """
import sys, ray
from pipeline.stages import train
from pipeline.artifacts import RunDir
from pipeline.config.loading import load_config
cfg = load_config(sys.argv[1])
ray.init(num_cpus=2, include_dashboard=False)
train.run(cfg, RunDir(cfg.run_dir))
"""


def first_checkpoint(storage):
    states = sorted(storage.glob("kd/checkpoint_*/" + TRAIN_STATE_FILE))
    return states[0] if states else None


@pytest.mark.slow  # about 100 s: a training process started, killed and resumed
def test_sigkill_after_an_epoch_then_rerun_resumes_from_the_checkpoint(tmp_path, ray_local):
    cfg, run_dir = build_run(tmp_path, epochs=3, ce_only_baseline=False)
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    # at Ray Train's default 2 s poll (tests/conftest.py shortens it) the epoch-2 checkpoint cannot
    # replace epoch 1's (the stage keeps one) in the second before the kill
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2.0"}
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, str(config_file)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    storage = run_dir.train_storage
    deadline = time.monotonic() + 300
    while first_checkpoint(storage) is None:
        assert process.poll() is None, "the training ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    time.sleep(1)  # let the checkpoint's files land
    os.killpg(process.pid, signal.SIGKILL)  # the driver, its local Ray and the training worker
    process.wait()
    checkpointed = torch.load(first_checkpoint(storage), weights_only=True)["history"]
    assert [h["epoch"] for h in checkpointed] == [1]

    summary = train.run(cfg, run_dir)["kd"]
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    assert summary["history"][0] == checkpointed[0]  # epoch 1 was not trained again
