"""A Ray Train worker killed mid-epoch: FailureConfig restarts the worker group from the latest
mid-epoch checkpoint and the run ends with exactly the planned optimizer steps."""

import os
import signal
import threading
import time

import pytest
import torch
from test_train import build_run
from transformers import get_linear_schedule_with_warmup

from pipeline.stages import train
from pipeline.training.checkpoints import TRAIN_STATE_FILE

pytestmark = pytest.mark.serial  # deadlines and killed processes: CI runs it alone (.ci/run)

ROWS, BATCH, EVERY, EPOCHS = 384, 4, 8, 2  # build_run's transfer rows; 96 steps an epoch, a checkpoint every 8


def mid_epoch_states(storage, steps_per_epoch):
    """``{step: train state}`` of the mid-epoch checkpoints in ``storage`` now."""
    states = {}
    for state_file in storage.glob("kd/checkpoint_*/" + TRAIN_STATE_FILE):
        try:
            state = torch.load(state_file, weights_only=True)
        except (OSError, RuntimeError, EOFError):  # being written or deleted
            continue
        if state["step"] % steps_per_epoch:
            states[state["step"]] = state
    return states


def registered_mid_epoch_state(storage, steps_per_epoch, seen):
    """A first-epoch mid-epoch checkpoint that Ray Train has registered, or None yet.

    Ray deletes a mid-epoch checkpoint when it registers the next one, so the one left after the
    first (``seen``: every step seen so far) was deleted is registered. A file alone is not: the
    worker writes it before the controller registers it, and a worker killed in between restarts
    from the checkpoint before.
    """
    states = mid_epoch_states(storage, steps_per_epoch)
    seen.update(states)
    if len(states) == 1 and min(seen) not in states and max(states) < steps_per_epoch:
        return states[max(states)]
    return None


@pytest.mark.slow  # about 40 s: a training, one of its workers killed, Ray Train's restart
def test_worker_killed_mid_epoch_restarts_from_the_checkpoint_with_the_planned_steps(tmp_path, ray_local):
    cfg, run_dir = build_run(tmp_path, epochs=EPOCHS, batch_size=BATCH, ce_only_baseline=False,
                             checkpoint_every_steps=EVERY, max_failures=1, warmup_ratio=0.0)
    steps_per_epoch = ROWS // BATCH
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(train.run(cfg, run_dir)))
    thread.start()
    deadline = time.monotonic() + 240
    seen = {}
    while (state := registered_mid_epoch_state(run_dir.train_storage, steps_per_epoch, seen)) is None:
        assert thread.is_alive(), "the training ended before a worker could be killed"
        assert time.monotonic() < deadline, "no mid-epoch checkpoint within 240 s"
        time.sleep(0.02)
    (worker,) = state["attempts"][0]["workers"]  # the one worker, as its checkpoint records it
    os.kill(worker["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    thread.join(timeout=600)
    assert not thread.is_alive()

    summary = outcome["kd"]
    assert summary["restarts"] == 1  # one kill, one restart
    first, restart = summary["attempts"]
    assert first["started_at_step"] == 0
    # resumed from the registered mid-epoch checkpoint, or a later one
    assert restart["started_at_step"] % EVERY == 0 and restart["started_at_step"] >= state["step"] >= 2 * EVERY
    assert restart["started_at_step"] % steps_per_epoch, "the restart should resume mid-epoch"
    assert summary["optimizer_steps"] == EPOCHS * steps_per_epoch  # none lost, none repeated
    assert [h["epoch"] for h in summary["history"]] == list(range(1, EPOCHS + 1))
    # the learning rate after each epoch is the schedule's at epoch * steps_per_epoch steps
    schedule = get_linear_schedule_with_warmup(torch.optim.SGD([torch.zeros(1)], lr=cfg.train.lr), 0,
                                               EPOCHS * steps_per_epoch)
    for epoch in summary["history"]:
        for _ in range(steps_per_epoch):
            schedule.step()
        assert epoch["lr"] == pytest.approx(schedule.get_last_lr()[0], abs=1e-12)
    assert summary["history"][-1]["lr"] == 0.0
    assert restart["workers"][0]["pid"] != worker["pid"]  # a new worker process
    print(f"killed 1 worker at step >= {state['step']}; resumed at step {restart['started_at_step']}; "
          f"{summary['optimizer_steps']} steps; restart took {time.monotonic() - killed_at:.1f} s to finish")
