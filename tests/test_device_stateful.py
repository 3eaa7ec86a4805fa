"""A Hypothesis state machine runs the device against a plain bytearray."""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from zramd import MemLimitError
from zramd.device import ZramDevice, same_fill
from zramd.slots import ZRAM_HUGE, ZRAM_SAME, ZRAM_SIZE_MASK
from zramd.testing import check_pool_invariants, synthetic_pages

P = 4096
PAGES = 48
SIZE = PAGES * P
SOURCES = synthetic_pages(32, seed=42)


class DeviceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dev = ZramDevice()
        self.model = bytearray()

    @initialize(algo=st.sampled_from(["lz4", "zstd", "lz4hc", "deflate"]))
    def setup(self, algo: str) -> None:
        self.dev.set_comp_algorithm(algo)
        self.dev.set_disksize(SIZE)
        self.model = bytearray(SIZE)

    def _range(self, data: st.DataObject, max_len: int = 5 * P) -> tuple[int, int]:
        off = data.draw(
            st.one_of(st.integers(0, SIZE - 1), st.sampled_from([0, P, 7 * P, SIZE - P]))
        )
        whole = [n for n in (P, 2 * P) if off + n <= SIZE] or [0]
        length = data.draw(
            st.one_of(st.integers(0, min(max_len, SIZE - off)), st.sampled_from(whole))
        )
        return off, length

    @precondition(lambda self: self.dev.initstate)
    @rule(data=st.data(), src=st.integers(0, len(SOURCES) - 1), shift=st.integers(0, P - 1))
    def write(self, data: st.DataObject, src: int, shift: int) -> None:
        off, length = self._range(data)
        payload = ((SOURCES[src] * 7)[shift:])[:length]
        try:
            self.dev.write(off, payload)
        except MemLimitError:
            return  # refused writes change nothing; the model stays as it was
        self.model[off : off + length] = payload

    @precondition(lambda self: self.dev.initstate)
    @rule(data=st.data(), fill=st.sampled_from([b"\0", b"\xff", b"ab", b"abcdefgh"]))
    def write_pattern(self, data: st.DataObject, fill: bytes) -> None:
        off, length = self._range(data)
        payload = (fill * (length // len(fill) + 1))[:length]
        try:
            self.dev.write(off, payload)
        except MemLimitError:
            return
        self.model[off : off + length] = payload

    @precondition(lambda self: self.dev.initstate)
    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        off, length = self._range(data, 8 * P)
        assert self.dev.read(off, length) == self.model[off : off + length]

    @precondition(lambda self: self.dev.initstate)
    @rule(data=st.data(), trim=st.booleans(), discard=st.booleans())
    def zero(self, data: st.DataObject, trim: bool, discard: bool) -> None:
        off, length = self._range(data, 10 * P)
        try:
            if discard:
                self.dev.discard(off, length)
            else:
                self.dev.write_zeroes(off, length, may_trim=trim)
        except MemLimitError:  # zeroing partial edges writes, and may hit the limit
            return
        self.model[off : off + length] = bytes(length)

    @precondition(lambda self: self.dev.initstate)
    @rule()
    def compact(self) -> None:
        self.dev.compact()
        assert self.dev.read(0, SIZE) == self.model

    @precondition(lambda self: self.dev.initstate)
    @rule(pages=st.integers(0, 64))
    def mem_limit(self, pages: int) -> None:
        self.dev.set_mem_limit(pages * P)

    @precondition(lambda self: self.dev.initstate)
    @rule()
    def reset(self) -> None:
        self.dev.reset()
        self.dev.set_disksize(SIZE)
        self.model = bytearray(SIZE)

    @invariant()
    def accounting(self) -> None:
        if not self.dev.initstate:
            return
        s = self.dev.mm_stat()
        stored = same = huge = compr = 0
        for i in range(PAGES):
            f = self.dev.slot_flags(i)
            if f & (ZRAM_SIZE_MASK | ZRAM_SAME):
                stored += 1
            same += bool(f & ZRAM_SAME)
            huge += bool(f & ZRAM_HUGE)
            compr += f & ZRAM_SIZE_MASK
            page = self.model[i * P : (i + 1) * P]
            if f & ZRAM_SAME:
                assert same_fill(memoryview(page)) is not None
        assert s.orig_data_size == stored * P
        assert s.compr_data_size == compr
        assert (s.same_pages, s.huge_pages) == (same, huge)
        assert s.huge_pages_since >= s.huge_pages
        pool = self.dev.pool
        assert pool is not None
        assert s.mem_used_total == pool.total_pages * P
        assert pool.stats().objects == stored - same
        assert s.mem_used_max >= s.mem_used_total
        check_pool_invariants(pool)

    def teardown(self) -> None:
        if self.dev.initstate:
            assert self.dev.read(0, SIZE) == self.model
            self.dev.reset()


TestDevice = DeviceMachine.TestCase
