"""Shared fixtures."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60
)
settings.register_profile(
    "slow", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=1000
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

sys.path.insert(0, os.path.dirname(__file__))  # helpers shared by tests (servers.py, vm.py)


@pytest.fixture(scope="session", autouse=True)
def _unmount_stale_test_mounts() -> None:
    """A run that was killed can leave control directories mounted under pytest's temp root;
    pytest's cleanup of old temp dirs would then trip over them. Detach them lazily first."""
    root = f"/tmp/pytest-of-{getpass.getuser()}/"
    with open("/proc/self/mountinfo") as f:
        stale = [line.split()[4] for line in f if line.split()[4].startswith(root)]
    for path in stale:
        subprocess.run(["umount", "-l", path], check=False, capture_output=True)
