"""zramd.supervise.start_nbdkit: the one way the CLI, the tests and the scripts start nbdkit."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from zramd.supervise import StartError, start_nbdkit

pytestmark = pytest.mark.e2e


def memory_args(tmp: Path, size: str) -> list[str]:
    return ["nbdkit", "-f", "-U", str(tmp / "m.sock"), "-P", str(tmp / "m.pid"), "memory", size]


def test_ready_then_stopped(tmp_path: Path) -> None:
    server = start_nbdkit(
        memory_args(tmp_path, "size=1M"), pidfile=tmp_path / "m.pid", log=tmp_path / "m.log"
    )
    assert int((tmp_path / "m.pid").read_text()) == server.pid
    assert (tmp_path / "m.sock").exists()
    assert server.stop() == 0


def test_a_server_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    with pytest.raises(StartError) as e:
        start_nbdkit(
            memory_args(tmp_path, "size=lots"), pidfile=tmp_path / "m.pid", log=tmp_path / "m.log"
        )
    assert not e.value.timed_out
    assert "nbdkit did not start (exited with status 1)" in str(e.value)
    assert "lots" in e.value.log  # nbdkit's own complaint about the size


def test_a_server_that_never_gets_ready_is_stopped_after_the_timeout(tmp_path: Path) -> None:
    """What scripts/bench_tiers.py did without a timeout: wait forever for a pidfile."""
    t = time.monotonic()
    with pytest.raises(StartError) as e:
        start_nbdkit(["sleep", "600"], pidfile=tmp_path / "never.pid", timeout=1.0)
    assert e.value.timed_out
    assert "sleep did not start (not ready within 1 s)" in str(e.value)
    assert time.monotonic() - t < 30  # stopped by SIGTERM, not waited for
    assert not os.path.exists(f"/proc/{e.value.pid}")  # and reaped
