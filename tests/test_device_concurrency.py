"""Parallel requests, compaction alongside, overlapping writes: nothing lost, nothing mixed."""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from zramd.device import ZramDevice
from zramd.postproc import PP_IDLE
from zramd.shrinker import Shrinker
from zramd.slots import ZRAM_WB
from zramd.testing import check_pool_invariants, discard_span, synthetic_pages

pytestmark = pytest.mark.usefixtures("pool_impl")  # C and Python object loops

P = 4096


@pytest.fixture(autouse=True)
def fast_switching() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(5e-5)
    yield
    sys.setswitchinterval(old)


def run_threads(targets: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as e:
                errors.append(e)

        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def region_client(
    dev: ZramDevice,
    w: int,
    model: bytearray,
    sources: list[bytes],
    *,
    steps: int,
    max_pages: int,
    discards: float,
    done: threading.Event | None = None,
) -> Callable[[], None]:
    """A client owning region ``w`` (``len(model)`` bytes): random writes (half the steps),
    discards (``discards`` of them) and reads, each read checked against its model."""
    region = len(model)
    base = w * region

    def run() -> None:
        rng = random.Random(w)
        for _ in range(steps):
            off = rng.randrange(region)
            length = rng.randint(1, min(region - off, max_pages * P))
            op = rng.random()
            if op < 0.5:
                data = (b"".join(rng.sample(sources, 3)))[rng.randrange(P) :][:length]
                data = data.ljust(length, b"z")
                dev.write(base + off, data)
                model[off : off + length] = data
            elif op < 0.5 + discards:
                dev.discard(base + off, length)
                start, end = discard_span(off, length)  # the region starts on a page
                model[start:end] = bytes(end - start)
            else:
                assert dev.read(base + off, length) == model[off : off + length]
        if done is not None:
            done.set()

    return run


def test_regions_with_compaction_alongside() -> None:
    dev = ZramDevice()
    region = 256 * P
    workers = 4
    dev.set_disksize(region * workers)
    sources = synthetic_pages(64, seed=1)
    models = [bytearray(region) for _ in range(workers)]
    stop = threading.Event()

    def worker(w: int) -> Callable[[], None]:
        return region_client(
            dev,
            w,
            models[w],
            sources,
            steps=1500,
            max_pages=6,
            discards=0.15,
            done=stop if w == 0 else None,
        )

    compactions = [0]

    def compactor() -> None:
        while not stop.is_set():
            compactions[0] += dev.compact()

    run_threads([worker(w) for w in range(workers)] + [compactor])
    assert compactions[0] > 0
    for w in range(workers):
        assert dev.read(w * region, region) == models[w]
    pool = dev.pool
    assert pool is not None
    check_pool_invariants(pool)
    dev.reset()


def test_overlapping_writes_end_as_one_of_them() -> None:
    dev = ZramDevice()
    dev.set_disksize(8 * P)
    patterns = [(bytes([i]) * 7 + b"\x00") * 512 for i in range(1, 6)]
    patterns += [synthetic_pages(1, seed=s)[0] for s in range(5)]
    ok = set(patterns)
    stop = threading.Event()

    def writer(seed: int) -> Callable[[], None]:
        def run() -> None:
            rng = random.Random(seed)
            for _ in range(800):
                a, b = rng.choice(patterns), rng.choice(patterns)
                dev.write(2 * P, a + b)  # pages 2 and 3 in one request
                if rng.random() < 0.2:
                    dev.write(3 * P, rng.choice(patterns))
            stop.set()

        return run

    def reader() -> None:
        while not stop.is_set():
            data = dev.read(2 * P, 2 * P)
            assert data[:P] in ok or data[:P] == bytes(P)
            assert data[P:] in ok or data[P:] == bytes(P)

    run_threads([writer(1), writer(2), writer(3), reader, reader])
    final = dev.read(2 * P, 2 * P)
    assert final[:P] in ok
    assert final[P:] in ok
    s = dev.mm_stat()
    assert s.orig_data_size == 2 * P  # no slot leaked or double-counted
    pool = dev.pool
    assert pool is not None
    assert pool.stats().objects == 2 - s.same_pages
    dev.reset()


def test_partial_writes_to_one_page_all_land() -> None:
    # concurrent read-modify-write of disjoint byte ranges of one page must not lose updates
    dev = ZramDevice()
    dev.set_disksize(4 * P)
    chunk = P // 8

    def writer(k: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(300):
                dev.write(P + k * chunk, bytes([k + 1, i & 255]) * (chunk // 2))

        return run

    run_threads([writer(k) for k in range(8)])
    page = dev.read(P, P)
    for k in range(8):
        assert page[k * chunk : (k + 1) * chunk] == bytes([k + 1, 299 & 255]) * (chunk // 2)
    dev.reset()


def test_tiers_under_concurrent_io(tmp_path: Path) -> None:
    """Idle marking, writeback, recompression and background compaction run while four
    clients write, discard and read their regions: every read matches the client's model."""
    dev = ZramDevice()
    region = 128 * P
    workers = 4
    backing = tmp_path / "backing.img"
    with open(backing, "wb") as f:
        f.truncate(region * workers + P)
    dev.set_recomp_algorithm("zstd")
    dev.set_backing_dev(str(backing))
    dev.set_disksize(region * workers)
    dev.set_auto_compact(min_bytes=0, min_percent=0)
    dev.set_writeback_batch_size(4)
    sources = synthetic_pages(64, seed=2)
    models = [bytearray(region) for _ in range(workers)]
    stop = threading.Event()
    done = [0, 0, 0]

    def worker(w: int) -> Callable[[], None]:
        return region_client(
            dev,
            w,
            models[w],
            sources,
            steps=1200,
            max_pages=5,
            discards=0.1,
            done=stop if w == 0 else None,
        )

    def post_processor() -> None:
        shrinker = Shrinker(dev, pressure=lambda: False)
        while not stop.is_set():
            dev.mark_idle()
            done[0] += dev.writeback([(PP_IDLE, 0, dev.disksize // P)])
            done[1] += dev.recompress()
            done[2] += shrinker.scan()

    run_threads([worker(w) for w in range(workers)] + [post_processor])
    assert done[0] > 0  # pages did go to the backing store while clients ran
    for w in range(workers):
        assert dev.read(w * region, region) == models[w]
    wb = sum(bool(dev.slot_flags(i) & ZRAM_WB) for i in range(dev.disksize // P))
    assert dev.bd_stat().bd_count == wb
    pool = dev.pool
    assert pool is not None
    check_pool_invariants(pool)
    dev.reset()
