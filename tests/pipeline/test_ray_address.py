"""A ``ray.address`` where nothing listens fails with one line after one connection attempt, not
after minutes of Ray's retries. Attempts are counted with Python's ``socket.connect`` audit event."""

import socket
import subprocess
import sys
from contextlib import contextmanager
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


_recorders: list[tuple[int, list]] = []
"""The open :func:`connect_attempts` blocks: (port, the addresses connected to)."""


def _record_connect(event: str, args: tuple) -> None:
    if event == "socket.connect" and isinstance(args[1], tuple):
        for port, addresses in _recorders:
            if args[1][1] == port:
                addresses.append(args[1])


@contextmanager
def connect_attempts(port: int):
    """The list of every TCP connect (``(host, port)``) this process makes to ``port`` inside the
    block. An audit hook cannot be removed: the first block installs one that records only in
    open blocks."""
    if not getattr(_record_connect, "installed", False):
        sys.addaudithook(_record_connect)
        _record_connect.installed = True
    addresses: list = []
    _recorders.append((port, addresses))
    try:
        yield addresses
    finally:
        _recorders.remove((port, addresses))

COUNT_CONNECTS = """
import runpy, sys
port = int(sys.argv.pop(1))
sys.addaudithook(lambda event, args: event == "socket.connect" and isinstance(args[1], tuple)
                 and args[1][1] == port and print(f"connect {args[1]}", file=sys.stderr, flush=True))
runpy.run_module("pipeline.cli.main", run_name="__main__", alter_sys=True)
"""
"""``python -c COUNT_CONNECTS PORT ARGS...``: ``distill ARGS``, printing a ``connect`` line on stderr
for each TCP connect to PORT."""


def test_host_port_reads_every_address_form():
    assert host_port("10.0.0.1:6379") == ("10.0.0.1", 6379)
    assert host_port("ray://head:10001") == ("head", 10001)
    assert host_port("http://127.0.0.1:8265") == ("127.0.0.1", 8265)
    with pytest.raises(ConfigError, match="not host:port"):
        host_port("head")


@pytest.mark.parametrize("form", ["127.0.0.1:{}", "ray://127.0.0.1:{}"])
def test_closed_port_fails_naming_the_address_and_the_fix(form):
    port = free_port()
    address = form.format(port)
    with connect_attempts(port) as attempts, pytest.raises(ConfigError) as err:
        check_ray_address(address)
    assert attempts == [("127.0.0.1", port)]  # one try, no retries
    assert f"no Ray cluster at 127.0.0.1:{port} (Connection refused)" in str(err.value)
    assert address in str(err.value) and "ray start --head" in str(err.value) and "\n" not in str(err.value)


def test_auto_without_a_cluster_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("ray._private.services.find_gcs_addresses", lambda: [])
    monkeypatch.setattr("ray._private.services.find_bootstrap_address", lambda temp_dir: None)
    with pytest.raises(ConfigError, match="'auto': no running Ray cluster found.*ray start --head"):
        check_ray_address("auto")


def test_unreachable_dashboard_names_the_address():
    port = free_port()
    address = f"http://127.0.0.1:{port}"
    with connect_attempts(port) as attempts, pytest.raises(
            ConfigError, match=f"--address {address}: no Ray dashboard.*ray start --head"):
        check_dashboard_address(address)
    assert attempts == [("127.0.0.1", port)]


def test_distill_run_against_a_closed_port_exits_2_after_one_attempt(tmp_path):
    port = free_port()
    address = f"127.0.0.1:{port}"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "name": "unreachable", "output_dir": str(tmp_path / "runs"), "ray": {"address": address},
        "data": {"root": str(tmp_path), "train": {"path": "train.tsv"}, "dev": {"path": "dev.tsv"}, "labels": [0, 1]}}))
    # Ray's own GCS client would retry for over 5 minutes (past the timeout) before failing
    done = subprocess.run([sys.executable, "-c", COUNT_CONNECTS, str(port), "run", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("distill: error:")]
    assert len(errors) == 1 and f"ray.address '{address}': no Ray cluster at {address}" in errors[0]
    assert "ray start --head" in errors[0]
    assert [line for line in done.stderr.splitlines() if line.startswith("connect ")] == [
        f"connect ('127.0.0.1', {port})"]  # the check's one try; Ray was never started
    assert [p.name for p in (tmp_path / "runs" / "unreachable").iterdir()] == ["logs"]  # no stage ran
