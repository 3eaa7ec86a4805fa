"""Several devices behind one nbdkit: exports zram0..zramN-1, the control tree laid out like
sysfs, hot_add/hot_remove through a shell, the CLI, and util-linux's own zramctl."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import nbd
import pytest
from click.testing import CliRunner

from zramd.cli import main
from zramd.runstate import mount_at
from zramd.testing import synthetic_pages

from servers import serve

pytestmark = pytest.mark.e2e
P = 4096
MiB = 1 << 20


def exports(uri: str) -> list[str]:
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(uri)
    names: list[str] = []
    h.opt_list(lambda name, description: names.append(name) or 0)
    h.opt_abort()
    return names


def errno_of_echo(path: Path, value: bytes) -> int:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value)
    except OSError as e:
        return e.errno or 0
    finally:
        os.close(fd)
    return 0


def test_exports_and_control_tree_of_two_devices(tmp_path: Path) -> None:
    with serve(tmp_path, "devices=2", "size=16M", refusals=True) as srv:
        assert srv.mount is not None
        assert exports(srv.uri) == ["zram0", "zram1"]
        assert sorted(os.listdir(srv.mount)) == ["zram-control", "zram0", "zram1"]
        assert sorted(os.listdir(srv.mount / "zram-control")) == ["hot_add", "hot_remove"]
        assert os.listdir(srv.device_dir(0)) == os.listdir(srv.device_dir(1))
        modes = {p.name: p.stat().st_mode & 0o777 for p in (srv.mount / "zram-control").iterdir()}
        assert modes == {"hot_add": 0o400, "hot_remove": 0o200}

        default, zram0, zram1 = srv.connect(), srv.connect("zram0"), srv.connect("zram1")
        a = b"".join(synthetic_pages(64, seed=1))
        b = b"".join(synthetic_pages(16, seed=2))
        default.pwrite(a, 0)  # the default export is zram0
        zram1.pwrite(b, 0)
        assert zram0.pread(len(a), 0) == a
        assert zram1.pread(len(b), 0) == b
        assert zram1.pread(P, len(b)) == bytes(P)
        assert srv.mm_stat(0)[0] == len(a)
        assert srv.mm_stat(1)[0] == len(b)
        # limits are per device: zram1 at its limit refuses writes, zram0 does not notice
        assert srv.echo("1", "mem_limit", 1).returncode == 0
        with pytest.raises(nbd.Error) as info:
            zram1.pwrite(os.urandom(MiB), MiB)
        assert info.value.errno == "ENOSPC"
        zram0.pwrite(os.urandom(MiB), MiB)
        assert srv.mm_stat(0)[3] == 0
        for h in (default, zram0, zram1):
            h.shutdown()

        with pytest.raises(nbd.Error, match="zram2"):
            srv.connect("zram2")


def test_hot_add_and_hot_remove_through_a_shell(tmp_path: Path) -> None:
    with serve(tmp_path, "size=16M", refusals=True) as srv:
        assert srv.mount is not None
        ctl = srv.mount / "zram-control"
        added = subprocess.run(["cat", str(ctl / "hot_add")], capture_output=True, text=True,
                               check=True)  # fmt: skip
        assert added.stdout == "1\n"  # one read, one device
        assert sorted(os.listdir(srv.mount)) == ["zram-control", "zram0", "zram1"]
        assert srv.attr("initstate", 1) == "0\n"  # uninitialised, as the kernel's
        assert exports(srv.uri) == ["zram0", "zram1"]
        assert srv.echo("8M", "disksize", 1).returncode == 0
        h = srv.connect("zram1")
        assert h.get_size() == 8 * MiB
        h.pwrite(b"x" * P, 0)
        # kernel's order: kstrtoint, negative, unknown, busy
        assert errno_of_echo(ctl / "hot_remove", b"one\n") == errno.EINVAL
        assert errno_of_echo(ctl / "hot_remove", b"-1\n") == errno.EINVAL
        assert errno_of_echo(ctl / "hot_remove", b"4294967296\n") == errno.ERANGE
        assert errno_of_echo(ctl / "hot_remove", b"5\n") == errno.ENODEV
        assert errno_of_echo(ctl / "hot_remove", b"1\n") == errno.EBUSY
        assert srv.mm_stat(1)[0] == P  # the refused remove changed nothing
        held = os.open(srv.device_dir(1) / "mm_stat", os.O_RDONLY)
        try:
            h.shutdown()
            r = subprocess.run(["bash", "-c", f"echo 1 > {ctl / 'hot_remove'}"],
                               capture_output=True, text=True, check=False)  # fmt: skip
            assert r.returncode == 0, r.stderr
            assert sorted(os.listdir(srv.mount)) == ["zram-control", "zram0"]
            assert not (srv.device_dir(1) / "mm_stat").exists()
            assert exports(srv.uri) == ["zram0"]
            with pytest.raises(nbd.Error):
                srv.connect("zram1")
            # a file left open on the removed device: ENODEV, as kernfs answers
            with pytest.raises(OSError, match="No such device") as info:
                os.pread(held, 4096, 0)
            assert info.value.errno == errno.ENODEV
        finally:
            os.close(held)
        # the id comes back, as a new device: nothing of the old one shows through
        assert (ctl / "hot_add").read_text() == "1\n"
        assert srv.attr("disksize", 1) == "0\n"
        assert srv.attr("initstate", 0) == "1\n"
        # zram0 can go too; the default export then has no device
        assert errno_of_echo(ctl / "hot_remove", b"0") == 0
        assert exports(srv.uri) == ["zram1"]
        with pytest.raises(nbd.Error):
            srv.connect()
        assert (ctl / "hot_add").read_text() == "0\n"


def test_cli_lists_and_drives_each_device(tmp_path: Path) -> None:
    runner = CliRunner()
    with serve(tmp_path, "devices=3", "size=16M") as srv:
        assert srv.mount is not None
        ctl = ["--control", str(srv.mount)]
        assert srv.echo("1", "reset", 2).returncode == 0  # zram2: no disksize
        r = runner.invoke(main, ["status", *ctl, "--raw", "-n", "-o", "NAME,DISKSIZE"])
        assert r.output == "zram0 16M\nzram1 16M\n", r.output  # as zramctl: initialised ones
        r = runner.invoke(main, ["status", *ctl, "--all", "--raw", "-n", "-o", "NAME,DISKSIZE"])
        assert r.output == "zram0 16M\nzram1 16M\nzram2 0B\n", r.output
        r = runner.invoke(main, ["status", *ctl, "-d", "zram2", "--json", "-o", "NAME"])
        assert json.loads(r.output) == {"zramd": [{"name": "zram2"}]}
        r = runner.invoke(main, ["set", *ctl, "-d", "1", "mem_limit", "1M"])
        assert r.exit_code == 0, r.output
        assert [srv.mm_stat(i)[3] for i in range(3)] == [0, MiB, 0]
        r = runner.invoke(main, ["set", *ctl, "mem_limit", "2M"])  # default: zram0
        assert [srv.mm_stat(i)[3] for i in range(3)] == [2 * MiB, MiB, 0]
        r = runner.invoke(main, ["set", *ctl, "-d", "zram7", "mem_limit", "1M"])
        assert r.exit_code == 1
        assert "there is no zram7" in r.output
        r = runner.invoke(main, ["compact", *ctl, "-d", "x"])
        assert r.exit_code == 2
        assert "'x' is not a device" in r.output
        r = runner.invoke(main, ["hot-add", *ctl])
        assert r.output == "zram3\n"
        h = srv.connect("zram3")
        r = runner.invoke(main, ["hot-remove", *ctl, "zram3"])
        assert r.exit_code == 1
        assert "Device or resource busy (EBUSY)" in r.output
        h.shutdown()
        r = runner.invoke(main, ["hot-remove", *ctl, "3"])
        assert r.exit_code == 0, r.output
        assert exports(srv.uri) == ["zram0", "zram1", "zram2"]


ZRAMCTL_COLUMNS = "NAME,DISKSIZE,DATA,COMPR,ALGORITHM,ZERO-PAGES,TOTAL,MEM-LIMIT,MEM-USED,MIGRATED"


@pytest.mark.skipif(os.geteuid() != 0, reason="a private mount namespace needs root")
@pytest.mark.skipif(
    not (shutil.which("zramctl") and shutil.which("unshare")), reason="util-linux missing"
)
@pytest.mark.skipif(
    not os.path.exists("/sys/block/zram0") or not os.path.exists("/dev/zram0"),
    reason="needs a zram0 to cover (modprobe zram)",
)
def test_util_linux_zramctl_reads_each_device_directory(tmp_path: Path) -> None:
    """In a private mount namespace, zramd's zram1 directory is bind-mounted over the
    kernel's /sys/block/zram0: zramctl then reports zramd's device as /dev/zram0, every
    column from zramd's files. The host's zram0 is neither written nor unmounted."""
    with serve(tmp_path, "devices=2", "size=32M", "comp_algorithm=zstd") as srv:
        h = srv.connect("zram1")
        pages = synthetic_pages(512, seed=5)
        h.pwrite(b"".join(pages) + bytes(8 * P), 0)  # and 8 same-filled pages
        h.shutdown()
        assert srv.echo("3M", "mem_limit", 1).returncode == 0
        mm = srv.mm_stat(1)
        sysdir = os.path.realpath("/sys/block/zram0")  # /sys/devices/virtual/block/zram0
        script = (
            f'mount --bind "$1" {sysdir} && '
            f"zramctl --bytes --raw --noheadings --output {ZRAMCTL_COLUMNS} /dev/zram0"
        )
        r = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
             str(srv.device_dir(1))],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
    cols = r.stdout.split()
    assert cols[0] == "/dev/zram0"
    assert cols[1:] == [
        str(32 * MiB),  # DISKSIZE
        str(mm[0]),  # DATA: orig_data_size
        str(mm[1]),  # COMPR: compr_data_size
        "zstd",  # ALGORITHM: the bracketed one in comp_algorithm
        str(mm[5]),  # ZERO-PAGES: same_pages
        str(mm[2]),  # TOTAL: mem_used_total
        str(mm[3]),  # MEM-LIMIT
        str(mm[4]),  # MEM-USED: mem_used_max
        str(mm[6]),  # MIGRATED: pages_compacted
    ], r.stdout
    assert mm[5] >= 8  # the same-filled pages (synthetic_pages holds some too)
    assert mount_at(sysdir) is None  # the bind mount stayed in its namespace
