"""The two cores implement one contract (zramd.core_api.CoreAPI): the same public names,
signatures that accept every call the Protocol allows, and the same exception (type and
message) for the same bad call, on an open core and on a closed one. Then a few behaviours
both must share, each of which one of them once got wrong."""

from __future__ import annotations

import inspect
import os
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_pool_api import accepts

from zramd._zram import Codec, Core, Pool
from zramd.core import ZramCore
from zramd.core_api import CoreAPI
from zramd.errors import CorruptionError, InvalidIOError, MemLimitError
from zramd.page import PAGE_SIZE
from zramd.slots import ZRAM_SAME, ZRAM_WB

PAGES = 16
SIZE = PAGES * PAGE_SIZE
BIG = 1 << 64  #: one past what the C core's offsets, indices and handles hold


def make(kind: str, pages: int = PAGES, **kwargs: Any) -> CoreAPI:
    """A core of one kind over its own C pool, with lz4 and a zstd secondary (priority 1), and
    a clock that stands still."""
    make_core: Any = Core if kind == "c" else ZramCore
    kwargs.setdefault("clock", lambda: 100.5)
    core: CoreAPI = make_core(pages, Pool(8 << 20), [Codec("lz4"), Codec("zstd")], **kwargs)
    return core


@pytest.fixture
def cores() -> Iterator[tuple[CoreAPI, CoreAPI]]:
    c, py = make("c"), make("python")
    yield c, py
    c.close()
    py.close()


def public(obj: object) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("ok", call())
    except Exception as e:  # compared between the two cores
        return (type(e).__name__, str(e))


def test_both_cores_expose_exactly_the_contract(cores: tuple[CoreAPI, CoreAPI]) -> None:
    c, py = cores
    assert public(c) == public(CoreAPI)
    assert public(py) == public(CoreAPI)


@pytest.mark.parametrize("name", sorted(public(CoreAPI)))
def test_methods_and_properties_are_compatible(cores: tuple[CoreAPI, CoreAPI], name: str) -> None:
    member = inspect.getattr_static(CoreAPI, name)
    if isinstance(member, property):
        c, py = (getattr(core, name) for core in cores)
        assert type(c) is type(py) or name == "pool", (name, c, py)
        return
    for core in cores:
        where = f"{type(core).__name__}.{name}"
        accepts(inspect.signature(getattr(core, name)), inspect.signature(member), where)


def test_constructors_are_compatible() -> None:
    c = inspect.signature(Core)
    py = inspect.signature(ZramCore)
    assert list(c.parameters) == list(py.parameters)
    for name, param in c.parameters.items():
        ref = py.parameters[name]
        assert (param.kind, param.default) == (ref.kind, ref.default), name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, [Codec("lz4")]), "pages -1 outside 0..4503599627370495"),
        ((BIG, [Codec("lz4")]), "pages 18446744073709551616 outside 0..4503599627370495"),
        ((4, []), "comps: one to four codecs by priority, the primary required"),
        ((4, [None, Codec("lz4")]), "comps: one to four codecs by priority, the primary"),
        ((4, [Codec("lz4")] * 5), "comps: one to four codecs by priority, the primary"),
    ],
)
def test_bad_core_arguments_are_refused_alike(args: tuple[Any, Any], message: str) -> None:
    pages, comps = args
    for kind in (Core, ZramCore):
        with pytest.raises(ValueError, match=message):
            kind(pages, Pool(1 << 20), comps)


