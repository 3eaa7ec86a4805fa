"""Many threads allocating, reading, freeing and compacting: nothing lost, nothing mixed."""

from __future__ import annotations

import random
import sys
import threading

import pytest

from zramd.testing import check_pool_invariants

from loops import PoolFactory


@pytest.fixture(autouse=True)
def fast_switching() -> object:
    # Switch threads every 50 µs instead of 5 ms so critical sections really interleave.
    old = sys.getswitchinterval()
    sys.setswitchinterval(5e-5)
    yield
    sys.setswitchinterval(old)


def tagged(owner: int, serial: int, size: int) -> bytes:
    tag = owner.to_bytes(2, "little") + serial.to_bytes(4, "little")
    return (tag * (size // 6 + 1))[:size]


def test_threads_with_compaction_lose_and_mix_nothing(make_pool: PoolFactory) -> None:
    pool = make_pool(256 << 20)
    shared = {pool.store(tagged(99, i, 50 + i * 7)): tagged(99, i, 50 + i * 7) for i in range(500)}
    errors: list[BaseException] = []
    stop = threading.Event()
    results: dict[int, dict[int, bytes]] = {}

    def worker(owner: int) -> None:
        rng = random.Random(owner)
        mine: dict[int, bytes] = {}
        try:
            for serial in range(6000):
                r = rng.random()
                if r < 0.5 or not mine:
                    size = rng.choice((rng.randint(1, 4096), rng.randint(20, 200)))
                    data = tagged(owner, serial, size)
                    mine[pool.store(data)] = data
                elif r < 0.8:
                    h = rng.choice(list(mine))
                    assert pool.read(h) == mine.pop(h)
                    pool.free(h)
                else:
                    h = rng.choice(list(shared))
                    assert pool.read(h) == shared[h]
            results[owner] = mine
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    def compactor() -> None:
        try:
            while not stop.is_set():
                pool.compact()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    comp = threading.Thread(target=compactor)
    comp.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    comp.join()
    assert not errors, errors
    assert pool.stats().pages_compacted > 0  # compaction really ran alongside
    for mine in [shared, *results.values()]:
        for h, data in mine.items():
            assert pool.read(h) == data
    check_pool_invariants(pool)
    assert pool.stats().objects == len(shared) + sum(map(len, results.values()))
    pool.close()


def test_threads_share_handles_batches_and_compaction(make_pool: PoolFactory) -> None:
    """Four threads store, load and free in batches, on handles of their own and on shared
    ones that any thread may free and replace (each shared entry under its own lock, as the
    device's slot locks), while two threads compact (one gently) and one reads statistics.
    On the C pool these calls really run at once: each releases the GIL for its batch."""
    pool = make_pool(256 << 20)
    entry_locks = [threading.Lock() for _ in range(64)]
    shared: list[tuple[int, bytes]] = []
    for i in range(64):
        data = tagged(99, i, 40 + i * 61)
        shared.append((pool.store(data), data))
    errors: list[BaseException] = []
    stop = threading.Event()
    results: dict[int, dict[int, bytes]] = {}

    def worker(owner: int) -> None:
        rng = random.Random(owner)
        mine: dict[int, bytes] = {}
        try:
            for serial in range(1500):
                r = rng.random()
                if r < 0.4 or not mine:
                    batch = [
                        tagged(owner, serial * 64 + k, rng.choice((rng.randint(1, 4096), 300)))
                        for k in range(rng.randint(1, 32))
                    ]
                    mine.update(zip(pool.store_many(batch), batch, strict=True))
                elif r < 0.6:
                    keys = rng.sample(list(mine), min(len(mine), rng.randint(1, 32)))
                    assert pool.load_many(keys) == [mine[h] for h in keys]
                elif r < 0.8:
                    keys = rng.sample(list(mine), min(len(mine), rng.randint(1, 32)))
                    pool.free_many(keys)
                    for h in keys:
                        del mine[h]
                else:
                    i = rng.randrange(len(shared))
                    with entry_locks[i]:
                        h, data = shared[i]
                        assert pool.read(h) == data
                        if rng.random() < 0.5:  # replace: free it and store a new one
                            pool.free(h)
                            new = tagged(owner, serial, rng.randint(1, 4096))
                            shared[i] = (pool.store(new), new)
            results[owner] = mine
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    def background(gentle: bool) -> None:
        try:
            while not stop.is_set():
                pool.compact(gentle=gentle)
                pool.stats()
                pool.can_compact()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    others = [threading.Thread(target=background, args=(g,)) for g in (False, True)]
    for t in others + threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    for t in others:
        t.join()
    assert not errors, errors
    live = dict(shared)
    for mine in results.values():
        live.update(mine)
    assert pool.load_many(list(live)) == list(live.values())
    check_pool_invariants(pool)
    assert pool.stats().objects == len(live)
    pool.free_many(list(live))
    pool.compact()
    assert pool.total_pages == 0
    check_pool_invariants(pool)
    pool.close()
