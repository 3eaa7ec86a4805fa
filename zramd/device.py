"""The zram device: lifecycle, configuration, I/O entry points and statistics (``zram_drv.c``).

A device starts uninitialised (disksize 0, no memory), like a freshly loaded module. Writing
``disksize`` builds what exists only while initialised (``_State``): the pool (``pool.py`` or
its C twin), the compressors by priority (``zcomp.py``) and the data path's core, the slot
table with the per-request loops (``core.py`` or its C twin, ``csrc/zram.c``). ``reset`` tears
them down again (EBUSY while a client is attached).

Where each concern lives, as in the kernel's drivers/block/zram/:

==================  ==================================  =====================================
module              kernel                              what
==================  ==================================  =====================================
``device.py``       ``zram_drv.c`` (lifecycle, stats)   this class: configuration, I/O entry
``core.py``         ``zram_drv.[ch]`` (table, I/O)      slot table, stripe locks, the loops
``zcomp.py``        ``zcomp.c``                         compressors by priority
``postproc.py``     ``zram_pp_ctl``                     candidates for writeback/recompress
``writeback.py``    CONFIG_ZRAM_WRITEBACK               cold pages out to the backing store
``recompress.py``   CONFIG_ZRAM_MULTI_COMP              secondary algorithms
``shrinker.py``     zsmalloc's shrinker                 background compaction and its policy
==================  ==================================  =====================================

The I/O methods (``write``, ``read_into``, ``discard``, ``write_zeroes``, ``extents``) are the
core's own, bound to the device whenever its state changes, so a request costs no Python frame
here (the nbdkit plugin calls them directly). A request that raced with ``reset`` reaches a
closed core and fails like one outside the device (EINVAL).

Locking
=======

::

    ZramDevice._lock    the configuration disksize builds from (comp_algorithm and
      │                 recomp_algorithm with their algorithm_params, backing_dev), the
      │                 switch of the state at disksize and reset, the opener count
      └─ _ColdGate      cold operations (compaction, idle, writeback, recompression,
           │            statistics) share it; reset waits for them
           └─ pp_lock   one writeback or recompression at a time (try-lock: EAGAIN)
                └─ the core's locks (core.py) -> the pool's (pool.py)

I/O takes none of these: it enters the core, whose close() (at reset) waits for it.
mem_limit and the auto_compact policy are single values, stored and read without a lock.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from zramd._types import BytesLike
from zramd.backing import BackingDevice, open_store
from zramd.compress import DEFAULT, lookup
from zramd.compress.dictionary import read_dictionary
from zramd.core import ZramCore
from zramd.core_api import CoreAPI
from zramd.errors import (
    DeviceBusyError,
    InvalidIOError,
    InvalidValueError,
    MemoryLockError,
    NoDeviceError,
    OutOfRangeError,
    TryAgainError,
)
from zramd.frames import MAX_FRAMES
from zramd.native import native_default, native_module, new_pool
from zramd.page import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from zramd.parse import U64_MASK
from zramd.pool_api import PoolAPI
from zramd.recompress import priorities, recompress
from zramd.shrinker import AutoCompact
from zramd.size_class import DEFAULT_CHAIN_SIZE
from zramd.stats import BdStat, CompactStat, DebugStat, IoStat, MemStat, MmStat
from zramd.swapmode import reserve_bytes
from zramd.writeback import WritebackSettings, writeback
from zramd.zcomp import ZRAM_MAX_COMPS, ZRAM_SECONDARY_COMP, AlgorithmConfig, Comps

# Arena reservation: twice the disk (fragmentation before compaction) plus room for a partly
# filled zspage in every class. Address space only; memory is committed as frames are used.
ARENA_SLACK = 16 << 20
SLOT_BYTES = 16  #: the slot table's bytes per page: handle, flags, access time

Scans = Sequence[tuple[int, int, int]]


class _Unset:
    """The I/O entry points of a device that is not initialised: every request is outside a
    device of 0 bytes, as the kernel's capacity is 0 before disksize."""

    @staticmethod
    def _refuse(what: str, offset: int, length: int) -> None:
        raise InvalidIOError(
            f"{what} of {length} bytes at offset {offset} is outside the device (0 bytes)"
        )

    def write(self, offset: int, data: BytesLike) -> None:
        self._refuse("write", offset, len(memoryview(data)))

    def read_into(self, offset: int, buf: memoryview) -> None:
        self._refuse("read", offset, len(buf))

    def discard(self, offset: int, length: int) -> None:
        self._refuse("discard", offset, length)

    def write_zeroes(self, offset: int, length: int, *, may_trim: bool = True) -> None:
        self._refuse("write_zeroes", offset, length)

    def extents(self, offset: int, length: int) -> list[tuple[int, int, int]]:
        self._refuse("extents", offset, length)
        return []


