"""Swap mode: a server that can be the swap device of the host it runs on (``serve --swap``).

When the kernel swaps to zramd it is short of memory, and the write it sends is how it gets
some back. If serving that write needs a page the server does not have (the pool growing,
the heap growing, a code page evicted earlier, a log page on tmpfs that was itself swapped
out), the kernel has to reclaim one first, and reclaim waits for swap writes: the server
waits for itself. Locking what it already has, or PR_SET_IO_FLUSHER alone, does not help; the
request path must touch no memory it has not touched, and locked, before. Each measure and
what it costs:

- pool reserve: ``Pool.lock_frames`` faults in and mlocks ``reserve_bytes`` of frames at
  disksize; a store beyond them fails with ENOSPC at once; freed frames stay (no madvise).
  Cost: the reserve is locked RAM, used or not, that nothing else can have.
- slot table: ``Core.lock_table``, 16 bytes per page of the disk, locked.
- serving threads, at connection open: ``Core.prepare_thread`` (scratch for MAX_REQUEST-byte
  writes, a warmed stream and stack), PR_SET_IO_FLUSHER (their allocations never start I/O)
  and SCHED_RR (their socket replies may dip into the min watermark's reserve). Cost: a busy
  serving thread may take 95 % of a CPU from ordinary tasks.
- whole process: mlockall(CURRENT|FUTURE|ONFAULT), so code, heap and stacks stay once
  touched; oom_score_adj -1000.
- heap: glibc with one arena, no trimming, blocks up to 32 MiB from the heap, HEAP_WARM bytes
  pre-touched and kept free; Python objects from malloc (PYTHONMALLOC=malloc, set by
  ``supervise``).
- log: never on tmpfs (``check_log``): a console, the journal (stderr), or a disk file.

This module is the policy: the C halves are ``zs_lock_frames`` (zsmalloc.c),
``zram_lock_table`` / ``zram_prepare_thread`` (zram.c) and ``lock_all`` / ``set_io_flusher``
/ ``keep_heap`` / ``warm_heap`` (module.c). Swap mode needs the C data path.
"""

from __future__ import annotations

import errno
import os
import resource
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from zramd.errors import MemoryLockError, SwapModeError
from zramd.native import native_module
from zramd.page import PAGE_MASK, PAGE_SIZE
from zramd.runstate import filesystem_of

if TYPE_CHECKING:
    from types import ModuleType

    from zramd.device import ZramDevice

#: without mem_limit the reserve is disksize / 2: zram.rst expects a 2:1 ratio ("there is
#: little point creating a zram of greater than twice the size of memory"), so a full disk
#: of typical swap fits it; mem_limit sizes it exactly
DEFAULT_RESERVE_RATIO = 2
#: writes up to this size are served with no allocation: the kernel's nbd queue sends at most
#: max_sectors_kb (1280 KiB by default) per request
MAX_REQUEST = 4 << 20
#: heap pre-touched and kept free: nbdkit's request buffers and the Python objects of a call
HEAP_WARM = 16 << 20
#: glibc tunables for the serving process (mallopt(3)): one arena, blocks up to 32 MiB from
#: the heap (never a fresh mmap), the heap never trimmed
MALLOC_ENV = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str((1 << 31) - 1),
    "MALLOC_TOP_PAD_": str(1 << 20),
    "PYTHONMALLOC": "malloc",
}
OOM_SCORE_ADJ = "-1000"
CAP_IPC_LOCK = 14
CAP_SYS_NICE = 23
CAP_SYS_RESOURCE = 24
#: the serving threads' real-time priority (SCHED_RR): the lowest, for the allocator's sake
#: alone (a real-time task may allocate a quarter of the way into the min watermark's
#: reserve, ALLOC_HARDER), not for precedence over anything else
RT_PRIORITY = 1
#: vm.min_free_kbytes below which serve --swap warns: a quarter of it is what the serving
#: threads' socket replies may use when nothing can be reclaimed without their own I/O
MIN_FREE_KBYTES = 16384
RLIM_INFINITY = resource.RLIM_INFINITY
TMPFS = ("tmpfs", "ramfs", "shmem")


def reserve_bytes(disksize: int, mem_limit: int) -> int:
    """The pool reserve of a swap-mode device: ``mem_limit`` when set, else disksize /
    DEFAULT_RESERVE_RATIO; whole pages, at least one."""
    nbytes = mem_limit if mem_limit > 0 else disksize // DEFAULT_RESERVE_RATIO
    return max(PAGE_SIZE, (nbytes + PAGE_MASK) & ~PAGE_MASK)


def _module() -> ModuleType:
    module = native_module()
    if module is None:
        raise SwapModeError(
            "swap mode needs the C data path (zramd._zram): it is not built or stale "
            "(pip install -e .)",
            errno.EOPNOTSUPP,
        )
    return module


