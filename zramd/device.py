"""The zram device: a compressed block store with the kernel's data path and statistics.

Data path (``drivers/block/zram/zram_drv.c``)
=============================================

Writes are split into 4 KiB pages. A page that is one repeated 64-bit word is kept in its slot
(SAME, no pool memory). Any other page is compressed; if the result is at least
``huge_class_size`` the page is stored raw (HUGE), else the compressed bytes are. Allocation
happens before the slot is locked, as in the kernel; the limit check follows each allocation
and, when it fails, one direct compaction is tried before the write is refused. Only then is the
slot locked, its old object freed and the new one installed, so a failed write leaves the old
data in place. Reads copy the object out under the slot lock and decompress after releasing it.

Sub-page I/O (NBD allows 512-byte granularity) is read-modify-write under the slot lock.
Discard frees the whole pages it covers and leaves partial pages at its edges as they are, as
the kernel's ``zram_bio_discard`` does: a discard is there to give memory back, so it never
allocates and never fails for lack of memory (NBD leaves trimmed bytes unspecified until they
are written again). Write-zeroes frees (or same-fills) whole pages too, but zeroes partial edge
pages by read-modify-write, because its bytes must read back as zeros; at ``mem_limit`` that
write may be refused (ENOSPC, nothing changed) like any other. Never-written and freed slots
read as zeros without touching the pool.

Locking
=======

::

    ZramDevice._lock        the configuration disksize builds from (comp_algorithm and
                            recomp_algorithm with their algorithm_params, backing_dev), the
                            switch of the state at disksize and reset, and the opener count;
                            I/O never takes it
      -> _IoGate            I/O requests share it; reset/disksize take it exclusively
        -> slot stripe lock pages i with the same (i >> 5) % 1024 share one lock
          -> pool locks     (see pool.py)
    ZramDevice._stat_lock   leaf: mem_used_max, the failure and direct-compaction counters,
                            the writeback budget, the frames batches reserved under mem_limit

mem_limit, writeback_limit_enable, writeback_batch_size and the auto_compact policy are
single values, stored and read without a lock.

A stripe covers 32 consecutive pages (128 KiB), so a typical request takes one lock; requests
to different regions proceed in parallel. Per-stripe counters (pages stored, compressed bytes,
same and huge pages) are updated under their stripe lock and summed on demand, so statistics
need no global lock on the hot path. Compression and decompression run outside every lock.
"""

from __future__ import annotations

import os
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from zramd._types import BytesLike
from zramd.backing import BackingDevice, BackingError, BackingFullError, open_store
from zramd.compress import DEFAULT, Compressor, create, lookup
from zramd.compress.base import raw_decompressor
from zramd.compress.dictionary import read_dictionary
from zramd.errors import (
    DeviceBusyError,
    InvalidIOError,
    InvalidValueError,
    MemLimitError,
    NoDeviceError,
    OutOfRangeError,
    PoolExhaustedError,
    TryAgainError,
    ZramdError,
)
from zramd.frames import MAX_FRAMES
from zramd.parse import U64_MASK
from zramd.pool import ZsPool, native_module
from zramd.size_class import DEFAULT_CHAIN_SIZE, PAGE_SHIFT, PAGE_SIZE, ClassSpec
from zramd.slots import (
    ZRAM_COMP_PRIORITY_MASK,
    ZRAM_COMP_PRIORITY_SHIFT,
    ZRAM_HUGE,
    ZRAM_IDLE,
    ZRAM_INCOMPRESSIBLE,
    ZRAM_PP_SLOT,
    ZRAM_SAME,
    ZRAM_SIZE_MASK,
    ZRAM_WB,
    SlotTable,
)
from zramd.stats import BdStat, CompactStat, DebugStat, IoStat, MemStat, MmStat

STRIPE_SHIFT = 5  # 32 pages per slot lock: a 128 KiB request takes one lock
NR_STRIPES = 1024  # distinct locks; stripes alias every 128 MiB
STRIPE_MASK = NR_STRIPES - 1
PAGE_MASK = PAGE_SIZE - 1
ZERO_PAGE = bytes(PAGE_SIZE)
WORDS_PER_PAGE = PAGE_SIZE // 8
# Arena reservation: twice the disk (fragmentation before compaction) plus room for a partly
# filled zspage in every class. Address space only; memory is committed as frames are used.
ARENA_SLACK = 16 << 20

#: NBD extent types (nbdkit.EXTENT_HOLE / EXTENT_ZERO)
EXTENT_DATA = 0
EXTENT_HOLE = 1
EXTENT_ZERO = 2
MAX_EXTENT_PAGES = 1 << 16  # one extents() call describes at most 256 MiB (clients ask again)

ZRAM_MAX_COMPS = 4  #: the primary algorithm (priority 0) and up to three for recompression
ZRAM_SECONDARY_COMP = 1  #: the priority ``recomp_algorithm`` assumes without ``priority=``
ACCESSED = ZRAM_IDLE | ZRAM_PP_SLOT  # what any access clears

#: writeback / recompression candidate filters (the kernel's *_WRITEBACK and RECOMPRESS_*)
PP_HUGE = 1 << 0
PP_IDLE = 1 << 1
PP_INCOMPRESSIBLE = 1 << 2
PP_BUCKET_SHIFT = 6  # post-processing buckets of 64 bytes of object size: biggest first

WB_BATCH_DEFAULT = 32  # writeback_batch_size: pages in flight at once (7.0's default)
#: pages one writeback holds decompressed at once, whatever writeback_batch_size says (1 MiB):
#: the knob keeps the kernel's u32 range, the memory a batch holds stays bounded
WB_BATCH_MAX = 256


def same_fill(page: memoryview) -> int | None:
    """``page_same_filled``: the repeated 64-bit word (little-endian int), or None.

    Two byte probes reject almost every ordinary page before anything is copied; memoryview
    comparisons are element by element in CPython, so the full test compares bytes instead.
    """
    if page[0] != page[PAGE_SIZE - 8] or page[7] != page[PAGE_SIZE - 1]:
        return None
    raw = page.tobytes()
    word = raw[:8]
    if word * WORDS_PER_PAGE != raw:
        return None
    return int.from_bytes(word, "little")


HUGE_FLAGS = ZRAM_HUGE | PAGE_SIZE  # slot flags of a page stored raw


def encode_pages(
    src: memoryview,
    base: int,
    start: int,
    count: int,
    compress: Callable[[BytesLike], bytes],
    huge_size: int,
    same_flag: int,
    huge_flags: int,
    values: list[int | None],
    flags: list[int],
) -> tuple[list[BytesLike], list[int]]:
    """Pages ``start .. start+count`` of ``src`` (page k at byte ``base + k * 4096``), for one
    pool batch: a same-filled page gets its word in ``values[k]`` and ``same_flag``; any other
    is compressed and queued (the page itself when the result is ``huge_size`` bytes or more),
    with its stored size or ``huge_flags`` in ``flags[k]``. Returns the objects to store and
    their page indices. (``_zsfast.encode_pages`` is this loop in C.)"""
    objs: list[BytesLike] = []
    where: list[int] = []
    for k in range(start, start + count):
        pos = base + (k << PAGE_SHIFT)
        page = src[pos : pos + PAGE_SIZE]
        word = same_fill(page)
        if word is not None:
            values[k] = word
            flags[k] = same_flag
            continue
        c = compress(page)
        n = len(c)
        if n >= huge_size:
            objs.append(page)
            flags[k] = huge_flags
        else:
            objs.append(c)
            flags[k] = n
        where.append(k)
    return objs, where


