"""Checking a Ray address before connecting to it, so that an address where nothing listens
fails in seconds with one line instead of Ray's minutes of GCS connection retries.

Addresses come in the forms Ray accepts: ``host:port`` (a head's GCS), ``ray://host:port``
(Ray Client), ``"auto"`` (the cluster this machine last started, or ``$RAY_ADDRESS``) and, for
the Jobs API, ``http://host:port`` (the head's dashboard, default port 8265).
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from core.errors import ConfigError

CONNECT_TIMEOUT_S = 3.0
"""Seconds a TCP connect may take before the address counts as unreachable."""

START_HEAD = "ray start --head"


def host_port(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``host:port``, ``ray://host:port`` or ``http(s)://host:port``.

    Raises:
        ConfigError: the address has no host or no numeric port.
    """
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ConfigError(f"Ray address {address!r} is not host:port (e.g. 10.0.0.1:6379, ray://10.0.0.1:10001, "
                          f"http://10.0.0.1:8265)")
    return parts.hostname, port


def refusal(host: str, port: int, timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why a TCP connection to ``host:port`` fails (``"connection refused"``, ...), or None when
    something listens there. Takes at most ``timeout_s`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def check_ray_address(address: str) -> None:
    """Raise unless a Ray cluster answers at ``address`` (the ``ray.address`` of a run config).

    ``"auto"`` resolves as ``ray.init`` resolves it ($RAY_ADDRESS, else the cluster that
    ``ray start`` left in Ray's temp folder), then that address is checked.

    Raises:
        ConfigError: no cluster is found for ``"auto"``, or nothing listens at the address;
            the message names the address and the fix.
    """
    if address == "auto":
        from ray._private.services import get_ray_address_from_environment

        try:
            resolved = get_ray_address_from_environment("auto", None)
        except ConnectionError:
            raise ConfigError(f"ray.address 'auto': no running Ray cluster found on this machine; start one with "
                              f"`{START_HEAD}` or set ray.address to the head's host:port (or null for a "
                              f"local instance)") from None
        host, port = host_port(resolved)
    else:
        host, port = host_port(address)
    reason = refusal(host, port)
    if reason is not None:
        raise ConfigError(f"ray.address {address!r}: no Ray cluster at {host}:{port} ({reason}); start one there "
                          f"with `{START_HEAD} --port {port}`, or fix ray.address (null runs a local instance)")


def check_dashboard_address(address: str) -> None:
    """Raise unless something listens at the Ray dashboard ``address`` given to ``distill submit``.

    Raises:
        ConfigError: nothing listens there; the message names the address and the fix.
    """
    host, port = host_port(address)
    reason = refusal(host, port)
    if reason is not None:
        raise ConfigError(f"--address {address}: no Ray dashboard at {host}:{port} ({reason}); start the head with "
                          f"`{START_HEAD} --dashboard-host 0.0.0.0` (dashboard port 8265) or fix --address")
