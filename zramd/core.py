"""The data path of one initialised device: the slot table and the per-request loops.

This is the Python twin of ``zramd/csrc/zram.c`` (``zramd._zram.Core``), and the reference it
follows: the same methods, results and exceptions, used when the extension is not built or
``ZRAMD_NATIVE=0``. The device (``device.py``) owns one while initialised and keeps everything
cold for itself: lifecycle, which pages to write back or recompress, the backing store.

The table (``zram_drv.h``)
==========================

One 16-byte entry per 4 KiB page, in three lazily committed columns (memory only for the parts
written): ``handle`` (pool handle, fill word of a same-filled page, or backing block), ``flags``
(object size in the low 13 bits, then the ZRAM_* bits of ``slots.py``) and ``actime`` (last
access, whole seconds).

Write of a request (``zram_write_page`` for many pages)
=======================================================

1. Whole pages are encoded before any slot lock, as the kernel allocates before it locks the
   slot: same-fill test, compression, a pool object (compressed, or the raw page when the result
   is at least ``huge_class_size``). ``mem_limit`` is checked after each allocation, as the
   kernel checks after ``zs_malloc``: an object that takes the pool over it is freed and
   retried once after a direct compaction, so a request overshoots by at most one zspage.
2. Every stripe lock the request touches is taken, in ascending order.
3. Partial pages at the edges are read, patched and encoded under those locks; a discard leaves
   them alone, as the kernel's does.
4. Slots are switched over; old objects are freed once the locks are dropped. A failure in 1 or
   3 frees what was allocated and changes no slot (all or nothing).

Reads copy a stripe's objects out under its lock and decompress them after dropping it.

Written-back pages
==================

The backing store is Python's (``backing.py``), so no loop reads it under a lock. A read lists
the written-back pages it meets and reads them through ``backing_read`` once every lock is
dropped; a write that must patch one goes back, reads it, and tries again. The first such page a
request meets *pins* the current generation of freed blocks, under that page's stripe lock:
blocks freed by overwrites or discards queue up, so a block being read cannot be rewritten by a
writeback meanwhile. They wait out a grace period, as SRCU's: ``reclaim_blocks`` retires the
blocks freed so far and starts a new generation, and hands the retired ones out once the
requests that pinned the old generation are done. Requests that start later pin the new one, so
a steady stream of them holds no block for long.

Locking
=======

::

    gate            requests in flight; close() waits for them to drain
      stripe lock   page i is guarded by lock (i >> 5) & 1023; several only in ascending order
        pool locks  (pool.py)
        _freed_lock leaf: the queue of freed blocks

A stripe covers 32 pages (128 KiB), so a typical request takes one lock; per-stripe counters
change under their stripe's lock and are summed on demand.
"""

from __future__ import annotations

import errno
import threading
import time
from array import array
from collections.abc import Callable, Sequence

from zramd._types import BytesLike
from zramd.compress.base import Compressor
from zramd.errors import (
    CorruptionError,
    InvalidIOError,
    MemLimitError,
    MemoryLockError,
    PoolExhaustedError,
    ZramdError,
)
from zramd.frames import lazy_array
from zramd.page import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from zramd.pool_api import PoolAPI
from zramd.size_class import ClassSpec
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
)
from zramd.stats import CoreStats

STRIPE_SHIFT = 5  # 32 pages per slot lock: a 128 KiB request takes one lock
STRIPE_PAGES = 1 << STRIPE_SHIFT
NR_STRIPES = 1024  # distinct locks; stripes alias every 128 MiB
STRIPE_MASK = NR_STRIPES - 1
ZERO_PAGE = bytes(PAGE_SIZE)
WORDS_PER_PAGE = PAGE_SIZE // 8
STORED = ZRAM_SIZE_MASK | ZRAM_SAME | ZRAM_WB  # a slot holds something
ACCESSED = ZRAM_IDLE | ZRAM_PP_SLOT  # what any access clears
HUGE_FLAGS = ZRAM_HUGE | PAGE_SIZE  # slot flags of a page stored raw
MAX_EXTENT_PAGES = 1 << 16  # one extents() call describes at most 256 MiB (clients ask again)
MAX_PAGES = (1 << (64 - PAGE_SHIFT)) - 1  # the most slots whose byte offsets fit 64 bits
U64 = 1 << 64  # handles, blocks and frame counts are unsigned 64-bit in the C twin

#: NBD extent types (nbdkit.EXTENT_HOLE / EXTENT_ZERO)
EXTENT_DATA = 0
EXTENT_HOLE = 1
EXTENT_ZERO = 2

#: (page, block) of written-back pages a request needs; with their contents for a retry
WbPages = list[tuple[int, int]]
BackingRead = Callable[[list[int]], Sequence[BytesLike]]


