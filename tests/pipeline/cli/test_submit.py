"""``distill submit``, ``status`` and ``logs``: the submission-id logic, and a real Ray head
started on 127.0.0.1 for this module (``ray start --head --block`` in its own process group,
which the teardown ends)."""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from core.artifacts import read_json
from pipeline.cli.main import main
from pipeline.config.loading import load_config, validate_config
from pipeline.cli.submit import attempt_number, next_attempt, stage_config, submission_id, submit
from test_ray_address import connect_attempts, free_port

pytestmark = pytest.mark.serial  # deadlines and killed processes: CI runs it alone (.ci/run)

REPO = Path(__file__).resolve().parents[3]


def test_submission_ids_count_the_attempts_of_one_run_only():
    ids = ["distill-sst-1", "distill-sst-3", "distill-sst-1-2", "raysubmit_abc", None, "distill-sst-x"]
    assert attempt_number("sst", "distill-sst-3") == 3
    assert attempt_number("sst", "distill-sst-1-2") is None  # attempt 2 of run "sst-1"
    assert attempt_number("sst-1", "distill-sst-1-2") == 2
    assert next_attempt("sst", ids) == 4 == 1 + 3
    assert next_attempt("sst-1", ids) == 3 and next_attempt("other", ids) == 1
    assert submission_id("sst", 4) == "distill-sst-4"


def test_the_staged_config_keeps_a_relative_data_root_relative_to_the_working_directory(tmp_path, monkeypatch):
    cfg = validate_config({"name": "st", "data": {"root": "data/mine", "train": {"path": "a.tsv"},
                                                  "dev": {"path": "b.tsv"}, "labels": [0, 1]}})
    staged = stage_config(cfg, tmp_path)
    monkeypatch.chdir(tmp_path)  # the job's working directory: the repository as uploaded
    assert yaml.safe_load(staged.read_text())["data"]["root"] == "../data/mine"  # beside .distill-submit/
    assert load_config(staged).data.resolved_root().resolve() == tmp_path / "data" / "mine"


def test_a_relative_output_dir_is_refused_before_contacting_the_cluster():
    cfg = validate_config({"name": "t", "data": {"train": {"path": "a"}, "dev": {"path": "b"}, "labels": [0, 1]}})
    with pytest.raises(Exception, match="output_dir 'runs' is relative.*--set output_dir="):
        submit(cfg, f"http://127.0.0.1:{free_port()}")


def test_an_unreachable_address_exits_2_with_one_line(tmp_path, capsys):
    port = free_port()
    address = f"http://127.0.0.1:{port}"
    with connect_attempts(port) as attempts:
        assert main(["status", "some-run", "--address", address]) == 2
    assert attempts == [("127.0.0.1", port)]  # the address check's one try: the job client never retried
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and address in err and "ray start --head" in err


def test_a_bad_config_exits_2_before_submitting(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("name: t\ntrain: {epochs: -1}\n")
    assert main(["submit", str(config), "--address", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "invalid field" in capsys.readouterr().err  # the config, not the address, is reported


@pytest.fixture(scope="module")
def head():
    """The dashboard address of a one-node Ray cluster (2 CPUs) started with ``ray start --head``."""
    temp_dir = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # Ray's socket paths must stay short
    dashboard = free_port()
    # every port Ray would otherwise take by default, so that it cannot meet another Ray on this machine
    ports = [arg for flag in ("--port", "--ray-client-server-port", "--dashboard-agent-listen-port",
                              "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port")
             for arg in (flag, str(free_port()))]
    process = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", *ports,
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--num-cpus", "2",
         "--include-dashboard", "true", "--temp-dir", temp_dir, "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"})  # no token on 127.0.0.1
    address = f"http://127.0.0.1:{dashboard}"
    try:
        from ray.job_submission import JobSubmissionClient

        deadline, error = time.monotonic() + 120, None
        while True:
            assert process.poll() is None and time.monotonic() < deadline, f"the Ray head did not start: {error}"
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception as exc:  # not listening yet, or the dashboard still starting
                error = exc
                time.sleep(1)
        yield address
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):  # the head's process group: only what it started
            try:
                os.killpg(process.pid, sig)
                process.wait(timeout=3)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_teacher_dir):
    """``(config file, data folder, run folder)`` of a tiny sentence task with a tiny teacher."""
    root = tmp_path_factory.mktemp("submit")
    data = root / "data"
    data.mkdir()
    words = ["good", "bad", "fine", "awful", "great", "poor"]
    for split, rows in (("train", 24), ("dev", 8)):
        lines = [f"a {words[i % 6]} film number {i}\t{(i % 6) % 2 == 0:d}" for i in range(rows)]
        (data / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(lines) + "\n")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "name": "tiny", "output_dir": str(root / "runs"), "tracking": {"mode": "disabled"},
        "teacher": {"model": str(tiny_teacher_dir), "max_length": 16},
        "label": {"num_actors": 1, "shard_rows": 16},
        "data": {"train": {"path": "train.tsv"}, "dev": {"path": "dev.tsv"}, "labels": [0, 1]}}))
    return config, data, root / "runs" / "tiny"


@pytest.mark.slow
def test_submit_runs_resubmit_resumes_and_a_remote_failure_is_one_line(head, tiny_run, capsys):
    config, data, run_dir = tiny_run

    def distill(*args: str) -> tuple[int, str, str]:
        """``(exit code, stdout, stderr)`` of ``distill ARGS``, run in this process."""
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    submit_tiny = ("submit", str(config), "--address", head, "--data-dir", str(data), "--until", "label", "--wait")
    code, out, err = distill(*submit_tiny)
    assert code == 0, err
    assert "distill-tiny-1  SUCCEEDED" in out
    stages = ("data", "finetune", "label")
    written_ns = {stage: (run_dir / stage / "manifest.json").stat().st_mtime_ns for stage in stages}
    assert read_json(run_dir / "data" / "manifest.json")["train"]["rows"] == 24

    code, out, err = distill(*submit_tiny)
    assert code == 0, err
    assert "distill-tiny-2  SUCCEEDED" in out
    assert {stage: (run_dir / stage / "manifest.json").stat().st_mtime_ns for stage in stages} == written_ns
    code, out, _ = distill("status", "tiny", "--address", head)
    assert code == 0 and out.startswith("distill-tiny-2  SUCCEEDED  started 20")
    _, out, _ = distill("logs", "tiny", "--address", head)
    assert "stage label: up to date, reusing" in out

    code, _, err = distill("submit", str(config), "--set", "name=tiny-nodata", "--address", head,
                           "--data-dir", str(data / "missing"), "--until", "data", "--wait")
    assert code == 2
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert line.startswith("distill: error: job distill-tiny-nodata-1 FAILED: Job entrypoint command failed with "
                           "exit code 2; last error: distill: error: ") and f"{data / 'missing'}/train.tsv" in line
    assert distill("status", "tiny-nodata", "--address", head)[:2] == (2, "")
