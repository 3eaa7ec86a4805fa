"""ZsPool: allocation policy, errors, compaction order and accounting, memory returned."""

from __future__ import annotations

import gc
import os
import random
from collections.abc import Iterator

import lz4.block
import pytest

from zramd import InvalidHandleError, PoolExhaustedError, ZsPool, build_class_table
from zramd import compaction as compaction_module
from zramd.page import PAGE_SIZE
from zramd.pool_api import PoolAPI
from zramd.testing import check_pool_invariants, synthetic_pages

from loops import PoolFactory

# Every test runs on both pools (the make_pool fixture): ZsPool, the Python reference, and the
# C pool (zramd._zram).
HUGE_CLASS_SIZE = build_class_table().huge_class_size  # 3625 (test_size_class checks it)


@pytest.fixture
def pool(make_pool: PoolFactory) -> Iterator[PoolAPI]:
    p = make_pool(64 << 20)
    yield p
    p.close()


def fill(pool: PoolAPI, size: int, count: int, seed: int = 0) -> dict[int, bytes]:
    rng = random.Random(seed)
    out = {}
    for _ in range(count):
        data = rng.randbytes(size)
        out[pool.store(data)] = data
    return out


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, -5, 4097, 1 << 20])
def test_malloc_rejects_bad_sizes(pool: PoolAPI, size: int) -> None:
    with pytest.raises(ValueError, match=f"object size {size} outside 1..4096"):
        pool.malloc(size)


def test_store_rejects_empty_and_oversized(pool: PoolAPI) -> None:
    with pytest.raises(ValueError, match="object size 0"):
        pool.store(b"")
    with pytest.raises(ValueError, match="object size 4097"):
        pool.store(bytes(4097))


@pytest.mark.parametrize("handle", [0, 1, 255, -256, 12345 << 8 | 1])
def test_unknown_handles(pool: PoolAPI, handle: int) -> None:
    with pytest.raises(InvalidHandleError):
        pool.read(handle)
    with pytest.raises(InvalidHandleError):
        pool.free(handle)
    with pytest.raises(InvalidHandleError):
        pool.write(handle, b"x")


def test_double_free_is_refused_and_changes_nothing(pool: PoolAPI) -> None:
    keep = pool.store(b"k" * 100)
    h = pool.store(b"a" * 100)
    pool.free(h)
    with pytest.raises(InvalidHandleError, match="not allocated"):
        pool.free(h)
    with pytest.raises(InvalidHandleError):
        pool.read(h)
    assert pool.read(keep) == b"k" * 100
    check_pool_invariants(pool)


def test_write_larger_than_object_is_refused(pool: PoolAPI) -> None:
    h = pool.malloc(100)
    pool.write(h, b"z" * 100)
    with pytest.raises(ValueError, match="101 bytes do not fit object"):
        pool.write(h, b"y" * 101)
    assert pool.read(h) == b"z" * 100


def test_arena_exhaustion_raises_and_leaks_nothing(make_pool: PoolFactory) -> None:
    pool = make_pool(4 * PAGE_SIZE)
    handles = [pool.store(bytes([i]) * PAGE_SIZE) for i in range(4)]
    with pytest.raises(PoolExhaustedError, match="arena exhausted"):
        pool.store(b"x" * PAGE_SIZE)
    with pytest.raises(PoolExhaustedError):
        pool.store(b"x" * 100)  # a new zspage of the 112-byte class needs 7 frames
    check_pool_invariants(pool)
    assert pool.stats().objects == 4
    pool.free(handles[0])
    h = pool.store(b"y" * PAGE_SIZE)  # the freed frame is reusable
    assert pool.read(h) == b"y" * PAGE_SIZE
    pool.close()


# -- data -----------------------------------------------------------------------------------------


def test_every_size_round_trips_including_straddlers(pool: PoolAPI) -> None:
    rng = random.Random(7)
    objects = {}
    straddlers = 0
    for size in range(1, PAGE_SIZE + 1):
        data = rng.randbytes(size)
        h = pool.store(data)
        objects[h] = data
        _, off = pool.locate(h)
        spec = pool.class_for_size(size)
        if not spec.huge and (off % PAGE_SIZE) + 8 + size > PAGE_SIZE:
            straddlers += 1
    assert straddlers > 100  # objects really cross frame boundaries
    for h, data in objects.items():
        assert pool.read(h) == data
        assert pool.object_size(h) == len(data)
    check_pool_invariants(pool)


def test_malloc_then_write_in_parts(pool: PoolAPI) -> None:
    h = pool.malloc(3000)
    pool.write(h, b"a" * 3000)
    pool.write(h, b"b" * 10)
    assert pool.read(h) == b"b" * 10 + b"a" * 2990