def effective_capabilities(status: str = "/proc/self/status") -> int:
    """This process's effective capability mask (CapEff), 0 when unknown."""
    try:
        with open(status) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def check_privileges(caps: int | None = None, memlock: tuple[int, int] | None = None) -> None:
    """What swap mode needs of the process, checked before anything is locked: CAP_IPC_LOCK or
    an unlimited RLIMIT_MEMLOCK (mlockall(MCL_FUTURE) counts every later mapping, the pool's
    whole address-space reservation included), and CAP_SYS_RESOURCE (oom_score_adj below 0,
    PR_SET_IO_FLUSHER). SwapModeError naming what is missing and how to get it."""
    caps = effective_capabilities() if caps is None else caps
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK) if memlock is None else memlock
    problems = []
    if not caps >> CAP_IPC_LOCK & 1 and soft != RLIM_INFINITY:
        problems.append(
            f"RLIMIT_MEMLOCK is {soft >> 10} KiB and there is no CAP_IPC_LOCK: locking the "
            "server's memory needs either (run as root, or raise the limit: ulimit -l "
            "unlimited, LimitMEMLOCK=infinity in a systemd unit)"
        )
    if not caps >> CAP_SYS_NICE & 1:
        problems.append(
            "no CAP_SYS_NICE: the serving threads run SCHED_RR (run as root, or "
            "AmbientCapabilities=CAP_SYS_NICE in a systemd unit)"
        )
    if not caps >> CAP_SYS_RESOURCE & 1:
        problems.append(
            "no CAP_SYS_RESOURCE: oom_score_adj -1000 and PR_SET_IO_FLUSHER need it (run as "
            "root, or AmbientCapabilities=CAP_SYS_RESOURCE CAP_IPC_LOCK in a systemd unit)"
        )
    if problems:
        raise SwapModeError("swap mode: " + "; ".join(problems), errno.EPERM)


def check_log(path: Path) -> None:
    """A server log swap mode can write to: a character device (console, /dev/kmsg), or a
    file that is not on tmpfs, whose pages can be swapped out to this very server (writing a
    traceback then waits for the server itself). SwapModeError otherwise."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISCHR(st.st_mode):
        return
    where = path if st is not None else path.parent
    fstype = filesystem_of(where)
    if fstype in TMPFS:
        raise SwapModeError(
            f"--swap: the server log {path} is on {fstype}, whose pages can be swapped out to "
            "this very server (a write to the log then waits for the server itself): run in "
            "the foreground (-f: the log is stderr, the journal under systemd), or give --log "
            "a file on a disk file system or a console (/dev/kmsg, /dev/console)",
            errno.EINVAL,
        )


def protect_process() -> None:
    """Make the calling process fit to serve swap (the serving process, once, before its
    first connection): glibc settings, HEAP_WARM of heap touched and kept, everything
    mlocked now and later (on fault), oom_score_adj -1000, PR_SET_IO_FLUSHER for this thread
    and the threads it creates from now on. SwapModeError / MemoryLockError naming the step
    that failed."""
    module = _module()
    check_privileges()
    module.keep_heap()
    module.warm_heap(HEAP_WARM)
    try:
        module.lock_all()
    except OSError as e:
        raise MemoryLockError(
            f"swap mode: mlockall failed: {e.strerror} (it needs CAP_IPC_LOCK or an unlimited "
            "RLIMIT_MEMLOCK)",
            e.errno or errno.ENOMEM,
        ) from None
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(OOM_SCORE_ADJ)
    except OSError as e:
        raise SwapModeError(
            f"swap mode: oom_score_adj {OOM_SCORE_ADJ}: {e.strerror}", e.errno or errno.EPERM
        ) from None
    set_io_flusher()


def set_io_flusher() -> None:
    """PR_SET_IO_FLUSHER for the calling thread: its allocations never start I/O (no waiting
    on the swap writes it is there to serve) and it is throttled only on its own device.
    SwapModeError when the kernel refuses."""
    module = _module()
    try:
        module.set_io_flusher(True)
    except OSError as e:
        raise SwapModeError(
            f"swap mode: PR_SET_IO_FLUSHER: {e.strerror} (it needs CAP_SYS_RESOURCE and Linux 5.6)",
            e.errno or errno.EPERM,
        ) from None


def set_realtime() -> None:
    """SCHED_RR at RT_PRIORITY for the calling thread. Its replies go out through a socket,
    and each send allocates an skb: when memory is short and the only reclaimable pages are
    ones waiting for this very thread's replies, an ordinary task cannot get a page below the
    min watermark, but a real-time one may dip a quarter of the way into it. SwapModeError
    when the kernel refuses."""
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(RT_PRIORITY))
    except OSError as e:
        raise SwapModeError(
            f"swap mode: SCHED_RR: {e.strerror} (it needs CAP_SYS_NICE)", e.errno or errno.EPERM
        ) from None


def min_free_warning(path: str = "/proc/sys/vm/min_free_kbytes") -> str | None:
    """A warning when vm.min_free_kbytes is below MIN_FREE_KBYTES, else None."""
    try:
        with open(path) as f:
            kbytes = int(f.read())
    except (OSError, ValueError):
        return None
    if kbytes >= MIN_FREE_KBYTES:
        return None
    return (
        f"vm.min_free_kbytes is {kbytes}: under memory pressure the server's replies may only "
        f"use a quarter of it; raise it to at least {MIN_FREE_KBYTES} (sysctl "
        f"vm.min_free_kbytes={MIN_FREE_KBYTES})"
    )


def prepare_thread(device: ZramDevice) -> None:
    """Ready the calling thread (an nbdkit connection's) to serve ``device`` in swap mode:
    PR_SET_IO_FLUSHER, SCHED_RR (``set_realtime``), and scratch and codec streams for writes
    of up to MAX_REQUEST bytes."""
    set_io_flusher()
    set_realtime()
    device.prepare_thread(MAX_REQUEST)
