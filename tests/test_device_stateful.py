"""A Hypothesis state machine runs the device against a plain bytearray."""

from __future__ import annotations

import errno
import os
import tempfile
from typing import Any

import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from zramd import MemLimitError
from zramd.core import same_fill
from zramd.device import ZramDevice
from zramd.errors import ZramdError
from zramd.postproc import PP_HUGE, PP_IDLE, PP_INCOMPRESSIBLE
from zramd.shrinker import Shrinker
from zramd.slots import ZRAM_HUGE, ZRAM_PP_SLOT, ZRAM_SAME, ZRAM_SIZE_MASK, ZRAM_WB
from zramd.testing import check_pool_invariants, discard_span, synthetic_pages

from loops import PythonLoops

P = 4096
PAGES = 48
SIZE = PAGES * P
SOURCES = synthetic_pages(32, seed=42)


BACKING_BLOCKS = PAGES // 2  # smaller than the device: writeback can run out of blocks
MODES = st.sampled_from([0, PP_IDLE, PP_HUGE, PP_IDLE | PP_HUGE, PP_INCOMPRESSIBLE])


class DeviceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dev = ZramDevice(clock=self.clock)
        self.now = 0.0
        self.model = bytearray()
        self.unlimited_writes = 0  #: writes of pages tried while no mem_limit was set
        self.landed = 0  #: writes of pages the device accepted
        fd, self.backing = tempfile.mkstemp(prefix="zramd-backing-")
        os.ftruncate(fd, BACKING_BLOCKS * P)
        os.close(fd)

    def clock(self) -> float:
        return self.now

    @initialize(
        algo=st.sampled_from(["lz4", "zstd", "lz4hc", "deflate"]),
        recomp=st.sampled_from([[], ["zstd"], ["lz4hc", "deflate"]]),
    )
    def setup(self, algo: str, recomp: list[str]) -> None:
        self.recomp = recomp
        self.dev.set_comp_algorithm(algo)
        self._init()

    def _init(self) -> None:
        for prio, name in enumerate(self.recomp, 1):
            self.dev.set_recomp_algorithm(name, prio)
        self.dev.set_backing_dev(self.backing)
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

    def _write(self, off: int, payload: bytes) -> None:
        if payload and not self.dev.mem_limit:
            self.unlimited_writes += 1
        try:
            self.dev.write(off, payload)
        except MemLimitError:
            if not self.dev.mem_limit:
                raise  # no limit: nothing may refuse a write
            return  # refused writes change nothing; the model stays as it was
        if payload:
            self.landed += 1
        self.model[off : off + len(payload)] = payload

    @precondition(lambda self: self.dev.initstate)
    @rule(data=st.data(), src=st.integers(0, len(SOURCES) - 1), shift=st.integers(0, P - 1))
    def write(self, data: st.DataObject, src: int, shift: int) -> None:
        off, length = self._range(data)
        self._write(off, ((SOURCES[src] * 7)[shift:])[:length])

    @precondition(lambda self: self.dev.initstate)
    @rule(data=st.data(), fill=st.sampled_from([b"\0", b"\xff", b"ab", b"abcdefgh"]))
    def write_pattern(self, data: st.DataObject, fill: bytes) -> None:
        off, length = self._range(data)
        self._write(off, (fill * (length // len(fill) + 1))[:length])

    @precondition(lambda self: self.dev.initstate)
    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        off, length = self._range(data, 8 * P)
        assert self.dev.read(off, length) == self.model[off : off + length]

    @precondition(lambda self: self.dev.initstate)
    @rule(data=st.data(), trim=st.booleans(), discard=st.booleans())
    def zero(self, data: st.DataObject, trim: bool, discard: bool) -> None:
        off, length = self._range(data, 10 * P)
        if discard:  # frees whole pages only, and never needs memory
            self.dev.discard(off, length)
            start, end = discard_span(off, length)
            self.model[start:end] = bytes(end - start)
            return
        try:
            self.dev.write_zeroes(off, length, may_trim=trim)
        except MemLimitError:  # zeroing partial edges writes, and may hit the limit
            if not self.dev.mem_limit:
                raise
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
        self._init()

    @precondition(lambda self: self.dev.initstate)
    @rule(age=st.one_of(st.none(), st.integers(0, 30)), elapsed=st.integers(0, 20))
    def idle(self, age: int | None, elapsed: int) -> None:
        self.now += elapsed
        self.dev.mark_idle(age)

    @precondition(lambda self: self.dev.initstate)
    @rule(data=st.data(), mode=MODES, limit=st.one_of(st.none(), st.integers(0, 8)))
    def writeback(self, data: st.DataObject, mode: int, limit: int | None) -> None:
        lo = data.draw(st.integers(0, PAGES - 1))
        hi = data.draw(st.integers(lo + 1, PAGES))
        self.dev.set_writeback_limit_enable(limit is not None)
        self.dev.set_writeback_limit(limit or 0)
        self.dev.set_writeback_batch_size(data.draw(st.integers(1, 8)))
        try:
            self.dev.writeback([(mode, lo, hi)])
        except ZramdError as e:  # EIO: limit used up; ENOSPC: backing store full
            if e.errno not in (errno.EIO, errno.ENOSPC):
                raise

    @precondition(lambda self: self.dev.initstate and self.recomp)
    @rule(
        mode=st.sampled_from([0, PP_IDLE, PP_HUGE, PP_IDLE | PP_HUGE]),
        threshold=st.sampled_from([0, 500, 2000]),
        max_pages=st.one_of(st.none(), st.integers(0, 10)),
    )
    def recompress(self, mode: int, threshold: int, max_pages: int | None) -> None:
        self.dev.recompress(mode=mode, threshold=threshold, max_pages=max_pages)

    @precondition(lambda self: self.dev.initstate)
    @rule()
    def auto_compact(self) -> None:
        self.dev.set_auto_compact(min_bytes=0, min_percent=0)
        Shrinker(self.dev, pressure=lambda: False).scan()

    @invariant()
    def accounting(self) -> None:
        if not self.dev.initstate:
            return
        s = self.dev.mm_stat()
        stored = same = huge = compr = wb = 0
        for i in range(PAGES):
            f = self.dev.slot_flags(i)
            assert not f & ZRAM_PP_SLOT  # post-processing leaves no pick behind
            if f & (ZRAM_SIZE_MASK | ZRAM_SAME | ZRAM_WB):
                stored += 1
            same += bool(f & ZRAM_SAME)
            wb += bool(f & ZRAM_WB)
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
        assert pool.stats().objects == stored - same - wb
        assert self.dev.bd_stat().bd_count == wb
        assert s.mem_used_max >= s.mem_used_total
        check_pool_invariants(pool)

    def teardown(self) -> None:
        # a machine whose every write was refused would pass everything else unharmed
        assert self.landed or not self.unlimited_writes, "no write landed, none was limited"
        if self.dev.initstate:
            assert self.dev.read(0, SIZE) == self.model
            self.dev.reset()
        os.unlink(self.backing)


TestDevice = DeviceMachine.TestCase


class TestDevicePython(PythonLoops, DeviceMachine.TestCase):  # type: ignore[misc]
    """The same machine on the pool's Python object loops (the C ones run above)."""


@pytest.mark.parametrize("loops", ["native", "python"])
def test_the_machine_fails_when_every_write_is_refused(
    monkeypatch: pytest.MonkeyPatch, loops: str
) -> None:
    """A device refusing every write with MemLimitError, limit or not, must not pass: the
    machine may excuse a refusal only while a mem_limit is set."""

    def refuse(offset: int, data: object) -> None:
        raise MemLimitError("every write refused (test)")

    bind = ZramDevice._bind

    def bind_refusing(self: ZramDevice, io: Any) -> None:
        bind(self, io)
        if self.initstate:
            self.write = refuse  # type: ignore[method-assign]

    monkeypatch.setattr(ZramDevice, "_bind", bind_refusing)
    monkeypatch.setenv("ZRAMD_NATIVE", "1" if loops == "native" else "0")
    with pytest.raises((MemLimitError, AssertionError)):
        run_state_machine_as_test(
            DeviceMachine,
            settings=settings(
                max_examples=30, deadline=None, database=None, phases=[Phase.generate]
            ),
        )