def test_huge_objects_keep_their_size(pool: PoolAPI) -> None:
    for size in (pool.huge_class_size, 4000, PAGE_SIZE):
        h = pool.store(b"h" * size)
        assert pool.locate(h)[0] == 0  # no zspage: one raw frame
        assert pool.read(h) == b"h" * size
    assert pool.class_for_size(pool.huge_class_size).huge
    assert not pool.class_for_size(pool.huge_class_size - 1).huge


# -- allocation policy ----------------------------------------------------------------------------

SIZE_1632 = 1624  # payload of the 1632-byte class: 2 frames, 5 objects per zspage


def test_allocation_prefers_the_fullest_non_full_zspage(pool: PoolAPI) -> None:
    spec = pool.class_for_size(SIZE_1632)
    assert (spec.pages_per_zspage, spec.objs_per_zspage) == (2, 5)
    handles = list(fill(pool, SIZE_1632, 15))
    zids = [pool.locate(h)[0] for h in handles]
    a, b, c = zids[0], zids[5], zids[10]
    assert len({a, b, c}) == 3
    pool.free(handles[0])  # a: 4/5 = 80 %
    for h in handles[5:8]:
        pool.free(h)  # b: 2/5 = 40 %
    for h in handles[10:12]:
        pool.free(h)  # c: 3/5 = 60 %
    assert pool.locate(pool.store(b"n" * SIZE_1632))[0] == a
    assert pool.locate(pool.store(b"n" * SIZE_1632))[0] == c  # a is full now
    check_pool_invariants(pool)


def test_an_empty_zspage_is_freed_at_once(pool: PoolAPI) -> None:
    handles = list(fill(pool, SIZE_1632, 5))
    assert pool.total_pages == 2
    for h in handles[:-1]:
        pool.free(h)
    assert pool.total_pages == 2
    pool.free(handles[-1])
    assert pool.total_pages == 0
    assert pool.stats().classes[0].obj_allocated == 0
    check_pool_invariants(pool)


def test_stats_table(pool: PoolAPI) -> None:
    handles = list(fill(pool, SIZE_1632, 10))
    pool.free(handles[0])
    stats = pool.stats()
    (row,) = [r for r in stats.classes if r.size == 1632]
    assert row.fullness == (0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1)  # one 80 %, one full
    assert (row.obj_allocated, row.obj_used, row.pages_used) == (10, 9, 4)
    assert (row.pages_per_zspage, row.freeable) == (2, 0)
    assert stats.total_pages == 4
    assert stats.objects == 9
    assert stats.huge_class_size == HUGE_CLASS_SIZE


# -- compaction -----------------------------------------------------------------------------------


def test_compaction_moves_from_emptiest_into_fullest(pool: PoolAPI) -> None:
    data = fill(pool, SIZE_1632, 20, seed=3)
    handles = list(data)
    zid = [pool.locate(h)[0] for h in handles[::5]]
    # inuse 4, 1, 2, 3 of 5 -> groups 80 %, 20 %, 40 %, 60 %
    for i, keep in enumerate((4, 1, 2, 3)):
        for h in handles[i * 5 + keep : i * 5 + 5]:
            pool.free(h)
            del data[h]
    cls = pool.class_for_size(SIZE_1632)
    assert pool.can_compact() == 4  # 10 free slots = 2 zspages of 2 frames
    assert pool.compact() == 4
    # first pass: 1 object from the 20 % zspage fills the 80 % one; second: the 40 % one
    # drains into the 60 % one. Survivors: the 80 % and 60 % zspages.
    assert {pool.locate(h)[0] for h in data} == {zid[0], zid[3]}
    assert pool.can_compact() == 0
    assert pool.stats().pages_compacted == 4
    assert cls.objs_per_zspage == 5
    for h, d in data.items():
        assert pool.read(h) == d
    check_pool_invariants(pool)


