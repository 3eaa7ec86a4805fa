"""ZramDevice: lifecycle, data path semantics, limits, statistics."""

from __future__ import annotations

import contextlib
import os
import random
import threading
from collections.abc import Iterator, Sequence

import lz4.block
import pytest

from zramd import DeviceBusyError, InvalidValueError, MemLimitError, ZsPool
from zramd.core import EXTENT_DATA, EXTENT_HOLE, EXTENT_ZERO, same_fill
from zramd.device import ZramDevice
from zramd.errors import InvalidIOError, OutOfRangeError
from zramd.size_class import DEFAULT_CHAIN_SIZE, ClassSpec
from zramd.slots import ZRAM_HUGE, ZRAM_IDLE, ZRAM_SAME, ZRAM_SIZE_MASK
from zramd.testing import check_block_device, check_pool_invariants, synthetic_pages
from zramd.zcomp import AlgorithmConfig

pytestmark = pytest.mark.usefixtures("pool_impl")  # C and Python object loops

P = 4096
MiB = 1 << 20
THREADS = 3


@pytest.fixture
def dev() -> Iterator[ZramDevice]:
    d = ZramDevice()
    d.set_disksize(16 * MiB)
    yield d
    d.reset()


def text_page(seed: int) -> bytes:
    return (f"page {seed} ".encode() * 600)[:P]


# -- lifecycle ------------------------------------------------------------------------------------


def test_starts_uninitialised() -> None:
    d = ZramDevice()
    assert (d.initstate, d.disksize, d.size) == (False, 0, 0)
    with pytest.raises(InvalidIOError, match="outside the device"):
        d.read(0, 1)
    with pytest.raises(InvalidValueError, match="not initialised"):
        d.compact()
    assert d.mm_stat().mem_used_total == 0


def test_disksize_is_rounded_up_and_set_once() -> None:
    d = ZramDevice()
    d.set_disksize(10 * P + 1)
    assert d.disksize == 11 * P
    with pytest.raises(DeviceBusyError, match="already initialised"):
        d.set_disksize(P)
    with pytest.raises(DeviceBusyError):
        d.set_comp_algorithm("zstd")
    d.reset()
    d.set_disksize(P)
    assert d.disksize == P
    d.reset()


@pytest.mark.parametrize("bad", [0, -1])
def test_disksize_rejects_non_positive(bad: int) -> None:
    with pytest.raises(InvalidValueError, match="disksize"):
        ZramDevice().set_disksize(bad)


def test_comp_algorithm_only_before_init() -> None:
    d = ZramDevice()
    d.set_comp_algorithm("zstd")
    with pytest.raises(InvalidValueError, match="unknown comp_algorithm 'nope'"):
        d.set_comp_algorithm("nope")
    with pytest.raises(InvalidValueError, match="unavailable"):
        d.set_comp_algorithm("lzo-rle")
    d.set_disksize(MiB)
    assert d.comp_algorithm == "zstd"
    d.write(0, text_page(1))
    assert d.read(0, P) == text_page(1)
    d.reset()
    assert d.comp_algorithm == "lz4"  # reset restores the default


def test_algorithm_params() -> None:
    d = ZramDevice("zstd")
    d.set_algorithm_params(level=9)
    assert d.algorithm_level == 9
    with pytest.raises(InvalidValueError, match="algo=lz4 is neither comp_algorithm nor"):
        d.set_algorithm_params(algo="lz4", level=1)
    with pytest.raises(InvalidValueError, match="priority=1: no recomp_algorithm"):
        d.set_algorithm_params(priority=1, level=1)
    d.set_recomp_algorithm("lz4hc", 1)  # a secondary takes parameters by priority or name
    d.set_algorithm_params(priority=1, level=12)
    d.set_algorithm_params(algo="lz4hc", level=3)
    assert d.algorithm_params(1) == AlgorithmConfig("lz4hc", 3)
    assert d.algorithm_level == 9  # the primary's level is untouched
    d.set_algorithm_params(winbits=12)  # stored for zstd too, as the kernel stores it: unused
    assert d.algorithm_params() == AlgorithmConfig("zstd", None, 12)
    d.set_algorithm_params()  # replaces: back to the default level
    assert d.algorithm_level is None
    d.set_disksize(MiB)
    with pytest.raises(DeviceBusyError):
        d.set_algorithm_params(level=1)
    d.reset()
    assert d.algorithm_params() == AlgorithmConfig("lz4")  # reset forgets the parameters
    assert d.algorithm_params(1) is None


