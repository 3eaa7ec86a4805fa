"""Shared fixtures."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from loops import PoolFactory  # tests/ is on sys.path: pytest puts a conftest's directory there

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60
)
settings.register_profile(
    "slow", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=1000
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

sys.path.insert(0, os.path.dirname(__file__))  # helpers shared by tests (servers.py, vm.py)


@pytest.fixture(scope="session", autouse=True)
def _unmount_stale_test_mounts(request: pytest.FixtureRequest) -> None:
    """A run that was killed can leave control directories mounted under pytest's temp root;
    pytest's cleanup of old temp dirs would then trip over them. Detach the stale ones (their
    server is gone) lazily first. Live ones belong to a test run going on at the same time and
    are left alone: detaching them broke that run's control directory mid-test."""
    from zramd.runstate import mount_state, mounts  # noqa: PLC0415 - only when tests start

    roots = [f"/tmp/pytest-of-{getpass.getuser()}/"]
    if request.config.option.basetemp:  # --basetemp DIR: pytest empties it first
        roots.append(os.path.abspath(request.config.option.basetemp) + "/")
    mounted = [m.point for m in mounts() if m.point.startswith(tuple(roots))]
    for path in mounted:
        try:
            state = mount_state(Path(path))
        except OSError:
            state = "stale"  # neither live nor cleanly disconnected: nobody can use it
        if state == "stale":
            subprocess.run(["umount", "-l", path], check=False, capture_output=True)


@pytest.fixture(params=["native", "python"])
def pool_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test against both data paths: the C one (zramd._zram: pool, codecs, core) and the
    Python reference (pool.py, compress/, core.py). Devices pick theirs from ZRAMD_NATIVE when
    created."""
    from zramd.native import native_module  # noqa: PLC0415

    if request.param == "native" and native_module() is None:
        pytest.fail("zramd._zram is not built or is stale: run scripts/test (pip install -e .)")
    monkeypatch.setenv("ZRAMD_NATIVE", "1" if request.param == "native" else "0")
    return str(request.param)


@pytest.fixture(params=["c", "python"])
def make_pool(request: pytest.FixtureRequest) -> PoolFactory:
    """Run a pool test against both pools (see PoolFactory)."""
    from zramd.native import native_module  # noqa: PLC0415
    from zramd.pool import ZsPool  # noqa: PLC0415

    if request.param == "python":
        return PoolFactory("python", ZsPool)
    module = native_module()
    if module is None:
        pytest.fail("zramd._zram is not built or is stale: run scripts/test (pip install -e .)")
    return PoolFactory("c", module.Pool)
