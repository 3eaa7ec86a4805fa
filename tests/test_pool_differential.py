"""The C pool against the Python reference: the same calls, the same everything.

A Hypothesis state machine drives ``ZsPool`` (Python loops: the reference) and
``zramd._zram.Pool`` side by side with random batches of stores (bad sizes and exhaustion
included), frees (with invalid handles mid-batch), malloc + write, and compactions. After
every step both must agree on handles, object sizes, contents and locations, total_pages,
every class row of stats(), pages_compacted, bytes moved and frames cached.
"""

from __future__ import annotations

from typing import Any

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from zramd import ZsPool
from zramd._zram import Pool
from zramd.page import PAGE_SIZE
from zramd.pool_api import PoolAPI

sizes = st.one_of(
    st.integers(1, 4096),
    st.integers(1, 64),  # the smallest classes hold hundreds of objects per zspage
    st.sampled_from([24, 25, 1624, 3624, 3625, 4096]),  # class and huge boundaries
)
#: now and then a batch carries a bad size
bad_sizes = st.one_of(st.none(), st.none(), st.none(), st.sampled_from([0, 4097, 10000]))


def outcome(call: Any) -> tuple[str, Any]:
    """What a call returned, or which exception it raised and with what message."""
    try:
        return ("ok", call())
    except Exception as e:  # compared between the two pools
        return (type(e).__name__, str(e))


def snapshot(pool: PoolAPI) -> dict[str, Any]:
    stats = pool.stats()
    return {
        "total_pages": pool.total_pages,
        "stats_total": stats.total_pages,
        "pages_compacted": stats.pages_compacted,
        "frames_cached": stats.frames_cached,
        "frames_reserved": stats.frames_reserved,
        "objects": stats.objects,
        "classes": stats.classes,
        "bytes_moved": pool.bytes_moved,
        "can_compact": pool.can_compact(),
    }


class Differential(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pools: tuple[PoolAPI, PoolAPI] | None = None
        self.live: dict[int, bytes] = {}  # handle (the same in both) -> contents
        self.freed: list[int] = []
        self.counter = 0

    @initialize(
        max_bytes=st.sampled_from([16 * PAGE_SIZE, 200 * PAGE_SIZE, 32 << 20]),
        chain=st.integers(4, 16),
        release_batch=st.sampled_from([1, 4, 64]),
    )
    def create(self, max_bytes: int, chain: int, release_batch: int) -> None:
        self.pools = (
            ZsPool(max_bytes, chain=chain, release_batch=release_batch),
            Pool(max_bytes, chain=chain, release_batch=release_batch),
        )

    def both(self, call: Any) -> Any:
        """Run ``call(pool)`` on both pools; they must agree; returns the reference's result."""
        assert self.pools is not None
        ref, c = (outcome(lambda p=p: call(p)) for p in self.pools)
        assert c == ref, (ref, c)
        if ref[0] != "ok":
            event(f"both raised {ref[0]}")
        return ref

    def _data(self, size: int) -> bytes:
        self.counter += 1
        return (self.counter.to_bytes(4, "little") * (size // 4 + 1))[:size]

    @rule(
        batch=st.lists(sizes, min_size=1, max_size=40),
        bad=bad_sizes,
        where=st.integers(0, 39),
    )
    def store_many(self, batch: list[int], bad: int | None, where: int) -> None:
        if bad is not None:  # all or nothing: nothing of the batch stays stored
            batch.insert(min(where, len(batch)), bad)
        objs = [self._data(n) for n in batch]
        kind, handles = self.both(lambda p: p.store_many(objs))
        if kind == "ok":
            self.live.update(zip(handles, objs, strict=True))

    @rule(size=sizes, prefix=st.integers(1, 4096))
    def malloc_then_write(self, size: int, prefix: int) -> None:
        kind, h = self.both(lambda p: p.malloc(size))
        if kind != "ok":
            return
        data = self._data(size)
        self.both(lambda p: p.write(h, data))
        n = min(prefix, size)
        head = self._data(n)
        self.both(lambda p: p.write(h, head))
        self.both(lambda p: p.write(h, head + b"!" * size))  # too long: refused alike
        self.live[h] = head + data[n:]

    @precondition(lambda self: self.live)
    @rule(data=st.data(), poison=st.booleans())
    def free_many(self, data: st.DataObject, poison: bool) -> None:
        handles = data.draw(st.lists(st.sampled_from(sorted(self.live)), unique=True))
        if poison and self.freed:  # an invalid handle mid-batch: those before it are freed
            handles.insert(len(handles) // 2, data.draw(st.sampled_from(self.freed)))
        kind, _ = self.both(lambda p: p.free_many(handles))
        for h in handles:
            if h not in self.live:
                assert kind == "InvalidHandleError"
                break
            del self.live[h]
            self.freed.append(h)

    @rule(size=sizes, n=st.integers(1, 300))
    def burst(self, size: int, n: int) -> None:
        objs = [self._data(size) for _ in range(n)]
        kind, handles = self.both(lambda p: p.store_many(objs))
        if kind == "ok":
            self.live.update(zip(handles, objs, strict=True))

    @precondition(lambda self: self.live)
    @rule(step=st.integers(2, 5), start=st.integers(0, 4))
    def thin_out(self, step: int, start: int) -> None:
        # every step-th object: sparse zspages in every class, work for compaction
        victims = list(self.live)[start::step]
        self.both(lambda p: p.free_many(victims))
        for h in victims:
            del self.live[h]
            self.freed.append(h)

    @rule(gentle=st.booleans())
    def compact(self, gentle: bool) -> None:
        _, freed = self.both(lambda p: p.compact(gentle=gentle))
        event("compaction freed frames" if freed else "compaction had nothing to do")

    @invariant()
    def agree(self) -> None:
        if self.pools is None:
            return
        ref, c = self.pools
        assert snapshot(c) == snapshot(ref)
        handles = list(self.live)
        assert c.load_many(handles) == ref.load_many(handles) == list(self.live.values())
        assert [c.locate(h) for h in handles] == [ref.locate(h) for h in handles]
        assert [c.object_size(h) for h in handles] == [len(d) for d in self.live.values()]

    def teardown(self) -> None:
        if self.pools is not None:
            for pool in self.pools:
                pool.check()
                pool.close()


TestDifferential = Differential.TestCase
