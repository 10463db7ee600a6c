"""One-process torch.distributed group for DeepSpeed outside a launcher.

DeepSpeed's engines expect a process group. Under ``deepspeed``/``torchrun`` or Ray Train the
launcher sets RANK, WORLD_SIZE and MASTER_ADDR/PORT; a pipeline stage run directly gets a
group of one on a free local port, with gloo on CPU and nccl on CUDA. The port goes into the
init URL, not the environment: Ray workers started later inherit the driver's environment,
and a leaked MASTER_PORT would make every label actor bind the same port.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket

import torch.distributed as dist

from core.precision import distributed_backend

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_single_process() -> None:
    """Initialise a process group (a group of one unless a launcher set RANK/WORLD_SIZE); idempotent."""
    import deepspeed

    if dist.is_available() and dist.is_initialized():
        return
    if "RANK" in os.environ:  # started by a launcher
        options = {}
    else:
        os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeedEngine asserts that it is set
        options = {"auto_mpi_discovery": False, "init_method": f"tcp://127.0.0.1:{free_port()}", "rank": 0,
                   "world_size": 1}
    printed = io.StringIO()  # DeepSpeed prints that it built its shared-memory op: the log's, not the user's
    with contextlib.redirect_stdout(printed):
        deepspeed.init_distributed(dist_backend=distributed_backend(), verbose=False, **options)
    if printed.getvalue().strip():
        log.debug("deepspeed: %s", printed.getvalue().strip())
