"""libnbd against the real nbdkit + plugin: every capability, errors, multi-conn."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nbd
import pytest

from zramd.supervise import plugin_env, plugin_path
from zramd.testing import synthetic_pages

from servers import block_status, connect_stdio, serve
from waiting import wait_for

pytestmark = pytest.mark.e2e
P = 4096
MiB = 1 << 20


def test_capabilities() -> None:
    h = connect_stdio("size=16M")
    assert h.get_size() == 16 * MiB
    assert h.can_trim()
    assert h.can_zero()
    assert h.can_fast_zero()
    assert h.can_flush()
    assert h.can_fua()
    assert h.can_multi_conn()
    assert h.can_cache()
    assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    assert not h.is_read_only()
    assert not h.is_rotational()
    assert h.get_block_size(nbd.SIZE_MINIMUM) == 512
    assert h.get_block_size(nbd.SIZE_PREFERRED) == 4096
    assert h.get_block_size(nbd.SIZE_MAXIMUM) == 64 * MiB  # what nbdkit 1.32 serves
    h.shutdown()


def test_the_advertised_maximum_is_served() -> None:
    """A data request of the advertised maximum works (nbdkit refuses anything larger with
    ENOMEM); trim and zero carry no payload, so the maximum does not bound them."""
    h = connect_stdio("size=160M")
    biggest = h.get_block_size(nbd.SIZE_MAXIMUM)
    assert biggest == 64 * MiB  # before building a buffer that large
    data = (b"zramd " * (biggest // 6 + 1))[:biggest]
    h.pwrite(data, P)
    assert h.pread(biggest, P) == data
    h.trim(2 * biggest, 0)
    h.zero(2 * biggest + P, 0)
    assert h.pread(P, biggest) == bytes(P)
    h.shutdown()


def test_write_read_trim_zero() -> None:
    h = connect_stdio("size=16M", "comp_algorithm=zstd")
    pages = synthetic_pages(64, seed=2)
    data = b"".join(pages)
    h.pwrite(data, MiB, nbd.CMD_FLAG_FUA)
    assert h.pread(len(data), MiB) == data
    h.pwrite(b"\xab" * 512, MiB + 512)  # sub-page: read-modify-write
    expected = bytearray(data)
    expected[512:1024] = b"\xab" * 512
    assert h.pread(len(data), MiB) == expected
    h.trim(8 * P, MiB + 4 * P)
    expected[4 * P : 12 * P] = bytes(8 * P)
    h.zero(4 * P, MiB + 20 * P, nbd.CMD_FLAG_NO_HOLE)
    expected[20 * P : 24 * P] = bytes(4 * P)
    h.zero(4 * P, MiB + 30 * P, nbd.CMD_FLAG_FAST_ZERO)
    expected[30 * P : 34 * P] = bytes(4 * P)
    h.flush()
    h.cache(MiB, 0)
    assert h.pread(len(data), MiB) == expected
    h.shutdown()


def test_extents_report_holes_zeros_and_data() -> None:
    h = connect_stdio("size=1M")
    h.pwrite(os.urandom(P), 2 * P)
    h.pwrite(bytes(P), 3 * P)
    h.zero(2 * P, 6 * P, nbd.CMD_FLAG_NO_HOLE)
    got = block_status(h, 10 * P)
    hole_zero = nbd.STATE_HOLE | nbd.STATE_ZERO
    assert got[:5] == [(2 * P, hole_zero), (P, 0), (P, nbd.STATE_ZERO), (2 * P, hole_zero),
                       (2 * P, nbd.STATE_ZERO)]  # fmt: skip
    h.shutdown()


def test_enospc_at_mem_limit_keeps_old_data() -> None:
    h = connect_stdio("size=64M", "mem_limit=1M")
    old = b"".join(synthetic_pages(32, seed=4))
    h.pwrite(old, 0)
    with pytest.raises(nbd.Error) as info:
        h.pwrite(os.urandom(2 * MiB), 0)
    assert info.value.errno == "ENOSPC"
    assert h.pread(len(old), 0) == old
    h.shutdown()


def test_out_of_range_is_refused() -> None:
    h = connect_stdio("size=1M")
    with pytest.raises(nbd.Error):
        h.pread(P, MiB)
    h.shutdown()


def test_multi_conn_sees_one_store(tmp_path: Path) -> None:
    with serve(tmp_path, "size=32M", control=False) as srv:
        handles = [srv.connect() for _ in range(3)]
        data = b"".join(synthetic_pages(16, seed=7))
        handles[1].pwrite(data, 5 * MiB)
        handles[1].flush()
        assert handles[0].pread(len(data), 5 * MiB) == data
        assert handles[2].pread(len(data), 5 * MiB) == data
        handles[2].trim(len(data), 5 * MiB)
        assert handles[0].pread(len(data), 5 * MiB) == bytes(len(data))
        for h in handles:
            h.shutdown()


def test_parallel_aio_requests(tmp_path: Path) -> None:
    with serve(tmp_path, "size=64M", control=False) as srv:
        h = srv.connect()
        pages = synthetic_pages(256, seed=9)
        for i, page in enumerate(pages):
            h.aio_pwrite(page * 4, i * 4 * P)
        while h.aio_in_flight() > 0:
            h.poll(-1)
        bufs = [nbd.Buffer(4 * P) for _ in pages]
        for i, buf in enumerate(bufs):
            h.aio_pread(buf, i * 4 * P)
        while h.aio_in_flight() > 0:
            h.poll(-1)
        for page, buf in zip(pages, bufs, strict=True):
            assert buf.to_bytearray() == page * 4
        h.shutdown()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (["size=lots"], "size: 'lots' is not a size"),
        (["sise=1G"], "unknown key 'sise'"),
        (["size=1G", "comp_algorithm=snappy"], "comp_algorithm='snappy': not available"),
        (["size=1G", "chain=3"], "chain=3: outside 4..16"),
        (["size=1G", "level=99", "comp_algorithm=lz4hc"], "level=99"),
        (["size=1G", "size=2G"], "size given twice"),
        (["size=1G", "allow_other=maybe"], "expected true or false"),
        (["size=0"], "size=0: the device needs at least one page"),
        (["size=200G"], "disksize 214748364800: larger than the maximum"),
        (["size=1G", "mem_limit=junk"], "mem_limit: 'junk' is not a size"),
        (["size=1G", "chain=abc"], "chain='abc': expected an integer"),
        (["size=1G", "level=abc"], "level='abc': expected an integer"),
        (["size=1G", "level=-200000"], "level=-200000: outside -131072..22"),
        (["size=1G", "auto_compact=-1"], "auto_compact=-1: outside 0..86400"),
        (["size=1G", "comp_algorithm="], "comp_algorithm='': not available"),
        (["size=1G", "control="], "control=: empty path"),
        (["size=1G", "threads=4"], "unknown key 'threads'; known keys: size,"),
    ],
)
def test_bad_config_is_refused_with_a_clear_message(config: list[str], message: str) -> None:
    r = subprocess.run(
        ["nbdkit", "-f", "-U", "-", "python", str(plugin_path()), *config, "--run", "true"],
        env=plugin_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode != 0
    assert message in r.stderr, r.stderr


def test_nbdcopy_round_trip(tmp_path: Path) -> None:
    image = tmp_path / "in.img"
    image.write_bytes(b"".join(synthetic_pages(2048, seed=3)))
    with serve(tmp_path, "size=8M", control=False) as srv:
        subprocess.run(["nbdcopy", str(image), srv.uri], check=True)
        out = tmp_path / "out.img"
        subprocess.run(["nbdcopy", srv.uri, str(out)], check=True)
        assert out.read_bytes() == image.read_bytes()
        m = subprocess.run(
            ["nbdinfo", "--map", srv.uri], capture_output=True, text=True, check=True
        )
        assert "data" in m.stdout


def test_the_checkout_entry_serves_the_package_plugin() -> None:
    """``nbdkit python plugin/zramd_plugin.py`` (a checkout, no PYTHONPATH to zramd) runs the
    plugin zramd ships in its package: the same callbacks, keys and data path."""
    entry = Path(__file__).resolve().parent.parent / "plugin" / "zramd_plugin.py"
    env = plugin_env()
    root = str(entry.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in env["PYTHONPATH"].split(os.pathsep) if p != root)
    dump = subprocess.run(["nbdkit", "python", str(entry), "--dump-plugin"], env=env,
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert "zramd_size=" in dump.stdout
    h = nbd.NBD()
    old = dict(os.environ)
    os.environ.update(env)
    try:
        h.connect_command(["nbdkit", "-s", "--exit-with-parent", "python", str(entry), "size=1M"])
    finally:
        os.environ.clear()
        os.environ.update(old)
    data = b"".join(synthetic_pages(4, seed=11))
    h.pwrite(data, 0)
    assert h.pread(len(data), 0) == data
    assert h.can_multi_conn()
    h.shutdown()


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_requests_map_no_new_memory(tmp_path: Path) -> None:
    """Served requests map no memory: nbdkit's threads keep their Python thread state for the
    connection (native.pin_thread), where every request used to create one, with a 16 KiB
    frame stack mmap'd and unmapped (issue 16: nothing on the request path may need new
    memory from the kernel)."""
    with serve(tmp_path, "size=16M", control=False, nbdkit_args=["--threads=1"]) as srv:
        h = srv.connect()
        h.pwrite(bytes(range(256)) * 16 * 8, 0)  # warm: the thread's state and scratch exist
        trace = tmp_path / "strace.txt"
        tracer = subprocess.Popen(
            ["strace", "-f", "-qq", "-e", "trace=mmap,munmap", "-o", str(trace),
             "-p", str(srv.proc.pid)],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for(lambda: trace.exists() and tracer.poll() is None, what="strace to attach")
            for i in range(500):
                h.pread(4096, (i % 8) * 4096)
                h.pwrite(bytes([i & 255]) * 4096, (i % 8) * 4096)
        finally:
            tracer.terminate()
            tracer.wait(30)
        h.shutdown()
    calls = [
        line for line in trace.read_text().splitlines() if "mmap(" in line or "munmap(" in line
    ]
    assert len(calls) < 20, calls[:20]  # 1000 requests: once 2000 calls
