"""The C core against its Python twin: the same calls, the same everything.

A Hypothesis state machine drives ``zramd._zram.Core`` (zram.c) and ``zramd.core.ZramCore``
(core.py, the reference) side by side, each over its own pool, with the same requests and the
same cold-path slot operations a device makes: writes of every alignment and kind of page,
reads, discards, write-zeroes, extents, idle marking under a controlled clock, writeback to an
in-memory backing store, recompression with a secondary codec, mem_limit, the peak counter and
compaction. Every call must give the same result or raise the same exception with the same
message; after every step both must agree on stats(), the pool (total_pages and every class
row), and slot(i) of every slot ever touched, and every read must match a model of the bytes.

What both sides are made of, chosen so that the comparison is exact:

- Codecs: the C codecs (``_zram.Codec``) on both sides. python-lz4's output differs from liblz4
  called directly by a few bytes now and then, so with it the object sizes, classes and
  handles would drift apart after the first such page.
- Pools: the C core needs the C pool; the twin runs over a second C pool or over ZsPool (drawn
  per example). Both pools hand out the same handles for the same calls
  (tests/test_pool_differential.py), so the two sides' handles, locations and class rows stay
  equal for as long as the cores make the same pool calls in the same order; the twin batches
  stores a stripe at a time where the C core stores page by page, which gives the same handles.
- One clock for both, advanced by a rule, so access times and idle cut-offs agree.
- Each side has its own backing store (a dict of blocks) that records every ``backing_read``
  call; blocks are allocated by the test, the same on both sides, as writeback.py does with
  the backing device's bitmap, and reused once ``reclaim_blocks`` hands them back.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from zramd import ZsPool
from zramd._types import BytesLike
from zramd._zram import Codec, Core, Pool
from zramd.core import ZramCore
from zramd.core_api import CoreAPI
from zramd.errors import BackingError
from zramd.page import PAGE_SIZE
from zramd.pool_api import PoolAPI
from zramd.slots import (
    ZRAM_HUGE,
    ZRAM_IDLE,
    ZRAM_INCOMPRESSIBLE,
    ZRAM_SAME,
    ZRAM_SIZE_MASK,
    ZRAM_WB,
)

PAGE = PAGE_SIZE
STORED = ZRAM_SIZE_MASK | ZRAM_SAME | ZRAM_WB
WB_SKIP = ZRAM_WB | ZRAM_SAME  # what writeback.py never picks
RECOMP_SKIP = ZRAM_WB | ZRAM_SAME | ZRAM_INCOMPRESSIBLE  # nor recompress.py
ALIAS = 1024 * 32  #: pages after which stripe locks repeat (core.py: NR_STRIPES stripes of 32)

#: (device pages, the page ranges requests aim at). The last one crosses the page where the
#: stripe locks wrap around, so a request there takes stripe 1023 and then stripe 0.
GEOMETRIES = {
    "small": (40, [(0, 40)]),
    "medium": (300, [(0, 300)]),
    "wrapping": (ALIAS + 80, [(0, 48), (ALIAS - 40, ALIAS + 80)]),
}
KINDS = ("zero", "same", "almost", "text", "mixed", "random", "huge")
WORDS = [b"swap", b"page ", b"zram ", b"\x00\x00\x00\x00", b"lorem ipsum ", b"\xff", b"0123456789"]


def make_page(kind: str, rnd: random.Random) -> bytes:
    """A page of the given kind: zero and same-filled (no pool object), same-filled but for
    one word (first, last or any), compressible text, part random (objects in every size
    class), random (stored raw: huge)."""
    if kind == "zero":
        return bytes(PAGE)
    if kind == "same":
        return rnd.randbytes(8) * (PAGE // 8)
    if kind == "almost":
        page = bytearray(rnd.choice([bytes(8), rnd.randbytes(8)]) * (PAGE // 8))
        word = rnd.choice([0, 1, PAGE // 8 - 2, PAGE // 8 - 1, rnd.randrange(PAGE // 8)])
        page[word * 8 + rnd.randrange(8)] ^= 1 << rnd.randrange(8)
        return bytes(page)
    if kind == "text":
        out = bytearray()
        while len(out) < PAGE:
            out += rnd.choice(WORDS)
        return bytes(out[:PAGE])
    if kind == "mixed":
        k = rnd.randrange(1, PAGE)
        return rnd.randbytes(k) + bytes(PAGE - k)
    if kind == "huge":  # just around huge_class_size once compressed
        k = rnd.randrange(3500, 3700)
        return rnd.randbytes(k) + bytes(PAGE - k)
    return rnd.randbytes(PAGE)


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """What a call returned, or which exception it raised and with what message."""
    try:
        return ("ok", call())
    except Exception as e:  # compared between the two cores
        return (type(e).__name__, str(e))


class Clock:
    """The access-time clock of both cores, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.25

    def __call__(self) -> float:
        return self.now


