"""Swap mode (zramd/swapmode.py): the locked pool, the locked slot table, prepared threads,
the process's checks, and how --swap and ``[zramd] swap`` reach the server."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from zramd import cli, genconf, supervise, swapmode
from zramd._zram import Codec, Core, Pool
from zramd.core import ZramCore
from zramd.device import ZramDevice
from zramd.errors import (
    ConfigError,
    MemoryLockError,
    PoolExhaustedError,
    ServeError,
    SwapModeError,
)
from zramd.pool import ZsPool
from zramd.service import Service

P = 4096
MiB = 1 << 20


def vm_locked_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmLck:"):
                return int(line.split()[1])
    raise AssertionError("no VmLck in /proc/self/status")


# -- the locked pool ------------------------------------------------------------------------


def test_lock_frames_caps_the_pool_and_refuses_at_once_beyond_it() -> None:
    pool = Pool(64 * MiB)
    before = vm_locked_kib()
    pool.lock_frames(256)  # 1 MiB of a 64 MiB arena
    assert pool.locked_frames == 256
    assert pool.stats().frames_reserved == 257  # the cap, guard frame included
    assert vm_locked_kib() - before >= 1024  # the frames are resident and locked now
    page = os.urandom(P - 100)  # huge objects: one frame each
    handles = []

    def fill() -> None:
        for _ in range(300):
            handles.append(pool.malloc(len(page)))

    with pytest.raises(PoolExhaustedError) as e:
        fill()
    assert e.value.errno == errno.ENOSPC
    assert 200 < len(handles) < 256  # every frame a store can use, table chunks aside
    assert pool.total_pages == len(handles)
    pool.check()
    pool.close()


def test_a_locked_pool_keeps_freed_frames_and_never_releases_them() -> None:
    pool = Pool(64 * MiB, release_batch=1)
    pool.lock_frames(512)
    handles = pool.store_many([os.urandom(700)] * 1500 + [os.urandom(3000)] * 200)
    pool.check()
    locked = vm_locked_kib()
    pool.free_many(handles[::2])
    pool.compact()
    pool.check()
    pool.free_many(handles[1::2])
    pool.compact()
    pool.check()
    st = pool.stats()
    assert pool.total_pages == 0
    assert st.frames_cached == 0
    assert vm_locked_kib() >= locked  # no munlock + madvise: a locked frame stays
    # and every frame is usable again
    again = pool.store_many([os.urandom(3000)] * 200)
    pool.check()
    pool.free_many(again)
    pool.close()


def test_a_locked_pool_grows_its_handle_tables_from_the_reserve() -> None:
    pool = Pool(64 * MiB)
    pool.lock_frames(1024)
    data = [bytes([i & 0xFF]) * 20 for i in range(5000)]  # one small class, > 512 handles
    handles = pool.store_many(data)
    assert len(set(handles)) == 5000
    pool.check()
    assert [pool.read(h) for h in handles[::499]] == data[::499]
    pool.free_many(handles)
    pool.check()
    pool.close()


def test_lock_frames_refuses_a_used_or_locked_pool() -> None:
    pool = Pool(8 * MiB)
    h = pool.malloc(100)
    with pytest.raises(MemoryLockError) as e:
        pool.lock_frames(16)
    assert e.value.errno == errno.EBUSY
    pool.free(h)
    pool.close()
    pool = Pool(8 * MiB)
    pool.lock_frames(16)
    with pytest.raises(MemoryLockError) as e:
        pool.lock_frames(16)
    assert e.value.errno == errno.EBUSY
    assert pool.locked_frames == 16
    pool.close()


@pytest.mark.parametrize("frames", [0, 8 * 256 + 1, 1 << 40])
def test_lock_frames_refuses_a_count_outside_the_arena(frames: int) -> None:
    pool = Pool(8 * MiB)
    with pytest.raises(ValueError, match=r"the arena has 1\.\.2048 frames"):
        pool.lock_frames(frames)
    assert pool.locked_frames == 0
    pool.close()


def test_the_python_pool_and_core_cannot_lock() -> None:
    pool = ZsPool(8 * MiB)
    with pytest.raises(MemoryLockError) as e:
        pool.lock_frames(16)
    assert e.value.errno == errno.EOPNOTSUPP
    assert pool.locked_frames == 0
    core = ZramCore(16, pool, [Codec("lz4")])
    with pytest.raises(MemoryLockError) as e:
        core.lock_table()
    assert e.value.errno == errno.EOPNOTSUPP
    core.prepare_thread(1 << 20)  # nothing to prepare
    with pytest.raises(ValueError, match="a negative length"):
        core.prepare_thread(-1)
    core.close()
    pool.close()


# -- the core: locked table, prepared threads --------------------------------------------------


def test_lock_table_locks_the_slot_table() -> None:
    pages = 64 * 1024  # 1 MiB of table
    core = Core(pages, Pool(8 * MiB), [Codec("lz4")])
    before = vm_locked_kib()
    core.lock_table()
    assert vm_locked_kib() - before >= pages * 16 // 1024
    core.close()


_MALLINFO2 = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
              "uordblks", "fordblks", "keepcost")  # fmt: skip


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2]


_mallinfo2 = ctypes.CDLL(None).mallinfo2
_mallinfo2.restype = _Mallinfo2


def heap_in_use() -> int:
    """Bytes glibc's malloc has handed out and not taken back (heap and mmap'd blocks)."""
    info = _mallinfo2()
    return int(info.uordblks + info.hblkhd)


def first_write_allocates(core: Any, prepare: bool) -> int:
    """Bytes the first 1 MiB write of a new thread leaves allocated (scratch, streams)."""
    data = os.urandom(256) * (MiB // 256)  # compressible: no huge objects
    grown: list[int] = []

    def serve() -> None:
        if prepare:
            core.prepare_thread(1 * MiB)
        core.write(0, data[:P])  # the Python call's own first-time costs out of the way
        heap_in_use()
        before = heap_in_use()
        core.write(P, data)
        grown.append(heap_in_use() - before)

    t = threading.Thread(target=serve)
    t.start()
    t.join()
    return grown[0]


def test_a_prepared_thread_serves_writes_without_allocating() -> None:
    pool = Pool(64 * MiB)
    pool.lock_frames(4096)  # handle tables grow from the reserve, not the heap
    core = Core(1024, pool, [Codec("zstd")])
    unprepared = first_write_allocates(core, prepare=False)
    assert unprepared > 2048, unprepared  # the scratch grew on the request path
    prepared = first_write_allocates(core, prepare=True)
    assert prepared < 1024, prepared
    with pytest.raises(ValueError, match="a negative length"):
        core.prepare_thread(-1)
    core.close()


# -- the device ----------------------------------------------------------------------------------


def test_a_swap_device_locks_half_its_disk_or_its_mem_limit() -> None:
    dev = ZramDevice("lz4", native=True, swap=True)
    dev.set_disksize(8 * MiB)
    assert dev.pool is not None
    assert dev.pool.locked_frames == 4 * MiB // P
    dev.reset()
    dev.set_mem_limit(1 * MiB)
    dev.set_disksize(8 * MiB)
    assert dev.pool is not None
    assert dev.pool.locked_frames == 1 * MiB // P
    dev.reset()


def test_a_swap_device_refuses_writes_beyond_its_reserve_at_once() -> None:
    dev = ZramDevice("lz4", native=True, swap=True)
    dev.set_disksize(16 * MiB)  # no mem_limit: the reserve (8 MiB) is the only bound
    noise = os.urandom(16 * MiB)  # incompressible: one frame per page
    t0 = time.monotonic()

    def fill() -> None:
        for off in range(0, len(noise), 64 * 1024):
            dev.write(off, noise[off : off + 64 * 1024])

    with pytest.raises(PoolExhaustedError) as e:
        fill()
    assert time.monotonic() - t0 < 10  # refused, never waited for memory
    assert e.value.errno == errno.ENOSPC
    locked = vm_locked_kib()
    dev.discard(0, 16 * MiB)
    assert dev.mm_stat().mem_used_total == 0
    assert vm_locked_kib() >= locked  # the freed frames stay locked
    pool = dev.pool
    assert pool is not None
    pool.check()
    dev.write(0, noise[: 128 * 1024])  # the freed frames serve again
    assert dev.read(0, 128 * 1024) == noise[: 128 * 1024]
    dev.reset()


def test_a_swap_device_refuses_a_reserve_above_the_memory_available(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("zramd.device._mem_available", lambda: 2 * MiB)
    dev = ZramDevice("lz4", native=True, swap=True)
    with pytest.raises(MemoryLockError, match="only 2 MiB are available: set a smaller mem_limit"):
        dev.set_disksize(8 * MiB)
    assert not dev.initstate
    dev.set_mem_limit(1 * MiB)
    dev.set_disksize(8 * MiB)
    dev.reset()


def test_swap_mode_needs_the_c_data_path() -> None:
    dev = ZramDevice("lz4", native=False, swap=True)
    with pytest.raises(MemoryLockError) as e:
        dev.set_disksize(8 * MiB)
    assert e.value.errno == errno.EOPNOTSUPP
    assert not dev.initstate


@pytest.mark.parametrize(
    ("disksize", "mem_limit", "reserve"),
    [(8 * MiB, 0, 4 * MiB), (8 * MiB, 3 * MiB, 3 * MiB), (8 * MiB, 100, P), (P, 0, P)],
)
def test_reserve_bytes(disksize: int, mem_limit: int, reserve: int) -> None:
    assert swapmode.reserve_bytes(disksize, mem_limit) == reserve


# -- the process -----------------------------------------------------------------------------


def test_check_privileges_says_what_is_missing_and_how_to_get_it() -> None:
    ipc, nice, res = (1 << c for c in (swapmode.CAP_IPC_LOCK, swapmode.CAP_SYS_NICE,
                                       swapmode.CAP_SYS_RESOURCE))  # fmt: skip
    swapmode.check_privileges(ipc | nice | res, (64 << 10, 64 << 10))
    unlimited = (swapmode.RLIM_INFINITY, swapmode.RLIM_INFINITY)
    swapmode.check_privileges(nice | res, unlimited)
    with pytest.raises(SwapModeError, match=r"RLIMIT_MEMLOCK is 64 KiB .*ulimit -l unlimited"):
        swapmode.check_privileges(nice | res, (64 << 10, 64 << 10))
    with pytest.raises(SwapModeError, match="no CAP_SYS_NICE: the serving threads run SCHED_RR"):
        swapmode.check_privileges(ipc | res, (0, 0))
    with pytest.raises(SwapModeError, match="no CAP_SYS_RESOURCE: oom_score_adj") as e:
        swapmode.check_privileges(ipc | nice, (0, 0))
    assert e.value.errno == errno.EPERM


def test_check_log_refuses_tmpfs_and_takes_a_console(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    swapmode.check_log(Path("/dev/null"))  # a character device: never swapped
    monkeypatch.setattr(swapmode, "filesystem_of", lambda path: "ext4")
    swapmode.check_log(tmp_path / "zramd.log")
    monkeypatch.setattr(swapmode, "filesystem_of", lambda path: "tmpfs")
    with pytest.raises(SwapModeError, match=r"zramd\.log is on tmpfs, whose pages can be swapped"):
        swapmode.check_log(tmp_path / "zramd.log")


HAVE_SYS_RESOURCE = bool(swapmode.effective_capabilities() >> swapmode.CAP_SYS_RESOURCE & 1)


@pytest.fixture
def privileged(monkeypatch: pytest.MonkeyPatch) -> None:
    """check_privileges as for root on a host (this machine's container may lack
    CAP_SYS_RESOURCE); what the checks themselves say is tested above."""
    monkeypatch.setattr(swapmode, "effective_capabilities", lambda: (1 << 64) - 1)


@pytest.mark.skipif(not HAVE_SYS_RESOURCE, reason="PR_SET_IO_FLUSHER needs CAP_SYS_RESOURCE")
def test_io_flusher_is_per_thread() -> None:
    from zramd._zram import get_io_flusher, set_io_flusher  # noqa: PLC0415

    seen: list[bool] = []

    def flusher() -> None:
        swapmode.set_io_flusher()
        seen.append(get_io_flusher())
        set_io_flusher(False)

    t = threading.Thread(target=flusher)
    t.start()
    t.join()
    assert seen == [True]
    assert not get_io_flusher()


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.usefixtures("privileged")
def test_the_swap_key_makes_swap_devices() -> None:
    s = Service()
    s.config("swap", "true")
    s.config("size", "8M")
    s.config("mem_limit", "1M")
    s.config_complete()
    dev = s.device
    assert dev is not None
    assert dev.swap
    assert dev.pool is not None
    assert dev.pool.locked_frames == 256
    dev.reset()
    with pytest.raises(ConfigError, match="swap='maybe': expected true or false"):
        Service().config("swap", "maybe")


def test_the_config_file_swap_key(tmp_path: Path) -> None:
    conf = tmp_path / "zramd.conf"
    conf.write_text("[zramd]\nswap = yes\ncolour = blue\n\n[zram0]\nzram-size = 64\n")
    config = genconf.read_config([conf], ram_mib=1024)
    assert config.swap
    assert [d.name for d in config.devices] == ["zram0"]
    assert any("colour = blue: unknown key, ignored" in m for m in config.messages)
    conf.write_text("[zram0]\nzram-size = 64\n")
    assert not genconf.read_config([conf], ram_mib=1024).swap
    conf.write_text("[zramd]\nswap = perhaps\n")
    with pytest.raises(genconf.ConfigError, match=r"\[zramd\] swap = perhaps: expected yes or no"):
        genconf.read_config([conf], ram_mib=1024)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[supervise.ServeOptions]:
    """serve's options as start_server would get them; the start itself is refused."""
    seen: list[supervise.ServeOptions] = []

    def start_server(opts: supervise.ServeOptions, timeout: float | None = None) -> None:
        seen.append(opts)
        raise ServeError("not started (test)")

    monkeypatch.setattr(supervise, "start_server", start_server)
    monkeypatch.setattr(supervise, "check_nbdkit", lambda: "/usr/sbin/nbdkit")
    monkeypatch.setattr(swapmode, "effective_capabilities", lambda: (1 << 64) - 1)
    return seen