def test_deflate_winbits() -> None:
    d = ZramDevice("deflate")
    d.set_algorithm_params(level=9, winbits=15)
    d.set_disksize(MiB)
    d.write(0, text_page(3))
    assert d.read(0, P) == text_page(3)
    d.reset()


def test_reset_refused_while_open_and_frees_everything(dev: ZramDevice) -> None:
    dev.write(0, os.urandom(4 * MiB))
    dev.set_mem_limit(8 * MiB)
    pool = dev.pool
    assert pool is not None
    assert pool.total_pages > 0
    dev.open()
    with pytest.raises(DeviceBusyError, match="open"):
        dev.reset()
    dev.close()
    dev.reset()
    assert not dev.initstate
    assert dev.pool is None
    assert dev.mem_limit == 0
    assert dev.mm_stat() == type(dev.mm_stat())(0, 0, 0, 0, 0, 0, 0, 0, 0)
    dev.set_disksize(MiB)  # usable again


# -- data path ------------------------------------------------------------------------------------


def test_conformance(dev: ZramDevice) -> None:
    check_block_device(dev, seed=3, steps=400)


def test_unwritten_reads_zero_without_pool(dev: ZramDevice) -> None:
    assert dev.read(5 * P + 3, 3 * P) == bytes(3 * P)
    assert dev.mm_stat().mem_used_total == 0


def test_same_filled_pages_use_no_pool_memory(dev: ZramDevice) -> None:
    word = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    dev.write(0, bytes(P) + word * 512 + b"\xff" * P)
    s = dev.mm_stat()
    assert (s.same_pages, s.mem_used_total, s.compr_data_size) == (3, 0, 0)
    assert s.orig_data_size == 3 * P
    assert dev.read(P, P) == word * 512
    assert dev.slot_flags(1) & ZRAM_SAME


def test_same_fill_detector() -> None:
    assert same_fill(memoryview(bytes(P))) == 0
    assert same_fill(memoryview(b"abcdefgh" * 512)) == int.from_bytes(b"abcdefgh", "little")
    almost = bytearray(b"abcdefgh" * 512)
    almost[2000] ^= 1
    assert same_fill(memoryview(bytes(almost))) is None
    assert same_fill(memoryview(b"abcd" * 1024)) is not None  # 4-byte period is 8-byte period
    assert same_fill(memoryview(b"abc" * 1365 + b"a")) is None


def test_incompressible_pages_are_stored_huge(dev: ZramDevice) -> None:
    data = os.urandom(2 * P)
    dev.write(0, data)
    s = dev.mm_stat()
    assert (s.huge_pages, s.huge_pages_since, s.compr_data_size) == (2, 2, 2 * P)
    assert dev.slot_flags(0) & ZRAM_HUGE
    assert dev.slot_flags(0) & ZRAM_SIZE_MASK == P
    assert dev.read(0, 2 * P) == data
    dev.write(0, text_page(1))  # overwrite: huge_pages falls, huge_pages_since does not
    s = dev.mm_stat()
    assert (s.huge_pages, s.huge_pages_since) == (1, 2)


def test_compressible_pages_are_compressed(dev: ZramDevice) -> None:
    pages = [text_page(i) for i in range(64)]
    dev.write(0, b"".join(pages))
    s = dev.mm_stat()
    assert s.orig_data_size == 64 * P
    assert 0 < s.compr_data_size < 64 * P // 10
    assert s.mem_used_total < 64 * P // 4
    assert dev.read(0, 64 * P) == b"".join(pages)


