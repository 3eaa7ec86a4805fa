"""Memory tiers end to end: writeback to a second nbdkit through an NBD URI, recompression and
background compaction, driven through the control directory and the CLI of a real server."""

from __future__ import annotations

import errno
import signal
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import nbd
import pytest
from click.testing import CliRunner

from zramd import backing
from zramd.cli import main
from zramd.device import ZramDevice
from zramd.errors import ZramdError
from zramd.testing import synthetic_pages

from servers import serve
from waiting import wait_for

pytestmark = pytest.mark.e2e
P = 4096
MiB = 1 << 20


@pytest.fixture
def memory_server(tmp_path: Path) -> Iterator[str]:
    """nbdkit's memory plugin on its own socket: the backing store, as an NBD URI."""
    sock = tmp_path / "backing.sock"
    pidfile = tmp_path / "backing.pid"
    with open(tmp_path / "backing.log", "wb") as log:
        proc = subprocess.Popen(
            ["nbdkit", "-f", "-U", str(sock), "-P", str(pidfile), "memory", "64M"], stderr=log
        )
    wait_for(lambda: pidfile.exists() or proc.poll() is not None, what="the backing nbdkit")
    assert proc.poll() is None, "backing nbdkit did not start"
    yield f"nbd+unix:///?socket={sock}"
    proc.terminate()
    proc.wait(20)


def backing_blocks_in_use(uri: str) -> int:
    """Blocks of the backing export that hold data, read through a second NBD connection."""
    h = nbd.NBD()
    h.connect_uri(uri)
    size = h.get_size()
    used = 0
    for off in range(0, size, 4 * MiB):
        chunk = h.pread(4 * MiB, off)
        used += sum(1 for i in range(0, len(chunk), P) if chunk[i : i + P].count(0) != P)
    h.shutdown()
    return used


def test_writeback_to_an_nbd_uri_and_recompression(tmp_path: Path, memory_server: str) -> None:
    config = (f"backing_dev={memory_server}", "recomp_algorithm=zstd", "size=32M")
    with serve(tmp_path, *config) as srv:
        assert srv.attr("backing_dev") == memory_server + "\n"
        assert srv.attr("recomp_algorithm").startswith("#1: ")
        h = srv.connect()
        data = b"".join(synthetic_pages(4096, seed=21))
        h.pwrite(data, 0)
        before = srv.mm_stat()
        assert srv.echo("all", "idle").returncode == 0
        assert srv.echo("type=idle", "recompress").returncode == 0
        recompressed = srv.mm_stat()
        assert recompressed[1] < before[1]  # compr_data_size fell
        # recompression touched every candidate, so none is idle any more (as in the kernel)
        assert srv.echo("idle", "writeback").returncode == 0
        assert srv.attr("bd_stat").split()[0] == "0"
        assert srv.echo("all", "idle").returncode == 0
        h.pread(16 * P, 0)  # these pages are accessed again: no longer idle
        r = srv.echo("idle", "writeback")
        assert r.returncode == 0, r.stderr
        bd_count, _, bd_writes = (int(x) for x in srv.attr("bd_stat").split())
        after = srv.mm_stat()
        assert bd_count == bd_writes > 1000
        assert after[0] == before[0]  # orig_data_size still counts written-back pages
        assert after[2] < recompressed[2] // 4  # the pool gave its memory back
        assert backing_blocks_in_use(memory_server) == bd_count
        assert h.pread(len(data), 0) == data  # read back through the backing NBD server
        assert int(srv.attr("bd_stat").split()[1]) == bd_writes
        # an overwrite and a trim release blocks on the backing store
        h.pwrite(data[: 64 * P], 64 * P)
        h.trim(64 * P, 128 * P)
        assert int(srv.attr("bd_stat").split()[0]) < bd_count
        assert h.pread(64 * P, 0) == data[: 64 * P]
        assert h.pread(64 * P, 64 * P) == data[: 64 * P]
        h.shutdown()


def test_backing_dev_set_through_the_control_directory(tmp_path: Path, memory_server: str) -> None:
    with serve(tmp_path) as srv:  # uninitialised, like a freshly loaded zram module
        assert srv.attr("backing_dev") == "none\n"
        missing = tmp_path / "missing.img"
        r = srv.echo(str(missing), "backing_dev")
        assert "No such file or directory" in r.stderr
        assert srv.echo(memory_server, "backing_dev").returncode == 0
        assert srv.echo("algo=deflate priority=2", "recomp_algorithm").returncode == 0
        assert srv.echo("16M", "disksize").returncode == 0
        r = srv.echo("none", "backing_dev")
        assert "Device or resource busy" in r.stderr
        assert "#2: " in srv.attr("recomp_algorithm")


