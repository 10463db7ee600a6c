"""Ctrl-C during a run: ``distill run`` on a tiny pair task, interrupted with SIGINT once its train
stage has written a checkpoint, prints one line (the stage, the command that resumes), exits with
130 and leaves none of the Ray processes it started; that command then finishes the run, reusing
the stages that had finished.

SIGINT goes to the driver alone: a terminal's Ctrl-C reaches the whole process group, where Ray's
raylet and GCS block it, so the driver's clean-up is what this checks.
"""

import os
import re
import shlex
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml

from pipeline.artifacts import RunDir

pytestmark = pytest.mark.serial  # deadlines and killed processes: CI runs it alone (.ci/run)

CLI = [sys.executable, "-m", "pipeline.cli.main"]

DRY_RUN_WITHOUT_RAY = """
import sys, ray
from pipeline.cli.main import main
code = main(sys.argv[1:])
sys.exit(3 if ray.is_initialized() else code)
"""


def command_line(process: psutil.Process) -> str:
    """``process``'s command line ("" once it has exited)."""
    try:
        return " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return ""


def started_ray(process: psutil.Process) -> tuple[list[psutil.Process], str]:
    """The descendants of ``process`` and its Ray session folder (from the raylet's command line)."""
    descendants = process.children(recursive=True)
    sessions = {match for child in descendants
                for match in re.findall(r"/[^\s=]*/session_\d{4}-\d\d-\d\d_[\d_-]+", command_line(child))}
    assert len(sessions) == 1, sessions
    return descendants, sessions.pop()


EPOCHS = 10
"""Enough that SIGINT, sent when the first epoch's checkpoint appears, still lands in train (each
epoch of three steps is half a second or more of Ray Data reads and a checkpoint), few enough that
the resumed run's remaining epochs take seconds (30 took minutes)."""


@pytest.mark.slow  # two `distill run` processes, each starting Ray, label and Ray Train workers: mostly start-up
def test_ctrl_c_during_train_prints_the_resume_command_exits_130_and_leaves_no_ray_process(pair_task, tiny_teacher_dir):
    cfg = pair_task.config(
        teacher={"model": str(tiny_teacher_dir), "max_length": 16}, tracking={"mode": "disabled"},
        ray={"num_cpus": 2}, label={"num_actors": 1, "shard_rows": 4},
        evaluate={"latency_runs": 5, "latency_warmup": 0},
        train={"epochs": EPOCHS, "batch_size": 2, "ce_only_baseline": False,
               "student": {"family": "bilstm", "embed_dim": 32, "hidden_dim": 16, "max_length": 16}})
    config_file = pair_task.root / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    run = RunDir(cfg.run_dir)
    console = pair_task.root / "stderr.txt"  # a file, not a pipe that the progress bars could fill
    with console.open("w") as sink:
        process = subprocess.Popen([*CLI, "run", str(config_file)], stdout=subprocess.DEVNULL, stderr=sink,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 540
        while not list((run.root / "train" / "ray").glob("*/kd/checkpoint_*")):  # Ray Train's workers run
            assert process.poll() is None, console.read_text()
            assert time.monotonic() < deadline, "no train checkpoint within 540 s"
            time.sleep(0.1)
        descendants, session = started_ray(psutil.Process(process.pid))
        finished = {stage: run.manifest(stage)["finished_at"] for stage in ("data", "finetune", "label")}
        process.send_signal(signal.SIGINT)
        process.wait(timeout=180)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    err = console.read_text()
    assert process.returncode == 130, err
    resume = f"distill run {config_file}"
    line = (f"distill: interrupted during train; finished stages, label shards and train checkpoints are kept; "
            f"resume with: {resume}")
    assert [text for text in err.splitlines() if text.startswith("distill: ")] == [line], err
    assert err.endswith(f"\n{line}\n"), err[-500:]  # the last line: no progress bar drawn again under it
    assert "Traceback" not in err
    assert run.manifest("train") is None
    _, alive = psutil.wait_procs(descendants, timeout=10)  # exited, at most not yet reaped
    assert alive == [], [(p.pid, p.name()) for p in alive]
    assert [p.pid for p in psutil.process_iter() if session in command_line(p)] == []

    dry = subprocess.run([sys.executable, "-c", DRY_RUN_WITHOUT_RAY, "run", str(config_file), "--dry-run"],
                         capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr  # 3: the dry run started Ray
    assert dry.stdout.splitlines() == ["data      reuse", "finetune  reuse", "label     reuse",
                                       "train     rerun: no manifest yet", "evaluate  rerun: no manifest yet"]

    again = subprocess.run([*CLI, *shlex.split(resume)[1:]], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    for stage in ("data", "finetune", "label"):
        assert f"stage {stage}: up to date" in again.stderr
        assert run.manifest(stage)["finished_at"] == finished[stage]
    assert [h["epoch"] for h in run.manifest("train")["kd"]["history"]] == list(range(1, EPOCHS + 1))
    assert run.manifest("evaluate") is not None and run.report_file.exists()