class _ColdGate:
    """Cold operations share the state; reset and disksize wait for them to drain."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._active = 0
        self._exclusive = False

    def enter(self) -> None:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._active += 1

    def leave(self) -> None:
        with self._cond:
            self._active -= 1
            if not self._active:
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class _State:
    """Everything that exists only while the device is initialised."""

    __slots__ = ("backing", "comps", "core", "disksize", "pages", "pool", "pp_lock")

    def __init__(self, disksize: int, pool: PoolAPI, comps: Comps, core: CoreAPI,
                 backing: BackingDevice | None) -> None:  # fmt: skip
        self.disksize = disksize
        self.pages = disksize >> PAGE_SHIFT
        self.pool = pool
        self.comps = comps
        self.core = core
        self.backing = backing
        self.pp_lock = threading.Lock()  # one writeback or recompression at a time

    def close(self) -> None:
        self.core.close()  # waits for requests in flight
        self.pool.close()


class ZramDevice:
    """One zram device. Starts uninitialised (disksize 0), like a freshly loaded module.

    ``clock`` returns seconds (boottime-like; only differences matter) for access times.
    ``native`` selects the C data path (pool, core and codecs of ``zramd._zram``) or the
    Python one (default: ``native_default()``). All methods are thread-safe.
    """

    #: I/O entry points, the current core's own methods (see the module's note)
    write: Callable[[int, BytesLike], None]
    read_into: Callable[[int, memoryview], None]
    discard: Callable[[int, int], None]
    write_zeroes: Callable[..., None]
    extents: Callable[[int, int], list[tuple[int, int, int]]]

    def __init__(
        self,
        comp_algorithm: str = DEFAULT,
        *,
        chain: int = DEFAULT_CHAIN_SIZE,
        clock: Callable[[], float] = time.monotonic,
        native: bool | None = None,
        swap: bool = False,
    ) -> None:
        lookup(comp_algorithm)
        self._lock = threading.Lock()
        self._gate = _ColdGate()
        self._chain = chain
        self._clock = clock
        self.native = native_default() if native is None else native
        if self.native and native_module() is None:
            raise RuntimeError("zramd._zram is not built (or stale): pip install -e .")
        self._primary = AlgorithmConfig(comp_algorithm)  #: comp_algorithm and its parameters
        self._recomp: dict[int, AlgorithmConfig] = {}  #: secondary algorithms by priority (1..3)
        self._backing: BackingDevice | None = None
        self._state: _State | None = None
        self._limit_pages = 0
        self.wb = WritebackSettings()  #: writeback_limit(_enable), writeback_batch_size
        self.auto_compact = AutoCompact()  #: background compaction policy and counters
        self.openers = 0  #: open connections (the plugin counts them); reset needs none
        #: swap mode (swapmode.py): disksize locks a reserve of pool frames and the slot table
        self.swap = swap
        self._bind(_Unset())

    def _bind(self, io: CoreAPI | _Unset) -> None:
        self.write = io.write
        self.read_into = io.read_into
        self.discard = io.discard
        self.write_zeroes = io.write_zeroes
        self.extents = io.extents

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def initstate(self) -> bool:
        return self._state is not None

    @property
    def disksize(self) -> int:
        st = self._state
        return st.disksize if st else 0

    @property
    def size(self) -> int:
        """The export size: disksize (0 before init, like the kernel's capacity)."""
        return self.disksize

    def set_disksize(self, nbytes: int) -> None:
        """Initialise the device: EINVAL for 0 or too large, EBUSY when already initialised,
        EINVAL for algorithm_params a backend cannot use."""
        if nbytes <= 0:
            raise InvalidValueError(f"disksize {nbytes}: must be a positive number of bytes")
        nbytes = (nbytes + PAGE_MASK) & ~PAGE_MASK
        max_size = (MAX_FRAMES - 1) * PAGE_SIZE
        if nbytes > max_size:
            raise InvalidValueError(f"disksize {nbytes}: larger than the maximum {max_size}")
        with self._lock, self._gate.exclusive():
            if self._state is not None:
                raise DeviceBusyError("disksize: device already initialised; reset it first")
            comps = Comps({0: self._primary} | self._recomp, native=self.native)
            arena = min(2 * nbytes + ARENA_SLACK, (MAX_FRAMES - 1) * PAGE_SIZE)
            pool = new_pool(arena, chain=self._chain, native=self.native)
            backing = self._backing
            core: CoreAPI | None = None
            try:
                if self.swap:
                    self._lock_pool(pool, nbytes, arena)
                core = self._new_core(nbytes >> PAGE_SHIFT, pool, comps, backing)
                if self.swap:
                    core.lock_table()
            except BaseException:
                if core is not None:
                    core.close()
                pool.close()
                raise
            core.set_mem_limit(self._limit_pages)
            self._state = _State(nbytes, pool, comps, core, backing)
            self._bind(core)

    def _lock_pool(self, pool: PoolAPI, disksize: int, arena: int) -> None:
        """Swap mode: lock the pool's reserve (``swapmode.reserve_bytes``; never more than the
        arena). MemoryLockError (ENOMEM) when it is more than the memory available, or with
        mlock's errno."""
        reserve = min(reserve_bytes(disksize, self.mem_limit), arena)
        available = _mem_available()
        if available is not None and reserve >= available:
            raise MemoryLockError(
                f"disksize: swap mode locks a pool reserve of {reserve >> 20} MiB "
                f"({'mem_limit' if self.mem_limit else 'disksize / 2'}), and only "
                f"{available >> 20} MiB are available: set a smaller mem_limit first",
                errno.ENOMEM,
            )
        pool.lock_frames(reserve >> PAGE_SHIFT)

    def prepare_thread(self, max_bytes: int) -> None:
        """Ready the calling thread to serve writes of up to ``max_bytes`` with no allocation
        (``CoreAPI.prepare_thread``; swap mode, at connection open). Nothing before init."""
        try:
            with self._initialised("prepare_thread") as st:
                st.core.prepare_thread(max_bytes)
        except InvalidValueError:
            return

    def _new_core(
        self, pages: int, pool: PoolAPI, comps: Comps, backing: BackingDevice | None
    ) -> CoreAPI:
        clock = None if self._clock is time.monotonic else self._clock
        backing_read = backing.read if backing is not None else None
        if self.native:
            module = native_module()
            assert module is not None  # checked when the device was made
            core: CoreAPI = module.Core(
                pages, pool, comps.by_priority, backing_read=backing_read, clock=clock
            )
            return core
        return ZramCore(pages, pool, comps.by_priority, backing_read=backing_read, clock=clock)

    def reset(self) -> None:
        """Free everything and return to the uninitialised state (EBUSY while open)."""
        with self._lock:
            if self.openers:
                raise DeviceBusyError(f"reset: device is open ({self.openers} connections)")
            with self._gate.exclusive():
                st, self._state = self._state, None
                self._bind(_Unset())
                if st is not None:
                    st.close()
            backing, self._backing = self._backing, None
            if backing is not None:
                backing.close()
            self._limit_pages = 0
            ac = self.auto_compact
            ac.runs = ac.pages_freed = ac.max_pause_ns = 0
            self._primary = AlgorithmConfig(DEFAULT)
            self._recomp.clear()

    def open(self) -> None:
        """A client attached (the kernel's bdev open)."""
        with self._lock:
            self.openers += 1

    def close(self) -> None:
        with self._lock:
            self.openers = max(0, self.openers - 1)

    @contextmanager
    def _initialised(self, what: str) -> Iterator[_State]:
        """The state, kept alive (reset waits) while the caller uses it; EINVAL before init."""
        self._gate.enter()
        try:
            st = self._state
            if st is None:
                raise InvalidValueError(f"{what}: device is not initialised (set disksize first)")
            yield st
        finally:
            self._gate.leave()

    # -- compression algorithms ----------------------------------------------------------------

    @property
    def comp_algorithm(self) -> str:
        return self._primary.name

    @property
    def algorithm_level(self) -> int | None:
        """The level ``algorithm_params`` stored for comp_algorithm (None: the default)."""
        return self._primary.level

    def algorithm_params(self, priority: int = 0) -> AlgorithmConfig | None:
        """The algorithm configured at ``priority`` (0 = comp_algorithm, 1..3 =
        recomp_algorithm) with its stored parameters, or None."""
        return self._primary if priority == 0 else self._recomp.get(priority)

    def set_comp_algorithm(self, name: str) -> None:
        """Select the algorithm: EINVAL unknown, EBUSY after init."""
        lookup(name)
        with self._lock:
            if self._state is not None:
                raise DeviceBusyError(
                    "comp_algorithm: can't change the algorithm of an initialised device"
                )
            if name != self._primary.name:
                self._primary = AlgorithmConfig(name)

    def set_algorithm_params(
        self,
        *,
        priority: int = 0,
        algo: str | None = None,
        level: int | None = None,
        winbits: int | None = None,
        dict_path: bytes | str | None = None,
    ) -> None:
        """``algorithm_params``: replace the parameters of one configured algorithm.

        ``algo`` picks the algorithm by name (comp_algorithm or a secondary; it wins over
        ``priority``), else ``priority`` does (0 = comp_algorithm, 1..3 = a configured
        recomp_algorithm). Errors in the kernel's order: EBUSY after init (as 7.0.y), EINVAL
        for an ``algo`` or ``priority`` naming nothing configured, EINVAL for a dictionary
        file that cannot be read (``read_dictionary``; read outside the device lock, as
        backing_dev opens its store). Nothing changes on error.

        Values are stored as given and used when disksize builds the compressor, as the
        kernel does: a backend ignores what it has no use for (a level for lzo,
        deflate.winbits for zstd, a dictionary for deflate), and disksize fails with EINVAL
        for a value a backend cannot use (deflate level 10). Unset values mean the backend's
        default.
        """
        with self._lock:
            self._params_priority(priority, algo)
        dictionary = b"" if dict_path is None else read_dictionary(os.fsencode(dict_path))
        with self._lock:  # again: comp_algorithm or disksize may have changed meanwhile
            prio = self._params_priority(priority, algo)
            current = self.algorithm_params(prio)
            assert current is not None
            new = AlgorithmConfig(current.name, level, winbits, dictionary)
            if prio == 0:
                self._primary = new
            else:
                self._recomp[prio] = new

    def _params_priority(self, priority: int, algo: str | None) -> int:
        """The priority an algorithm_params write goes to (``self._lock`` held)."""
        if self._state is not None:
            raise DeviceBusyError("algorithm_params: device already initialised")
        if algo is not None:
            configured = {0: self._primary} | dict(sorted(self._recomp.items()))
            for prio, a in configured.items():
                if a.name == algo:
                    return prio
            raise InvalidValueError(
                f"algorithm_params: algo={algo} is neither comp_algorithm nor a "
                "configured recomp_algorithm"
            )
        if priority != 0 and priority not in self._recomp:
            raise InvalidValueError(
                f"algorithm_params: priority={priority}: no recomp_algorithm is configured "
                "with that priority (0 = comp_algorithm, 1..3 = recomp_algorithm)"
            )
        return priority

    @property
    def recomp_algorithms(self) -> dict[int, str]:
        """Configured secondary algorithms by priority (1..3)."""
        return {p: a.name for p, a in sorted(self._recomp.items())}

    def set_recomp_algorithm(self, name: str, priority: int = ZRAM_SECONDARY_COMP) -> None:
        """``recomp_algorithm``: configure a secondary algorithm (priority 1..3) for
        ``recompress``. EINVAL for an unknown name or a priority outside 1..3, EBUSY after
        init. Replacing an algorithm forgets its parameters."""
        if not 1 <= priority < ZRAM_MAX_COMPS:
            raise InvalidValueError(
                f"recomp_algorithm: priority={priority} outside 1..{ZRAM_MAX_COMPS - 1}"
            )
        lookup(name)
        with self._lock:
            if self._state is not None:
                raise DeviceBusyError("recomp_algorithm: device already initialised")
            if priority not in self._recomp or self._recomp[priority].name != name:
                self._recomp[priority] = AlgorithmConfig(name)

    # -- backing store and writeback -----------------------------------------------------------

    @property
    def backing_dev(self) -> str | None:
        """The backing store's path or URI, or None."""
        b = self._backing
        return b.name if b else None

    def set_backing_dev(self, spec: str) -> None:
        """``backing_dev``: a file (regular or block device) or an NBD URI to write cold pages
        to; ``none`` detaches. EBUSY after init, or when another device or program holds the
        file (the store is claimed exclusively; this device may set its own file again); open
        errors carry their errno (ENOENT, ...)."""
        if self._state is not None:  # checked first, as the kernel does, before opening
            raise DeviceBusyError("backing_dev: device already initialised")
        # opened outside the lifecycle lock: connecting to an NBD server may take a while
        held = self._backing  # the same file again shares its claim, as a kernel holder may
        reuse = held.store if held is not None else None
        new = None if spec == "none" else BackingDevice(open_store(spec, reuse))
        with self._lock:
            busy = self._state is not None  # disksize won a race with us
            if not busy:
                new, self._backing = self._backing, new
        if new is not None:  # the one replaced, or ours if it came too late
            new.close()
        if busy:
            raise DeviceBusyError("backing_dev: device already initialised")

    @property
    def writeback_limit(self) -> int:
        """Pages writeback may still write while the limit is enabled (4 KiB units)."""
        return self.wb.limit

    def set_writeback_limit(self, units: int) -> None:
        self.wb.set_limit(units)

    @property
    def writeback_limit_enable(self) -> bool:
        return self.wb.enable

    def set_writeback_limit_enable(self, on: bool) -> None:
        self.wb.enable = on

    @property
    def writeback_batch_size(self) -> int:
        return self.wb.batch

    def set_writeback_batch_size(self, pages: int) -> None:
        if pages <= 0:
            raise InvalidValueError(f"writeback_batch_size {pages}: must be at least 1")
        self.wb.batch = pages

    @contextmanager
    def _post_processing(self, what: str) -> Iterator[_State]:
        """The state, with the device's single post-processing slot (EAGAIN if taken)."""
        with self._initialised(what) as st:
            if not st.pp_lock.acquire(blocking=False):
                raise TryAgainError(f"{what}: another writeback or recompression is running")
            try:
                yield st
            finally:
                st.pp_lock.release()

    def writeback(self, scans: Scans | Callable[[int], Scans]) -> int:
        """``writeback``: write slots out to the backing device and free their memory.

        ``scans`` are (mode, lo, hi) in the order the kernel's parser issues them: slots
        [lo, hi) holding a pool object with every flag the mode asks for (PP_IDLE, PP_HUGE,
        PP_INCOMPRESSIBLE; 0 = any) are picked (``writeback.py``). Returns the pages written
        back. ENODEV without a backing device; EAGAIN while another writeback or
        recompression runs; EIO when the enabled ``writeback_limit`` runs out or the store
        fails; ENOSPC when it is full. ``scans`` may be a function of the device's page count
        (the control file's parser), called after those checks, as the kernel parses after
        them.
        """
        with self._post_processing("writeback") as st:
            backing = st.backing
            if backing is None:
                raise NoDeviceError("writeback: no backing_dev was set before disksize")
            if callable(scans):
                scans = scans(st.pages)
            return writeback(st.core, backing, self.wb, scans)

    def recompress(
        self,
        *,
        mode: int = 0,
        threshold: int = 0,
        max_pages: int | None = None,
        algo: str | None = None,
        priority: int | None = None,
    ) -> int:
        """``recompress`` (``recompress.py``): try the secondary algorithms on stored pages
        with the ``mode`` flags (PP_IDLE, PP_HUGE; 0 = all) of at least ``threshold`` bytes;
        returns pages recompressed. ``priority`` overrides ``algo``.

        EINVAL when no secondary algorithm (or not the named one) is configured, or the
        threshold is not below ``huge_class_size``; EAGAIN while another post-processing runs.
        """
        with self._post_processing("recompress") as st:
            prios = priorities(st.comps, algo, priority)
            huge_size = st.pool.huge_class_size
            if threshold >= huge_size:
                raise InvalidValueError(
                    f"recompress: threshold={threshold} must be below huge_class_size ({huge_size})"
                )
            return recompress(
                st.core,
                st.pool,
                st.comps,
                prios,
                scan=(mode, 0, st.pages),
                threshold=threshold,
                max_pages=max_pages,
            )

    def mark_idle(self, older_than: int | None = None) -> int:
        """``idle``: mark allocated slots IDLE (all, or not accessed for ``older_than`` s).

        Same-filled and written-back slots are skipped; with a cut-off, newer slots lose IDLE
        (7.0 behaviour). Returns how many slots are now idle.
        """
        with self._initialised("idle") as st:
            cutoff = None if older_than is None else int(self._clock()) - older_than
            return st.core.mark_idle(cutoff)

    # -- memory ---------------------------------------------------------------------------------

    @property
    def mem_limit(self) -> int:
        return self._limit_pages << PAGE_SHIFT

    def set_mem_limit(self, nbytes: int) -> None:
        """Limit the pool to ``nbytes`` (0 = none), a u64, rounded up to whole pages as the
        kernel does: ``PAGE_ALIGN`` in 64 bits, so anything above 2**64 - 4096 wraps to 0
        (no limit). Negative -> EINVAL, above 2**64-1 -> ERANGE. Allowed any time."""
        if nbytes < 0:
            raise InvalidValueError(f"mem_limit {nbytes}: must not be negative")
        if nbytes > U64_MASK:
            raise OutOfRangeError(f"mem_limit {nbytes}: larger than 2**64-1")
        self._limit_pages = ((nbytes + PAGE_MASK) & U64_MASK) >> PAGE_SHIFT
        st = self._state
        if st is not None:
            st.core.set_mem_limit(self._limit_pages)

    def reset_mem_used_max(self) -> None:
        """``echo 0 > mem_used_max``: the peak becomes the current use (no-op before init)."""
        with self._lock:  # the state stays while it is read
            st = self._state
            if st is not None:
                st.core.reset_max()

    def set_auto_compact(
        self,
        *,
        interval: float | None = None,
        min_bytes: int | None = None,
        min_percent: int | None = None,
    ) -> None:
        """Change the background compaction policy (see ``AutoCompact.update``)."""
        self.auto_compact.update(interval=interval, min_bytes=min_bytes, min_percent=min_percent)

    def compact(self, *, gentle: bool = False) -> int:
        """``echo 1 > compact``: frames freed. EINVAL before init. ``gentle``: a background
        pass, in slices that yield to I/O (see ``ZsPool.compact``)."""
        with self._initialised("compact") as st:
            return st.pool.compact(gentle=gentle)

    def flush(self) -> None:
        """Nothing to do: data is in RAM the moment a write returns (zram has no cache)."""

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (never-written and discarded bytes read as zeros)."""
        out = bytearray(length)
        self.read_into(offset, memoryview(out))
        return bytes(out)

    # -- statistics ----------------------------------------------------------------------------

    def mm_stat(self) -> MmStat:
        try:
            with self._initialised("mm_stat") as st:
                cs = st.core.stats()
                total = st.pool.total_pages
                compacted = st.pool.pages_compacted
        except InvalidValueError:
            return MmStat(0, 0, 0, self.mem_limit, 0, 0, 0, 0, 0)
        return MmStat(
            orig_data_size=cs.stored << PAGE_SHIFT,
            compr_data_size=cs.compr,
            mem_used_total=total << PAGE_SHIFT,
            mem_limit=self.mem_limit,
            mem_used_max=cs.max_pages << PAGE_SHIFT,
            same_pages=cs.same,
            pages_compacted=compacted,
            huge_pages=cs.huge,
            huge_pages_since=cs.huge_since,
        )

    def io_stat(self) -> IoStat:
        try:
            with self._initialised("io_stat") as st:
                cs = st.core.stats()
        except InvalidValueError:
            return IoStat(0, 0, 0, 0)
        return IoStat(cs.failed_reads, cs.failed_writes, 0, cs.notify_free)

    def debug_stat(self) -> DebugStat:
        return DebugStat(1, 0)  # miss_free: zramd never skips a free for a busy slot

    def bd_stat(self) -> BdStat:
        """Backing device use in 4 KiB blocks (zeros without one)."""
        st = self._state
        # one snapshot: the blocks a core frees go back to that core's own store, never to a
        # store set after a reset (its blocks are other pages')
        b = st.backing if st is not None else self._backing
        if b is None:
            return BdStat(0, 0, 0)
        if st is not None:  # blocks overwrites freed count as free once nobody reads them
            b.free(st.core.reclaim_blocks())
        return BdStat(b.count, b.reads, b.writes)

    def compact_stat(self) -> CompactStat:
        """What compaction did since init: background (shrinker) and direct runs."""
        ac = self.auto_compact
        direct_runs = direct_freed = 0
        st = self._state
        if st is not None:
            cs = st.core.stats()
            direct_runs, direct_freed = cs.direct_runs, cs.direct_freed
        return CompactStat(
            auto_runs=ac.runs,
            auto_pages_freed=ac.pages_freed,
            direct_runs=direct_runs,
            direct_pages_freed=direct_freed,
            max_pause_us=ac.max_pause_ns // 1000,
        )

    def mem_stat(self) -> MemStat:
        rss = _rss_bytes()
        try:
            with self._initialised("mem_stat") as st:
                ps = st.pool.stats()
                table = st.pages * SLOT_BYTES
        except InvalidValueError:
            return MemStat(rss, 0, 0, 0, 0, 0)
        return MemStat(
            rss=rss,
            mem_used_total=ps.total_pages << PAGE_SHIFT,
            arena_cached=ps.frames_cached << PAGE_SHIFT,
            pool_metadata=ps.metadata_bytes,
            slot_table=table,
            arena_reserved=ps.frames_reserved << PAGE_SHIFT,
        )

    @property
    def pool(self) -> PoolAPI | None:
        """The pool while initialised (for statistics and tests)."""
        st = self._state
        return st.pool if st else None

    def slot_flags(self, index: int) -> int:
        """Raw flags of slot ``index`` (tests and debugging)."""
        with self._initialised("slot_flags") as st:
            return st.core.slot(index)[1]


def _mem_available(meminfo: str = "/proc/meminfo") -> int | None:
    """MemAvailable in bytes, or None when it cannot be read."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) << 10
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