def test_cli_writeback_recompress_and_auto_compaction(tmp_path: Path) -> None:
    backing = tmp_path / "swap-backing.img"
    with open(backing, "wb") as f:
        f.truncate(64 * MiB)
    config = (f"backing_dev={backing}", "recomp_algorithm=zstd", "size=32M")
    with serve(tmp_path, *config) as srv:
        ctl = ["--control", str(srv.mount)]
        runner = CliRunner()
        h = srv.connect()
        data = b"".join(synthetic_pages(4096, seed=4))
        h.pwrite(data, 0)
        r = runner.invoke(main, ["recompress", *ctl, "--max-pages", "100"])
        assert r.exit_code == 0, r.output
        assert r.output.startswith("compressed data ")
        r = runner.invoke(main, ["writeback", *ctl, "--idle", "all", "type=huge_idle"])
        assert r.exit_code == 0, r.output
        huge_written = int(r.output.split()[2])
        assert huge_written > 0
        r = runner.invoke(main, ["writeback", *ctl, "page_indexes=0-99"])
        assert r.exit_code == 0, r.output
        r = runner.invoke(main, ["writeback", *ctl, "sideways"])
        assert r.exit_code == 1
        assert "Invalid argument (EINVAL)" in r.output
        assert h.pread(len(data), 0) == data
        # background compaction, switched on live: discard every other page, then wait
        for i in range(0, 4096, 2):
            h.trim(P, i * P)
        assert srv.echo("interval=1 min_bytes=0 min_percent=0", "auto_compact").returncode == 0
        wait_for(lambda: int(srv.attr("compact_stat").split()[0]) > 0, what="auto compaction")
        _, auto_freed, _, _, pause_us = (int(x) for x in srv.attr("compact_stat").split())
        assert auto_freed > 0
        assert srv.mm_stat()[6] >= auto_freed  # counted in pages_compacted too
        assert pause_us > 0  # reported; that it is one slice: tests/test_shrinker.py
        expect = bytearray(data)
        for i in range(0, 4096, 2):
            expect[i * P : (i + 1) * P] = bytes(P)
        assert h.pread(len(data), 0) == expect
        h.shutdown()


# -- an NBD backing server that goes away: restarted, stopped, full; the largest export ------


class BackingServer:
    """nbdkit serving ``plugin`` on a Unix socket in ``tmp``; it can be killed, started again
    on the same socket, stopped (SIGSTOP) and continued."""

    def __init__(self, tmp: Path, *plugin: str) -> None:
        self.sock = tmp / "backing.sock"
        self.pidfile = tmp / "backing.pid"
        self.log = tmp / "backing.log"
        self.plugin = plugin
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"nbd+unix:///?socket={self.sock}"

    def start(self) -> None:
        self.pidfile.unlink(missing_ok=True)
        self.sock.unlink(missing_ok=True)  # left behind by a SIGKILL
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(
                ["nbdkit", "-f", "-U", str(self.sock), "-P", str(self.pidfile), *self.plugin],
                stderr=log,
            )
        self.proc = proc
        wait_for(lambda: self.pidfile.exists() or proc.poll() is not None, what="nbdkit")
        assert proc.poll() is None, self.log.read_text()

    def signal(self, sig: int) -> None:
        """Send ``sig``; SIGSTOP returns once every thread of the server is stopped (a request
        already on a CPU could otherwise still be answered)."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig == signal.SIGSTOP:
            tasks = Path(f"/proc/{self.proc.pid}/task")

            def stopped() -> bool:
                states = [
                    (t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in tasks.iterdir()
                ]
                return all(state in "tT" for state in states)

            wait_for(stopped, what="the backing server to stop")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(20)
        self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            self.signal(signal.SIGCONT)
            self.kill()


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[BackingServer]:
    """nbdkit's file plugin on a 16 MiB file: its data outlives the server process."""
    image = tmp_path / "backing.img"
    with open(image, "wb") as f:
        f.truncate(16 * MiB)
    srv = BackingServer(tmp_path, "file", str(image))
    srv.start()
    yield srv
    srv.close()


def test_reads_survive_a_restarted_backing_server(file_server: BackingServer) -> None:
    """The backing server restarts with the same data: written-back pages read back (they
    were EIO forever), through a new connection made by the first read that needs it."""
    data = b"".join(synthetic_pages(256, seed=3))
    d = ZramDevice()
    d.set_backing_dev(file_server.uri)
    d.set_disksize(len(data))
    d.write(0, data)
    written = d.writeback([(0, 0, 256)])
    assert written > 200
    file_server.kill()
    file_server.start()
    assert d.read(0, len(data)) == data
    d.write(0, data[: 8 * P])  # and writeback goes on over the new connection
    assert d.writeback([(0, 0, 8)]) > 0
    file_server.kill()
    with pytest.raises(ZramdError) as e:  # no server: EIO after a few attempts, not a hang
        d.read(0, P)
    assert e.value.errno == errno.EIO
    assert "connection lost" in str(e.value)
    file_server.start()
    assert d.read(0, len(data)) == data
    assert d.bd_stat().bd_reads >= 2 * written
    d.reset()