def test_compaction_visits_classes_largest_first(
    pool: PoolAPI, make_pool: PoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the C pool's order is held to this one by the differential test (same moves, same pages)
    make_pool.python_only("spies on compaction.Compactor.compact_class")
    for size in (40, 1624, 600, 3000):
        handles = list(fill(pool, size, 1200, seed=size))
        for h in handles[::2]:
            pool.free(h)
    order: list[int] = []
    real = compaction_module.Compactor.compact_class

    def spy(c: compaction_module.Compactor, cls: object, *, gentle: bool = False) -> int:
        order.append(cls.size)  # type: ignore[attr-defined]
        return real(c, cls, gentle=gentle)  # type: ignore[arg-type]

    monkeypatch.setattr(compaction_module.Compactor, "compact_class", spy)
    assert pool.compact() > 0
    assert order == sorted(order, reverse=True)
    assert len(order) == 4
    check_pool_invariants(pool)


def test_compaction_is_single_flight(pool: PoolAPI, make_pool: PoolFactory) -> None:
    # the C pool's single flight is checked by tests/c/stress_pool.c (it holds compact_lock)
    make_pool.python_only("holds ZsPool._compact_lock")
    assert isinstance(pool, ZsPool)
    fill(pool, 100, 10)
    assert pool._compact_lock.acquire()
    try:
        assert pool.compact() == 0  # another compaction "running"
    finally:
        pool._compact_lock.release()


def test_can_compact_is_a_function_of_two_counters(pool: PoolAPI) -> None:
    for size in (1624, 300):
        handles = list(fill(pool, size, 500, seed=size))
        for h in handles[::3]:
            pool.free(h)
    specs = {c.index: c for c in pool.class_table.classes}
    rows = [r for r in pool.stats().classes if r.obj_allocated]
    assert len(rows) == 2
    for row in rows:
        spec = specs[row.index]
        waste = row.obj_allocated - row.obj_used
        assert row.freeable == waste // spec.objs_per_zspage * spec.pages_per_zspage > 0
    assert pool.can_compact() == sum(r.freeable for r in rows)


# -- memory ---------------------------------------------------------------------------------------


def realistic_objects(count: int, seed: int) -> list[bytes]:
    out = []
    for page in synthetic_pages(count, seed):
        c = lz4.block.compress(page, store_size=False)
        out.append(page if len(c) >= HUGE_CLASS_SIZE else c)
    return out


def test_metadata_at_most_16_bytes_per_object(make_pool: PoolFactory) -> None:
    pool = make_pool(256 << 20)
    objects = realistic_objects(20000, seed=11)
    handles = [pool.store(o) for o in objects]
    stats = pool.stats()
    assert stats.objects == len(objects)
    per_object = stats.metadata_bytes / stats.objects
    assert per_object <= 16, per_object
    for h in handles[::2]:
        pool.free(h)
    pool.compact()
    stats = pool.stats()
    # tables do not shrink after frees, so only the full pool is held to the bound
    assert stats.metadata_bytes / stats.objects <= 32
    pool.close()


def test_metadata_of_huge_objects(make_pool: PoolFactory) -> None:
    pool = make_pool(64 << 20)
    for i in range(10000):
        pool.store(bytes([i & 255]) * PAGE_SIZE)
    stats = pool.stats()
    assert stats.metadata_bytes / stats.objects <= 16
    pool.close()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_rss_falls_after_free_and_compaction(make_pool: PoolFactory) -> None:
    pool = make_pool(1 << 30)
    rng = random.Random(5)
    gc.collect()
    base = rss_bytes()
    handles = [pool.store(rng.randbytes(rng.randint(900, 1700))) for _ in range(60000)]
    filled = rss_bytes() - base
    assert filled > 60 << 20  # ~78 MiB of objects really landed in memory
    assert pool.total_pages * PAGE_SIZE <= filled + (4 << 20)
    keep = set(rng.sample(range(len(handles)), 6000))
    for i, h in enumerate(handles):
        if i not in keep:
            pool.free(h)
    before_compact = pool.total_pages
    freed = pool.compact()
    assert freed > 0
    assert pool.total_pages == before_compact - freed
    assert pool.stats().frames_cached == 0
    after = rss_bytes() - base
    live = sum(pool.object_size(handles[i]) for i in keep)
    # 10 % of the objects survive; memory falls with them (tables and Python lists remain).
    assert after < filled * 0.25, (filled, after)
    assert pool.total_pages * PAGE_SIZE < live * 1.25 + (1 << 20)
    check_pool_invariants(pool)
    pool.close()


def test_frees_are_released_in_batches(make_pool: PoolFactory) -> None:
    pool = make_pool(64 << 20, release_batch=16)
    handles = [pool.store(b"x" * PAGE_SIZE) for _ in range(100)]
    cached = []
    for h in handles:
        pool.free(h)
        cached.append(pool.stats().frames_cached)
    assert max(cached) == 15
    assert cached.count(0) == 100 // 16  # the cache empties once per batch
    if isinstance(pool, ZsPool):  # the C pool counts its madvise calls in stress_pool.c
        assert pool._arena.releases <= 100 // 16 + 1  # one madvise per batch (contiguous)
    pool.close()
