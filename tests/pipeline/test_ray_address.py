"""A ``ray.address`` where nothing listens fails in seconds with one line, not after minutes of retries."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from core.errors import ConfigError
from pipeline.ray_address import check_dashboard_address, check_ray_address, host_port

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound once by the OS, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_host_port_reads_every_address_form():
    assert host_port("10.0.0.1:6379") == ("10.0.0.1", 6379)
    assert host_port("ray://head:10001") == ("head", 10001)
    assert host_port("http://127.0.0.1:8265") == ("127.0.0.1", 8265)
    with pytest.raises(ConfigError, match="not host:port"):
        host_port("head")


@pytest.mark.parametrize("form", ["127.0.0.1:{}", "ray://127.0.0.1:{}"])
def test_closed_port_fails_naming_the_address_and_the_fix(form):
    address = form.format(free_port())
    began = time.monotonic()
    with pytest.raises(ConfigError) as err:
        check_ray_address(address)
    assert time.monotonic() - began < 5
    assert address in str(err.value) and "ray start --head" in str(err.value) and "\n" not in str(err.value)


def test_auto_without_a_cluster_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("ray._private.services.find_gcs_addresses", lambda: [])
    monkeypatch.setattr("ray._private.services.find_bootstrap_address", lambda temp_dir: None)
    with pytest.raises(ConfigError, match="'auto': no running Ray cluster found.*ray start --head"):
        check_ray_address("auto")


def test_unreachable_dashboard_names_the_address():
    address = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConfigError, match=f"--address {address}: no Ray dashboard.*ray start --head"):
        check_dashboard_address(address)


def distill(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``python -m pipeline.cli.main ARGS`` from the repository root; returns it and its wall time (s)."""
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipeline.cli.main", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=180)
    return done, time.monotonic() - began


def test_distill_run_against_a_closed_port_exits_2_within_seconds(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "name": "unreachable", "output_dir": str(tmp_path / "runs"), "ray": {"address": address},
        "data": {"root": str(tmp_path), "train": {"path": "train.tsv"}, "dev": {"path": "dev.tsv"}, "labels": [0, 1]}}))
    done, run_s = distill("run", str(config))
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("distill: error:")]
    assert len(errors) == 1 and address in errors[0] and "ray start --head" in errors[0]
    # the imports (torch, transformers) take 5-20 s on a busy 2-core machine; what the address
    # adds to them must be seconds (Ray's GCS retries took over 5 minutes)
    validated, validate_s = distill("validate", str(config))
    assert validated.returncode == 0, validated.stderr
    assert run_s < 15 or run_s - validate_s < 10, f"run took {run_s:.1f} s, validate {validate_s:.1f} s"