def test_a_stopped_backing_server_fails_reads_in_bounded_time(
    file_server: BackingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopped server answers nothing. The read of a written-back page gives up after
    NBD_TIMEOUT with EIO; the other pages of its stripe are served meanwhile (no lock is held
    while the store is read); once the server runs again, so is that page."""
    monkeypatch.setattr(backing, "NBD_TIMEOUT", 3.0)
    data = b"".join(synthetic_pages(32, seed=8))  # one stripe
    d = ZramDevice()
    d.set_backing_dev(file_server.uri)
    d.set_disksize(len(data))
    d.write(0, data)
    assert d.writeback([(0, 0, 1)]) == 1
    results: dict[int, bytes | ZramdError] = {}
    ended: dict[int, float] = {}

    def read(page: int) -> None:
        try:
            results[page] = d.read(page * P, P)
        except ZramdError as e:
            results[page] = e
        ended[page] = time.monotonic()

    file_server.signal(signal.SIGSTOP)
    try:
        store = d._state.backing.store  # type: ignore[union-attr]
        written_back = threading.Thread(target=read, args=(0,))
        written_back.start()
        wait_for(store._lock.locked, what="the read of the written-back page")
        neighbour = threading.Thread(target=read, args=(1,))
        neighbour.start()
        written_back.join(30)  # far beyond the bound: only a hang takes this long
        neighbour.join(10)
        assert not written_back.is_alive(), "the read hangs on a stopped backing server"
        assert not neighbour.is_alive()
        assert ended[1] < ended[0]  # not held up by the read of the written-back page
        with pytest.raises(ZramdError) as e:  # attaching waits no longer than that either
            ZramDevice().set_backing_dev(file_server.uri)
        assert e.value.errno == errno.ETIMEDOUT
    finally:
        file_server.signal(signal.SIGCONT)
    failed = results[0]
    assert isinstance(failed, ZramdError)
    assert failed.errno == errno.EIO
    assert "no answer within 3 s" in str(failed)
    assert results[1] == data[P : 2 * P]
    assert d.read(0, len(data)) == data
    file_server.signal(signal.SIGSTOP)  # a reset does not wait for a stopped server either
    try:
        reset = threading.Thread(target=d.reset)
        reset.start()
        reset.join(30)
        assert not reset.is_alive(), "reset hangs on a stopped backing server"
    finally:
        file_server.signal(signal.SIGCONT)
    assert d.backing_dev is None


def test_an_nbd_store_that_is_full_is_enospc(tmp_path: Path) -> None:
    """The backing server answers ENOSPC to writes: writeback says ENOSPC, not EIO."""
    srv = BackingServer(
        tmp_path, "--filter=error", "memory", "16M", "error-pwrite=ENOSPC", "error-pwrite-rate=1"
    )
    srv.start()
    try:
        data = b"".join(synthetic_pages(64, seed=2))
        d = ZramDevice()
        d.set_backing_dev(srv.uri)
        d.set_disksize(len(data))
        d.write(0, data)
        with pytest.raises(ZramdError) as e:
            d.writeback([(0, 0, 64)])
        assert e.value.errno == errno.ENOSPC
        assert d.bd_stat().bd_count == 0
        assert d.read(0, len(data)) == data
        d.reset()
    finally:
        srv.close()


def test_the_largest_nbd_export_attaches(tmp_path: Path) -> None:
    """An export of 2**63 - 1 bytes (nbdkit's largest) attaches at no cost and holds pages
    (its block map took one byte per block and failed with a MemoryError traceback)."""
    srv = BackingServer(tmp_path, "memory", str((1 << 63) - 1))
    srv.start()
    try:
        d = ZramDevice()
        tracemalloc.start()
        try:
            d.set_backing_dev(srv.uri)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20, peak
        data = b"".join(synthetic_pages(64, seed=6))
        d.set_disksize(len(data))
        d.write(0, data)
        n = d.writeback([(0, 0, 64)])
        assert n > 0
        assert d.read(0, len(data)) == data
        d.reset()
    finally:
        srv.close()


def test_a_backing_file_in_use_by_another_server_is_refused(tmp_path: Path) -> None:
    """Two servers on one backing file read each other's pages: the second one is refused."""
    image = tmp_path / "shared.img"
    with open(image, "wb") as f:
        f.truncate(16 * MiB)
    for name in "abc":
        (tmp_path / name).mkdir()
    with serve(tmp_path / "a", f"backing_dev={image}", "size=8M"), serve(tmp_path / "b") as other:
        r = other.echo(str(image), "backing_dev")
        assert r.returncode != 0
        assert "Device or resource busy" in r.stderr
        assert other.attr("backing_dev") == "none\n"
    with serve(tmp_path / "c") as srv:  # the first server is gone: the file is free
        assert srv.echo(str(image), "backing_dev").returncode == 0