@pytest.mark.parametrize(
    ("off", "length"), [(0, 1), (100, 200), (P - 3, 6), (P + 512, 3 * P), (7, 5 * P)]
)
def test_unaligned_writes_read_modify_write(dev: ZramDevice, off: int, length: int) -> None:
    base = b"".join(text_page(i) for i in range(8))
    dev.write(0, base)
    patch = os.urandom(length)
    dev.write(off, patch)
    expected = base[:off] + patch + base[off + length :]
    assert dev.read(0, 8 * P) == expected


def test_discard_frees_whole_pages_and_keeps_partial_edges(dev: ZramDevice) -> None:
    base = b"".join(text_page(i) for i in range(8))
    dev.write(0, base)
    used = dev.mm_stat().orig_data_size
    dev.discard(P // 2, 3 * P)  # half page, two whole pages, half page
    # zram_bio_discard: partial pages are skipped, whole ones freed
    expected = base[:P] + bytes(2 * P) + base[3 * P :]
    assert dev.read(0, 8 * P) == expected
    s = dev.mm_stat()
    assert s.orig_data_size == used - 2 * P
    assert dev.io_stat().notify_free == 2
    kinds = dev.extents(0, 8 * P)
    assert (P, 2 * P, EXTENT_HOLE | EXTENT_ZERO) in kinds


def test_write_zeroes_with_and_without_trim(dev: ZramDevice) -> None:
    dev.write(0, b"".join(text_page(i) for i in range(4)))
    dev.write_zeroes(0, 2 * P, may_trim=True)
    dev.write_zeroes(2 * P, 2 * P, may_trim=False)
    assert dev.read(0, 4 * P) == bytes(4 * P)
    assert dev.extents(0, 4 * P) == [
        (0, 2 * P, EXTENT_HOLE | EXTENT_ZERO),
        (2 * P, 2 * P, EXTENT_ZERO),
    ]
    s = dev.mm_stat()
    assert (s.same_pages, s.orig_data_size, s.mem_used_total) == (2, 2 * P, 0)


def test_extents(dev: ZramDevice) -> None:
    dev.write(P, text_page(1))
    dev.write(2 * P, bytes(P))  # written zeros: allocated zero page
    dev.write(3 * P, b"\x07" * P)  # same-filled but not zero: data
    assert dev.extents(0, 5 * P) == [
        (0, P, EXTENT_HOLE | EXTENT_ZERO),
        (P, P, EXTENT_DATA),
        (2 * P, P, EXTENT_ZERO),
        (3 * P, P, EXTENT_DATA),
        (4 * P, P, EXTENT_HOLE | EXTENT_ZERO),
    ]
    # starts at the page holding the offset, even mid-page
    assert dev.extents(P + 10, 1)[0] == (P, P, EXTENT_DATA)


def test_out_of_range_io_is_refused(dev: ZramDevice) -> None:
    for call in (
        lambda: dev.read(16 * MiB - 1, 2),
        lambda: dev.write(16 * MiB, b"x"),
        lambda: dev.discard(-1, 10),
        lambda: dev.write_zeroes(0, 16 * MiB + 1),
    ):
        with pytest.raises(InvalidIOError, match="outside the device"):
            call()
    assert dev.io_stat().failed_writes == 0  # refused before any I/O, like the block layer


def test_idle_marking(dev: ZramDevice) -> None:
    now = [1000.0]
    d = ZramDevice(clock=lambda: now[0])
    d.set_disksize(MiB)
    d.write(0, text_page(0) + text_page(1) + bytes(P))
    now[0] = 1100.0
    d.write(P, text_page(2))
    assert d.mark_idle(50) == 1  # page 0 is 100 s old, page 1 was just written
    assert d.slot_flags(0) & ZRAM_IDLE
    assert not d.slot_flags(2) & ZRAM_IDLE  # same-filled pages are skipped
    d.read(0, 1)
    assert not d.slot_flags(0) & ZRAM_IDLE  # any access clears it
    assert d.mark_idle() == 2
    d.reset()


# -- limits ---------------------------------------------------------------------------------------


def test_mem_limit_refuses_and_keeps_old_data(dev: ZramDevice) -> None:
    old = b"".join(text_page(i) for i in range(16))
    dev.write(0, old)
    dev.set_mem_limit(64 * 1024)
    assert dev.mem_limit == 64 * 1024
    noise = os.urandom(32 * P)  # 32 huge pages need 128 KiB
    with pytest.raises(MemLimitError, match="over mem_limit"):
        dev.write(0, noise)
    assert dev.read(0, 16 * P) == old  # all-or-nothing: nothing changed
    assert dev.io_stat().failed_writes == 1
    pool = dev.pool
    assert pool is not None
    assert pool.total_pages <= 16
    check_pool_invariants(pool)
    dev.set_mem_limit(0)
    dev.write(0, noise)
    assert dev.read(0, 32 * P) == noise


def pages_in_distinct_classes(dev: ZramDevice, count: int, skip: int = 0) -> list[bytes]:
    """``count`` pages whose lz4 objects land in ``count`` different size classes, those with
    the longest zspages first (after ``skip`` of them): the most frames one batch can add to
    a fresh pool."""
    pool = dev.pool
    assert pool is not None
    noise = random.Random(3).randbytes(P)
    found: dict[ClassSpec, bytes] = {}
    for n in range(200, 3600, 4):
        page = noise[:n] + bytes(P - n)
        size = len(lz4.block.compress(page, store_size=False))
        if size < pool.huge_class_size:
            found.setdefault(pool.class_for_size(size), page)
    best = sorted(found, key=lambda spec: -spec.pages_per_zspage)[skip : skip + count]
    assert len(best) == count
    return [found[spec] for spec in best]


def rendezvous_at_first_store(dev: ZramDevice, rendezvous: threading.Barrier) -> None:
    """Each thread's first allocation waits until every party has one ready, so the requests
    of those threads allocate at the same time. The C data path allocates with no Python in
    between: its threads only meet before their requests start."""
    pool = dev.pool
    assert pool is not None
    if pool.native:
        return
    real = pool.store_many
    met = threading.local()

    def store_many(objs: Sequence[bytes]) -> list[int]:
        if not getattr(met, "done", False):
            met.done = True
            rendezvous.wait(30)
        return real(objs)

    pool.store_many = store_many  # type: ignore[method-assign]


@pytest.mark.parametrize("limit_pages", [1, 50, 120])
def test_mem_limit_overshoot_is_at_most_one_zspage(limit_pages: int) -> None:
    """One 128 KiB request whose 32 objects each open a zspage in an empty class would add
    241 frames at once; near the limit the device stores them one at a time, so the pool
    exceeds the limit by at most one zspage (chain frames) before the write is refused."""
    d = ZramDevice()
    d.set_disksize(MiB)
    pages = pages_in_distinct_classes(d, 32)
    pool = d.pool
    assert pool is not None
    worst = sum(pages_per_zspage(pool, p) for p in pages)
    assert worst > 32 * 4  # more than one frame per page: far over 128 KiB
    d.set_mem_limit(limit_pages * P)
    with pytest.raises(MemLimitError):
        d.write(0, b"".join(pages))
    assert pool.peak_pages <= limit_pages + DEFAULT_CHAIN_SIZE, (pool.peak_pages, worst)
    assert pool.total_pages == 0  # rolled back
    assert d.read(0, 32 * P) == bytes(32 * P)
    d.set_mem_limit(worst * P)  # room for the worst case: the request fits, no overshoot
    d.write(0, b"".join(pages))
    assert pool.peak_pages <= worst
    assert d.read(0, 32 * P) == b"".join(pages)
    d.reset()


def test_mem_limit_overshoot_of_concurrent_requests() -> None:
    """Requests racing for the last room each overshoot by at most one zspage: a batch
    stored at once reserves the frames it may add, so two batches that each fit alone do
    not both go ahead when together they do not."""
    d = ZramDevice()
    d.set_disksize(4 * MiB)
    pool = d.pool
    assert pool is not None
    requests = [b"".join(pages_in_distinct_classes(d, 32, skip=32 * k)) for k in range(THREADS)]
    bounds = [
        sum(pages_per_zspage(pool, r[i : i + P]) for i in range(0, len(r), P)) for r in requests
    ]
    limit = max(bounds) + 8  # each request fits alone; all of them together do not
    assert sum(bounds) > limit + THREADS * DEFAULT_CHAIN_SIZE
    rendezvous_at_first_store(d, threading.Barrier(THREADS))
    d.set_mem_limit(limit * P)
    start = threading.Barrier(THREADS)

    def write(k: int) -> None:
        start.wait(30)
        with contextlib.suppress(MemLimitError):
            d.write(k * 32 * P, requests[k])

    threads = [threading.Thread(target=write, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pool.peak_pages <= limit + THREADS * DEFAULT_CHAIN_SIZE, (pool.peak_pages, limit)
    for k in range(THREADS):  # each request all or nothing
        assert d.read(k * 32 * P, 32 * P) in (requests[k], bytes(32 * P))
    d.reset()


def pages_per_zspage(pool: ZsPool, page: bytes) -> int:
    return pool.class_for_size(len(lz4.block.compress(page, store_size=False))).pages_per_zspage


def test_mem_limit_is_page_rounded(dev: ZramDevice) -> None:
    dev.set_mem_limit(1)
    assert dev.mem_limit == P
    with pytest.raises(InvalidValueError):
        dev.set_mem_limit(-1)


@pytest.mark.parametrize(
    ("nbytes", "shown"),
    [
        (2**64 - 1, 0),  # PAGE_ALIGN wraps in 64 bits: no limit, as the kernel shows it
        (2**64 - 4095, 0),
        (2**64 - 4096, 2**64 - 4096),
        (2**64 - 4097, 2**64 - 4096),
        (2**63 + 1, 2**63 + 4096),
    ],
)
def test_mem_limit_near_the_top_wraps_like_the_kernel(
    dev: ZramDevice, nbytes: int, shown: int
) -> None:
    dev.set_mem_limit(nbytes)
    assert dev.mem_limit == shown
    assert dev.mm_stat().mem_limit == shown
    assert dev.mm_stat().mem_limit < 2**64  # a u64, as mm_stat prints it
    if not shown:
        dev.write(0, os.urandom(4 * P))  # no limit in force


def test_mem_limit_beyond_a_u64_is_erange(dev: ZramDevice) -> None:
    with pytest.raises(OutOfRangeError):
        dev.set_mem_limit(2**64)


def _at_the_limit(dev: ZramDevice, pages: int) -> bytes:
    """Fill ``pages`` pages with huge (raw) objects and set mem_limit to exactly what the
    pool holds, so that any new object is over the limit; returns what was written."""
    noise = os.urandom(pages * P)
    dev.write(0, noise)
    dev.set_mem_limit(dev.mm_stat().mem_used_total)
    with pytest.raises(MemLimitError):
        dev.write(pages * P, text_page(0))  # it really is full
    return noise


def test_discard_at_mem_limit_never_fails(dev: ZramDevice) -> None:
    noise = _at_the_limit(dev, 16)
    used = dev.mm_stat().mem_used_total
    failed = dev.io_stat().failed_writes
    # 512-aligned but not page-aligned: half a page, nine whole pages, half a page; the
    # partial pages would need new objects if they were rewritten, and they are not
    dev.discard(P // 2, 10 * P)
    assert dev.read(0, 16 * P) == noise[:P] + bytes(9 * P) + noise[10 * P :]
    s = dev.mm_stat()
    assert s.mem_used_total == used - 9 * P
    assert s.orig_data_size == 7 * P
    assert dev.io_stat().notify_free == 9
    assert dev.io_stat().failed_writes == failed
    dev.discard(11 * P + 512, 1024)  # inside one page: nothing to free, nothing changes
    assert dev.read(11 * P, P) == noise[11 * P : 12 * P]
    assert dev.io_stat().notify_free == 9
    pool = dev.pool
    assert pool is not None
    check_pool_invariants(pool)


def test_write_zeroes_of_a_partial_page_at_mem_limit_is_all_or_nothing(
    dev: ZramDevice,
) -> None:
    noise = _at_the_limit(dev, 16)
    # its bytes must read back as zeros, so a partial page is rewritten, which needs a new
    # object: refused like any write at the limit, with nothing changed
    with pytest.raises(MemLimitError):
        dev.write_zeroes(P // 2, 2 * P)
    assert dev.read(0, 16 * P) == noise
    dev.write_zeroes(4 * P, 4 * P)  # whole pages need no memory, with or without trim
    dev.write_zeroes(8 * P, 4 * P, may_trim=False)
    assert dev.read(4 * P, 8 * P) == bytes(8 * P)
    dev.write_zeroes(P // 2, 2 * P)  # the freed frames make room for the edges now
    assert dev.read(0, 4 * P) == noise[: P // 2] + bytes(2 * P) + noise[P // 2 + 2 * P : 4 * P]


def test_direct_compaction_makes_room_under_the_limit(dev: ZramDevice) -> None:
    pages = synthetic_pages(2048, seed=5)
    pages = [p for p in pages if same_fill(memoryview(p)) is None]
    dev.write(0, b"".join(pages))
    for i in range(0, len(pages), 2):  # free every other page: sparse zspages everywhere
        dev.discard(i * P, P)
    pool = dev.pool
    assert pool is not None
    assert pool.can_compact() > 0
    before = pool.total_pages
    dev.set_mem_limit(before * P)  # at the limit: the next write only fits after compaction
    dev.write(0, os.urandom(P))
    assert dev.mm_stat().pages_compacted > 0
    assert pool.total_pages <= before
    for i in range(1, len(pages), 2):
        assert dev.read(i * P, P) == pages[i]


def test_mem_used_max_tracks_and_resets(dev: ZramDevice) -> None:
    dev.write(0, os.urandom(64 * P))
    peak = dev.mm_stat().mem_used_max
    assert peak >= 64 * P
    dev.discard(0, 64 * P)
    s = dev.mm_stat()
    assert s.mem_used_total == 0
    assert s.mem_used_max == peak
    dev.reset_mem_used_max()
    assert dev.mm_stat().mem_used_max == 0


def test_compaction_through_the_device_keeps_data(dev: ZramDevice) -> None:
    pages = synthetic_pages(1024, seed=9)
    dev.write(0, b"".join(pages))
    for i in range(0, 1024, 3):
        dev.discard(i * P, P)
        pages[i] = bytes(P)
    before = dev.mm_stat()
    freed = dev.compact()
    after = dev.mm_stat()
    assert freed > 0
    assert after.pages_compacted == before.pages_compacted + freed
    assert after.mem_used_total == before.mem_used_total - freed * P
    assert dev.read(0, 1024 * P) == b"".join(pages)


# -- statistics -----------------------------------------------------------------------------------


def test_mem_stat_reports_the_real_cost(dev: ZramDevice) -> None:
    dev.write(0, os.urandom(16 * P))
    m = dev.mem_stat()
    assert m.mem_used_total == dev.mm_stat().mem_used_total
    assert m.rss > m.mem_used_total
    assert m.slot_table == (16 * MiB // P) * 16
    assert 0 < m.pool_metadata < 64 * 1024
    assert m.arena_reserved >= 2 * 16 * MiB
