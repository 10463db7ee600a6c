"""The console shows our records; everything else goes to the run's log file."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SCRIPT = """
import logging, sys, threading, warnings
from pathlib import Path
from pipeline.observability.console import setup_logging, setup_worker_logging
setup_logging(Path(sys.argv[1]))
logging.getLogger("pipeline.stage").info("ours: stage done")
logging.getLogger("ray.train").warning("theirs: controller state")
logging.getLogger("transformers.modeling_utils").warning("theirs: load report")
import deepspeed.utils
deepspeed.utils.logger.warning("theirs: accelerator")
warnings.warn("theirs: a warning")
setup_worker_logging()
logging.getLogger("ray.data").warning("theirs: worker record")
thread = threading.Thread(target=lambda: 1 / 0, name="cleaner")
thread.start(); thread.join()
"""


def run_script(script: str, logs: Path) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh interpreter with ``logs`` as its argument; it must exit 0."""
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-c", script, str(logs)], capture_output=True, text=True, cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def test_console_shows_ours_and_the_logs_hold_everything(tmp_path):
    logs = tmp_path / "logs"
    done = run_script(SCRIPT, logs)
    console = done.stdout + done.stderr
    assert "ours: stage done" in console and "theirs" not in console
    driver = (logs / "distill.log").read_text()
    for text in ("ours: stage done", "theirs: controller state", "theirs: load report", "theirs: accelerator",
                 "theirs: a warning"):
        assert text in driver
    (worker,) = logs.glob("worker-*.log")
    assert "theirs: worker record" in worker.read_text() and "ZeroDivisionError" in worker.read_text()


NATIVE_SCRIPT = """
import logging, os, sys
from pathlib import Path
from pipeline.observability.console import run_logging, setup_logging
setup_logging(None)  # as distill's main does: the console before and after the run
with run_logging(Path(sys.argv[1])):
    os.write(2, b"native: core worker line\\n")
    logging.getLogger("pipeline.stage").info("ours: stage done")
    print("ours: error line", file=sys.stderr)
os.write(2, b"after: descriptor restored\\n")
logging.getLogger("pipeline.stage").info("ours: console after the run")
"""


def test_native_stderr_goes_to_the_log_and_the_console_keeps_ours(tmp_path):
    logs = tmp_path / "logs"
    done = run_script(NATIVE_SCRIPT, logs)
    for text in ("ours: stage done", "ours: error line", "after: descriptor restored", "ours: console after the run"):
        assert text in done.stderr
    assert "native:" not in done.stderr
    log = (logs / "distill.log").read_text()
    assert "native: core worker line" in log and "ours: stage done" in log
    assert "ours: console after the run" not in log  # the run's file handler is gone after the block


RAY_SCRIPT = """
import logging, sys, time
from pathlib import Path
import ray
from pipeline.observability import console
log_file = Path(sys.argv[1]) / "distill.log"
with console.run_logging(Path(sys.argv[1])):
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=True, configure_logging=False,
             logging_level=logging.WARNING)
    console.route_ray_forwarded_noise()

    @ray.remote
    def speak():
        print("[E core_worker.cc] Actor with class name: 'X' has constructor arguments in the object store and "
              "max_restarts > 0. If the arguments go out of scope...\\nworker: a line for the user", file=sys.stderr,
              flush=True)

    ray.get(speak.remote())
    deadline = time.time() + 60
    while "constructor arguments" not in log_file.read_text() and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(2)
    ray.shutdown()
"""


def test_rays_forwarded_noise_goes_to_the_log_and_other_worker_lines_to_the_console(tmp_path):
    logs = tmp_path / "logs"
    done = run_script(RAY_SCRIPT, logs)
    console_text = done.stdout + done.stderr
    assert "worker: a line for the user" in console_text
    assert "constructor arguments" not in console_text
    log = (logs / "distill.log").read_text()
    assert "constructor arguments in the object store" in log and "ray.forwarded" in log


BENCH_SCRIPT = """
import sys
from pipeline.cli.main import main
sys.exit(main(["bench", "latency", sys.argv[1], "--set", "tracking.mode=disabled"]))
"""


@pytest.mark.slow  # the tiny teacher's ExecuTorch export, then `distill bench latency` in a fresh interpreter (3 min)
def test_executorch_threadpool_notes_go_to_the_log_not_the_console(tmp_path, tiny_teacher_dir):
    from pipeline.config.compress_sections import ExportConfig
    from pipeline.stages import export
    from test_benchmark import build_run

    cfg, run_dir = build_run(tmp_path, tiny_teacher_dir)
    cfg = cfg.model_copy(update={"export": ExportConfig(formats=["executorch"], parity_rows=4)})
    export.run(cfg, run_dir)
    config = run_dir.root / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    done = run_script(BENCH_SCRIPT, config)
    assert "| teacher/executorch-fp32 | executorch | fp32 |" in done.stdout  # the variant was measured
    assert "Resetting threadpool" not in done.stdout + done.stderr
    log = (run_dir.root / "logs" / "distill.log").read_text()
    assert "[threadpool.cpp:66] Resetting threadpool to 1 threads." in log