#: the flag masks scan_slots needs: size, SAME, WB, what an access clears, priority
MASKS = (ZRAM_SIZE_MASK, ZRAM_SAME, ZRAM_WB, ACCESSED, ZRAM_COMP_PRIORITY_MASK)

ScanRare = tuple[list[int], list[int], list[tuple[int, int]]]


def scan_slots(
    flags: memoryview,
    handles: memoryview,
    actime: memoryview,
    lo: int,
    hi: int,
    first: int,
    now: int,
    out: list[int | bytes],
    load_many: Callable[[list[int]], list[bytes]],
    masks: tuple[int, int, int, int, int],
) -> ScanRare | None:
    """The read side of slots ``lo .. hi`` (one stripe, its lock held): each page's content
    goes to ``out[page - first]`` (a fill word, or a copy of its object by one ``load_many``),
    and every page that holds data is touched (``ACCESSED`` bits dropped, ``actime = now``).
    Returns None, or when a page is written back or was recompressed: (blocks to read,
    their ``out`` indices, (index, flags) of recompressed pages). (``_zsfast.scan_slots`` is
    this loop in C.)"""
    size_mask, same, wb, accessed, prio_mask = masks
    stored: list[int] = []
    where: list[int] = []
    blocks: list[int] = []
    block_where: list[int] = []
    recompressed: list[tuple[int, int]] = []
    for j in range(lo, hi):
        f = flags[j]
        if f & size_mask:
            stored.append(handles[j])
            where.append(j - first)
            if f & prio_mask:
                recompressed.append((j - first, f))
        elif f & same:
            out[j - first] = handles[j]
        elif f & wb:
            blocks.append(handles[j])
            block_where.append(j - first)
        else:
            continue
        if f & accessed:  # any access ends idleness and post-processing picks
            flags[j] = f & ~accessed
        actime[j] = now
    if stored:
        for k, obj in zip(where, load_many(stored), strict=True):
            out[k] = obj
    return (blocks, block_where, recompressed) if blocks or recompressed else None


#: what install_slots needs: size, SAME, WB, HUGE and the stripe geometry
INSTALL_MASKS = (ZRAM_SIZE_MASK, ZRAM_SAME, ZRAM_WB, ZRAM_HUGE, STRIPE_SHIFT, STRIPE_MASK)


def install_slots(
    flags_col: memoryview,
    handle_col: memoryview,
    actime: memoryview,
    first: int,
    values: list[int | None],
    flags: list[int],
    now: int,
    counters: tuple[array[int], ...],
    masks: tuple[int, int, int, int, int, int],
) -> tuple[list[int], list[int]]:
    """Set slots ``first ..`` to ``values``/``flags`` (a None value empties the slot) and keep
    the per-stripe counters (stored, same, compr, huge, huge_since) in step. Returns what the
    old contents held: pool handles to free and backing blocks to free. (``_zsfast.
    install_slots`` is this loop in C.)"""
    size_mask, same_flag, wb_flag, huge_flag, stripe_shift, stripe_mask = masks
    stored, same, compr, huge, huge_since = counters
    stale: list[int] = []
    blocks: list[int] = []
    for k, value in enumerate(values):
        i = first + k
        s = (i >> stripe_shift) & stripe_mask
        old = flags_col[i]
        if old & (size_mask | same_flag | wb_flag):  # zram_free_page
            if old & same_flag:
                same[s] -= 1
            elif old & wb_flag:
                blocks.append(handle_col[i])
            else:
                stale.append(handle_col[i])
                compr[s] -= old & size_mask
                if old & huge_flag:
                    huge[s] -= 1
            stored[s] -= 1
        if value is None:
            handle_col[i] = 0
            flags_col[i] = 0
            continue
        f = flags[k]
        handle_col[i] = value
        flags_col[i] = f
        actime[i] = now
        stored[s] += 1
        if f & same_flag:
            same[s] += 1
        else:
            compr[s] += f & size_mask
            if f & huge_flag:
                huge[s] += 1
                huge_since[s] += 1
    return stale, blocks


def decode_pages(
    buf: memoryview,
    contents: list[int | bytes],
    raw: Callable[[bytes, int], bytes],
    decompress: Callable[[bytes, int], bytes],
) -> None:
    """Fill ``buf`` (whole pages) from ``contents``, one item per page: an int is a fill word
    (0 for a page never written), a 4096-byte object a page stored raw, anything shorter a
    compressed object for ``raw`` (``raw_decompressor``), or ``decompress`` when ``raw`` fails
    or returns the wrong length. (``_zsfast.decode_pages`` is this loop in C.)"""
    pos = 0
    for item in contents:
        if isinstance(item, int):
            item = fill_page(item)  # noqa: PLW2901
        elif len(item) != PAGE_SIZE:
            try:
                page = raw(item, PAGE_SIZE)
            except Exception:
                page = b""
            item = page if len(page) == PAGE_SIZE else decompress(item, PAGE_SIZE)  # noqa: PLW2901
        buf[pos : pos + PAGE_SIZE] = item
        pos += PAGE_SIZE


def fill_page(word: int) -> bytes:
    return ZERO_PAGE if word == 0 else word.to_bytes(8, "little") * WORDS_PER_PAGE


