"""A tiny run through evaluate, read back from its offline W&B run: live per-step train rows of
every loss term with the scheduled learning rate, dev scores per epoch, the artifacts, and a
rerun of train (``--force train``, a new lr so that it trains anew) that continues the same run id above the first run's steps."""

import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from pipeline.runner import run_pipeline
from pipeline.observability.tracking import run_id
from wandb_offline import finished_records, logged_values, wandb_files

EPOCHS, BATCH, LR = 2, 2, 1e-2


def scheduled_lr(step: int, total_steps: int, warmup_ratio: float) -> float:
    """The train loop's learning rate at optimizer step ``step`` (0-based)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    schedule = get_linear_schedule_with_warmup(optimizer, round(warmup_ratio * total_steps), total_steps)
    for _ in range(step):
        optimizer.step()
        schedule.step()
    return schedule.get_last_lr()[0]


@pytest.mark.slow
def test_live_rows_artifacts_and_resume_of_one_wandb_run(pair_task, tiny_teacher_dir, ray_local):
    cfg = pair_task.config(
        teacher={"model": str(tiny_teacher_dir), "max_length": 16}, finetune={"force": True, "batch_size": 2},
        train={"epochs": EPOCHS, "batch_size": BATCH, "lr": LR, "ce_only_baseline": False,
               "student": {"family": "bilstm", "embed_dim": 32, "hidden_dim": 8, "max_length": 16}},
        evaluate={"latency_runs": 2, "latency_warmup": 0})
    first = run_pipeline(cfg, until="evaluate")
    (wandb_file,) = wandb_files(cfg.run_dir)
    history, _ = logged_values(wandb_file)
    steps = [row for row in history if "train/kd/loss" in row]
    terms = [key.removeprefix("loss_") for key in first["train"]["kd"]["history"][0] if key.startswith("loss_")]
    assert terms == list(cfg.train.loss.terms())
    per_epoch = first["train"]["kd"]["rows"] // BATCH + (first["train"]["kd"]["rows"] % BATCH > 0)
    assert per_epoch > 1 and [row["train/kd/step"] for row in steps] == list(range(EPOCHS * per_epoch))
    for row in steps:
        assert all(f"train/kd/loss_{term}" in row for term in terms) and row["train/kd/examples_per_s"] > 0
        expected = scheduled_lr(row["train/kd/step"], EPOCHS * per_epoch, cfg.train.warmup_ratio)
        assert row["train/kd/lr"] == pytest.approx(expected, rel=1e-6)
    epochs = [row for row in history if "train/kd/dev_score" in row]
    assert [row["train/kd/dev_score"] for row in epochs] == [e["dev_score"] for e in first["train"]["kd"]["history"]]
    assert [row["train/kd/step"] for row in epochs] == [per_epoch - 1, 2 * per_epoch - 1]
    records = finished_records(wandb_file)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.run_id == run_id(cfg) and run.run_group == cfg.name
    artifacts = {r.artifact.name for r in records if r.WhichOneof("record_type") == "artifact"}
    assert artifacts == {f"{run.run_id}-report", f"{run.run_id}-student-kd"}

    # the same inputs would only reload the finished Ray run's checkpoint; another lr trains anew
    run_pipeline(cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": LR / 2})}), until="train",
                 force=("train",))
    assert len(wandb_files(cfg.run_dir)) == 2
    again, _ = logged_values(wandb_files(cfg.run_dir)[-1])
    (rerun,) = [r.run for r in finished_records(wandb_files(cfg.run_dir)[-1]) if r.WhichOneof("record_type") == "run"]
    assert rerun.run_id == run.run_id
    rerun_steps = [row["train/kd/step"] for row in again if "train/kd/loss" in row]
    assert rerun_steps == list(range(EPOCHS * per_epoch, 2 * EPOCHS * per_epoch))