def same_fill(page: memoryview | bytes | bytearray) -> int | None:
    """``page_same_filled``: the repeated 64-bit word (little-endian int), or None.

    Two byte probes reject almost every ordinary page before anything is copied; memoryview
    comparisons are element by element in CPython, so the full test compares bytes instead.
    """
    if page[0] != page[PAGE_SIZE - 8] or page[7] != page[PAGE_SIZE - 1]:
        return None
    raw = bytes(page)
    word = raw[:8]
    if word * WORDS_PER_PAGE != raw:
        return None
    return int.from_bytes(word, "little")


def fill_page(word: int) -> bytes:
    return ZERO_PAGE if word == 0 else word.to_bytes(8, "little") * WORDS_PER_PAGE


def frames_bound(pool: PoolAPI, objs: Sequence[BytesLike]) -> int:
    """The most frames storing ``objs`` can add to ``pool``: a new zspage for every
    ``objs_per_zspage`` objects of each class (a frame per huge object)."""
    counts: dict[ClassSpec, int] = {}
    class_for = pool.class_for_size
    for obj in objs:
        spec = class_for(len(obj))
        counts[spec] = counts.get(spec, 0) + 1
    return sum(-(-n // s.objs_per_zspage) * s.pages_per_zspage for s, n in counts.items())


def stripe(index: int) -> int:
    """The stripe lock that guards slot ``index``."""
    return (index >> STRIPE_SHIFT) & STRIPE_MASK


def _frames(what: str, pages: int) -> None:
    if not 0 <= pages < U64:
        raise ValueError(f"{what}: {pages} pages is out of range")


class ZramCore:
    """The slot table of ``pages`` pages over ``pool``, with the algorithm of each priority in
    ``comps`` (``comps[0]`` required). ``backing_read(blocks)`` reads written-back pages
    (needed once any page is written back); ``clock()`` gives access times in seconds
    (default ``time.monotonic``). All methods are thread-safe."""

    def __init__(
        self,
        pages: int,
        pool: PoolAPI,
        comps: Sequence[Compressor | None],
        *,
        backing_read: BackingRead | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not 0 <= pages <= MAX_PAGES:
            raise ValueError(f"pages {pages} outside 0..{MAX_PAGES}")
        if not comps or comps[0] is None or len(comps) > 4:
            raise ValueError("comps: one to four codecs by priority, the primary required")
        self.pages = pages
        self.pool = pool
        self._comps: tuple[Compressor | None, ...] = tuple(comps) + (None,) * (4 - len(comps))
        self._backing_read = backing_read
        self._clock = clock if clock is not None else time.monotonic
        self._huge_size = pool.huge_class_size
        self._handle = lazy_array("Q", pages)
        self._flags = lazy_array("I", pages)
        self._actime = lazy_array("I", pages)
        self._locks = [threading.Lock() for _ in range(NR_STRIPES)]
        zeros = bytes(8 * NR_STRIPES)
        self._stored = array("q", zeros)
        self._compr = array("q", zeros)
        self._same = array("q", zeros)
        self._huge = array("q", zeros)
        self._huge_since = array("q", zeros)
        self._notify_free = array("q", zeros)
        self._counter_lock = threading.Lock()  # leaf: the scalar counters below
        self._limit = 0
        self._reserved = 0  #: frames batches in flight may still add under mem_limit
        self._max = 0
        self._failed_reads = 0
        self._failed_writes = 0
        self._direct_runs = 0
        self._direct_freed = 0
        self._gate = threading.Condition(threading.Lock())
        self._active = 0
        self._closing = False
        self._freed_lock = threading.Lock()
        self._freed: list[int] = []  #: blocks freed since the last retirement
        self._retired: list[int] = []  #: blocks waiting for the readers of _retired_gen
        self._retired_gen = 0
        self._wb_gen = 0
        self._wb_readers = [0, 0]  #: requests that pinned each generation (by parity)

    # -- gate -----------------------------------------------------------------------------------

    def _enter(self) -> bool:
        with self._gate:
            if self._closing:
                return False
            self._active += 1
            return True

    def _leave(self) -> None:
        with self._gate:
            self._active -= 1
            if self._closing and not self._active:
                self._gate.notify_all()

    def _begin(self, offset: int, length: int, what: str) -> None:
        """Enter the gate for a request inside the device, else raise InvalidIOError."""
        if not self._enter():
            size = 0
        elif offset < 0 or length < 0 or offset + length > self.pages << PAGE_SHIFT:
            self._leave()
            size = self.pages << PAGE_SHIFT
        else:
            return
        raise InvalidIOError(
            f"{what} of {length} bytes at offset {offset} is outside the device ({size} bytes)"
        )

    def close(self) -> None:
        """Refuse new requests and wait for those in flight; then every call fails."""
        with self._gate:
            self._closing = True
            while self._active:
                self._gate.wait()
        for column in (self._handle, self._flags, self._actime):
            column.release()

    # -- counters -------------------------------------------------------------------------------

    def set_mem_limit(self, pages: int) -> None:
        """The pool's limit in frames (0: none); ValueError outside 0 .. 2**64 - 1."""
        _frames("set_mem_limit", pages)
        self._limit = pages

    def note_peak(self, pages: int) -> None:
        """Raise mem_used_max to ``pages``; ValueError outside 0 .. 2**64 - 1."""
        _frames("note_peak", pages)
        if pages > self._max:
            with self._counter_lock:
                self._max = max(self._max, pages)

    def reset_max(self) -> None:
        """mem_used_max := the pool's frames now (nothing once the core is closed: the pool
        may be gone)."""
        if not self._enter():
            return
        try:
            with self._counter_lock:
                self._max = self.pool.total_pages
        finally:
            self._leave()

    def _count(self, name: str, n: int = 1) -> None:
        with self._counter_lock:
            setattr(self, name, getattr(self, name) + n)

    def stats(self) -> CoreStats:
        sums = [0] * 6
        columns = (
            self._stored,
            self._compr,
            self._same,
            self._huge,
            self._huge_since,
            self._notify_free,
        )
        for s, lock in enumerate(self._locks):
            with lock:
                for k, column in enumerate(columns):
                    sums[k] += column[s]
        with self._freed_lock:
            pending = len(self._freed) + len(self._retired)
        return CoreStats(
            stored=sums[0],
            compr=sums[1],
            same=sums[2],
            huge=sums[3],
            huge_since=sums[4],
            notify_free=sums[5],
            failed_reads=self._failed_reads,
            failed_writes=self._failed_writes,
            direct_runs=self._direct_runs,
            direct_freed=self._direct_freed,
            max_pages=self._max,
            limit_pages=self._limit,
            wb_pending=pending,
        )

    # -- allocation -----------------------------------------------------------------------------

    def _direct_compact(self) -> None:
        """Compact before refusing a write (counted apart from manual and background runs)."""
        freed = self.pool.compact()
        with self._counter_lock:
            self._direct_runs += 1
            self._direct_freed += freed

    def _store_one(self, obj: BytesLike) -> int:
        """Store one object under mem_limit: checked after the allocation, as the kernel checks
        after ``zs_malloc`` (frames other requests reserved count as used); over it, the object
        is freed, the pool compacted once, and the store retried before MemLimitError."""
        pool = self.pool
        try:
            handle = pool.store_many((obj,))[0]
        except PoolExhaustedError:
            handle = self._store_compacted(obj)
        limit = self._limit
        total = pool.total_pages
        if limit and total + self._reserved > limit:
            pool.free_many((handle,))
            handle = self._store_compacted(obj)
            total = pool.total_pages
            if total + self._reserved > limit:
                pool.free_many((handle,))
                raise MemLimitError(
                    f"write refused: the pool would go over mem_limit ({limit} pages) even "
                    "after compaction"
                )
        self.note_peak(total)
        return handle

    def _store_compacted(self, obj: BytesLike) -> int:
        """Compact, then store ``obj`` (the last try before a write is refused)."""
        self._direct_compact()
        try:
            return self.pool.store_many((obj,))[0]
        except PoolExhaustedError as e:
            raise PoolExhaustedError(
                "write refused: the pool's arena has no frame left even after compaction"
            ) from e

    def _store(self, objs: list[BytesLike], stored: list[int]) -> list[int]:
        """``_store_one`` for each object; in one pool call when no limit is set, or when the
        most frames the batch can add fit under it beside what other batches in flight
        reserved (it reserves them meanwhile), so a request overshoots the limit by at most
        one zspage, as the C loop that stores object by object. On failure the objects
        stored one by one are left in ``stored`` for the caller to free."""
        pool = self.pool
        limit = self._limit
        bound = 0
        if limit:
            bound = frames_bound(pool, objs)
            with self._counter_lock:
                fits = bound <= limit - pool.total_pages - self._reserved
                if fits:
                    self._reserved += bound
            if not fits:
                return self._store_each(objs, stored)
        try:
            try:
                handles = pool.store_many(objs)
            except PoolExhaustedError:
                return self._store_each(objs, stored)
        finally:
            if bound:
                with self._counter_lock:
                    self._reserved -= bound
        self.note_peak(pool.total_pages)
        return handles

    def _store_each(self, objs: list[BytesLike], handles: list[int]) -> list[int]:
        for obj in objs:
            handles.append(self._store_one(obj))
        return handles

    def _encode(
        self, src: memoryview, base: int, count: int, values: list[int], flags: list[int]
    ) -> None:
        """Pages ``0 .. count`` of ``src`` from byte ``base``: a fill word (SAME) or a new pool
        object in ``values[k]``, its flags in ``flags[k]``. Stores a stripe's worth at a time;
        on failure frees what it stored, in page order as the C core does (so that both leave
        the pool's free lists alike), and raises."""
        compress = self._comps[0].compress  # type: ignore[union-attr]
        huge_size = self._huge_size
        done = 0
        stored: list[int] = []  # objects of the batch being stored
        try:
            while done < count:
                objs: list[BytesLike] = []
                where: list[int] = []
                for k in range(done, min(count, done + STRIPE_PAGES)):
                    pos = base + (k << PAGE_SHIFT)
                    page = src[pos : pos + PAGE_SIZE]
                    word = same_fill(page)
                    if word is not None:
                        values[k] = word
                        flags[k] = ZRAM_SAME
                        continue
                    c = compress(page)
                    if len(c) >= huge_size:
                        objs.append(page)
                        flags[k] = HUGE_FLAGS
                    else:
                        objs.append(c)
                        flags[k] = len(c)
                    where.append(k)
                if objs:
                    handles = self._store(objs, stored)
                    stored = []
                    for k, handle in zip(where, handles, strict=True):
                        values[k] = handle
                done = min(count, done + STRIPE_PAGES)
        except BaseException:
            self._free_encoded(values[:done], flags[:done])
            self.pool.free_many(stored)
            raise

    def _free_encoded(self, values: list[int], flags: list[int]) -> None:
        """Give back the objects of encoded pages that were never installed."""
        self.pool.free_many(v for v, f in zip(values, flags, strict=True) if f & ZRAM_SIZE_MASK)

    def _decode(self, f: int, obj: bytes) -> bytes:
        """The page an object of slot flags ``f`` holds."""
        if len(obj) == PAGE_SIZE:
            return obj
        comp = self._comps[(f & ZRAM_COMP_PRIORITY_MASK) >> ZRAM_COMP_PRIORITY_SHIFT]
        if comp is None:
            raise InvalidIOError("a slot names a compression priority that is not configured")
        return comp.decompress(obj, PAGE_SIZE)

    # -- slots ----------------------------------------------------------------------------------

    def _free_slot(self, i: int, stale: list[int]) -> None:
        """``zram_free_page`` (stripe lock held): the object goes on ``stale``, a backing block
        on the freed queue."""
        old = self._flags[i]
        if not old & STORED:
            return
        s = stripe(i)
        if old & ZRAM_SAME:
            self._same[s] -= 1
        elif old & ZRAM_WB:
            with self._freed_lock:
                self._freed.append(self._handle[i])
        else:
            stale.append(self._handle[i])
            self._compr[s] -= old & ZRAM_SIZE_MASK
            if old & ZRAM_HUGE:
                self._huge[s] -= 1
        self._stored[s] -= 1
        self._handle[i] = 0
        self._flags[i] = 0
        self._actime[i] = 0

    def _install(self, i: int, value: int, f: int, now: int, stale: list[int]) -> None:
        """Switch slot ``i`` to ``value``/``f`` (``f`` 0 empties it); stripe lock held."""
        self._free_slot(i, stale)
        if not f:
            return
        s = stripe(i)
        self._handle[i] = value
        self._flags[i] = f
        self._actime[i] = now
        self._stored[s] += 1
        if f & ZRAM_SAME:
            self._same[s] += 1
        else:
            self._compr[s] += f & ZRAM_SIZE_MASK
            if f & ZRAM_HUGE:
                self._huge[s] += 1
                self._huge_since[s] += 1

    def _pin(self, pinned: list[int]) -> None:
        """The first written-back page of a request pins the current generation of freed
        blocks (stripe lock held); ``pinned[0]`` becomes its parity + 1."""
        if not pinned[0]:
            with self._freed_lock:
                gen = self._wb_gen & 1
                self._wb_readers[gen] += 1
            pinned[0] = gen + 1

    def _unpin(self, pin: int) -> None:
        with self._freed_lock:
            self._wb_readers[pin - 1] -= 1

    def _load_locked(self, i: int, have: dict[tuple[int, int], BytesLike]) -> bytes | None:
        """Slot ``i`` as a whole page (its stripe lock held); None when it is written back and
        ``have`` lacks its block."""
        f = self._flags[i]
        if f & ZRAM_SIZE_MASK:
            return self._decode(f, self.pool.load_many((self._handle[i],))[0])
        if f & ZRAM_SAME:
            return fill_page(self._handle[i])
        if f & ZRAM_WB:
            data = have.get((i, self._handle[i]))
            return None if data is None else bytes(data)
        return ZERO_PAGE

    # -- write, discard, write-zeroes -----------------------------------------------------------

    def write(self, offset: int, data: BytesLike) -> None:
        """Write ``data`` at ``offset``. All or nothing: if any page cannot be stored
        (mem_limit, arena full), no byte of the request changes."""
        mv = memoryview(data)
        self._update(offset, len(mv), mv, "write", hole=False, discard=False)

    def discard(self, offset: int, length: int) -> None:
        """Free the whole pages in the range; partial pages at its edges are left alone (as the
        kernel's discard does: NBD leaves trimmed bytes unspecified until rewritten)."""
        self._update(offset, length, None, "discard", hole=True, discard=True)

    def write_zeroes(self, offset: int, length: int, *, may_trim: bool = True) -> None:
        """Make the range read as zeros. With ``may_trim`` whole pages are freed (holes);
        without, they become same-filled zero pages. Partial edge pages are zeroed by
        read-modify-write."""
        self._update(offset, length, None, "write_zeroes", hole=may_trim, discard=False)

    def _update(
        self,
        offset: int,
        length: int,
        src: memoryview | None,
        what: str,
        *,
        hole: bool,
        discard: bool,
    ) -> None:
        now = int(self._clock())
        have: dict[tuple[int, int], BytesLike] = {}
        pins: list[int] = []  # the pin of each try that listed pages
        try:
            while True:
                self._begin(offset, length, what)
                try:
                    need = (
                        self._apply(offset, offset + length, src, now, have, hole, discard, pins)
                        if length
                        else None
                    )
                except ZramdError:
                    self._count("_failed_writes")
                    raise
                finally:
                    self._leave()
                if not need:
                    return
                try:
                    pages = self._fetch_blocks(need)
                except BaseException:
                    self._count("_failed_writes")
                    raise
                have |= dict(zip(need, pages, strict=True))  # an edge may change meanwhile
        finally:
            for pin in pins:
                self._unpin(pin)

    def _fetch_blocks(self, need: WbPages) -> Sequence[BytesLike]:
        """The pages of the blocks ``need`` lists, through ``backing_read``; CorruptionError
        when there is none or it returns something else than one page per block."""
        if self._backing_read is None:
            raise CorruptionError("a slot is written back but no backing store is set")
        pages = self._backing_read([block for _, block in need])
        if len(pages) != len(need):
            raise CorruptionError("backing_read returned the wrong number of pages")
        if any(len(memoryview(page)) != PAGE_SIZE for page in pages):
            raise CorruptionError("backing_read returned a page not 4096 bytes long")
        return pages

    def _lock_stripes(self, first: int, last: int) -> list[threading.Lock]:
        """Take the stripe locks of pages first..last in ascending order; returns them."""
        c0, c1 = first >> STRIPE_SHIFT, last >> STRIPE_SHIFT
        if c1 - c0 >= NR_STRIPES - 1:
            ids = list(range(NR_STRIPES))
        else:
            lo, hi = c0 & STRIPE_MASK, c1 & STRIPE_MASK
            ids = list(range(lo, hi + 1)) if lo <= hi else [*range(hi + 1), *range(lo, NR_STRIPES)]
        taken = [self._locks[i] for i in ids]
        for n, lock in enumerate(taken):
            try:
                lock.acquire()
            except BaseException:
                for held in reversed(taken[:n]):
                    held.release()
                raise
        return taken

    def _apply(
        self,
        offset: int,
        end: int,
        src: memoryview | None,
        now: int,
        have: dict[tuple[int, int], BytesLike],
        hole: bool,
        discard: bool,
        pins: list[int],
    ) -> WbPages | None:
        """Set bytes [offset, end) from ``src``, or to zero when ``src`` is None. Returns None
        when done, or, having changed nothing, the written-back pages an edge must patch and
        ``have`` lacks, their pin appended to ``pins`` (the caller drops it)."""
        first = offset >> PAGE_SHIFT
        last = (end - 1) >> PAGE_SHIFT
        full_lo = (offset + PAGE_MASK) >> PAGE_SHIFT
        full_hi = max(end >> PAGE_SHIFT, full_lo)
        n_full = full_hi - full_lo
        values = [0] * n_full
        flags = [0] * n_full
        if src is not None:
            self._encode(src, (full_lo << PAGE_SHIFT) - offset, n_full, values, flags)
        elif not hole:
            flags = [ZRAM_SAME] * n_full
        edges: list[tuple[int, int, int]] = []
        locks: list[threading.Lock] = []
        need: WbPages = []
        pinned = [0]
        try:
            locks = self._lock_stripes(first, last)
            if (offset | end) & PAGE_MASK and not discard:
                for p in (first,) if first == last else (first, last):
                    if full_lo <= p < full_hi:
                        continue
                    edit = self._edit_locked(p, offset, end, src, hole, have)
                    if edit is None:
                        continue
                    if edit[1] < 0:  # written back and not fetched yet: list every such edge
                        self._pin(pinned)
                        need.append((p, self._handle[p]))
                    else:
                        edges.append(edit)
        except BaseException:
            self._unwind(locks, values if src is not None else [], flags, edges)
            if pinned[0]:  # an edge listed before the failure pinned the blocks
                self._unpin(pinned[0])
            raise
        if need:  # nothing changed: the caller fetches these pages and comes back
            self._unwind(locks, values if src is not None else [], flags, edges)
            pins.append(pinned[0])
            return need
        stale: list[int] = []
        try:
            for k in range(n_full):
                self._install(full_lo + k, values[k], flags[k], now, stale)
            for page, value, f in edges:
                self._install(page, value, f, now, stale)
            if src is None:  # the kernel counts every whole page a discard visits
                for page in range(full_lo, full_hi):
                    self._notify_free[stripe(page)] += 1
        finally:
            for lock in reversed(locks):
                lock.release()
        if stale:
            self.pool.free_many(stale)
        return None

    def _unwind(
        self,
        locks: list[threading.Lock],
        values: list[int],
        flags: list[int],
        edges: list[tuple[int, int, int]],
    ) -> None:
        """Undo an ``_apply`` that changes nothing: drop its locks, free what it encoded (the
        edges first, as the C core does, so that both leave the pool's free lists alike)."""
        for lock in reversed(locks):
            lock.release()
        self._free_encoded([v for _, v, _ in edges], [f for _, _, f in edges])
        self._free_encoded(values, flags[: len(values)])

    def _edit_locked(
        self,
        page: int,
        offset: int,
        end: int,
        src: memoryview | None,
        hole: bool,
        have: dict[tuple[int, int], BytesLike],
    ) -> tuple[int, int, int] | None:
        """Read-modify-write of a partially covered page (stripe lock held): (page, new value,
        flags; 0 flags empty the slot), None when nothing changes, or (page, -1, 0) when the
        page is written back and its contents must be fetched first."""
        start = page << PAGE_SHIFT
        lo = max(offset, start) - start
        hi = min(end, start + PAGE_SIZE) - start
        if src is None and not self._flags[page] & STORED:
            return None  # already reads as zeros
        current = self._load_locked(page, have)
        if current is None:
            return page, -1, 0
        buf = bytearray(current)
        if src is None:
            buf[lo:hi] = bytes(hi - lo)
            if hole and buf == ZERO_PAGE:
                return page, 0, 0
        else:
            buf[lo:hi] = src[start + lo - offset : start + hi - offset]
        values, flags = [0], [0]
        self._encode_one(buf, values, flags)
        return page, values[0], flags[0]

    def _encode_one(self, page: bytearray, values: list[int], flags: list[int]) -> None:
        """Encode one page with the per-object limit check (an edge page under the locks)."""
        word = same_fill(page)
        if word is not None:
            values[0], flags[0] = word, ZRAM_SAME
            return
        c = self._comps[0].compress(page)  # type: ignore[union-attr]
        if len(c) >= self._huge_size:
            values[0], flags[0] = self._store_one(page), HUGE_FLAGS
        else:
            values[0], flags[0] = self._store_one(c), len(c)

    # -- read -----------------------------------------------------------------------------------

    def read_into(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` (a writable byte buffer) from ``offset``; never-written and discarded
        bytes read as zeros. BufferError for a read-only buffer."""
        mv = memoryview(buf)
        if mv.readonly:
            raise BufferError("read_into: the buffer is read-only")
        buf = mv.cast("B")  # bytes, whatever the buffer's item size (as the C core's b.len)
        length = len(buf)
        now = int(self._clock())
        self._begin(offset, length, "read")
        need: WbPages = []
        pinned = [0]
        try:
            if length:
                self._read(offset, buf, now, need, pinned)
        except BaseException as e:  # whatever failed, a pin taken is dropped (as zram_read's)
            if isinstance(e, ZramdError):
                self._count("_failed_reads")
            if pinned[0]:
                self._unpin(pinned[0])
            raise
        finally:
            self._leave()
        if not need:
            return
        try:
            pages = self._fetch_blocks(need)
            end = offset + length
            for (index, _), page in zip(need, pages, strict=True):
                start = index << PAGE_SHIFT
                lo = max(offset, start) - start
                hi = min(end, start + PAGE_SIZE) - start
                buf[start + lo - offset : start + hi - offset] = memoryview(page)[lo:hi]
        except BaseException:
            self._count("_failed_reads")
            raise
        finally:
            self._unpin(pinned[0])

    def _read(
        self, offset: int, buf: memoryview, now: int, need: WbPages, pinned: list[int]
    ) -> None:
        end = offset + len(buf)
        handles = self._handle
        flags = self._flags
        actime = self._actime
        load_many = self.pool.load_many
        i = offset >> PAGE_SHIFT
        last = (end - 1) >> PAGE_SHIFT
        while i <= last:
            stop = min(last + 1, ((i >> STRIPE_SHIFT) + 1) << STRIPE_SHIFT)
            kinds: list[tuple[int, int, int]] = []  # (page, flags, word) of what is not an object
            stored: list[int] = []
            stored_at: list[tuple[int, int]] = []  # (page, flags) of each object
            with self._locks[stripe(i)]:
                for j in range(i, stop):
                    f = flags[j]
                    if f & ZRAM_SIZE_MASK:
                        stored.append(handles[j])
                        stored_at.append((j, f))
                    elif f & ZRAM_SAME:
                        kinds.append((j, f, handles[j]))
                    elif f & ZRAM_WB:
                        self._pin(pinned)
                        need.append((j, handles[j]))
                        kinds.append((j, f, 0))
                    else:
                        continue
                    if f & ACCESSED:  # any access ends idleness and post-processing picks
                        flags[j] = f & ~ACCESSED
                    actime[j] = now
                objs = load_many(stored) if stored else []
            # outside the lock: decompress into the request buffer
            done = set()
            for (j, f), obj in zip(stored_at, objs, strict=True):
                self._put(buf, offset, end, j, self._decode(f, obj))
                done.add(j)
            for j, f, word in kinds:
                done.add(j)
                if f & ZRAM_SAME:
                    self._put(buf, offset, end, j, fill_page(word))
            for j in range(i, stop):
                if j not in done:
                    self._put(buf, offset, end, j, ZERO_PAGE)
            i = stop

    @staticmethod
    def _put(buf: memoryview, offset: int, end: int, j: int, page: bytes) -> None:
        """Copy page ``j``'s part of the request into ``buf``."""
        start = j << PAGE_SHIFT
        lo = max(offset, start) - start
        hi = min(end, start + PAGE_SIZE) - start
        buf[start + lo - offset : start + hi - offset] = (
            page if hi - lo == PAGE_SIZE else page[lo:hi]
        )

    def reclaim_blocks(self) -> list[int]:
        """Written-back blocks freed by I/O that no reader can still be reading: retires the
        blocks freed so far (unless retired ones still wait) and hands out the retired ones
        once every request in flight when they were retired is done."""
        blocks: list[int] = []
        with self._freed_lock:
            while True:
                if not self._retired and self._freed:
                    self._retired, self._freed = self._freed, []
                    self._retired_gen = self._wb_gen
                    self._wb_gen += 1
                if not self._retired or self._wb_readers[self._retired_gen & 1]:
                    return blocks
                blocks += self._retired
                self._retired = []

    # -- block status ---------------------------------------------------------------------------

    def extents(self, offset: int, length: int) -> list[tuple[int, int, int]]:
        """NBD block status from ``offset``: (offset, length, type) runs, type HOLE|ZERO for
        unallocated pages, ZERO for same-filled zero pages, DATA otherwise. Covers at least the
        first page and at most MAX_EXTENT_PAGES pages (clients ask again for the rest); none
        for an empty request at the end of the device."""
        self._begin(offset, length, "extents")
        try:
            first = offset >> PAGE_SHIFT
            stop = min(
                (offset + max(length, 1) + PAGE_MASK) >> PAGE_SHIFT,
                first + MAX_EXTENT_PAGES,
                self.pages,
            )
            if first >= stop:
                return []
            flags = self._flags
            handles = self._handle
            runs: list[tuple[int, int, int]] = []
            run_type = -1
            run_start = first
            for i in range(first, stop):
                f = flags[i]
                if not f & STORED:
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
            self._leave()

    # -- slot operations for post-processing ----------------------------------------------------

    def _cold(self, what: str, index: int | None = None) -> None:
        """Enter the gate for a slot operation (on slot ``index``, which must exist)."""
        if not self._enter():
            raise InvalidIOError(f"{what}: the device was reset")
        if index is not None and not 0 <= index < self.pages:
            self._leave()
            raise InvalidIOError(f"{what}: page {index} is outside the device ({self.pages} pages)")

    def mark_idle(self, cutoff: int | None = None) -> int:
        """``idle``: mark allocated slots (not same-filled, not written back) IDLE; with a
        ``cutoff`` only those last accessed before it, the newer ones lose IDLE. Returns how
        many are now marked."""
        self._cold("idle")
        try:
            flags = self._flags
            actime = self._actime
            marked = 0
            for first in range(0, self.pages, STRIPE_PAGES):
                with self._locks[stripe(first)]:
                    for i in range(first, min(first + STRIPE_PAGES, self.pages)):
                        f = flags[i]
                        if not f & ZRAM_SIZE_MASK or f & (ZRAM_SAME | ZRAM_WB):
                            continue
                        if cutoff is None or actime[i] < cutoff:
                            flags[i] = f | ZRAM_IDLE
                            marked += 1
                        else:
                            flags[i] = f & ~ZRAM_IDLE
            return marked
        finally:
            self._leave()

    def pick(self, lo: int, hi: int, need: int, skip: int) -> list[tuple[int, int]]:
        """``scan_slots_for_*``: flag PP_SLOT on every slot in [lo, hi) that holds a pool
        object, has all the ``need`` flags and none of ``skip``; returns them as (index,
        flags before the pick), in index order. ValueError for flags outside 32 bits."""
        if not (0 <= need < 1 << 32 and 0 <= skip < 1 << 32):
            raise ValueError(f"pick: flags {need} / {skip} are not 32-bit")
        self._cold("pick")
        try:
            flags = self._flags
            skip |= ZRAM_PP_SLOT
            picked: list[tuple[int, int]] = []
            i = max(lo, 0)
            hi = min(hi, self.pages)
            while i < hi:
                end = min(hi, ((i >> STRIPE_SHIFT) + 1) << STRIPE_SHIFT)
                with self._locks[stripe(i)]:
                    for j in range(i, end):
                        f = flags[j]
                        if f & ZRAM_SIZE_MASK and f & need == need and not f & skip:
                            flags[j] = f | ZRAM_PP_SLOT
                            picked.append((j, f))
                i = end
            return picked
        finally:
            self._leave()

    def unpick(self, picked: Sequence[int]) -> None:
        """``release_pp_ctl``: candidates that were not processed lose PP_SLOT."""
        if not self._enter():
            return
        try:
            flags = self._flags
            for j in picked:
                if 0 <= j < self.pages:
                    with self._locks[stripe(j)]:
                        flags[j] &= ~ZRAM_PP_SLOT
        finally:
            self._leave()

    def take_page(self, index: int) -> tuple[int, int, bytes] | None:
        """(flags, handle, page) of a slot still picked (PP_SLOT, holding an object), the page
        decompressed (raw for huge); None if it was accessed or freed since it was picked."""
        self._cold("take_page", index)
        try:
            with self._locks[stripe(index)]:
                f = self._flags[index]
                if not f & ZRAM_PP_SLOT or not f & ZRAM_SIZE_MASK:
                    return None
                handle = self._handle[index]
                obj = self.pool.load_many((handle,))[0]
            return f, handle, self._decode(f, obj)
        finally:
            self._leave()

    def _still_picked(self, index: int, handle: int) -> int:
        """The flags of slot ``index`` (its stripe lock held) if it is still what
        post-processing picked (PP_SLOT, an object, the handle it was picked with), else 0."""
        f = self._flags[index]
        if f & ZRAM_PP_SLOT and f & ZRAM_SIZE_MASK and self._handle[index] == handle:
            return f
        return 0

    def complete_writeback(self, index: int, handle: int, block: int) -> bool:
        """Switch a written slot to WB with ``block`` unless it changed since ``take_page``;
        True if switched (its object is freed), False if the block went unused. ValueError
        for a block outside 64 bits."""
        if not 0 <= block < U64:
            raise ValueError(f"complete_writeback: block {block} is out of range")
        self._cold("writeback", index)
        try:
            s = stripe(index)
            with self._locks[s]:
                f = self._still_picked(index, handle)
                if not f:
                    return False
                self._compr[s] -= f & ZRAM_SIZE_MASK
                if f & ZRAM_HUGE:
                    self._huge[s] -= 1
                self._flags[index] = ZRAM_WB  # zram_free_page + set WB: size, IDLE, HUGE cleared
                self._handle[index] = block
                self._actime[index] = 0
            self.pool.free_many((handle,))
            return True
        finally:
            self._leave()

    def tried(self, index: int, handle: int, incompressible: bool) -> None:
        """No algorithm improved the slot: it was touched, so it loses IDLE and PP_SLOT, and
        becomes INCOMPRESSIBLE if the last algorithm failed."""
        if not 0 <= index < self.pages or not self._enter():
            return
        try:
            with self._locks[stripe(index)]:
                f = self._flags[index]
                if f & ZRAM_PP_SLOT and self._handle[index] == handle:
                    f &= ~(ZRAM_PP_SLOT | ZRAM_IDLE)
                    self._flags[index] = f | (ZRAM_INCOMPRESSIBLE if incompressible else 0)
        finally:
            self._leave()

    def complete_recompress(self, index: int, handle: int, new: int, size: int, prio: int) -> bool:
        """Install a recompressed object unless the slot changed; True if installed (the old
        object is freed), False (the caller frees ``new``). ValueError for a size outside
        1..4096, a priority with no codec or a handle outside 64 bits."""
        if not 0 < size <= PAGE_SIZE:
            raise ValueError(f"complete_recompress: size {size} outside 1..{PAGE_SIZE}")
        if not 0 <= prio < len(self._comps) or self._comps[prio] is None:
            raise ValueError(f"complete_recompress: priority {prio} has no codec")
        if not 0 < new < U64:
            raise ValueError(f"complete_recompress: handle {new} is out of range")
        self._cold("recompress", index)
        try:
            s = stripe(index)
            with self._locks[s]:
                f = self._still_picked(index, handle)
                if not f:
                    return False
                keep = f & ~(
                    ZRAM_SIZE_MASK | ZRAM_HUGE | ZRAM_IDLE | ZRAM_PP_SLOT | ZRAM_COMP_PRIORITY_MASK
                )
                self._flags[index] = keep | size | (prio << ZRAM_COMP_PRIORITY_SHIFT)
                self._handle[index] = new
                self._compr[s] += size - (f & ZRAM_SIZE_MASK)
                if f & ZRAM_HUGE:
                    self._huge[s] -= 1
            self.pool.free_many((handle,))
            return True
        finally:
            self._leave()

    def lock_table(self) -> None:
        """Not in the Python core: a locked slot table serves swap, and this core's loops
        allocate Python objects on every request (MemoryLockError, EOPNOTSUPP)."""
        raise MemoryLockError(
            "lock_table: only the C core (zramd._zram) can be locked", errno.EOPNOTSUPP
        )

    def prepare_thread(self, max_bytes: int) -> None:
        """Nothing to prepare here (see ``lock_table``); ValueError for a negative size."""
        if max_bytes < 0:
            raise ValueError(f"prepare_thread({max_bytes}): a negative length")

    def slot(self, index: int) -> tuple[int, int, int]:
        """(handle, flags, actime) of slot ``index`` (tests and debugging)."""
        self._cold("slot", index)
        try:
            with self._locks[stripe(index)]:
                return self._handle[index], self._flags[index], self._actime[index]
        finally:
            self._leave()