def _frames_bound(pool: ZsPool, objs: Sequence[BytesLike]) -> int:
    """The most frames storing ``objs`` can add to ``pool``: a new zspage for every
    ``objs_per_zspage`` objects of each class (a frame per huge object)."""
    counts: dict[ClassSpec, int] = {}
    class_for = pool.class_for_size
    for obj in objs:
        spec = class_for(len(obj))
        counts[spec] = counts.get(spec, 0) + 1
    return sum(-(-n // s.objs_per_zspage) * s.pages_per_zspage for s, n in counts.items())


def _pp_flags(mode: int) -> int:
    """Slot flags a writeback / recompress mode requires."""
    return (
        (ZRAM_HUGE if mode & PP_HUGE else 0)
        | (ZRAM_IDLE if mode & PP_IDLE else 0)
        | (ZRAM_INCOMPRESSIBLE if mode & PP_INCOMPRESSIBLE else 0)
    )


def _name(comp: Compressor | None) -> str | None:
    return comp.name if comp is not None else None


@dataclass(frozen=True, slots=True)
class AlgorithmConfig:
    """A configured algorithm and what ``algorithm_params`` stored for it (the kernel's
    ``comp_algs[prio]`` and ``params[prio]``). None or empty: the backend's default."""

    name: str
    level: int | None = None
    winbits: int | None = None  #: deflate.winbits
    dictionary: bytes = field(default=b"", repr=False)  #: the dict= file's bytes

    def compressor(self) -> Compressor:
        """The algorithm set up with these parameters: what disksize builds. EINVAL for a
        value the backend cannot use (a backend ignores those it has no use for)."""
        try:
            return create(self.name, self.level, winbits=self.winbits, dictionary=self.dictionary)
        except InvalidValueError as e:
            raise InvalidValueError(
                f"disksize: cannot set up {self.name} with its algorithm_params: {e}"
            ) from e


class AutoCompact:
    """Background compaction: the policy the shrinker thread reads on every check (so a
    change through the control directory applies at once) and what it has done.

    The pool is compacted when it could give back at least ``min_bytes`` and at least
    ``min_percent`` % of its frames, or under memory pressure when anything can be freed.
    ``interval`` 0 switches it off.
    """

    __slots__ = ("interval", "max_pause_ns", "min_bytes", "min_percent", "pages_freed", "runs")

    def __init__(self) -> None:
        self.interval = 30.0  #: seconds between checks; 0 = off
        self.min_bytes = 1 << 20  # below 1 MiB a pass costs more than it returns
        self.min_percent = 3
        self.runs = 0  #: compactions started in the background
        self.pages_freed = 0  #: frames they freed
        self.max_pause_ns = 0  #: longest a class lock was held by one of their slices

    def threshold_pages(self, total_pages: int) -> int:
        return max(self.min_bytes >> PAGE_SHIFT, total_pages * self.min_percent // 100, 1)


class _IoGate:
    """Many I/O requests at once, or one lifecycle change (reset, disksize) alone.

    Requests only count themselves in and out, under the condition's lock taken directly (a
    C-level context manager; Condition's own __enter__ is Python code, a sixth of a 4 KiB
    read). The condition is signalled only when a lifecycle change waits for them to drain.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._active = 0
        self._exclusive = False
        self._draining = False

    def enter(self) -> None:
        with self._lock:
            while self._exclusive:
                self._cond.wait()
            self._active += 1

    def leave(self) -> None:
        with self._lock:
            self._active -= 1
            if self._draining and not self._active:
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            self._draining = True
            while self._active:
                self._cond.wait()
            self._draining = False
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class _State:
    """Everything that exists only while the device is initialised."""

    __slots__ = (
        "backing",
        "comp",
        "compr",
        "comps",
        "counters",
        "decode_pages",
        "disksize",
        "encode_pages",
        "huge",
        "huge_since",
        "install_slots",
        "locks",
        "notify_free",
        "pages",
        "pool",
        "pp_lock",
        "raw_decompress",
        "same",
        "scan_slots",
        "slots",
        "stored",
    )

    def __init__(
        self,
        disksize: int,
        comps: list[Compressor | None],
        chain: int,
        backing: BackingDevice | None,
    ) -> None:
        self.disksize = disksize
        self.pages = disksize >> PAGE_SHIFT
        comp = comps[0]
        assert comp is not None
        self.comp = comp  #: the primary algorithm (priority 0)
        self.comps = comps  #: by priority; None where no secondary algorithm is configured
        self.backing = backing
        self.pp_lock = threading.Lock()  # one writeback or recompression at a time
        arena = min(2 * disksize + ARENA_SLACK, (MAX_FRAMES - 1) * PAGE_SIZE)
        self.pool = ZsPool(arena, chain=chain)
        native = native_module() if self.pool.native else None
        # with the pool's C loops, the data path's per-page loops in C too
        self.encode_pages = native.encode_pages if native is not None else encode_pages
        self.decode_pages = native.decode_pages if native is not None else decode_pages
        self.scan_slots = native.scan_slots if native is not None else scan_slots
        self.install_slots = native.install_slots if native is not None else install_slots
        self.raw_decompress = raw_decompressor(comp)
        self.slots = SlotTable(self.pages)
        self.locks = [threading.Lock() for _ in range(NR_STRIPES)]
        # per-stripe counters, summed on demand
        self.stored = array("q", bytes(8 * NR_STRIPES))
        self.compr = array("q", bytes(8 * NR_STRIPES))
        self.same = array("q", bytes(8 * NR_STRIPES))
        self.huge = array("q", bytes(8 * NR_STRIPES))
        self.huge_since = array("q", bytes(8 * NR_STRIPES))
        self.counters = (self.stored, self.same, self.compr, self.huge, self.huge_since)
        self.notify_free = array("q", bytes(8 * NR_STRIPES))

    def close(self) -> None:
        self.slots.close()
        self.pool.close()


class ZramDevice:
    """One zram device. Starts uninitialised (disksize 0), like a freshly loaded module.

    ``clock`` returns seconds (boottime-like; only differences matter) for access times.
    All methods are thread-safe.
    """

    def __init__(
        self,
        comp_algorithm: str = DEFAULT,
        *,
        chain: int = DEFAULT_CHAIN_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        lookup(comp_algorithm)
        self._lock = threading.Lock()
        self._gate = _IoGate()
        self._chain = chain
        self._clock = clock
        self._primary = AlgorithmConfig(comp_algorithm)  #: comp_algorithm and its parameters
        self._recomp: dict[int, AlgorithmConfig] = {}  #: secondary algorithms by priority (1..3)
        self._backing: BackingDevice | None = None
        self._state: _State | None = None
        self._limit_pages = 0
        self._reserved_pages = 0  #: frames batches in flight may still add (_stat_lock)
        self._max_pages = 0
        self._failed_reads = 0
        self._failed_writes = 0
        self._miss_free = 0
        # writeback budget (4 KiB units); like 7.0, reset leaves these alone
        self._wb_limit = 0
        self._wb_limit_enable = False
        self._wb_batch = WB_BATCH_DEFAULT
        self._direct_runs = 0
        self._direct_freed = 0
        self._stat_lock = threading.Lock()
        self.auto_compact = AutoCompact()  #: background compaction policy and counters
        self.openers = 0  #: open connections (the plugin counts them); reset needs none

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

    def set_disksize(self, nbytes: int) -> None:
        """Initialise the device: EINVAL for 0, EBUSY when already initialised."""
        if nbytes <= 0:
            raise InvalidValueError(f"disksize {nbytes}: must be a positive number of bytes")
        nbytes = (nbytes + PAGE_MASK) & ~PAGE_MASK
        max_size = (MAX_FRAMES - 1) * PAGE_SIZE
        if nbytes > max_size:
            raise InvalidValueError(f"disksize {nbytes}: larger than the maximum {max_size}")
        with self._lock, self._gate.exclusive():
            if self._state is not None:
                raise DeviceBusyError("disksize: device already initialised; reset it first")
            comps: list[Compressor | None] = [None] * ZRAM_MAX_COMPS
            comps[0] = self._primary.compressor()
            for prio, a in self._recomp.items():
                comps[prio] = a.compressor()
            self._state = _State(nbytes, comps, self._chain, self._backing)

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
        return self._wb_limit

    def set_writeback_limit(self, units: int) -> None:
        with self._stat_lock:
            self._wb_limit = units

    @property
    def writeback_limit_enable(self) -> bool:
        return self._wb_limit_enable

    def set_writeback_limit_enable(self, on: bool) -> None:
        self._wb_limit_enable = on

    @property
    def writeback_batch_size(self) -> int:
        return self._wb_batch

    def set_writeback_batch_size(self, pages: int) -> None:
        if pages <= 0:
            raise InvalidValueError(f"writeback_batch_size {pages}: must be at least 1")
        self._wb_batch = pages

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

    def reset_mem_used_max(self) -> None:
        """``echo 0 > mem_used_max``: the peak becomes the current use (no-op before init)."""
        with self._lock:  # the state stays while it is read
            st = self._state
            if st is not None:
                with self._stat_lock:
                    self._max_pages = st.pool.total_pages

    def set_auto_compact(
        self,
        *,
        interval: float | None = None,
        min_bytes: int | None = None,
        min_percent: int | None = None,
    ) -> None:
        """Change the background compaction policy (the shrinker thread reads it on every
        check). EINVAL for a negative interval or size, or a percentage outside 0..100."""
        if interval is not None and interval < 0:
            raise InvalidValueError(f"auto_compact: interval={interval} must not be negative")
        if min_bytes is not None and min_bytes < 0:
            raise InvalidValueError(f"auto_compact: min_bytes={min_bytes} must not be negative")
        if min_percent is not None and not 0 <= min_percent <= 100:
            raise InvalidValueError(f"auto_compact: min_percent={min_percent} outside 0..100")
        ac = self.auto_compact
        if interval is not None:
            ac.interval = interval
        if min_bytes is not None:
            ac.min_bytes = min_bytes
        if min_percent is not None:
            ac.min_percent = min_percent

    def reset(self) -> None:
        """Free everything and return to the uninitialised state (EBUSY while open)."""
        with self._lock:
            if self.openers:
                raise DeviceBusyError(f"reset: device is open ({self.openers} connections)")
            with self._gate.exclusive():
                st, self._state = self._state, None
                if st is not None:
                    st.close()
            backing, self._backing = self._backing, None
            if backing is not None:
                backing.close()
            self._limit_pages = 0
            with self._stat_lock:
                self._max_pages = 0
                self._failed_reads = self._failed_writes = self._miss_free = 0
                self._direct_runs = self._direct_freed = 0
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

    def compact(self, *, gentle: bool = False) -> int:
        """``echo 1 > compact``: frames freed. EINVAL before init. ``gentle``: a background
        pass, in slices that yield to I/O (see ``ZsPool.compact``)."""
        with self._initialised("compact") as st:
            return st.pool.compact(gentle=gentle)

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

    def mark_idle(self, older_than: int | None = None) -> int:
        """``idle``: mark allocated slots IDLE (all, or not accessed for ``older_than`` s).

        Same-filled and written-back slots are skipped; with a cut-off, newer slots lose IDLE
        (7.0 behaviour). Returns how many slots are now idle.
        """
        with self._initialised("idle") as st:
            return self._mark_idle(st, older_than)

    def _mark_idle(self, st: _State, older_than: int | None) -> int:
        slots = st.slots
        flags = slots.flags
        cutoff = None if older_than is None else int(self._clock()) - older_than
        marked = 0
        for first in range(0, st.pages, 1 << STRIPE_SHIFT):
            with st.locks[(first >> STRIPE_SHIFT) & STRIPE_MASK]:
                for i in range(first, min(first + (1 << STRIPE_SHIFT), st.pages)):
                    f = flags[i]
                    if not f & ZRAM_SIZE_MASK or f & (ZRAM_SAME | ZRAM_WB):
                        continue
                    if cutoff is None or slots.actime[i] < cutoff:
                        flags[i] = f | ZRAM_IDLE
                        marked += 1
                    else:
                        flags[i] = f & ~ZRAM_IDLE
        return marked

    # -- post-processing: writeback and recompression --------------------------------------------

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

    @staticmethod
    def _pick(st: _State, lo: int, hi: int, need: int, skip: int, picked: list[int]) -> None:
        """``scan_slots_for_*``: flag PP_SLOT on every slot in [lo, hi) that holds a pool
        object, has all the ``need`` flags and none of ``skip``, and append it to ``picked``."""
        flags = st.slots.flags
        skip |= ZRAM_PP_SLOT
        i = lo
        while i < hi:
            end = min(hi, ((i >> STRIPE_SHIFT) + 1) << STRIPE_SHIFT)
            with st.locks[(i >> STRIPE_SHIFT) & STRIPE_MASK]:
                for j in range(i, end):
                    f = flags[j]
                    if f & ZRAM_SIZE_MASK and f & need == need and not f & skip:
                        flags[j] = f | ZRAM_PP_SLOT
                        picked.append(j)
            i = end

    @staticmethod
    def _biggest_first(st: _State, picked: list[int]) -> list[int]:
        """The kernel's post-processing buckets: 64-byte size groups, largest first."""
        flags = st.slots.flags
        return sorted(picked, key=lambda j: -((flags[j] & ZRAM_SIZE_MASK) >> PP_BUCKET_SHIFT))

    @staticmethod
    def _unpick(st: _State, picked: list[int]) -> None:
        """``release_pp_ctl``: candidates that were not processed lose PP_SLOT."""
        flags = st.slots.flags
        for j in picked:
            if flags[j] & ZRAM_PP_SLOT:
                with st.locks[(j >> STRIPE_SHIFT) & STRIPE_MASK]:
                    flags[j] &= ~ZRAM_PP_SLOT

    def _take_picked(self, st: _State, index: int) -> tuple[int, int, bytes] | None:
        """(flags, handle, uncompressed page) of a candidate still picked, else None."""
        with st.locks[(index >> STRIPE_SHIFT) & STRIPE_MASK]:
            f = st.slots.flags[index]
            if not f & ZRAM_PP_SLOT:
                return None  # accessed or freed since it was picked
            handle = st.slots.handle[index]
            obj = st.pool.read(handle)
        if f & ZRAM_SIZE_MASK == PAGE_SIZE:
            return f, handle, obj
        comp = st.comps[(f & ZRAM_COMP_PRIORITY_MASK) >> ZRAM_COMP_PRIORITY_SHIFT]
        assert comp is not None
        return f, handle, comp.decompress(obj, PAGE_SIZE)

    def writeback(
        self,
        scans: Sequence[tuple[int, int, int]] | Callable[[int], Sequence[tuple[int, int, int]]],
    ) -> int:
        """``writeback``: write slots out to the backing device and free their memory.

        ``scans`` are (mode, lo, hi) in the order the kernel's parser issues them: slots
        [lo, hi) holding a pool object with every flag the mode asks for (PP_IDLE, PP_HUGE,
        PP_INCOMPRESSIBLE; 0 = any) are picked. Largest objects go first, in batches of
        ``writeback_batch_size`` pages (at most ``WB_BATCH_MAX``) written at once. A page
        accessed or freed while its batch is in flight stays in memory. Returns the pages
        written back.

        ENODEV without a backing device; EAGAIN while another writeback or recompression
        runs; EIO when the enabled ``writeback_limit`` runs out or the store fails; ENOSPC
        when it is full (no free block, or no room left on the file's filesystem). On an
        error, what was written back before it stays written back. ``scans`` may be a
        function of the device's page count (the control file's parser), called after those
        checks, as the kernel parses after them.
        """
        with self._post_processing("writeback") as st:
            backing = st.backing
            if backing is None:
                raise NoDeviceError("writeback: no backing_dev was set before disksize")
            if callable(scans):
                scans = scans(st.pages)
            picked: list[int] = []
            try:
                for mode, lo, hi in scans:
                    self._pick(st, lo, hi, _pp_flags(mode), ZRAM_WB | ZRAM_SAME, picked)
                return self._writeback_slots(st, backing, self._biggest_first(st, picked))
            finally:
                self._unpick(st, picked)

    def _wb_budget(self, pages: int) -> bool:
        """Take ``pages`` (negative: give back) from an enabled writeback_limit."""
        if not self._wb_limit_enable:
            return True
        with self._stat_lock:
            if pages > 0 and self._wb_limit < pages:
                return False
            self._wb_limit -= pages
            return True

    def _writeback_slots(self, st: _State, backing: BackingDevice, picked: list[int]) -> int:
        written = 0
        error: ZramdError | None = None
        batch = min(self._wb_batch, WB_BATCH_MAX)
        for start in range(0, len(picked), batch):
            jobs: list[tuple[int, int, int, int, bytes]] = []  # index, flags, handle, block, page
            for index in picked[start : start + batch]:
                if not self._wb_budget(1):
                    error = ZramdError("writeback: writeback_limit is used up")
                    break
                taken = self._take_picked(st, index)
                if taken is None:
                    self._wb_budget(-1)
                    continue
                try:
                    block = backing.alloc()
                except BackingFullError as e:
                    self._wb_budget(-1)
                    error = e
                    break
                f, handle, page = taken
                jobs.append((index, f, handle, block, page))
            if jobs:
                blocks = [job[3] for job in jobs]
                try:
                    backing.write(blocks, [job[4] for job in jobs])
                except BackingError as e:
                    backing.free(blocks)
                    self._wb_budget(-len(jobs))
                    error = e
                    break
                written += self._complete_writeback(st, backing, jobs)
            if error is not None:
                break
        if error is not None:
            raise error
        return written

    @staticmethod
    def _complete_writeback(
        st: _State, backing: BackingDevice, jobs: list[tuple[int, int, int, int, bytes]]
    ) -> int:
        """Switch written slots to their blocks, unless they changed meanwhile."""
        flags = st.slots.flags
        handles = st.slots.handle
        done = 0
        stale: list[int] = []
        unused: list[int] = []
        for index, f, handle, block, _ in jobs:
            s = (index >> STRIPE_SHIFT) & STRIPE_MASK
            with st.locks[s]:
                now = flags[index]
                if not now & ZRAM_PP_SLOT or handles[index] != handle:
                    unused.append(block)
                    continue
                stale.append(handle)
                st.compr[s] -= f & ZRAM_SIZE_MASK
                if f & ZRAM_HUGE:
                    st.huge[s] -= 1
                flags[index] = ZRAM_WB  # zram_free_page + set WB: size, IDLE, HUGE cleared
                handles[index] = block
                st.slots.actime[index] = 0
                done += 1
        st.pool.free_many(stale)
        backing.free(unused)
        return done

    def recompress(
        self,
        *,
        mode: int = 0,
        threshold: int = 0,
        max_pages: int | None = None,
        algo: str | None = None,
        priority: int | None = None,
    ) -> int:
        """``recompress``: try the secondary algorithms on stored pages; returns pages
        recompressed.

        Candidates hold a pool object with the ``mode`` flags (PP_IDLE, PP_HUGE; 0 = all), are
        not INCOMPRESSIBLE, are at least ``threshold`` bytes, and have a higher priority left
        to try. Biggest objects go first. Each try of an algorithm costs one of ``max_pages``.
        A result is kept only if it lands in a smaller size class than the old object (and
        under ``threshold`` when one is set); a page no algorithm up to the last helps is
        marked INCOMPRESSIBLE and never tried again. ``priority`` overrides ``algo``.

        EINVAL when no secondary algorithm (or not the named one) is configured, or the
        threshold is not below ``huge_class_size``; EAGAIN while another post-processing runs.
        """
        with self._post_processing("recompress") as st:
            configured = [p for p in range(1, ZRAM_MAX_COMPS) if st.comps[p] is not None]
            if not configured:
                raise InvalidValueError("recompress: no recomp_algorithm was configured")
            prios = configured
            if priority is not None:
                if priority not in configured:
                    raise InvalidValueError(
                        f"recompress: priority={priority} names no configured recomp_algorithm"
                    )
                prios = [priority]
            elif algo is not None:
                prios = [p for p in configured if _name(st.comps[p]) == algo]
                if not prios:
                    raise InvalidValueError(f"recompress: algo={algo} is not a recomp_algorithm")
            huge_size = st.pool.huge_class_size
            if threshold >= huge_size:
                raise InvalidValueError(
                    f"recompress: threshold={threshold} must be below huge_class_size ({huge_size})"
                )
            picked: list[int] = []
            try:
                self._pick(
                    st,
                    0,
                    st.pages,
                    _pp_flags(mode),
                    ZRAM_WB | ZRAM_SAME | ZRAM_INCOMPRESSIBLE,
                    picked,
                )
                return self._recompress_slots(
                    st,
                    self._biggest_first(st, picked),
                    prios,
                    configured[-1],
                    threshold,
                    max_pages,
                )
            finally:
                self._unpick(st, picked)

    def _recompress_slots(
        self,
        st: _State,
        picked: list[int],
        prios: list[int],
        last: int,
        threshold: int,
        max_pages: int | None,
    ) -> int:
        pool = st.pool
        class_of = pool.class_for_size
        budget = max_pages
        done = 0
        for index in picked:
            if budget is not None and budget <= 0:
                break
            cur = (st.slots.flags[index] & ZRAM_COMP_PRIORITY_MASK) >> ZRAM_COMP_PRIORITY_SHIFT
            todo = [p for p in prios if p > cur]
            if not todo:
                continue
            taken = self._take_picked(st, index)
            if taken is None:
                continue
            f, handle, page = taken
            size = f & ZRAM_SIZE_MASK
            if size < threshold:
                continue
            old_class = class_of(size).index
            found: tuple[int, bytes] | None = None
            tried = 0
            for p in todo:
                if budget is not None:
                    if budget <= 0:
                        break
                    budget -= 1
                tried += 1
                comp = st.comps[p]
                assert comp is not None
                c = comp.compress(page)
                n = len(c)
                if (
                    n < PAGE_SIZE
                    and class_of(n).index < old_class
                    and (not threshold or n < threshold)
                ):
                    found = (p, c)
                    break
            if found is None:
                self._tried(
                    st, index, handle, incompressible=tried == len(todo) and todo[-1] == last
                )
                continue
            p, c = found
            new = pool.store_many([c])[0]
            if self._complete_recompress(st, index, f, handle, new, len(c), p):
                done += 1
            else:
                pool.free(new)
        self._note_peak(pool.total_pages)
        return done

    @staticmethod
    def _tried(st: _State, index: int, handle: int, *, incompressible: bool) -> None:
        """A slot no algorithm improved: it was touched, so it is no longer IDLE (and not
        picked for another post-processing); INCOMPRESSIBLE if the last algorithm failed."""
        with st.locks[(index >> STRIPE_SHIFT) & STRIPE_MASK]:
            f = st.slots.flags[index]
            if f & ZRAM_PP_SLOT and st.slots.handle[index] == handle:
                f &= ~(ZRAM_PP_SLOT | ZRAM_IDLE)
                st.slots.flags[index] = f | (ZRAM_INCOMPRESSIBLE if incompressible else 0)

    @staticmethod
    def _complete_recompress(
        st: _State, index: int, f: int, handle: int, new: int, size: int, prio: int
    ) -> bool:
        """Install the recompressed object unless the slot changed meanwhile."""
        s = (index >> STRIPE_SHIFT) & STRIPE_MASK
        with st.locks[s]:
            flags = st.slots.flags
            if not flags[index] & ZRAM_PP_SLOT or st.slots.handle[index] != handle:
                return False
            keep = f & ~(ZRAM_SIZE_MASK | ZRAM_HUGE | ZRAM_IDLE | ZRAM_PP_SLOT)
            flags[index] = (
                (keep & ~ZRAM_COMP_PRIORITY_MASK) | size | (prio << ZRAM_COMP_PRIORITY_SHIFT)
            )
            st.slots.handle[index] = new
            st.compr[s] += size - (f & ZRAM_SIZE_MASK)
            if f & ZRAM_HUGE:
                st.huge[s] -= 1
        st.pool.free(handle)
        return True

    # -- I/O -----------------------------------------------------------------------------------

    def _begin(self, offset: int, length: int, what: str) -> _State:
        self._gate.enter()
        st = self._state
        size = st.disksize if st else 0
        if offset < 0 or length < 0 or offset + length > size or st is None:
            self._gate.leave()
            raise InvalidIOError(
                f"{what} of {length} bytes at offset {offset} is outside the device ({size} bytes)"
            )
        return st

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (never-written and discarded bytes read as zeros)."""
        out = bytearray(length)
        self.read_into(offset, memoryview(out))
        return bytes(out)

    def read_into(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` (a writable byte buffer) from ``offset``."""
        length = len(buf)
        st = self._begin(offset, length, "read")
        try:
            if length:
                self._read(st, offset, buf)
        except ZramdError:
            with self._stat_lock:
                self._failed_reads += 1
            raise
        finally:
            self._gate.leave()

    def _read(self, st: _State, offset: int, buf: memoryview) -> None:
        first = offset >> PAGE_SHIFT
        contents = self._fetch(st, first, ((offset + len(buf) - 1) >> PAGE_SHIFT) + 1)
        decompress = st.comp.decompress
        head = offset & PAGE_MASK
        if not head and not len(buf) & PAGE_MASK:  # whole pages, the common case: no slicing
            st.decode_pages(buf, contents, st.raw_decompress, decompress)
            return
        pos = 0
        end = offset + len(buf)
        for k, item in enumerate(contents):
            if isinstance(item, int):
                page = fill_page(item)
            elif len(item) == PAGE_SIZE:
                page = item  # huge: stored raw
            else:
                page = decompress(item, PAGE_SIZE)
            lo = head if k == 0 else 0
            hi = min(PAGE_SIZE, end - ((first + k) << PAGE_SHIFT))
            n = hi - lo
            buf[pos : pos + n] = page if n == PAGE_SIZE else page[lo:hi]
            pos += n

    def _fetch(self, st: _State, first: int, stop: int) -> list[int | bytes]:
        """Per page, its fill word (0 for never written) or a copy of its stored object,
        taken under the slot locks; decompression happens after they are released."""
        slots = st.slots
        flags = slots.flags
        handles = slots.handle
        actime = slots.actime
        load_many = st.pool.load_many
        now = int(self._clock())
        out: list[int | bytes] = [0] * (stop - first)
        scan = st.scan_slots
        recompressed: list[tuple[int, int]] = []  # (page, flags)
        i = first
        while i < stop:
            run_end = min(stop, ((i >> STRIPE_SHIFT) + 1) << STRIPE_SHIFT)
            with st.locks[(i >> STRIPE_SHIFT) & STRIPE_MASK]:
                rare = scan(flags, handles, actime, i, run_end, first, now, out, load_many, MASKS)
                if rare is not None:
                    blocks, block_where, recomp = rare
                    recompressed += recomp
                    if blocks:  # read under the lock: the block may be reused once dropped
                        assert st.backing is not None
                        for k, page in zip(block_where, st.backing.read(blocks), strict=True):
                            out[k] = page  # whole pages: the caller copies them like huge ones
            i = run_end
        # objects made by a secondary algorithm: decompressed here, the rest by the caller
        for k, f in recompressed:
            comp = st.comps[(f & ZRAM_COMP_PRIORITY_MASK) >> ZRAM_COMP_PRIORITY_SHIFT]
            assert comp is not None
            packed = out[k]
            assert isinstance(packed, bytes)
            out[k] = comp.decompress(packed, PAGE_SIZE)
        return out

    def write(self, offset: int, data: BytesLike) -> None:
        """Write ``data`` at ``offset``. All or nothing: if any page cannot be stored
        (mem_limit, arena full), no byte of the request changes."""
        mv = memoryview(data)
        self._update(offset, len(mv), mv, "write", hole=False)

    def discard(self, offset: int, length: int) -> None:
        """Free the whole pages in the range and leave partial pages at its edges untouched
        (``zram_bio_discard``), so it never needs memory and fails only for a range outside
        the device (EINVAL). The freed pages read as zeros; the untouched edge bytes keep
        their contents, which NBD allows (trimmed bytes are unspecified until rewritten)."""
        self._update(offset, length, None, "discard", hole=True, edges=False)

    def write_zeroes(self, offset: int, length: int, *, may_trim: bool = True) -> None:
        """Make the range read as zeros. With ``may_trim`` whole pages are freed (holes);
        without, they become allocated same-filled zero pages (no pool memory either).
        Partial pages at the edges are rewritten with their bytes zeroed; a page that becomes
        same-filled needs no memory, any other needs a new object, so at mem_limit the
        request can fail with ENOSPC, all or nothing, as a write does."""
        self._update(offset, length, None, "write_zeroes", hole=may_trim)

    def _update(
        self,
        offset: int,
        length: int,
        src: memoryview | None,
        what: str,
        *,
        hole: bool,
        edges: bool = True,
    ) -> None:
        st = self._begin(offset, length, what)
        try:
            if length:
                self._apply(st, offset, offset + length, src, hole=hole, edges=edges)
        except ZramdError:
            with self._stat_lock:
                self._failed_writes += 1
            raise
        finally:
            self._gate.leave()

    def _apply(
        self,
        st: _State,
        offset: int,
        end: int,
        src: memoryview | None,
        *,
        hole: bool,
        edges: bool = True,
    ) -> None:
        """Set bytes [offset, end) from ``src``, or to zero when ``src`` is None.

        1. Whole pages are encoded (same-fill test, compression, pool allocation) before any
           slot lock is taken, as the kernel allocates before locking the slot.
        2. Every stripe lock the request touches is taken, in ascending order (the only place
           that holds more than one; ordering makes it deadlock-free).
        3. Partial pages at the edges are read, patched and encoded under those locks, unless
           ``edges`` is False (discard: only whole pages change, nothing is allocated).
        4. Only when everything is allocated are the slots switched over and old objects freed;
           a failure in 1 or 3 frees what was allocated and leaves every slot untouched.
        """
        full_lo = (offset + PAGE_MASK) >> PAGE_SHIFT
        full_hi = max(end >> PAGE_SHIFT, full_lo)
        n_full = full_hi - full_lo
        if edges:
            first, last = offset >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT
        elif n_full:
            first, last = full_lo, full_hi - 1
        else:
            return  # a discard inside one page changes nothing
        values: list[int | None] = []
        flags: list[int] = []
        locks: list[threading.Lock] = []
        edits: list[tuple[int, int | None, int]] = []
        try:
            if src is not None:
                values, flags = self._encode_pages(
                    st, src, (full_lo << PAGE_SHIFT) - offset, n_full
                )
            elif hole:
                values, flags = [None] * n_full, [0] * n_full
            else:
                values, flags = [0] * n_full, [ZRAM_SAME] * n_full
            locks = self._lock_stripes(st, first, last)
            for p in (
                ((first,) if first == last else (first, last)) if (offset | end) & PAGE_MASK else ()
            ):
                if p < full_lo or p >= full_hi:
                    edit = self._edit_locked(st, p, offset, end, src, hole=hole)
                    if edit is not None:
                        edits.append(edit)
        except BaseException:
            for lock in reversed(locks):
                lock.release()
            self._free_encoded(st, values, flags)
            self._free_encoded(st, [v for _, v, _ in edits], [f for _, _, f in edits])
            raise
        try:
            now = int(self._clock())
            self._install(st, full_lo, values, flags, now)
            for page, value, f in edits:
                self._install(st, page, [value], [f], now)
            if src is None:  # the kernel counts every whole page a discard visits
                for page in range(full_lo, full_hi):
                    st.notify_free[(page >> STRIPE_SHIFT) & STRIPE_MASK] += 1
        finally:
            for lock in reversed(locks):
                lock.release()

    @staticmethod
    def _free_encoded(st: _State, values: list[int | None], flags: list[int]) -> None:
        """Give back the objects of encoded pages that were never installed."""
        st.pool.free_many(
            v for v, f in zip(values, flags, strict=False) if v is not None and f & ZRAM_SIZE_MASK
        )

    @staticmethod
    def _lock_stripes(st: _State, first: int, last: int) -> list[threading.Lock]:
        """Take the stripe locks of pages first..last in ascending order; returns them."""
        if first >> STRIPE_SHIFT == last >> STRIPE_SHIFT:  # the common case: one stripe
            lock = st.locks[(first >> STRIPE_SHIFT) & STRIPE_MASK]
            lock.acquire()
            return [lock]
        chunks = range(first >> STRIPE_SHIFT, (last >> STRIPE_SHIFT) + 1)
        if len(chunks) >= NR_STRIPES:
            ids: Iterable[int] = range(NR_STRIPES)
        else:
            ids = sorted({c & STRIPE_MASK for c in chunks})
        taken: list[threading.Lock] = []
        try:
            for i in ids:
                lock = st.locks[i]
                lock.acquire()
                taken.append(lock)
        except BaseException:
            for lock in reversed(taken):
                lock.release()
            raise
        return taken

    def _edit_locked(
        self,
        st: _State,
        page: int,
        offset: int,
        end: int,
        src: memoryview | None,
        *,
        hole: bool,
    ) -> tuple[int, int | None, int] | None:
        """Read-modify-write encoding of a partially covered page (stripe lock held).

        Returns (page, new value or None to free, flags), or None when nothing changes
        (zeroing part of a page that holds no data)."""
        start = page << PAGE_SHIFT
        lo = max(offset, start) - start
        hi = min(end, start + PAGE_SIZE) - start
        if src is None and not SlotTable.allocated(st.slots.flags[page]):
            return None  # already reads as zeros
        buf = bytearray(self._load_locked(st, page))
        if src is None:
            buf[lo:hi] = bytes(hi - lo)
            if hole and buf == ZERO_PAGE:
                return page, None, 0
        else:
            buf[lo:hi] = src[start + lo - offset : start + hi - offset]
        values, flags = self._encode_pages(st, memoryview(buf), 0, 1)
        return page, values[0], flags[0]

    def _encode_pages(
        self, st: _State, src: memoryview, base: int, count: int
    ) -> tuple[list[int | None], list[int]]:
        """Slot contents for ``count`` whole pages of ``src`` from byte ``base``: a fill word
        (ZRAM_SAME) or a new pool object (compressed, or raw if HUGE). Allocates in batches of
        one stripe (128 KiB) under mem_limit (``_store_many``)."""
        compress = st.comp.compress
        encode = st.encode_pages
        huge_size = st.pool.huge_class_size
        values: list[int | None] = [0] * count
        flags = [0] * count
        done = 0
        try:
            while done < count:
                batch = min(count - done, 1 << STRIPE_SHIFT)
                objs, where = encode(
                    src,
                    base,
                    done,
                    batch,
                    compress,
                    huge_size,
                    ZRAM_SAME,
                    HUGE_FLAGS,
                    values,
                    flags,
                )
                if objs:
                    for k, handle in zip(where, self._store_many(st, objs), strict=True):
                        values[k] = handle
                done += batch
        except BaseException:
            self._free_encoded(st, values[:done], flags[:done])
            raise
        return values, flags

    def _store_many(self, st: _State, objs: list[BytesLike]) -> list[int]:
        """Allocate and fill objects, enforcing mem_limit with one direct compaction.

        The pool is checked after an allocation, as the kernel checks after ``zs_malloc``,
        so an allocation may overshoot the limit before it is undone. A batch adds at most
        a new zspage per ``objs_per_zspage`` objects of each class it touches (32 objects
        in 32 empty classes: 241 frames). So a batch is allocated at once only when that
        many frames fit under the limit beside those reserved by other batches in flight,
        and it reserves them until its allocation is done; otherwise its objects go one at
        a time. Every request thus overshoots the limit by at most one zspage (``chain``
        frames) before it is refused."""
        limit = self._limit_pages
        if not limit or len(objs) == 1:
            return self._store_checked(st, objs)
        pool = st.pool
        bound = len(objs) * self._chain  # every object a new zspage of the longest chain
        if bound > limit - pool.total_pages - self._reserved_pages:
            bound = _frames_bound(pool, objs)
        with self._stat_lock:
            fits = bound <= limit - pool.total_pages - self._reserved_pages
            if fits:
                self._reserved_pages += bound
        if not fits:
            return self._store_each(st, objs)
        return self._store_checked(st, objs, bound)

    def _store_each(self, st: _State, objs: list[BytesLike]) -> list[int]:
        """``_store_checked`` one object at a time (near the limit); all or nothing."""
        handles: list[int] = []
        try:
            for obj in objs:
                handles += self._store_checked(st, [obj])
        except BaseException:
            st.pool.free_many(handles)
            raise
        return handles

    def _store_checked(self, st: _State, objs: list[BytesLike], reserved: int = 0) -> list[int]:
        """Allocate and fill objects, giving back the ``reserved`` frames once allocated;
        then check mem_limit (frames other batches reserved count as used): over it, free
        them, compact once and try again (object by object) before refusing
        (MemLimitError)."""
        pool = st.pool
        try:
            try:
                handles = pool.store_many(objs)
            except PoolExhaustedError:
                self._direct_compact(pool)
                handles = pool.store_many(objs)
        finally:
            if reserved:
                with self._stat_lock:
                    self._reserved_pages -= reserved
        limit = self._limit_pages
        total = pool.total_pages
        if limit and total + self._reserved_pages > limit:
            pool.free_many(handles)
            self._direct_compact(pool)  # the "direct compaction" the 2014 review asked for
            if len(objs) > 1:  # what room there is, it takes object by object
                return self._store_each(st, objs)
            handles = pool.store_many(objs)
            total = pool.total_pages
            others = self._reserved_pages
            if total + others > limit:
                pool.free_many(handles)
                also = f" (and {others} reserved by other writes)" if others else ""
                raise MemLimitError(
                    f"write refused: the pool would hold {total} pages{also}, over mem_limit "
                    f"({limit} pages) even after compaction"
                )
        self._note_peak(total)
        return handles

    def _note_peak(self, total: int) -> None:
        """Raise mem_used_max to ``total`` pages if it is a new peak."""
        if total > self._max_pages:
            with self._stat_lock:
                self._max_pages = max(self._max_pages, total)

    def _direct_compact(self, pool: ZsPool) -> None:
        """Compact before refusing a write (counted apart from manual and background runs)."""
        freed = pool.compact()
        with self._stat_lock:
            self._direct_runs += 1
            self._direct_freed += freed

    def _install(
        self, st: _State, first: int, values: list[int | None], flags: list[int], now: int
    ) -> None:
        """Switch slots first.. to their new contents (None: free) and free the old objects;
        the caller holds every stripe lock involved. Cannot fail."""
        slots = st.slots
        stale, blocks = st.install_slots(
            slots.flags, slots.handle, slots.actime, first, values, flags, now, st.counters,
            INSTALL_MASKS,
        )  # fmt: skip
        if stale:
            st.pool.free_many(stale)
        if blocks:
            assert st.backing is not None
            st.backing.free(blocks)

    def _load_locked(self, st: _State, index: int) -> bytes:
        """The page's current contents (caller holds the stripe lock)."""
        f = st.slots.flags[index]
        size = f & ZRAM_SIZE_MASK
        if size:
            obj = st.pool.read(st.slots.handle[index])
            if size == PAGE_SIZE:
                return obj
            comp = st.comps[(f & ZRAM_COMP_PRIORITY_MASK) >> ZRAM_COMP_PRIORITY_SHIFT]
            assert comp is not None
            return comp.decompress(obj, PAGE_SIZE)
        if f & ZRAM_SAME:
            return fill_page(st.slots.handle[index])
        if f & ZRAM_WB:
            assert st.backing is not None
            return st.backing.read([st.slots.handle[index]])[0]
        return ZERO_PAGE

    def flush(self) -> None:
        """Nothing to do: data is in RAM the moment a write returns (zram has no cache)."""

    def extents(self, offset: int, length: int) -> list[tuple[int, int, int]]:
        """NBD block status from ``offset``: (offset, length, type) runs, type HOLE|ZERO for
        unallocated pages, ZERO for same-filled zero pages, DATA otherwise. Covers at least the
        first page and at most MAX_EXTENT_PAGES pages (clients ask again for the rest)."""
        st = self._begin(offset, length, "extents")
        try:
            first = offset >> PAGE_SHIFT
            stop = min(
                (offset + max(length, 1) + PAGE_MASK) >> PAGE_SHIFT, first + MAX_EXTENT_PAGES
            )
            flags = st.slots.flags
            handles = st.slots.handle
            runs: list[tuple[int, int, int]] = []
            run_type = -1
            run_start = first
            for i in range(first, stop):
                f = flags[i]
                if not f & (ZRAM_SIZE_MASK | ZRAM_SAME | ZRAM_WB):
                    t = EXTENT_HOLE | EXTENT_ZERO
                elif f & ZRAM_SAME and handles[i] == 0:
                    t = EXTENT_ZERO
                else:
                    t = EXTENT_DATA
                if t != run_type:
                    if run_type >= 0:
                        runs.append(
                            (run_start << PAGE_SHIFT, (i - run_start) << PAGE_SHIFT, run_type)
                        )
                    run_type, run_start = t, i
            runs.append((run_start << PAGE_SHIFT, (stop - run_start) << PAGE_SHIFT, run_type))
            return runs
        finally:
            self._gate.leave()

    # -- statistics ----------------------------------------------------------------------------

    def mm_stat(self) -> MmStat:
        st = self._state
        if st is None:
            return MmStat(0, 0, 0, self.mem_limit, self._max_pages << PAGE_SHIFT, 0, 0, 0, 0)
        return MmStat(
            orig_data_size=sum(st.stored) << PAGE_SHIFT,
            compr_data_size=sum(st.compr),
            mem_used_total=st.pool.total_pages << PAGE_SHIFT,
            mem_limit=self.mem_limit,
            mem_used_max=self._max_pages << PAGE_SHIFT,
            same_pages=sum(st.same),
            pages_compacted=st.pool.pages_compacted,
            huge_pages=sum(st.huge),
            huge_pages_since=sum(st.huge_since),
        )

    def io_stat(self) -> IoStat:
        st = self._state
        notify = sum(st.notify_free) if st else 0
        return IoStat(self._failed_reads, self._failed_writes, 0, notify)

    def debug_stat(self) -> DebugStat:
        return DebugStat(1, self._miss_free)

    def bd_stat(self) -> BdStat:
        """Backing device use in 4 KiB blocks (zeros without one)."""
        b = self._backing  # the state's backing device is this same object while initialised
        if b is None:
            return BdStat(0, 0, 0)
        return BdStat(b.count, b.reads, b.writes)

    def compact_stat(self) -> CompactStat:
        """What compaction did since init: background (shrinker) and direct runs."""
        ac = self.auto_compact
        return CompactStat(
            auto_runs=ac.runs,
            auto_pages_freed=ac.pages_freed,
            direct_runs=self._direct_runs,
            direct_pages_freed=self._direct_freed,
            max_pause_us=ac.max_pause_ns // 1000,
        )

    def mem_stat(self) -> MemStat:
        rss = _rss_bytes()
        try:
            with self._initialised("mem_stat") as st:
                ps = st.pool.stats()
                table = st.slots.metadata_bytes()
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
    def pool(self) -> ZsPool | None:
        """The pool while initialised (for statistics and tests)."""
        st = self._state
        return st.pool if st else None

    def slot_flags(self, index: int) -> int:
        """Raw flags of slot ``index`` (tests and debugging)."""
        with self._initialised("slot_flags") as st:
            return st.slots.flags[index]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
