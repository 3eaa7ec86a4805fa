"""zramd._zsfast against the Python reference loops: same results, same errors, no stale build.

The rest of the pool and device suites run on both implementations (the ``pool_impl``
fixture); these tests drive the two side by side and compare everything observable.
"""

from __future__ import annotations

import random
import sys
import threading
import types
from collections.abc import Iterator

import pytest

from zramd import (
    CompressionError,
    CorruptionError,
    InvalidHandleError,
    PoolExhaustedError,
    ZsPool,
    size_class,
)
from zramd import pool as pool_module
from zramd.size_class import PAGE_SIZE, ZS_HANDLE_SIZE
from zramd.testing import check_pool_invariants

pytestmark = pytest.mark.usefixtures("built")


@pytest.fixture
def built() -> None:
    if pool_module.native_module() is None:
        pytest.fail("zramd._zsfast is not built or is stale: run scripts/test (pip install -e .)")


def pair(size: int = 64 << 20) -> tuple[ZsPool, ZsPool]:
    return ZsPool(size, native=True), ZsPool(size, native=False)


def class_rows(pool: ZsPool) -> list[tuple[object, ...]]:
    return [
        (r.size, r.fullness, r.obj_allocated, r.obj_used, r.pages_used, r.freeable)
        for r in pool.stats().classes
    ]


def test_the_pools_say_which_loops_they_run() -> None:
    fast, ref = pair()
    assert fast.native
    assert not ref.native
    fast.close()
    ref.close()


def test_random_workload_matches_the_reference() -> None:
    """Batches of every size (huge and frame-straddling ones included), frees in random order
    and compaction: both pools hold the same bytes under the same class statistics."""
    rng = random.Random(7)
    fast, ref = pair()
    live: list[tuple[int, int, bytes]] = []  # (fast handle, ref handle, data)
    for step in range(300):
        if live and rng.random() < 0.4:
            rng.shuffle(live)
            k = rng.randint(1, min(len(live), 40))
            gone, live = live[:k], live[k:]
            fast.free_many([f for f, _, _ in gone])
            ref.free_many([r for _, r, _ in gone])
        else:
            batch = [
                rng.randbytes(rng.choice([rng.randint(1, 4096), rng.randint(1, 200), 4096]))
                for _ in range(rng.randint(1, 40))
            ]
            hf = fast.store_many(batch)
            hr = ref.store_many(batch)
            live += zip(hf, hr, batch, strict=True)
        if step % 50 == 49:
            assert fast.compact() == ref.compact()
        assert class_rows(fast) == class_rows(ref)
    assert fast.load_many([f for f, _, _ in live]) == [d for _, _, d in live]
    assert ref.load_many([r for _, r, _ in live]) == [d for _, _, d in live]
    assert fast.total_pages == ref.total_pages
    check_pool_invariants(fast)
    check_pool_invariants(ref)
    fast.close()
    ref.close()


def test_objects_stored_by_one_implementation_are_read_and_freed_by_the_other() -> None:
    """Both work on the same layout and state: mixing them on one pool loses nothing."""
    pool = ZsPool(16 << 20, native=True)
    data = [bytes([i]) * n for i, n in enumerate([10, 100, 1000, 3000, 4096, 200, 2047])]
    handles = pool.store_many(data)  # C
    assert pool._load_many_py(handles) == data
    pool._free_many_py(handles[:3])
    more = pool._store_many_py(data[:3])
    assert pool.load_many(more + handles[3:]) == data[:3] + data[3:]  # C
    pool.free_many(more + handles[3:])
    check_pool_invariants(pool)
    assert pool.stats().objects == 0
    pool.close()


@pytest.mark.parametrize("bad", [b"", bytes(4097)])
def test_a_bad_size_stores_nothing(bad: bytes) -> None:
    fast, ref = pair()
    for p in (fast, ref):
        with pytest.raises(ValueError, match=f"object size {len(bad)} outside 1..4096"):
            p.store_many([b"a" * 10, b"b" * 4096, bad])
        assert p.stats().objects == 0
        check_pool_invariants(p)
        p.close()


def test_exhaustion_mid_batch_is_all_or_nothing() -> None:
    fast, ref = pair(8 * PAGE_SIZE)
    for p in (fast, ref):
        keep = p.store_many([b"k" * 100])
        with pytest.raises(PoolExhaustedError, match="arena exhausted"):
            p.store_many([bytes([i]) * PAGE_SIZE for i in range(9)] + [b"x" * 700])
        assert p.stats().objects == 1
        assert p.load_many(keep) == [b"k" * 100]
        check_pool_invariants(p)
        p.close()


