"""The console shows our records; everything else goes to the run's log file."""

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import logging, sys, threading, warnings
from pathlib import Path
from pipeline.console import setup_logging, setup_worker_logging
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


def test_console_shows_ours_and_the_logs_hold_everything(tmp_path):
    logs = tmp_path / "logs"
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(logs)], capture_output=True, text=True, cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert done.returncode == 0, done.stderr
    console = done.stdout + done.stderr
    assert "ours: stage done" in console and "theirs" not in console
    driver = (logs / "distill.log").read_text()
    for text in ("ours: stage done", "theirs: controller state", "theirs: load report", "theirs: accelerator",
                 "theirs: a warning"):
        assert text in driver
    (worker,) = logs.glob("worker-*.log")
    assert "theirs: worker record" in worker.read_text() and "ZeroDivisionError" in worker.read_text()
