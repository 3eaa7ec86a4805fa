"""The control directory, live under a client, through a real shell."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from zramd import control
from zramd.device import ZramDevice
from zramd.devices import Devices
from zramd.fusefs import ControlDir, mount_state
from zramd.supervise import plugin_env, plugin_path
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
             "size=1M", f"control={srv.mount}"],
            env=plugin_env(), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert r.returncode != 0
        assert "is in use" in r.stderr


# -- the FUSE layer against sysfs, mounted in this process ----------------------------------------


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[ZramDevice, Path]]:
    """A 16 MiB device with its control directory mounted here (a real FUSE mount served by
    a thread of the test process, so a test can watch the device and the store calls)."""
    dev = ZramDevice()
    dev.set_disksize(16 * MiB)
    devices = Devices(ZramDevice)
    devices.add(dev)
    ctl = ControlDir(devices, tmp_path / "control")
    ctl.start()
    try:
        yield dev, tmp_path / "control" / "zram0"
    finally:
        ctl.stop()
        dev.reset()
    assert mount_state(tmp_path / "control") == "none"


def errno_of(call: Callable[[], object]) -> int:
    """The errno ``call`` fails with; a call that succeeds fails the test."""
    try:
        call()
    except OSError as e:
        return e.errno or 0
    pytest.fail("the call succeeded")


def test_namespace_is_fixed_as_in_sysfs(mounted: tuple[ZramDevice, Path]) -> None:
    """What sysfs answered in /sys/block/zram0 (Linux 6.18) for each namespace change."""
    _, ctl = mounted
    before = sorted(os.listdir(ctl))
    cases: list[tuple[str, Callable[[], object], int]] = [
        ("create", lambda: os.open(ctl / "new", os.O_CREAT | os.O_WRONLY, 0o644), errno.EACCES),
        ("mkdir", lambda: os.mkdir(ctl / "d"), errno.EPERM),
        ("unlink", lambda: os.unlink(ctl / "reset"), errno.EPERM),
        ("rename", lambda: os.rename(ctl / "reset", ctl / "reset2"), errno.EPERM),
        ("rename over", lambda: os.rename(ctl / "reset", ctl / "compact"), errno.EPERM),
        ("symlink", lambda: os.symlink("reset", ctl / "l"), errno.EPERM),
        ("link", lambda: os.link(ctl / "reset", ctl / "h"), errno.EPERM),
        ("mknod", lambda: os.mknod(ctl / "n", 0o600 | stat.S_IFREG), errno.EPERM),
        ("mkfifo", lambda: os.mkfifo(ctl / "f"), errno.EPERM),
        # the VFS answers these before the filesystem is asked, as for sysfs
        ("create existing, O_EXCL",
         lambda: os.open(ctl / "reset", os.O_CREAT | os.O_EXCL | os.O_WRONLY), errno.EEXIST),
        ("mkdir existing", lambda: os.mkdir(ctl / "disksize"), errno.EEXIST),
        ("unlink missing", lambda: os.unlink(ctl / "nothing"), errno.ENOENT),
        ("rmdir a file", lambda: os.rmdir(ctl / "disksize"), errno.ENOTDIR),
        ("setxattr", lambda: os.setxattr(ctl / "disksize", "user.x", b"1"), errno.ENOTSUP),
        ("getxattr", lambda: os.getxattr(ctl / "disksize", "user.x"), errno.ENODATA),
    ]  # fmt: skip
    got = {name: errno.errorcode.get(errno_of(call)) for name, call, _ in cases}
    assert got == {name: errno.errorcode[e] for name, _, e in cases}
    assert os.listxattr(ctl / "disksize") == []
    assert sorted(os.listdir(ctl)) == before
    # and as a shell sees it
    # (cd in the shell, not cwd=: this process serves the mount, and a vfork child that
    # looks zram0 up would wait for it while the parent holds the GIL)
    r = subprocess.run(
        ["bash", "-c", 'cd "$0" && touch x; mkdir d; rm -f reset; mv reset r; ln -s reset l; '
         "ln reset h", str(ctl)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.stderr.count("Permission denied") == 1  # touch
    assert r.stderr.count("Operation not permitted") == 5
    assert "not implemented" not in r.stderr


def test_chmod_chown_utimes_kept_truncate_ignored(mounted: tuple[ZramDevice, Path]) -> None:
    """kernfs keeps mode, owner and times, ignores a size change, and checks the mode at
    open even for root; a write to an attribute without a store is EIO (dev_attr_store)."""
    dev, ctl = mounted
    os.chmod(ctl / "disksize", 0o444)
    assert stat.S_IMODE((ctl / "disksize").stat().st_mode) == 0o444
    assert errno_of(lambda: os.open(ctl / "disksize", os.O_WRONLY)) == errno.EACCES
    os.chmod(ctl / "disksize", 0o644)
    assert (ctl / "disksize").read_text() == f"{16 * MiB}\n"
    os.chown(ctl / "disksize", os.getuid(), os.getgid())
    os.utime(ctl / "mm_stat", (5, 7))
    st = (ctl / "mm_stat").stat()
    assert (st.st_atime, st.st_mtime) == (5, 7)
    os.truncate(ctl / "disksize", 0)  # `echo x > file` may truncate first
    assert (ctl / "disksize").stat().st_size == 4096
    with open(ctl / "mem_limit", "w") as f:  # O_TRUNC
        f.write("1M\n")
    assert dev.mem_limit == MiB
    os.chmod(ctl / "mm_stat", 0o666)
    fd = os.open(ctl / "mm_stat", os.O_WRONLY)
    assert errno_of(lambda: os.write(fd, b"1")) == errno.EIO
    os.close(fd)
    os.chmod(ctl / "reset", 0o644)
    fd = os.open(ctl / "reset", os.O_RDONLY)
    assert errno_of(lambda: os.read(fd, 100)) == errno.EIO
    os.close(fd)
    assert dev.initstate  # nothing reached the device


def test_one_write_is_one_store_of_at_most_4096_bytes(
    mounted: tuple[ZramDevice, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """kernfs passes a store the first 4096 bytes of a write and reports 4096 written; the
    kernel's FUSE would otherwise split a big write and run the store once per piece."""
    dev, ctl = mounted
    seen: list[bytes] = []
    attr = control.BY_NAME["writeback_limit"]

    def spy(d: ZramDevice, data: bytes) -> None:
        seen.append(data)
        assert attr.store is not None
        attr.store(d, data)

    spied = control.Attribute(attr.name, attr.mode, attr.show, spy, attr.doc)
    monkeypatch.setitem(control.BY_NAME, "writeback_limit", spied)
    fd = os.open(ctl / "writeback_limit", os.O_WRONLY)
    try:
        # a number that fills the first 4096 bytes exactly, then junk the store never sees
        for size in (5000, 300_000, 3 * MiB):
            seen.clear()
            data = b"0" * 4095 + b"7" + b"x" * (size - 4096)
            assert os.write(fd, data) == 4096
            assert seen == [data[:4096]]
            assert dev.writeback_limit == 7
        seen.clear()
        assert os.writev(fd, [b"0" * 2000, b"0" * 2094 + b"12", b"x" * 200_000]) == 4096
        assert len(seen) == 1
        assert dev.writeback_limit == 12
        seen.clear()
        assert os.write(fd, b"") == 0  # sysfs: an empty write stores nothing
        assert seen == []
    finally:
        os.close(fd)


def test_reading_at_offset_zero_again_regenerates(mounted: tuple[ZramDevice, Path]) -> None:
    """A monitor keeps mm_stat open and preads it at 0: each such read is fresh (seq_file);
    a read that continues where the last one ended keeps to the text it started."""
    dev, ctl = mounted
    fd = os.open(ctl / "mm_stat", os.O_RDONLY)
    try:
        first = os.pread(fd, 4096, 0)
        assert first == control.show(dev, "mm_stat")
        dev.write(0, synthetic_pages(1, seed=3)[0] * 4)
        second = os.pread(fd, 4096, 0)
        assert second != first
        assert second == control.show(dev, "mm_stat")
        # lseek + read: the same rule
        os.lseek(fd, 0, os.SEEK_SET)
        head = os.read(fd, 10)
        dev.write(8 * P, os.urandom(64 * P))  # every field after the first changes width
        rest = os.read(fd, 4096)
        assert head + rest == second  # one text, not halves of two
        assert os.read(fd, 4096) == b""
        os.lseek(fd, 0, os.SEEK_SET)
        assert os.read(fd, 4096) == control.show(dev, "mm_stat")
    finally:
        os.close(fd)