#: calls outside what the contract accepts, and the exception both cores raise for each
BAD_CALLS: dict[str, tuple[Callable[[CoreAPI], Any], type[Exception] | None]] = {
    # requests outside the device, offsets and lengths of any size and sign
    "write past the end": (lambda c: c.write(SIZE - 1, b"xy"), InvalidIOError),
    "write at a negative offset": (lambda c: c.write(-1, b"x"), InvalidIOError),
    "write beyond 64 bits": (lambda c: c.write(BIG, b"x"), InvalidIOError),
    "empty write past the end": (lambda c: c.write(SIZE + 1, b""), InvalidIOError),
    "empty write at the end": (lambda c: c.write(SIZE, b""), None),
    "read past the end": (lambda c: c.read_into(SIZE, memoryview(bytearray(1))), InvalidIOError),
    "read at a negative offset": (
        lambda c: c.read_into(-4096, memoryview(bytearray(1))),
        InvalidIOError,
    ),
    "read beyond 64 bits": (lambda c: c.read_into(BIG, memoryview(bytearray(1))), InvalidIOError),
    "read into a read-only buffer": (lambda c: c.read_into(0, memoryview(b"ab")), BufferError),
    "discard past the end": (lambda c: c.discard(0, SIZE + 1), InvalidIOError),
    "discard at a negative offset": (lambda c: c.discard(-1, 1), InvalidIOError),
    "discard of a negative length": (lambda c: c.discard(0, -1), InvalidIOError),
    "discard beyond 64 bits": (lambda c: c.discard(BIG, PAGE_SIZE), InvalidIOError),
    "write_zeroes beyond 64 bits": (
        lambda c: c.write_zeroes(BIG + PAGE_SIZE, PAGE_SIZE, may_trim=False),
        InvalidIOError,
    ),
    "write_zeroes past the end": (lambda c: c.write_zeroes(SIZE, 1), InvalidIOError),
    "extents past the end": (lambda c: c.extents(SIZE, 1), InvalidIOError),
    "extents at a negative offset": (lambda c: c.extents(-1, 0), InvalidIOError),
    "extents beyond 64 bits": (lambda c: c.extents(BIG, 0), InvalidIOError),
    "empty extents at the end": (lambda c: c.extents(SIZE, 0), None),
    # slot operations on slots that do not exist: those that act on one raise, the releases
    # (unpick, tried) ignore them as they ignore slots that changed
    "take_page past the end": (lambda c: c.take_page(PAGES), InvalidIOError),
    "take_page of a negative index": (lambda c: c.take_page(-1), InvalidIOError),
    "take_page beyond 64 bits": (lambda c: c.take_page(BIG), InvalidIOError),
    "complete_writeback past the end": (
        lambda c: c.complete_writeback(PAGES, 1, 0),
        InvalidIOError,
    ),
    "complete_writeback of a negative index": (
        lambda c: c.complete_writeback(-1, 1, 0),
        InvalidIOError,
    ),
    "complete_writeback to a negative block": (
        lambda c: c.complete_writeback(0, 1, -1),
        ValueError,
    ),
    "complete_writeback to a block beyond 64 bits": (
        lambda c: c.complete_writeback(0, 1, BIG),
        ValueError,
    ),
    "complete_recompress past the end": (
        lambda c: c.complete_recompress(PAGES, 1, 2, 100, 1),
        InvalidIOError,
    ),
    "complete_recompress of a negative index": (
        lambda c: c.complete_recompress(-1, 1, 2, 100, 1),
        InvalidIOError,
    ),
    "complete_recompress with no codec": (
        lambda c: c.complete_recompress(0, 1, 2, 100, 2),
        ValueError,
    ),
    "complete_recompress with a negative priority": (
        lambda c: c.complete_recompress(0, 1, 2, 100, -1),
        ValueError,
    ),
    "complete_recompress of size 0": (lambda c: c.complete_recompress(0, 1, 2, 0, 1), ValueError),
    "complete_recompress of 4097 bytes": (
        lambda c: c.complete_recompress(0, 1, 2, 4097, 1),
        ValueError,
    ),
    "complete_recompress of handle 0": (
        lambda c: c.complete_recompress(0, 1, 0, 100, 1),
        ValueError,
    ),
    "complete_recompress of a handle beyond 64 bits": (
        lambda c: c.complete_recompress(0, 1, BIG, 100, 1),
        ValueError,
    ),
    "slot past the end": (lambda c: c.slot(PAGES), InvalidIOError),
    "slot of a negative index": (lambda c: c.slot(-1), InvalidIOError),
    "slot beyond 64 bits": (lambda c: c.slot(BIG + 1), InvalidIOError),
    "tried past the end": (lambda c: c.tried(PAGES, 1, True), None),
    "tried of a negative index": (lambda c: c.tried(-1, 1, True), None),
    "tried beyond 64 bits": (lambda c: c.tried(BIG + 3, 0, True), None),
    "unpick of slots that do not exist": (lambda c: c.unpick([-1, PAGES, BIG + 3]), None),
    "pick of a range partly before the device": (lambda c: c.pick(-5, 3, 0, 0), None),
    "pick of a range beyond 64 bits": (lambda c: c.pick(BIG, BIG + 5, 0, 0), None),
    "pick of flags beyond 32 bits": (lambda c: c.pick(0, PAGES, 1 << 32, 0), ValueError),
    "pick of negative flags": (lambda c: c.pick(0, PAGES, 0, -1), ValueError),
    "mark_idle with a cutoff beyond 64 bits": (lambda c: c.mark_idle(BIG), None),
    "mark_idle with a negative cutoff": (lambda c: c.mark_idle(-BIG), None),
    # counts of frames
    "set_mem_limit to a negative count": (lambda c: c.set_mem_limit(-1), ValueError),
    "set_mem_limit beyond 64 bits": (lambda c: c.set_mem_limit(BIG), ValueError),
    "note_peak of a negative count": (lambda c: c.note_peak(-1), ValueError),
}


