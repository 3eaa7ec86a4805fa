"""The control directory, live under a client, through a real shell."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from pathlib import Path

import pytest

from zramd.cli import plugin_env, plugin_path
from zramd.fusefs import mount_state
from zramd.testing import synthetic_pages

from servers import serve
from waiting import wait_for

pytestmark = pytest.mark.e2e
P = 4096
MiB = 1 << 20


def test_discard_then_echo_compact(tmp_path: Path) -> None:
    with serve(tmp_path, "size=64M") as srv:
        h = srv.connect()
        pages = [p for p in synthetic_pages(4096, seed=5) if p[8:] != p[:-8]]
        data = b"".join(pages)
        h.pwrite(data, 0)
        before = srv.mm_stat()
        assert before[0] == len(data)
        # discard every other page: half the objects go, their zspages stay sparse
        for i in range(0, len(pages), 2):
            h.trim(P, i * P)
        sparse = srv.mm_stat()
        r = srv.echo("1", "compact")
        assert r.returncode == 0, r.stderr
        after = srv.mm_stat()
        assert after[6] > sparse[6]  # pages_compacted grew
        assert after[2] < sparse[2]  # mem_used_total fell
        assert after[2] == sparse[2] - (after[6] - sparse[6]) * P
        for i in range(1, len(pages), 2):
            assert h.pread(P, i * P) == pages[i]
        assert h.pread(P, 0) == bytes(P)
        h.shutdown()


def test_files_modes_and_errors(tmp_path: Path) -> None:
    with serve(tmp_path, "size=16M") as srv:
        ctl = srv.control
        assert ctl is not None
        names = sorted(os.listdir(ctl))
        assert {"disksize", "mm_stat", "compact", "mem_limit", "reset", "mem_stat"} <= set(names)
        assert oct((ctl / "mm_stat").stat().st_mode & 0o777) == "0o444"
        assert oct((ctl / "compact").stat().st_mode & 0o777) == "0o200"
        assert oct((ctl / "disksize").stat().st_mode & 0o777) == "0o644"
        assert oct(ctl.stat().st_mode & 0o777) == "0o755"
        assert srv.attr("disksize") == f"{16 * MiB}\n"
        assert "[lz4]" in srv.attr("comp_algorithm")
        # write-only files can't be read, read-only ones can't be written, even by root
        with pytest.raises(PermissionError):
            (ctl / "compact").read_text()
        r = srv.echo("1", "mm_stat")
        assert r.returncode != 0
        assert "Permission denied" in r.stderr
        # a bad value fails the write with the kernel's errno and changes nothing
        r = srv.echo("0", "reset")
        assert r.returncode != 0
        assert "Invalid argument" in r.stderr
        r = srv.echo("1G", "disksize")
        assert r.returncode != 0
        assert "busy" in r.stderr
        r = srv.echo("snappy", "comp_algorithm")
        assert r.returncode != 0
        assert "Invalid argument" in r.stderr
        fd = os.open(ctl / "mem_limit", os.O_WRONLY)
        with pytest.raises(OSError, match="Invalid argument") as info:
            os.write(fd, b"junk\n")
        os.close(fd)
        assert info.value.errno == errno.EINVAL
        # memparse suffixes
        assert srv.echo("256M", "mem_limit").returncode == 0
        assert srv.mm_stat()[3] == 256 * MiB
        assert srv.echo("0", "mem_used_max").returncode == 0


def test_reset_busy_while_connected_then_reinit(tmp_path: Path) -> None:
    with serve(tmp_path, "size=16M") as srv:
        h = srv.connect()
        h.pwrite(b"x" * P, 0)
        r = srv.echo("1", "reset")
        assert r.returncode != 0
        assert "busy" in r.stderr
        h.shutdown()
        # nbdkit closes its end after the client's disconnect: reset succeeds once it has
        wait_for(lambda: srv.echo("1", "reset").returncode == 0, what="reset after disconnect")
        assert srv.attr("initstate") == "0\n"
        assert srv.echo("zstd", "comp_algorithm").returncode == 0
        assert srv.echo("32M", "disksize").returncode == 0
        h = srv.connect()
        assert h.get_size() == 32 * MiB
        assert h.pread(P, 0) == bytes(P)  # reset really discarded the data
        h.shutdown()


def test_stale_mount_of_a_killed_server_is_cleaned(tmp_path: Path) -> None:
    ctl = tmp_path / "control"
    with serve(tmp_path, "size=8M", check_exit=False) as srv:
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait()
        assert mount_state(ctl) == "stale"
    (tmp_path / "zramd.sock").unlink()
    (tmp_path / "zramd.pid").unlink()
    with serve(tmp_path, "size=8M") as srv2:
        assert mount_state(ctl) == "live"
        assert srv2.attr("initstate") == "1\n"
    assert mount_state(ctl) == "none"


def test_control_dir_in_use_is_refused(tmp_path: Path) -> None:
    with serve(tmp_path, "size=8M") as srv:
        assert srv.control is not None
        other = tmp_path / "other"
        other.mkdir()
        r = subprocess.run(
            ["nbdkit", "-f", "-U", str(other / "s.sock"), "python", str(plugin_path()),
             "size=1M", f"control={srv.control}"],
            env=plugin_env(), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert r.returncode != 0
        assert "is in use" in r.stderr