@pytest.mark.parametrize("handle", [0, 1, 255, -256, 12345 << 8 | 1, 1 << 70, 3 << 8 | 7])
def test_invalid_handles_raise_the_reference_errors(handle: int) -> None:
    fast, ref = pair()
    fast.store(b"x" * 50)
    ref.store(b"x" * 50)
    for op in ("load_many", "free_many"):
        with pytest.raises(InvalidHandleError) as ef:
            getattr(fast, op)([handle])
        with pytest.raises(InvalidHandleError) as er:
            getattr(ref, op)([handle])
        assert str(ef.value) == str(er.value)
    fast.close()
    ref.close()


@pytest.mark.parametrize("bad", ["x", 1.5, None, 1 << 300])
def test_non_handles_fail_as_in_the_reference(bad: object) -> None:
    fast, ref = pair()
    for op in ("load_many", "free_many"):
        errors = []
        for p in (fast, ref):
            with pytest.raises((TypeError, InvalidHandleError)) as e:
                getattr(p, op)([bad])
            errors.append((type(e.value), str(e.value)))
        assert errors[0] == errors[1]
    fast.close()
    ref.close()


def test_free_many_stops_at_the_first_invalid_handle() -> None:
    fast, ref = pair()
    for p in (fast, ref):
        a, b, c = p.store_many([b"a" * 30, b"b" * 900, b"c" * 30])
        p.free(b)
        with pytest.raises(InvalidHandleError, match="not allocated"):
            p.free_many([a, b, c])
        assert p.load_many([c]) == [b"c" * 30]  # after the bad one: untouched
        with pytest.raises(InvalidHandleError):
            p.load_many([a])  # before it: freed
        check_pool_invariants(p)
        p.close()


def test_a_corrupt_header_is_reported_not_followed() -> None:
    fast, ref = pair()
    for p in (fast, ref):
        h = p.store(b"q" * 300)
        _, off = p.locate(h)
        p.words[off >> 3] ^= 1 << 20  # a flipped bit in the header's handle
        with pytest.raises(CorruptionError, match="expected handle"):
            p.load_many([h])
        with pytest.raises(CorruptionError, match="expected handle"):
            p.free_many([h])
        p.words[off >> 3] ^= 1 << 20
        assert p.read(h) == b"q" * 300
        p.close()


def test_straddling_objects_round_trip() -> None:
    """Objects laid across the frame boundaries of their zspage, written and read in C."""
    fast = ZsPool(16 << 20, native=True)
    data = [bytes([i % 250 + 1]) * (900 + 37 * (i % 20)) for i in range(200)]
    handles = fast.store_many(data)
    straddlers = [
        h
        for h, d in zip(handles, data, strict=True)
        if (fast.locate(h)[1] + ZS_HANDLE_SIZE) % PAGE_SIZE + len(d) > PAGE_SIZE
    ]
    assert straddlers
    assert fast.load_many(handles) == data
    fast.close()


def test_a_stale_build_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    stale = types.ModuleType("zramd._zsfast")
    stale.CONSTANTS = dict(pool_module.NATIVE_ABI, ABI_VERSION=0)  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "zramd._zsfast", stale)
    monkeypatch.setattr("zramd._zsfast", stale, raising=False)
    assert pool_module.native_module() is None
    assert not pool_module.native_default()
    with pytest.raises(RuntimeError, match="not built"):
        ZsPool(1 << 20, native=True)
    assert not ZsPool(1 << 20).native


def test_zramd_native_0_selects_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZRAMD_NATIVE", "0")
    assert not ZsPool(1 << 20).native
    monkeypatch.setenv("ZRAMD_NATIVE", "1")
    assert ZsPool(1 << 20).native


def test_a_closed_pool_refuses_io() -> None:
    pool = ZsPool(1 << 20, native=True)
    h = pool.store(b"z" * 10)
    pool.close()
    with pytest.raises(ValueError, match="closed"):
        pool.load_many([h])
    pool.close()  # idempotent


