"""A Hypothesis state machine runs the pool against a dict model."""

from __future__ import annotations

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from zramd import ZsPool
from zramd._zram import Pool
from zramd.pool_api import PoolAPI
from zramd.testing import check_pool_invariants

from loops import PythonLoops

sizes = st.one_of(
    st.integers(1, 4096),
    st.integers(1, 64),  # the smallest classes hold hundreds of objects per zspage
    st.sampled_from([24, 25, 1624, 3624, 3625, 4096]),  # class and huge boundaries
)


class PoolMachine(RuleBasedStateMachine):
    handles = Bundle("handles")

    def make_pool(self) -> PoolAPI:
        return ZsPool(32 << 20, release_batch=4)

    def __init__(self) -> None:
        super().__init__()
        self.pool = self.make_pool()
        self.model: dict[int, bytes] = {}
        self.counter = 0

    def _data(self, size: int) -> bytes:
        self.counter += 1
        return (self.counter.to_bytes(4, "little") * (size // 4 + 1))[:size]

    @rule(target=handles, size=sizes)
    def store(self, size: int) -> int:
        data = self._data(size)
        h = self.pool.store(data)
        assert h not in self.model
        self.model[h] = data
        return h

    @rule(target=handles, size=sizes)
    def malloc_then_write(self, size: int) -> int:
        h = self.pool.malloc(size)
        data = self._data(size)
        self.pool.write(h, data)
        self.model[h] = data
        return h

    @rule(h=handles, prefix=st.integers(1, 4096))
    def overwrite_prefix(self, h: int, prefix: int) -> None:
        if h not in self.model:
            return
        old = self.model[h]
        n = min(prefix, len(old))
        data = self._data(n)
        self.pool.write(h, data)
        self.model[h] = data + old[n:]

    @rule(h=handles)
    def read(self, h: int) -> None:
        if h in self.model:
            assert self.pool.read(h) == self.model[h]

    @rule(h=consumes(handles))
    def free(self, h: int) -> None:
        if h in self.model:
            self.pool.free(h)
            del self.model[h]

    @rule(h=consumes(handles), step=st.integers(2, 5), start=st.integers(0, 4))
    def thin_out(self, h: int, step: int, start: int) -> None:
        # free every step-th object: sparse zspages in every class, work for compaction
        victims = {h, *list(self.model)[start::step]}
        for k in victims:
            if k in self.model:
                self.pool.free(k)
                del self.model[k]

    @rule(size=sizes, n=st.integers(1, 300))
    def burst(self, size: int, n: int) -> None:
        for _ in range(n):
            data = self._data(size)
            self.model[self.pool.store(data)] = data

    @rule()
    def compact(self) -> None:
        before = self.pool.total_pages
        freed = self.pool.compact()
        event("compaction freed frames" if freed else "compaction had nothing to do")
        assert self.pool.total_pages == before - freed
        assert self.pool.can_compact() == 0
        for h, data in self.model.items():
            assert self.pool.read(h) == data

    @invariant()
    def accounting(self) -> None:
        check_pool_invariants(self.pool)
        assert self.pool.stats().objects == len(self.model)

    def teardown(self) -> None:
        for h, data in self.model.items():
            assert self.pool.read(h) == data
        self.pool.close()


TestPool = PoolMachine.TestCase


class TestPoolPython(PythonLoops, PoolMachine.TestCase):  # type: ignore[misc]
    """The same machine on the pool's Python object loops (the C ones run above)."""


class CPoolMachine(PoolMachine):
    def make_pool(self) -> PoolAPI:
        return Pool(32 << 20, release_batch=4)


TestPoolC = CPoolMachine.TestCase  # the self-contained C pool (zramd._zram)