def serve_args(tmp_path: Path, *more: str) -> list[str]:
    return ["serve", "--socket", str(tmp_path / "s.sock"), "--pidfile", str(tmp_path / "s.pid"),
            "--no-control", *more]  # fmt: skip


def test_serve_swap_reaches_the_plugin_and_the_environment(
    tmp_path: Path, started: list[supervise.ServeOptions]
) -> None:
    r = CliRunner().invoke(cli.main, serve_args(tmp_path, "--swap", "-f", "--mem-limit", "64M"))
    assert "not started (test)" in r.output
    (opts,) = started
    assert opts.swap
    assert "swap=true" in opts.plugin_keys
    r = CliRunner().invoke(cli.main, serve_args(tmp_path, "-f"))
    assert not started[-1].swap
    assert "swap=true" not in started[-1].plugin_keys


def test_serve_config_swap_key(tmp_path: Path, started: list[supervise.ServeOptions]) -> None:
    conf = tmp_path / "zramd.conf"
    conf.write_text("[zramd]\nswap = on\n\n[zram0]\nzram-size = 64\n")
    args = ["serve", "--config", str(conf), "--no-attach", "-f", "--socket",
            str(tmp_path / "s.sock"), "--pidfile", str(tmp_path / "s.pid"), "--control",
            str(tmp_path / "ctl")]  # fmt: skip
    r = CliRunner().invoke(cli.main, args)
    assert "not started (test)" in r.output, r.output
    assert started[0].swap
    assert "swap=true" in started[0].plugin_keys


