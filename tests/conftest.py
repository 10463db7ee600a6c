"""Fixtures shared by every test package."""

from __future__ import annotations

import pytest
import ray


@pytest.fixture(scope="session")
def ray_local():
    """A local two-CPU Ray instance for the whole session, shut down at the end.

    Tests that need Ray take this fixture; stages never start or stop Ray themselves.
    """
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
