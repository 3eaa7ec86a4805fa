"""Memory tiers end to end: writeback to a second nbdkit through an NBD URI, recompression and
background compaction, driven through the control directory and the CLI of a real server."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import nbd
import pytest
from click.testing import CliRunner

from zramd.cli import main
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
        ctl = ["--control", str(srv.control)]
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
