"""The one-process group must not leak launcher variables into later Ray workers."""

import os
import subprocess
import sys


def test_single_process_group_leaves_no_port_in_the_environment():
    # In a fresh interpreter: the test session may already hold a process group.
    code = ("import os, torch.distributed as dist; from teachers.distributed import init_single_process; "
            "init_single_process(); init_single_process(); "
            "print(dist.get_world_size(), dist.get_backend(), "
            "[k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT') if k in os.environ])")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "1 gloo []"