def test_encode_pages_matches_the_reference() -> None:
    """Same-filled pages (the word's bytes in every position), pages that differ from a fill
    only in their first, middle or last byte, compressible and incompressible (huge) pages."""
    from zramd import _zsfast  # noqa: PLC0415
    from zramd.compress import create  # noqa: PLC0415
    from zramd.device import HUGE_FLAGS, encode_pages  # noqa: PLC0415
    from zramd.slots import ZRAM_SAME  # noqa: PLC0415
    from zramd.testing import synthetic_pages  # noqa: PLC0415

    rng = random.Random(3)
    word = rng.randbytes(8)
    pages = [
        bytes(PAGE_SIZE),
        b"\xff" * PAGE_SIZE,
        word * (PAGE_SIZE // 8),
        word * (PAGE_SIZE // 8 - 1) + word[:7] + b"\x00",
        b"\x01" + bytes(PAGE_SIZE - 1),
        bytes(2048) + b"\x01" + bytes(2047),
        rng.randbytes(PAGE_SIZE),
        *synthetic_pages(8, seed=5),
    ]
    src = memoryview(b"\xee" * 512 + b"".join(pages))  # pages start at byte 512
    comp = create("lz4")
    n = len(pages)
    results = []
    for encode in (_zsfast.encode_pages, encode_pages):
        values: list[int | None] = [None] * (n + 2)
        flags = [-1] * (n + 2)
        objs, where = encode(src, 512, 1, n - 1, comp.compress, 3000, ZRAM_SAME, HUGE_FLAGS,
                             values, flags)  # fmt: skip
        results.append(([bytes(o) for o in objs], where, values, flags))
    assert results[0] == results[1]
    objs, where, values, flags = results[0]
    assert values[0] is None
    assert flags[0] == -1
    assert values[2] == int.from_bytes(word, "little")
    assert flags[2] == ZRAM_SAME
    assert flags[6] == HUGE_FLAGS
    assert objs[where.index(6)] == pages[6]
    with pytest.raises(ValueError, match="outside the buffer"):
        _zsfast.encode_pages(src, 512, 0, n + 1, comp.compress, 3000, 0, 0, values, flags)


def test_decode_pages_matches_the_reference() -> None:
    from zramd import _zsfast  # noqa: PLC0415
    from zramd.compress import create  # noqa: PLC0415
    from zramd.compress.base import raw_decompressor  # noqa: PLC0415
    from zramd.device import decode_pages  # noqa: PLC0415
    from zramd.testing import synthetic_pages  # noqa: PLC0415

    comp = create("lz4")
    pages = synthetic_pages(4, seed=9)
    contents: list[int | bytes] = [
        0,
        0x0102030405060708,
        (1 << 64) - 1,
        comp.compress(pages[0]),
        bytes(pages[1]),  # stored raw (huge)
        comp.compress(pages[2]),
    ]
    bufs = [bytearray(b"\xaa" * (PAGE_SIZE * len(contents))) for _ in range(2)]
    raw = raw_decompressor(comp)
    assert raw is not comp.decompress  # lz4 offers its binding
    _zsfast.decode_pages(memoryview(bufs[0]), contents, raw, comp.decompress)
    decode_pages(memoryview(bufs[1]), contents, raw, comp.decompress)
    assert bufs[0] == bufs[1]
    assert bufs[0][PAGE_SIZE : PAGE_SIZE + 8] == bytes(range(8, 0, -1))
    assert bufs[0][3 * PAGE_SIZE : 4 * PAGE_SIZE] == pages[0]
    with pytest.raises(ValueError, match="2 pages for a 4096-byte buffer"):
        _zsfast.decode_pages(memoryview(bytearray(PAGE_SIZE)), [0, 0], raw, comp.decompress)
    with pytest.raises(TypeError, match="not int or bytes"):
        _zsfast.decode_pages(memoryview(bytearray(PAGE_SIZE)), ["x"], raw, comp.decompress)
    with pytest.raises(ValueError, match="decompressed to 100 bytes"):
        _zsfast.decode_pages(memoryview(bytearray(PAGE_SIZE)), [b"x"], raw, lambda c, n: bytes(100))
    # a corrupt object: the raw decoder's failure is retried by the careful one, whose
    # CompressionError reaches the caller from either implementation
    for decode in (_zsfast.decode_pages, decode_pages):
        with pytest.raises(CompressionError, match="lz4: corrupt object"):
            decode(memoryview(bytearray(PAGE_SIZE)), [b"\xff" * 50], raw, comp.decompress)


def test_scan_slots_matches_the_reference() -> None:
    """Every kind of slot (empty, same-filled, stored, recompressed, written back, idle and
    picked ones), in two identical tables scanned by each implementation."""
    from array import array  # noqa: PLC0415

    from zramd import _zsfast  # noqa: PLC0415
    from zramd.device import MASKS, scan_slots  # noqa: PLC0415
    from zramd.slots import (  # noqa: PLC0415
        ZRAM_COMP_PRIORITY_SHIFT,
        ZRAM_HUGE,
        ZRAM_IDLE,
        ZRAM_PP_SLOT,
        ZRAM_SAME,
        ZRAM_WB,
    )

    kinds = [
        (0, 0),
        (ZRAM_SAME, 0xDEADBEEF),
        (ZRAM_SAME | ZRAM_IDLE, 0),
        (700, 1),
        (700 | ZRAM_IDLE | ZRAM_PP_SLOT, 2),
        (900 | (1 << ZRAM_COMP_PRIORITY_SHIFT), 3),
        (4096 | ZRAM_HUGE, 4),
        (ZRAM_WB | ZRAM_IDLE, 17),
        (ZRAM_WB, 18),
    ]
    results = []
    for scan in (_zsfast.scan_slots, scan_slots):
        flags = array("I", [f for f, _ in kinds] * 2)
        handles = array("Q", [h for _, h in kinds] * 2)
        actime = array("I", [5] * len(flags))
        out: list[int | bytes] = [0] * (len(flags) - 3)
        loaded: list[list[int]] = []

        def load_many(hs: list[int], loaded: list[list[int]] = loaded) -> list[bytes]:
            loaded.append(list(hs))
            return [b"obj%d" % h for h in hs]

        rare = scan(memoryview(flags), memoryview(handles), memoryview(actime), 3, len(flags),
                    3, 99, out, load_many, MASKS)  # fmt: skip
        results.append((list(flags), list(actime), out, loaded, rare))
    assert results[0] == results[1]
    flags_after, actime_after, out, loaded, rare = results[0]
    assert loaded == [[1, 2, 3, 4, 1, 2, 3, 4]]  # one load_many for the stripe
    assert actime_after[:3] == [5, 5, 5]  # outside lo..hi: untouched
    assert actime_after[9] == 5  # an empty slot is not touched
    assert flags_after[4] == flags_after[13] == 700  # IDLE and PP_SLOT dropped on access
    assert flags_after[7] == ZRAM_WB
    assert out[7] == 0xDEADBEEF
    assert out[0] == b"obj1"
    assert rare is not None
    assert rare[0] == [17, 18, 17, 18]  # blocks to read, and where they go in out
    assert rare[1] == [4, 5, 13, 14]
    prio = 900 | (1 << ZRAM_COMP_PRIORITY_SHIFT)
    assert rare[2] == [(2, prio), (11, prio)]


def test_install_slots_matches_the_reference() -> None:
    """Every old kind (empty, same, stored, huge, written back) replaced by every new kind
    (None, same, stored, huge), with the per-stripe counters across a stripe boundary."""
    from array import array  # noqa: PLC0415

    from zramd import _zsfast  # noqa: PLC0415
    from zramd.device import INSTALL_MASKS, STRIPE_SHIFT, install_slots  # noqa: PLC0415
    from zramd.slots import ZRAM_HUGE, ZRAM_SAME, ZRAM_WB  # noqa: PLC0415

    olds = [(0, 0), (ZRAM_SAME, 7), (300, 11), (4096 | ZRAM_HUGE, 12), (ZRAM_WB, 40)]
    news: list[tuple[int, int | None]] = [
        (0, None),
        (ZRAM_SAME, 0xFFFF_FFFF_FFFF_FFFF),
        (500, 21),
        (4096 | ZRAM_HUGE, 22),
    ]
    pairs = [(o, n) for o in olds for n in news]
    first = (1 << STRIPE_SHIFT) - 7  # the batch crosses into the next stripe
    size = first + len(pairs) + 3
    results = []
    for install in (_zsfast.install_slots, install_slots):
        flags = array("I", [0] * size)
        handles = array("Q", [0] * size)
        actime = array("I", [1] * size)
        for k, ((of, oh), _) in enumerate(pairs):
            flags[first + k], handles[first + k] = of, oh
        counters = tuple(array("q", [100] * 1024) for _ in range(5))
        stale, blocks = install(
            memoryview(flags), memoryview(handles), memoryview(actime), first,
            [n[1] for _, n in pairs], [n[0] for _, n in pairs], 77, counters, INSTALL_MASKS,
        )  # fmt: skip
        results.append((list(flags), list(handles), list(actime), [list(c[:2]) for c in counters],
                        stale, blocks))  # fmt: skip
    assert results[0] == results[1]
    _, _, _, counters_after, stale, blocks = results[0]
    assert stale == [11] * 4 + [12] * 4
    assert blocks == [40] * 4
    assert counters_after[0] != [100, 100]  # stored counts moved in both stripes


# -- misuse that must not crash, leak or deadlock (found in review of the C code) -------------


@pytest.mark.parametrize("native", [True, False])
def test_closing_the_pool_while_iterating_the_argument_is_refused(native: bool) -> None:
    for op in ("store_many", "load_many", "free_many"):
        pool = ZsPool(1 << 20, native=native)
        h = pool.store_many([b"x" * 100])

        def arg(op: str = op, pool: ZsPool = pool, h: list[int] = h) -> Iterator[object]:
            pool.close()
            yield (b"y" * 100) if op == "store_many" else h[0]

        with pytest.raises(ValueError, match=r"closed|released"):  # not a crash
            getattr(pool, op)(arg())


class WatchedLock:
    """A class lock that says when a caller starts waiting for it (the C loops take class
    locks through their ``acquire`` method)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.waiting = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(blocking=False):
            return True
        if not blocking:
            return False
        self.waiting.set()
        return self._lock.acquire(True, timeout)

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_a_list_changed_while_load_many_waits_for_a_lock_is_not_followed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """load_many works on its own copy of the handles: another thread may clear the caller's
    list while the call waits for a class lock (that wait releases the GIL)."""
    monkeypatch.setattr(size_class, "threading", types.SimpleNamespace(Lock=WatchedLock))
    pool = ZsPool(1 << 22, native=True)
    hs = pool.store_many([b"x" * 100] * 200)
    lock = pool._class_of(hs[0]).lock
    assert isinstance(lock, WatchedLock)
    handles = [int(str(h)) for h in hs]  # ints owned by the list alone
    lock.acquire()

    def other() -> None:
        assert lock.waiting.wait(30), "load_many never waited for the lock"
        handles.clear()
        handles.extend(range(10**6, 10**6 + 5))
        lock.release()

    t = threading.Thread(target=other)
    t.start()
    assert pool.load_many(handles) == [b"x" * 100] * 200
    t.join()
    pool.close()


@pytest.mark.parametrize("native", [True, False])
def test_free_many_runs_the_callers_iterator_with_no_lock_held(native: bool) -> None:
    pool = ZsPool(1 << 22, native=native)
    hs = pool.store_many([b"x" * 100] * 3)
    done = threading.Event()

    def run() -> None:
        pool.free_many(h for h in hs if pool.object_size(h) == 100)  # takes the class lock
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(10), "free_many deadlocked on its own iterator"
    assert pool.stats().objects == 0


def test_encode_pages_failures_leak_no_reference() -> None:
    from zramd import _zsfast  # noqa: PLC0415

    same = object()
    before = sys.getrefcount(same)
    for _ in range(100):
        with pytest.raises(IndexError):  # values too short for page 1
            _zsfast.encode_pages(bytes(8192), 0, 1, 1, bytes, 4096, same, 0, [None], [0, 0])
    assert sys.getrefcount(same) == before


@pytest.mark.parametrize("native", [True, False])
def test_decode_pages_lets_keyboard_interrupt_through(native: bool) -> None:
    from zramd import _zsfast  # noqa: PLC0415
    from zramd.device import decode_pages  # noqa: PLC0415

    def raw(obj: bytes, n: int) -> bytes:
        raise KeyboardInterrupt

    decode = _zsfast.decode_pages if native else decode_pages
    with pytest.raises(KeyboardInterrupt):
        decode(memoryview(bytearray(PAGE_SIZE)), [b"abc"], raw, lambda c, n: bytes(PAGE_SIZE))


def test_int_like_handles_work_as_their_int() -> None:
    class Handle:
        def __init__(self, v: int) -> None:
            self.v = v

        def __index__(self) -> int:
            return self.v

    pool = ZsPool(1 << 20, native=True)
    (h,) = pool.store_many([b"q" * 64])
    assert pool.load_many([Handle(h)]) == [b"q" * 64]  # type: ignore[list-item]
    pool.free_many([Handle(h)])  # type: ignore[list-item]
    assert pool.stats().objects == 0