def test_serve_swap_refuses_what_cannot_work(
    tmp_path: Path, started: list[supervise.ServeOptions], monkeypatch: pytest.MonkeyPatch
) -> None:
    r = CliRunner().invoke(cli.main, serve_args(tmp_path, "--swap", "--threads", "2"))
    assert r.exit_code == 2
    assert "--threads 2 cannot go with it" in r.output
    monkeypatch.setattr(swapmode, "filesystem_of", lambda path: "tmpfs")
    r = CliRunner().invoke(cli.main, serve_args(tmp_path, "--swap", "--log", str(tmp_path / "l")))
    assert r.exit_code == 1
    assert "is on tmpfs, whose pages can be swapped out to this very server" in r.output
    monkeypatch.setattr(swapmode, "effective_capabilities", lambda: 0)
    r = CliRunner().invoke(cli.main, serve_args(tmp_path, "--swap", "-f"))
    assert r.exit_code == 1
    assert "no CAP_SYS_RESOURCE" in r.output
    assert started == []


def test_swap_env_gives_one_warm_heap() -> None:
    assert swapmode.MALLOC_ENV["PYTHONMALLOC"] == "malloc"
    assert swapmode.MALLOC_ENV["MALLOC_ARENA_MAX"] == "1"


def test_a_console_log_is_taken_only_in_swap_mode() -> None:
    from zramd.errors import RunStateError  # noqa: PLC0415
    from zramd.runstate import open_log  # noqa: PLC0415

    os.close(open_log(Path("/dev/null"), device_ok=True))
    with pytest.raises(RunStateError, match="not yours to write"):
        open_log(Path("/dev/null"))