@dataclass
class Side:
    """One core with its pool and its backing store."""

    k: int  #: 0 for the C core, 1 for the twin
    pool: PoolAPI
    core: CoreAPI = field(init=False)
    store: dict[int, bytes] = field(default_factory=dict)
    reads: list[list[int]] = field(default_factory=list)  #: every backing_read call
    failing: bool = False  #: the next backing_read raises

    def backing_read(self, blocks: list[int]) -> Sequence[BytesLike]:
        self.reads.append(list(blocks))
        if self.failing:
            raise BackingError(f"reading blocks {blocks} failed")
        return [self.store[b] for b in blocks]  # KeyError: a block no slot should name


def pool_snapshot(pool: PoolAPI) -> dict[str, Any]:
    stats = pool.stats()
    return {
        "total_pages": pool.total_pages,
        "stats_total": stats.total_pages,
        "pages_compacted": stats.pages_compacted,
        "objects": stats.objects,
        "classes": stats.classes,
    }


def without_handle(slot: tuple[int, int, int]) -> tuple[int, int, int]:
    """A slot's (handle, flags, actime) with the handle of a pool object blanked out."""
    handle, flags, actime = slot
    return (0 if flags & ZRAM_SIZE_MASK else handle, flags, actime)


class CoreDifferential(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sides: tuple[Side, Side] = ()  # type: ignore[assignment]  # set by create
        self.pages = 0
        self.size = 0
        self.hot: list[tuple[int, int]] = []
        self.model: dict[int, bytes] = {}  #: page -> contents; absent pages read as zeros
        self.touched: set[int] = set()
        self.clock = Clock()
        self.next_block = 0
        self.free_blocks: set[int] = set()
        self.secondaries: dict[int, Codec] = {}

    # -- set-up -------------------------------------------------------------------------------

    @initialize(
        geometry=st.sampled_from(sorted(GEOMETRIES)),
        twin_pool=st.sampled_from(["c", "c", "python"]),
        arena=st.sampled_from(["roomy", "roomy", "roomy", "tight"]),
        primary=st.sampled_from(["lz4", "lz4", "zstd", "lzo"]),
    )
    def create(self, geometry: str, twin_pool: str, arena: str, primary: str) -> None:
        self.pages, self.hot = GEOMETRIES[geometry]
        self.size = self.pages * PAGE
        # roomy: as a device sizes it (twice the disk); tight: the arena fills up before the
        # device does, and writes meet PoolExhaustedError after a direct compaction
        max_bytes = 2 * self.size + (1 << 20) if arena == "roomy" else 24 * PAGE
        self.secondaries = {1: Codec("zstd"), 2: Codec("deflate")}
        comps = [Codec(primary), self.secondaries[1], self.secondaries[2]]
        cpool = Pool(max_bytes)
        c = Side(0, cpool)
        py = Side(1, Pool(max_bytes) if twin_pool == "c" else ZsPool(max_bytes))
        c.core = Core(self.pages, cpool, comps, backing_read=c.backing_read, clock=self.clock)
        py.core = ZramCore(
            self.pages, py.pool, comps, backing_read=py.backing_read, clock=self.clock
        )
        self.sides = (c, py)
        self.exact_handles = arena == "roomy"
        event(f"{geometry}, twin over the {twin_pool} pool, {arena} arena")

    def both(self, call: Callable[[Side], Any]) -> tuple[str, Any]:
        """Run ``call`` on both sides; they must agree. Returns the C side's outcome."""
        c, py = (outcome(lambda s=s: call(s)) for s in self.sides)
        assert c == py, (c, py)
        if c[0] != "ok":
            event(f"both raised {c[0]}")
        return c

    def each(self, call: Callable[[Side], Any], loose: Callable[[Any], Any]) -> list[Any]:
        """Run ``call`` on both sides, which must agree on all of the result, or only on
        ``loose(result)`` (the result without its handles) once handles may differ (see
        ``exact_handles``); returns each side's result, or None when both raised alike."""
        c, py = (outcome(lambda s=s: call(s)) for s in self.sides)
        if c[0] != "ok" or py[0] != "ok":
            assert c == py, (c, py)
            return None
        if self.exact_handles:
            assert c == py, (c, py)
        else:
            assert loose(c[1]) == loose(py[1]), (c, py)
        return [c[1], py[1]]

    # -- requests -----------------------------------------------------------------------------

    def _page(self, data: st.DataObject) -> int:
        """A page requests aim at: mostly one already touched (or next to one), so that
        requests and passes meet what earlier ones left; else any page of a hot range."""
        if self.touched and data.draw(st.integers(0, 3)):
            page = data.draw(st.sampled_from(sorted(self.touched))) + data.draw(
                st.sampled_from([0, 0, 0, -1, 1])
            )
            return min(max(page, 0), self.pages - 1)
        lo, hi = data.draw(st.sampled_from(self.hot))
        return data.draw(st.integers(lo, hi - 1))

    def _request(self, data: st.DataObject, *, big: bool = True) -> tuple[int, int]:
        """(offset, length) of a request at a hot page: aligned or not, 0 bytes to a few hundred
        KiB; now and then partly or wholly outside the device."""
        offset = self._page(data) * PAGE + data.draw(
            st.one_of(st.just(0), st.integers(1, PAGE - 1), st.sampled_from([1, 2048, PAGE - 1]))
        )
        sizes = [st.integers(0, 64), st.integers(1, 3 * PAGE), st.integers(1, 40).map(PAGE.__mul__)]
        if big:
            sizes.append(st.integers(1, 300 << 10))
        length = data.draw(st.one_of(sizes))
        if data.draw(st.integers(0, 24)) == 0:  # outside the device: both refuse alike
            return data.draw(
                st.sampled_from(
                    [(offset, self.size - offset + 1 + length), (self.size + 1, 0), (self.size, 1)]
                )
            )
        return offset, min(length, self.size - offset)

    def _pages_of(self, offset: int, length: int) -> range:
        return range(offset // PAGE, (offset + length + PAGE - 1) // PAGE)

    def _model_bytes(self, offset: int, length: int) -> bytes:
        out = bytearray()
        for p in self._pages_of(offset, length):
            out += self.model.get(p, bytes(PAGE))
        start = offset - offset // PAGE * PAGE
        return bytes(out[start : start + length])

    def _model_set(self, offset: int, data: bytes) -> None:
        for p in self._pages_of(offset, len(data)):
            page = bytearray(self.model.get(p, bytes(PAGE)))
            lo = max(offset, p * PAGE)
            hi = min(offset + len(data), (p + 1) * PAGE)
            page[lo - p * PAGE : hi - p * PAGE] = data[lo - offset : hi - offset]
            self.model[p] = bytes(page)

    def _model_free(self, offset: int, length: int) -> None:
        """Whole pages of the range read as zeros."""
        for p in range((offset + PAGE - 1) // PAGE, (offset + length) // PAGE):
            self.model.pop(p, None)

    def _write(self, offset: int, data: bytes) -> tuple[str, Any]:
        kind, value = self.both(lambda s: s.core.write(offset, data))
        if kind == "ok":
            self._model_set(offset, data)
        if offset + len(data) <= self.size:
            self.touched.update(self._pages_of(offset, len(data)))
        return kind, value

    def _read(self, offset: int, length: int) -> None:
        bufs = []

        def read(s: Side) -> None:
            buf = bytearray(length)
            s.core.read_into(offset, memoryview(buf))
            bufs.append(bytes(buf))

        kind, _ = self.both(read)
        if kind == "ok":
            assert bufs[0] == bufs[1]
            assert bufs[0] == self._model_bytes(offset, length)
        if offset + length <= self.size:
            self.touched.update(self._pages_of(offset, length))

    def _zero(self, offset: int, length: int, how: str) -> None:
        if how == "discard":
            kind, _ = self.both(lambda s: s.core.discard(offset, length))
        else:
            trim = how == "trim"
            kind, _ = self.both(lambda s: s.core.write_zeroes(offset, length, may_trim=trim))
        if kind == "ok":
            self._model_free(offset, length)
            if how != "discard":  # write-zeroes also zeroes the partial pages at the edges
                self._model_set(offset, bytes(length))
        if offset + length <= self.size:
            self.touched.update(self._pages_of(offset, length))

    def _content(self, data: st.DataObject, offset: int, length: int) -> bytes:
        kinds = data.draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=4))
        rnd = random.Random(data.draw(st.integers(0, 1 << 32)))
        pages = self._pages_of(offset, length)
        buf = b"".join(make_page(kinds[k % len(kinds)], rnd) for k in range(len(pages)))
        start = offset - offset // PAGE * PAGE
        return buf[start : start + length]

    @rule(data=st.data())
    def write(self, data: st.DataObject) -> None:
        offset, length = self._request(data)
        self._write(offset, self._content(data, offset, length))

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        self._read(*self._request(data))

    @rule(data=st.data(), how=st.sampled_from(["discard", "trim", "zeroes"]))
    def zero(self, data: st.DataObject, how: str) -> None:
        self._zero(*self._request(data), how)

    @rule(data=st.data())
    def extents(self, data: st.DataObject) -> None:
        offset, length = self._request(data)
        self.both(lambda s: s.core.extents(offset, length))

    @precondition(lambda self: any(s.store for s in self.sides))
    @rule(data=st.data(), write=st.booleans())
    def backing_fails(self, data: st.DataObject, write: bool) -> None:
        """A request meets a written-back page while the backing store fails: both raise what
        backing_read raised and count a failed request; a write changes nothing."""
        for s in self.sides:
            s.failing = True
        try:
            if write:
                offset, length = self._request(data, big=False)
                self._write(offset, self._content(data, offset, length))
            else:
                self._read(*self._request(data, big=False))
        finally:
            for s in self.sides:
                s.failing = False

    # -- time and idleness --------------------------------------------------------------------

    @rule(seconds=st.sampled_from([0.5, 1, 1, 2, 7]))
    def tick(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(ago=st.one_of(st.none(), st.integers(-2, 12)))
    def mark_idle(self, ago: int | None) -> None:
        cutoff = None if ago is None else int(self.clock.now) - ago
        self.both(lambda s: s.core.mark_idle(cutoff))

    # -- writeback and recompression ----------------------------------------------------------

    def _alloc_block(self) -> int:
        if self.free_blocks:
            block = min(self.free_blocks)
            self.free_blocks.discard(block)
            return block
        self.next_block += 1
        return self.next_block - 1

    def _release(self, blocks: list[int]) -> None:
        """Blocks back to the allocator: no slot may name them now, so their contents go."""
        for b in blocks:
            for s in self.sides:
                del s.store[b]
            self.free_blocks.add(b)

    @rule()
    def reclaim_blocks(self) -> None:
        _, blocks = self.both(lambda s: s.core.reclaim_blocks())
        self._release(blocks)

    def _disturb(self, data: st.DataObject, index: int) -> None:
        """Touch a picked slot between the steps of a post-processing pass (as a request of
        another thread would): the pass must then leave it alone."""
        how = data.draw(st.sampled_from(["read", "write", "rewrite", "discard", "zeroes"]))
        offset = index * PAGE
        if how == "read":
            self._read(offset + data.draw(st.integers(0, PAGE - 1)), 1)
        elif how == "write":  # part of the page: read-modify-write
            lo = data.draw(st.integers(0, PAGE - 1))
            self._write(offset + lo, self._content(data, offset + lo, PAGE - lo)[:16])
        elif how == "rewrite":
            self._write(offset, self._content(data, offset, PAGE))
        else:
            self._zero(offset, PAGE, "discard" if how == "discard" else "zeroes")

    def _pick(self, data: st.DataObject, needs: list[int], skip: int) -> list[tuple[int, int]]:
        lo = self._page(data)
        hi = lo + data.draw(st.sampled_from([1, 8, 64, self.pages]))
        need = data.draw(st.sampled_from(needs))
        _, picked = self.both(lambda s: s.core.pick(lo, hi, need, skip))
        return list(picked)

    def _take(self, index: int) -> tuple[list[int], bytes] | None:
        """take_page on both sides: (each side's handle, the page), or None."""
        taken = self.each(lambda s: s.core.take_page(index), lambda t: t and (t[0], t[2]))
        assert taken is not None
        if taken[0] is None:
            return None
        page = taken[0][2]
        assert page == self.model.get(index, bytes(PAGE))
        return [t[1] for t in taken], page

    @rule(data=st.data())
    def writeback(self, data: st.DataObject) -> None:
        """writeback.py's pass: pick, take each page, write it to a block, switch the slot."""
        self.reclaim_blocks()
        picked = self._pick(data, [0, ZRAM_IDLE, ZRAM_HUGE, ZRAM_IDLE | ZRAM_HUGE], WB_SKIP)
        for index, _ in picked[: data.draw(st.integers(0, len(picked)))]:
            self._writeback_slot(data, index)
        self.both(lambda s: s.core.unpick([i for i, _ in picked]))  # postproc.candidates

    def _writeback_slot(self, data: st.DataObject, index: int) -> None:
        when = data.draw(st.sampled_from([None, None, None, "before", "between"]))
        if when == "before":
            self._disturb(data, index)
        taken = self._take(index)
        if taken is None:
            return
        handles, page = taken
        block = self._alloc_block()
        for s in self.sides:
            s.store[block] = page
        if when == "between":
            self._disturb(data, index)
        _, done = self.both(lambda s: s.core.complete_writeback(index, handles[s.k], block))
        if not done:
            self._release([block])

    @rule(data=st.data())
    def recompress(self, data: st.DataObject) -> None:
        """recompress.py's pass: pick, take each page, compress it with a secondary codec and
        install the result, or give up on the slot (tried)."""
        picked = self._pick(data, [0, ZRAM_IDLE, ZRAM_HUGE, ZRAM_IDLE | ZRAM_HUGE], RECOMP_SKIP)
        for index, _ in picked[: data.draw(st.integers(0, len(picked)))]:
            if not self._recompress_slot(data, index):
                break
        self.both(lambda s: s.core.unpick([i for i, _ in picked]))  # postproc.candidates
        self.both(lambda s: s.core.note_peak(s.pool.total_pages))

    def _recompress_slot(self, data: st.DataObject, index: int) -> bool:
        """One slot of a recompression pass; False when the pass stops (the arena is full)."""
        when = data.draw(st.sampled_from([None, None, None, "before", "between"]))
        if when == "before":
            self._disturb(data, index)
        taken = self._take(index)
        if taken is None:
            return True
        handles, page = taken
        action = data.draw(st.sampled_from(["install", "install", "tried", "incompressible"]))
        prio = data.draw(st.sampled_from(sorted(self.secondaries)))
        obj = self.secondaries[prio].compress(page)
        if action != "install" or len(obj) >= PAGE:
            hard = action == "incompressible"
            self.both(lambda s: s.core.tried(index, handles[s.k], hard))
            return True
        stored = self.each(lambda s: s.pool.store_many([obj]), len)
        if stored is None:  # both refused it alike: recompress.py raises
            return False
        new = [h for (h,) in stored]
        if when == "between":
            self._disturb(data, index)
        _, done = self.both(
            lambda s: s.core.complete_recompress(index, handles[s.k], new[s.k], len(obj), prio)
        )
        if not done:
            self.both(lambda s: s.pool.free_many([new[s.k]]))
        return True

    # -- limits and the pool ------------------------------------------------------------------

    @rule(headroom=st.one_of(st.none(), st.integers(-2, 12)))
    def set_mem_limit(self, headroom: int | None) -> None:
        """None lifts the limit; else it is set a few frames from what the pool holds now, so
        the next writes meet it."""
        pages = 0 if headroom is None else max(1, self.sides[0].pool.total_pages + headroom)
        self.both(lambda s: s.core.set_mem_limit(pages))

    @rule(extra=st.integers(-3, 3))
    def note_peak(self, extra: int) -> None:
        pages = max(0, self.sides[0].pool.total_pages + extra)
        self.both(lambda s: s.core.note_peak(pages))

    @rule()
    def reset_max(self) -> None:
        self.both(lambda s: s.core.reset_max())

    @rule()
    def compact(self) -> None:
        self.both(lambda s: s.pool.compact())

    # -- agreement ----------------------------------------------------------------------------

    @invariant()
    def agree(self) -> None:
        if not self.sides:
            return
        c, py = self.sides
        stats = c.core.stats()
        assert stats == py.core.stats()
        assert pool_snapshot(c.pool) == pool_snapshot(py.pool)
        assert c.reads == py.reads
        assert c.store == py.store
        slots = {i: c.core.slot(i) for i in sorted(self.touched)}
        twin = {i: py.core.slot(i) for i in slots}
        if not self.exact_handles:  # the same flags and times; handles of objects may differ
            slots = {i: without_handle(slot) for i, slot in slots.items()}
            twin = {i: without_handle(slot) for i, slot in twin.items()}
        assert slots == twin, {i: (slots[i], twin[i]) for i in slots if slots[i] != twin[i]}
        # the counters are those of the table (every slot that holds anything was touched)
        flags = [f for _, f, _ in slots.values() if f & STORED]
        assert stats.stored == len(flags)
        assert stats.same == sum(1 for f in flags if f & ZRAM_SAME)
        assert stats.huge == sum(1 for f in flags if f & ZRAM_HUGE)
        assert stats.compr == sum(f & ZRAM_SIZE_MASK for f in flags)
        assert stats.max_pages >= c.pool.total_pages

    def teardown(self) -> None:
        if not self.sides:
            return
        # every page reads as the model says, and block status agrees on the whole device
        for first in range(0, self.pages, 1024):
            n = min(1024, self.pages - first)
            if any(p in self.touched for p in range(first, first + n)):
                self._read(first * PAGE, n * PAGE)
        offset = 0
        while offset < self.size:
            _, runs = self.both(lambda s, o=offset: s.core.extents(o, self.size - o))
            offset = runs[-1][0] + runs[-1][1]
        for s in self.sides:
            s.core.close()
        self.both(lambda s: s.core.stats())
        for s in self.sides:
            s.pool.check()
            s.pool.close()


TestCoreDifferential = CoreDifferential.TestCase
