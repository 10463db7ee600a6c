"""A tiny real run through finetune: ``--force`` redoes the stages after the forced one, and the
offline W&B run holds the manifests' numbers (read back from its ``run-*.wandb`` file)."""

from pipeline.artifacts import RunDir
from pipeline.runner import run_pipeline
from wandb_offline import logged_values, wandb_files


def test_force_redoes_later_stages_and_wandb_holds_the_manifests_numbers(pair_task, tiny_teacher_dir):
    cfg = pair_task.config(teacher={"model": str(tiny_teacher_dir), "max_length": 16},
                           finetune={"force": True, "epochs": 2, "batch_size": 2})
    run = RunDir(cfg.run_dir)
    first = run_pipeline(cfg, until="finetune")
    (wandb_file,) = wandb_files(run.root)
    history, summary = logged_values(wandb_file)
    steps = [row["finetune/step"] for row in history if "finetune/loss" in row]
    assert steps == list(range(first["finetune"]["steps"]))  # one live row per step
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