def populate(core: CoreAPI) -> None:
    """Something in every slot, so that a call on the wrong slot changes something."""
    for i in range(PAGES):
        core.write(
            i * PAGE_SIZE, bytes([i + 1]) * 100 + random.Random(i).randbytes(200) * 10 + bytes(1996)
        )


def state(core: CoreAPI) -> tuple[Any, ...]:
    buf = bytearray(SIZE)
    snapshot = (core.stats(), [core.slot(i) for i in range(PAGES)])
    core.read_into(0, memoryview(buf))
    return (*snapshot, bytes(buf))


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_bad_calls_fail_alike_and_change_nothing(name: str) -> None:
    call, expected = BAD_CALLS[name]
    results = []
    for kind in ("c", "python"):
        core = make(kind)
        populate(core)
        before = state(core)
        results.append(outcome(lambda core=core: call(core)))
        if expected is not None:  # a refused call changes nothing
            assert state(core) == before, kind
        core.close()
    if expected is BufferError:  # the message is the buffer's own, in C
        assert results[0][0] == results[1][0]
    else:
        assert results[0] == results[1]
    assert results[0][0] == (expected.__name__ if expected else "ok"), results[0]


#: every call of the contract, well formed
CALLS: dict[str, Callable[[CoreAPI], Any]] = {
    "write": lambda c: c.write(0, b"x" * 4096),
    "empty write": lambda c: c.write(0, b""),
    "read_into": lambda c: c.read_into(0, memoryview(bytearray(4096))),
    "empty read": lambda c: c.read_into(0, memoryview(bytearray(0))),
    "discard": lambda c: c.discard(0, 4096),
    "empty discard": lambda c: c.discard(0, 0),
    "write_zeroes": lambda c: c.write_zeroes(0, 4096, may_trim=False),
    "empty write_zeroes": lambda c: c.write_zeroes(SIZE, 0),
    "extents": lambda c: c.extents(0, SIZE),
    "extents past the end": lambda c: c.extents(SIZE, 1),
    "mark_idle": lambda c: c.mark_idle(),
    "mark_idle with a cutoff": lambda c: c.mark_idle(5),
    "pick": lambda c: c.pick(0, PAGES, 0, 0),
    "unpick": lambda c: c.unpick([0, 1]),
    "take_page": lambda c: c.take_page(0),
    "take_page past the end": lambda c: c.take_page(PAGES),
    "complete_writeback": lambda c: c.complete_writeback(0, 1, 0),
    "tried": lambda c: c.tried(0, 1, True),
    "complete_recompress": lambda c: c.complete_recompress(0, 1, 2, 100, 1),
    "complete_recompress with no codec": lambda c: c.complete_recompress(0, 1, 2, 100, 3),
    "reclaim_blocks": lambda c: c.reclaim_blocks(),
    "set_mem_limit": lambda c: c.set_mem_limit(5),
    "reset_max": lambda c: c.reset_max(),
    "note_peak": lambda c: c.note_peak(7),
    "stats": lambda c: c.stats(),
    "slot": lambda c: c.slot(0),
    "slot past the end": lambda c: c.slot(PAGES),
    "close": lambda c: c.close(),
    "pages": lambda c: c.pages,
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_closed_core_behaves_alike(name: str) -> None:
    """After close() requests fail as outside a device of 0 bytes, slot operations as on a
    device that was reset; releases (unpick, tried), limits and statistics still answer."""
    results = []
    for kind in ("c", "python"):
        core = make(kind)
        core.write(0, b"y" * 5000)
        core.close()
        results.append(outcome(lambda core=core: CALLS[name](core)))
        results.append(outcome(core.stats))
    assert results[0:2] == results[2:4]
    assert results[0][0] in ("ok", "InvalidIOError", "ValueError"), results[0]


# -- behaviours both share ------------------------------------------------------------------


@pytest.fixture(params=["c", "python"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def written_back(
    kind: str,
    blocks: dict[int, bytes],
    pages: dict[int, int],
    backing_read: Callable[[list[int]], list[bytes]] | None = None,
) -> CoreAPI:
    """A core whose pages (index -> block) hold random data written back to ``blocks``."""
    if backing_read is None:
        backing_read = lambda wanted: [blocks[b] for b in wanted]  # noqa: E731
    core = make(kind, backing_read=backing_read)
    for index, block in pages.items():
        core.write(index * PAGE_SIZE, os.urandom(PAGE_SIZE))
        ((i, _),) = core.pick(index, index + 1, 0, ZRAM_WB | ZRAM_SAME)
        taken = core.take_page(i)
        assert taken is not None
        blocks[block] = taken[2]
        assert core.complete_writeback(i, taken[1], block)
    return core


def test_a_refused_write_over_a_written_back_edge_lets_blocks_be_reclaimed(kind: str) -> None:
    """A write whose first edge is written back (to be fetched) and whose last edge cannot be
    stored (mem_limit) fails; the blocks it listed must not stay pinned, or the blocks freed
    from then on are never reclaimed and the backing store leaks. (The twin kept the pin.)"""
    blocks: dict[int, bytes] = {}
    core = written_back(kind, blocks, {0: 7, 3: 8})
    core.write(PAGE_SIZE, os.urandom(PAGE_SIZE))  # stored raw: a frame of its own
    core.set_mem_limit(core.pool.total_pages)
    with pytest.raises(MemLimitError):  # the page 1 edge needs a frame more
        core.write(100, os.urandom(PAGE_SIZE))
    core.set_mem_limit(0)
    core.discard(3 * PAGE_SIZE, PAGE_SIZE)  # frees block 8
    assert core.reclaim_blocks() == [8]
    core.close()


def test_reclaimed_blocks_come_back_in_the_order_they_were_freed(kind: str) -> None:
    blocks: dict[int, bytes] = {}
    pages = 300
    core = make(kind, pages, backing_read=lambda wanted: [blocks[b] for b in wanted])
    core.write(0, os.urandom(pages * PAGE_SIZE))
    for i, _ in core.pick(0, pages, 0, ZRAM_WB | ZRAM_SAME):
        taken = core.take_page(i)
        assert taken is not None
        blocks[1000 + i] = taken[2]
        assert core.complete_writeback(i, taken[1], 1000 + i)
    core.discard(0, pages * PAGE_SIZE)
    assert core.stats().wb_pending == pages
    assert core.reclaim_blocks() == [1000 + i for i in range(pages)]
    core.close()


def test_a_written_back_page_with_no_backing_store_is_corruption(kind: str) -> None:
    core = make(kind)
    core.write(0, os.urandom(PAGE_SIZE))
    ((i, _),) = core.pick(0, 1, 0, 0)
    taken = core.take_page(i)
    assert taken is not None
    assert core.complete_writeback(i, taken[1], 3)
    with pytest.raises(CorruptionError, match="no backing store is set"):
        core.read_into(0, memoryview(bytearray(1)))
    assert core.stats().failed_reads == 1
    core.close()


@pytest.mark.parametrize(
    ("pages", "message"),
    [
        (lambda b: [b[0]] * 2, "backing_read returned the wrong number of pages"),
        (lambda b: [b[0][:100]], "backing_read returned a page not 4096 bytes long"),
    ],
)
def test_a_backing_read_that_returns_nonsense_is_corruption(
    kind: str, pages: Callable[[list[bytes]], list[bytes]], message: str
) -> None:
    blocks: dict[int, bytes] = {}
    broken = [False]

    def backing_read(wanted: list[int]) -> list[bytes]:
        found = [blocks[b] for b in wanted]
        return pages(found) if broken[0] else found

    core = written_back(kind, blocks, {2: 5}, backing_read)
    broken[0] = True
    for call in (
        lambda: core.read_into(2 * PAGE_SIZE, memoryview(bytearray(10))),
        lambda: core.write(2 * PAGE_SIZE + 1, b"x"),
    ):
        with pytest.raises(CorruptionError, match=message):
            call()
    stats = core.stats()
    assert (stats.failed_reads, stats.failed_writes) == (1, 1)
    core.close()


def test_an_empty_extents_request_at_the_end_describes_nothing(kind: str) -> None:
    """extents(size, 0) is inside the device but names no page: neither core may look at the
    slot after the last (the C core read the next column's first word as its flags, the twin
    raised IndexError once the table ended on a page boundary)."""
    pages = 1024  # the flags column ends on a page boundary
    core = make(kind, pages)
    core.write(0, os.urandom(PAGE_SIZE))
    assert core.extents(pages * PAGE_SIZE, 0) == []
    assert core.extents(pages * PAGE_SIZE - 1, 0) == [((pages - 1) * PAGE_SIZE, PAGE_SIZE, 3)]
    core.close()


def test_a_write_refused_for_a_full_arena_fails_alike() -> None:
    """Both compact once, then refuse with the same message (the twin passed on the pool's)."""
    data = random.Random(5).randbytes(32 * PAGE_SIZE)

    def fill(core: CoreAPI) -> tuple[list[tuple[str, Any]], Any]:
        chunks = [data[k << 15 : (k + 1) << 15] for k in range(4)]  # 8 pages each
        outcomes = [outcome(lambda k=k, c=c: core.write(k << 15, c)) for k, c in enumerate(chunks)]
        return outcomes, core.stats()

    results = []
    for kind in (Core, ZramCore):
        core: CoreAPI = kind(64, Pool(24 * PAGE_SIZE), [Codec("lz4")])
        results.append(fill(core))
        core.close()
    assert results[0] == results[1]
    assert results[0][0][-1] == (
        "PoolExhaustedError",
        "write refused: the pool's arena has no frame left even after compaction",
    )


def test_a_refused_write_leaves_both_pools_alike() -> None:
    """A write refused at its last edge frees what it stored in the same order in both, so
    the next objects get the same handles. (The twin freed the whole pages before the
    edges: from then on the two cores handed out different handles.)"""
    slots = []
    for kind in ("c", "python"):
        core = make(kind)
        rnd = random.Random(3)
        core.set_mem_limit(2)
        # full page 1 and edge page 0 are stored raw (a frame each), edge page 2 needs a
        # zspage of a small class: over the limit
        with pytest.raises(MemLimitError):
            core.write(100, rnd.randbytes(PAGE_SIZE - 100) + rnd.randbytes(PAGE_SIZE) + b"z")
        core.set_mem_limit(0)
        core.write(5 * PAGE_SIZE, rnd.randbytes(3 * PAGE_SIZE))
        slots.append([core.slot(i) for i in range(PAGES)])
        core.close()
    assert slots[0] == slots[1]
