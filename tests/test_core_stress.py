"""Stress of the data path against a model: parallel requests must not cost data (issue 14).

Four or more client threads write, read, discard and zero random, overlapping ranges of a
device while other threads compact it (``compact`` and the gentle background kind), mark pages
idle and write them back to a backing file, recompress them with a second algorithm, and
clients move ``mem_limit`` up and down so that some writes are refused (ENOSPC). It runs on
the C data path (``zramd._zram``) and, with smaller counts, on the Python twins.

How the content is checked
==========================

Every request is aligned to 512-byte sectors. A write carries a unique *tag*, and every sector
it writes is derived from (page, tag): a 16-byte header naming the page, the tag and the
sector, then a body drawn from realistic page contents or random bytes (so HUGE pages happen),
or, for a tenth of the (page, tag) pairs, one 8-byte word naming the page and the tag, repeated
(so a whole page of them is same-filled). Any sector read back is therefore either zeros or
names the one write it came from, and must equal that write's bytes: a sector from another
page, a mix of two writes or a torn copy cannot pass.

A phase runs the threads; when they have all stopped, the device is quiet and the model
checks, from the requests' results and their start/end times (monotonic clock):

* every sector a reader saw, and every sector at the end, comes from a *source* that may be
  current then: a successful request covering the sector with that value (a zeroing request
  for zeros), or the value from before the phase; the source started before the read ended,
  and no other successful request covering the sector ran entirely between the source's end
  and the read's start (that would have replaced it: a lost or stale value);
* a write refused with ENOSPC is no source: its data appears nowhere;
* requests are atomic and ordered: the last request to cover each sector is known from its
  value (a write by its tag, zeros when only one zeroing request covered it), every other
  request covering that sector was installed before it, and these orders, with each
  request's install inside its own [start, end] interval, must have a solution (no cycle, no
  request forced after its end). Two requests whose installs interleave across pages make a
  cycle;
* the accounting: ``mm_stat`` (pages stored, same-filled, huge, compressed bytes) equals a
  walk of the slot table; the pool holds exactly one object per slot that has one and passes
  its invariant walk (``pool.check()`` for the C pool); ``bd_stat``'s block count equals the
  written-back slots; each slot agrees with the content read (data is stored, a same-filled
  page is SAME, an all-zero page holds no object); ``failed_writes`` grew by the refused
  requests, ``notify_free`` by the whole pages the zeroing requests visited.

The default run takes seconds; ``-m slow`` (``scripts/test --slow``) runs the long profile.
``ZRAMD_STRESS_SEED`` fixes the request plans (the interleaving is the machine's).
"""

from __future__ import annotations

import bisect
import os
import random
import re
import struct
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pytest

from zramd.device import ZramDevice
from zramd.errors import BackingFullError, MemLimitError, PoolExhaustedError
from zramd.native import native_module
from zramd.postproc import PP_HUGE, PP_IDLE
from zramd.shrinker import Shrinker
from zramd.slots import ZRAM_HUGE, ZRAM_SAME, ZRAM_SIZE_MASK, ZRAM_WB
from zramd.testing import check_pool_invariants, synthetic_pages

P = 4096
S = 512  #: a sector: every request is aligned to it
SPP = P // S  #: sectors per page
ZERO_SECTOR = bytes(S)
MAGIC = b"ZSTR"
FILL_MARK = 0xF1
HEADER = struct.Struct("<4sIIBB2x")  # magic, page, tag, sector in page, kind

# The device: 32768 + 64 pages. Stripe locks alias every 32768 pages, so requests across page
# 32768 take stripe 1023 and stripe 0 (lock order wraps), and contend with window 0 for stripe 0.
PAGES = 32768 + 64
WINDOWS = ((0, 160), (32768 - 96, 32768 + 64))  # [lo, hi) pages the clients work on
STRIPE_PAGES = 32

KIND_FILL, KIND_RANDOM, KIND_ORDINARY = 1, 2, 3
_CORPUS = b"".join(synthetic_pages(64, seed=14))


# -- content ------------------------------------------------------------------------------------


def _mix(page: int, tag: int) -> int:
    x = (page * 0x9E3779B97F4A7C15 + tag * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x ^= x >> 31
    x = (x * 0x94D049BB133111EB) & (2**64 - 1)
    return x ^ (x >> 29)


def _kind(h: int) -> int:
    k = h % 100
    return KIND_FILL if k < 10 else KIND_RANDOM if k < 25 else KIND_ORDINARY


@lru_cache(maxsize=4096)
def page_image(page: int, tag: int) -> bytes:
    """The 4 KiB a write tagged ``tag`` puts at ``page`` (it writes some of its sectors)."""
    h = _mix(page, tag)
    kind = _kind(h)
    if kind == KIND_FILL:
        word = bytes([FILL_MARK]) + (page & 0xFFFFFF).to_bytes(3, "little")
        return (word + tag.to_bytes(4, "little")) * (P // 8)
    if kind == KIND_RANDOM:
        out = bytearray(random.Random(h).randbytes(P))
    else:
        start = (h >> 8) % (len(_CORPUS) - P)
        out = bytearray(_CORPUS[start : start + P])
    for k in range(SPP):
        HEADER.pack_into(out, k * S, MAGIC, page, tag, k, kind)
    return bytes(out)


def sectors_of(first: int, count: int, tag: int) -> bytes:
    """The bytes of a write tagged ``tag`` covering sectors [first, first + count)."""
    parts = []
    s = first
    while s < first + count:
        page, k = divmod(s, SPP)
        n = min(SPP - k, first + count - s)
        parts.append(page_image(page, tag)[k * S : (k + n) * S])
        s += n
    return b"".join(parts)


class BadSectorError(AssertionError):
    pass


def sector_value(sector: int, data: bytes | memoryview) -> int:
    """The tag a sector's content names (0 for zeros); BadSectorError if it is not a whole sector
    of a write to this very sector."""
    page, k = divmod(sector, SPP)
    raw = bytes(data)
    if raw[:4] == MAGIC:
        _, pg, tag, kk, _ = HEADER.unpack_from(raw)
        if pg != page or kk != k:
            raise BadSectorError(f"sector {sector} (page {page}) holds sector {kk} of page {pg}")
    elif raw[0] == FILL_MARK and raw[:8] * (S // 8) == raw:
        pg = int.from_bytes(raw[1:4], "little")
        tag = int.from_bytes(raw[4:8], "little")
        if pg != page & 0xFFFFFF:
            raise BadSectorError(f"sector {sector} (page {page}) holds a fill word of page {pg}")
    elif raw == ZERO_SECTOR:
        return 0
    else:
        raise BadSectorError(f"sector {sector} (page {page}) is garbage: {raw[:24].hex()}...")
    if page_image(page, tag)[k * S : (k + 1) * S] != raw:
        raise BadSectorError(f"sector {sector} (page {page}) is torn or mixed: tag {tag} header")
    return tag


def sector_values(first: int, data: bytes | bytearray, errors: list[str], where: str) -> list[int]:
    """The value of each sector of ``data`` (from sector ``first``); -1 for a bad one, whose
    reason goes to ``errors``."""
    mv = memoryview(data)
    out = []
    for i in range(len(data) // S):
        try:
            out.append(sector_value(first + i, mv[i * S : (i + 1) * S]))
        except BadSectorError as e:
            errors.append(f"{where}: {e}")
            out.append(-1)
    return out


# -- plans and results --------------------------------------------------------------------------

WRITE, READ, DISCARD, ZERO, ZERO_KEEP, LIMIT = (
    "write",
    "read",
    "discard",
    "zero",
    "zero_keep",
    "limit",
)
ZEROING = (DISCARD, ZERO, ZERO_KEEP)


@dataclass
class Op:
    kind: str
    tag: int
    first: int = 0  # sector
    count: int = 0  # sectors
    limit: str = ""  # LIMIT: "off", "tight" or "loose"
    slack: int = 0
    data: bytes = b""  # WRITE: made with the plan, so that clients spend their time in requests


@dataclass
class Done:
    """A mutating request that ran: the sectors whose value it sets, its interval, success."""

    op: Op
    first: int
    count: int
    t0: int
    t1: int
    ok: bool

    @property
    def value(self) -> int:
        return self.op.tag if self.op.kind == WRITE else 0

    def __str__(self) -> str:
        o = self.op
        return (
            f"{o.kind} tag {o.tag} sectors [{o.first}, {o.first + o.count}) "
            f"(pages {o.first // SPP}..{(o.first + o.count - 1) // SPP}) "
            f"t=[{self.t0}, {self.t1}]"
        )


@dataclass
class Seen:
    """What one read returned from sector ``first`` (checked once the phase is over), and its
    interval."""

    first: int
    data: bytearray
    t0: int
    t1: int


@dataclass
class WorkerLog:
    done: list[Done] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)


def plan_span(rng: random.Random) -> tuple[int, int]:
    """(first sector, sectors) of a request in one of the windows: whole pages, any sectors,
    or a long run; a third across a stripe boundary."""
    lo, hi = rng.choice(WINDOWS)
    r = rng.random()
    if r < 0.5:
        pages = rng.randint(1, 8)
        n = pages * SPP
    elif r < 0.85:
        n = rng.randint(1, 6 * SPP)
    else:
        n = rng.randint(20 * SPP, 48 * SPP)
    n = min(n, (hi - lo) * SPP)
    if rng.random() < 0.35:  # across a stripe boundary inside the window
        bounds = [b for b in range(lo + 1, hi) if b % STRIPE_PAGES == 0]
        first = bounds[rng.randrange(len(bounds))] * SPP - rng.randint(1, n)
        first = max(lo * SPP, min(first, hi * SPP - n))
    else:
        first = rng.randint(lo * SPP, hi * SPP - n)
    if r < 0.5:
        first -= first % SPP
    return first, n


def plan_worker(rng: random.Random, ops: int, tag0: int) -> list[Op]:
    out = []
    for i in range(ops):
        tag = tag0 + i
        r = rng.random()
        if r < 0.02:
            out.append(
                Op(
                    LIMIT,
                    tag,
                    limit=rng.choice(["off", "tight", "loose"]),
                    slack=rng.randint(0, 24),
                )
            )
            continue
        first, n = plan_span(rng)
        if r < 0.45:
            out.append(Op(WRITE, tag, first, n, data=sectors_of(first, n, tag)))
            continue
        if r < 0.80:
            kind = READ
        elif r < 0.88:
            kind = DISCARD
        elif r < 0.95:
            kind = ZERO
        else:
            kind = ZERO_KEEP
        out.append(Op(kind, tag, first, n))
    return out


def discarded(first: int, count: int) -> tuple[int, int]:
    """The sectors a discard of [first, first + count) frees: the whole pages inside."""
    lo = -(-first // SPP) * SPP
    hi = (first + count) // SPP * SPP
    return lo, max(0, hi - lo)


def run_op(dev: ZramDevice, op: Op, log: WorkerLog) -> None:
    now = time.monotonic_ns
    if op.kind == LIMIT:
        pool = dev.pool
        assert pool is not None
        total = pool.total_pages
        pages = {"off": 0, "tight": max(1, total - op.slack // 8), "loose": total + op.slack}
        dev.set_mem_limit(pages[op.limit] * P)
        return
    off, length = op.first * S, op.count * S
    if op.kind == READ:
        buf = bytearray(length)
        t0 = now()
        dev.read_into(off, memoryview(buf))
        t1 = now()
        log.seen.append(Seen(op.first, buf, t0, t1))
        return
    first, count = discarded(op.first, op.count) if op.kind == DISCARD else (op.first, op.count)
    ok = True
    t0 = now()
    try:
        if op.kind == WRITE:
            dev.write(off, op.data)
        elif op.kind == DISCARD:
            dev.discard(off, length)
        else:
            dev.write_zeroes(off, length, may_trim=op.kind == ZERO)
    except (MemLimitError, PoolExhaustedError):
        if op.kind == DISCARD:
            raise  # a discard allocates nothing: it cannot be refused
        ok = False
    t1 = now()
    log.done.append(Done(op, first, count, t0, t1, ok))


# -- the model ----------------------------------------------------------------------------------


class Model:
    """The value of every sector between phases, and the checks of one phase's results."""

    def __init__(self) -> None:
        self.value = array("I", bytes(4 * PAGES * SPP))  # tags; 0: zeros
        self.errors: list[str] = []

    def check_phase(
        self, phase: int, logs: list[WorkerLog], final: dict[int, int], end: int
    ) -> None:
        """Check a phase's reads and ``final`` (sector -> value read once it was quiet, at
        time ``end``), then take ``final`` as the values the next phase starts from."""
        done = [d for log in logs for d in log.done]
        covers: dict[int, list[Done]] = {}
        for d in done:
            if d.ok:
                for s in range(d.first, d.first + d.count):
                    covers.setdefault(s, []).append(d)
        # per sector: its requests' start times in order, and the earliest end from each on
        index: dict[int, tuple[list[int], list[int]]] = {}
        for s, ds in covers.items():
            ds.sort(key=lambda d: d.t0)
            suffix = [0] * len(ds)
            least = 2**63
            for i in range(len(ds) - 1, -1, -1):
                least = min(least, ds[i].t1)
                suffix[i] = least
            index[s] = ([d.t0 for d in ds], suffix)
        refused = {d.op.tag: d for d in done if not d.ok and d.value}

        def explain(s: int, v: int, t0: int, t1: int) -> str | None:
            """None if value ``v`` may be current for sector ``s`` at some time in [t0, t1]."""
            sources = [(-1, -1)] if self.value[s] == v else []  # from before the phase
            sources += [(d.t0, d.t1) for d in covers.get(s, ()) if d.value == v]
            if not sources:
                if v in refused:
                    return f"holds data of a write refused with ENOSPC: {refused[v]}"
                return f"holds {v}, which no successful request in the phase put there"
            starts, suffix = index.get(s, ([], []))
            for a, b in sources:
                if a >= t1:
                    continue  # started after the read ended
                k = bisect.bisect_right(starts, b)
                if k < len(starts) and suffix[k] < t0:
                    continue  # a request ran entirely between its end and the read
                return None
            return f"holds {v}, which a later request had replaced before t={t0}"

        for log in logs:
            for seen in log.seen:
                where = f"phase {phase}: a read of sectors [{seen.first}, ...)"
                values = sector_values(seen.first, seen.data, self.errors, where)
                for i, v in enumerate(values):
                    why = v >= 0 and explain(seen.first + i, v, seen.t0, seen.t1)
                    if why:
                        self.fail(
                            phase,
                            f"a read at t=[{seen.t0}, {seen.t1}]: sector {seen.first + i} {why}",
                        )
        for s, v in final.items():
            why = v >= 0 and explain(s, v, end, end)
            if why:
                self.fail(phase, f"at the end: sector {s} (page {s // SPP}) {why}")
        self._check_order(phase, covers, final)
        for s, v in final.items():
            self.value[s] = max(v, 0)

    def fail(self, phase: int, msg: str) -> None:
        self.errors.append(f"phase {phase}: {msg}")

    def _check_order(
        self, phase: int, covers: dict[int, list[Done]], final: dict[int, int]
    ) -> None:
        """The last request on each sector (known from its value) was installed after every
        other request on that sector: these orders must fit the requests' intervals."""
        after: dict[int, dict[int, int]] = {}  # id(w) -> {id(d): a sector where d precedes w}
        byid: dict[int, Done] = {}
        for s, ds in covers.items():
            v = final.get(s, -1)
            if v > 0:
                last = [d for d in ds if d.value == v]
            elif v == 0:
                last = [d for d in ds if d.op.kind in ZEROING]
            else:
                continue
            if len(last) != 1:
                continue  # unknown (several zeroing requests) or already reported
            w = last[0]
            byid[id(w)] = w
            edges = after.setdefault(id(w), {})
            for d in ds:
                if d is not w:
                    byid[id(d)] = d
                    edges.setdefault(id(d), s)
        # topological order (Kahn), then the earliest install time of each request
        indeg = dict.fromkeys(byid, 0)
        succ: dict[int, list[int]] = {n: [] for n in byid}
        for w, preds in after.items():
            indeg[w] = len(preds)
            for p in preds:
                succ[p].append(w)
        ready = [n for n, k in indeg.items() if k == 0]
        order = []
        while ready:
            n = ready.pop()
            order.append(n)
            for m in succ[n]:
                indeg[m] -= 1
                if not indeg[m]:
                    ready.append(m)
        if len(order) != len(byid):
            left = {n for n, k in indeg.items() if k}
            n = next(iter(left))
            path: list[int] = []
            while n not in path:  # walk back along predecessors still in the cycle
                path.append(n)
                n = next(p for p in after[n] if p in left)
            cycle = path[path.index(n) :]
            steps = "; ".join(
                f"{byid[b]} before {byid[a]} (sector {after[a][b]})"
                for a, b in zip(cycle, cycle[1:] + cycle[:1], strict=True)
            )
            self.fail(phase, f"requests are not atomic: their installs form a cycle: {steps}")
            return
        earliest: dict[int, int] = {}
        for n in order:
            d = byid[n]
            t = d.t0
            why = None
            for p in after.get(n, {}):
                if earliest[p] + 1 > t:
                    t, why = earliest[p] + 1, p
            if t > d.t1 and why is not None:
                self.fail(
                    phase,
                    f"{d} must have been installed after {byid[why]} (sector "
                    f"{after[n][why]}), which was installed after it returned",
                )
            earliest[n] = t


# -- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    phases: int
    workers: int
    ops: int  #: per worker in a phase; every fifth phase runs five times as many

    def ops_in(self, phase: int) -> int:
        # Short phases end often: only the end of a phase shows how the last requests on each
        # sector were ordered (reads across stripes are not atomic), so many ends find a pair
        # of interleaved requests that long phases would overwrite. Long ones let values pile
        # up over many requests and writebacks.
        return self.ops * 5 if phase % 5 == 4 else self.ops


PROFILES = {
    # (native, slow)
    (True, False): Profile(phases=60, workers=4, ops=40),
    (False, False): Profile(phases=10, workers=4, ops=25),
    (True, True): Profile(phases=500, workers=6, ops=60),
    (False, True): Profile(phases=60, workers=4, ops=40),
}


@pytest.fixture(autouse=True)
def fast_switching() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(5e-5)
    yield
    sys.setswitchinterval(old)


def window_pages() -> Iterator[int]:
    for lo, hi in WINDOWS:
        yield from range(lo, hi)


class Background:
    """Compaction, and idle marking + writeback or recompression: two threads looping until
    told to stop, counting what they did."""

    def __init__(self, dev: ZramDevice, seed: str) -> None:
        self.dev = dev
        self.seed = seed
        self.count: dict[str, int] = dict.fromkeys(
            ("compactions", "compacted", "writebacks", "written_back", "recompressions",
             "recompressed", "backing_full"), 0)  # fmt: skip

    def compactor(self, stop: threading.Event) -> None:
        """compact, the gentle background kind, and the statistics, in a loop."""
        shrinker = Shrinker(self.dev, pressure=lambda: True)  # gentle, whenever anything frees
        while not stop.is_set():
            self.count["compacted"] += self.dev.compact()
            self.count["compacted"] += shrinker.scan()
            self.count["compactions"] += 2
            # statistics readers: bd_stat also hands blocks freed by I/O back to the store
            self.dev.mm_stat()
            self.dev.bd_stat()

    def post_processor(self, stop: threading.Event) -> None:
        """Idle marking with writeback, then recompression, in turn (the device runs one at a
        time). Writeback takes a random part of each window, so pages stay in memory for
        recompression too."""
        rng = random.Random(f"{self.seed}-pp")
        while not stop.is_set():
            self.dev.mark_idle()
            scans = []
            for lo, hi in WINDOWS:
                start = rng.randrange(lo, hi)
                scans.append((rng.choice((PP_IDLE, PP_IDLE, 0, PP_HUGE)), start, start + 48))
            try:
                self.count["written_back"] += self.dev.writeback(scans)
                self.count["writebacks"] += 1
            except BackingFullError:
                self.count["backing_full"] += 1
            self.count["recompressed"] += self.dev.recompress(
                mode=rng.choice((0, 0, PP_IDLE, PP_HUGE)), threshold=rng.choice((0, 0, 512, 2048))
            )
            self.count["recompressions"] += 1


def run_phase(dev: ZramDevice, bg: Background, plans: list[list[Op]]) -> list[WorkerLog]:
    """Run the clients' plans with the background threads alongside, until every plan is done."""
    logs = [WorkerLog() for _ in plans]
    stop = threading.Event()
    loops = (bg.compactor, bg.post_processor)
    start = threading.Barrier(len(plans) + len(loops))
    errors: list[str] = []

    def guard(name: str, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                start.wait()
                fn()
            except BaseException as e:  # reported with the thread that raised it
                errors.append(f"{name}: {type(e).__name__}: {e}")
                start.abort()

        return run

    def client(plan: list[Op], log: WorkerLog) -> Callable[[], None]:
        def run() -> None:
            for op in plan:
                run_op(dev, op, log)

        return run

    workers = [
        threading.Thread(target=guard(f"client {w}", client(plan, logs[w])))
        for w, plan in enumerate(plans)
    ]
    others = [
        threading.Thread(target=guard(fn.__name__, lambda fn=fn: fn(stop)))  # type: ignore[misc]
        for fn in loops
    ]
    for t in workers + others:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    for t in others:
        t.join()
    assert not errors, errors
    return logs


def check_accounting(
    dev: ZramDevice, final: dict[int, int], logs: list[WorkerLog], io_before: tuple[int, int]
) -> list[str]:
    """The statistics against a walk of the slot table, and the table against the content."""
    errors = []
    stored = same = huge = wb = objects = compr = 0
    for page in window_pages():
        f = dev.slot_flags(page)
        size = f & ZRAM_SIZE_MASK
        stored += bool(size or f & (ZRAM_SAME | ZRAM_WB))
        same += bool(f & ZRAM_SAME)
        huge += bool(f & ZRAM_HUGE)
        wb += bool(f & ZRAM_WB)
        objects += bool(size)
        compr += size
        values = [final[page * SPP + k] for k in range(SPP)]
        if -1 in values:
            continue  # already reported
        if not any(values):
            if size or f & ZRAM_WB:
                errors.append(f"page {page} reads as zeros but its slot holds data ({f:#x})")
        elif not (size or f & (ZRAM_SAME | ZRAM_WB)):
            errors.append(f"page {page} holds data but its slot is empty ({f:#x})")
        else:
            tag = values[0]
            filled = values == [tag] * SPP and _kind(_mix(page, tag)) == KIND_FILL
            if filled != bool(f & ZRAM_SAME):
                errors.append(f"page {page}: same-filled {filled} but slot flags {f:#x}")
    mm = dev.mm_stat()
    want = (stored * P, same, huge, compr)
    got = (mm.orig_data_size, mm.same_pages, mm.huge_pages, mm.compr_data_size)
    if got != want:
        errors.append(
            f"mm_stat (orig_data_size, same_pages, huge_pages, compr_data_size) = {got}, the "
            f"slot table says {want}"
        )
    pool = dev.pool
    assert pool is not None
    if pool.stats().objects != objects:
        errors.append(f"the pool holds {pool.stats().objects} objects, the slots {objects}")
    try:
        check_pool_invariants(pool)
    except AssertionError as e:
        errors.append(f"pool invariants: {e}")
    if mm.mem_used_total != pool.total_pages * P or mm.mem_used_max < mm.mem_used_total:
        errors.append(f"mm_stat memory: {mm}")
    bd = dev.bd_stat()
    if bd.bd_count != wb:
        errors.append(f"bd_stat counts {bd.bd_count} blocks, {wb} slots are written back")
    io = dev.io_stat()
    refused = sum(not d.ok for log in logs for d in log.done)
    visited = sum(
        discarded(d.op.first, d.op.count)[1] // SPP
        for log in logs
        for d in log.done
        if d.ok and d.op.kind in ZEROING
    )
    got_io = (io.failed_reads, io.failed_writes - io_before[0], io.notify_free - io_before[1])
    if got_io != (0, refused, visited):
        errors.append(
            f"io_stat (failed_reads, new failed_writes, new notify_free) = {got_io}, "
            f"expected {(0, refused, visited)}"
        )
    return errors


def summary(errors: list[str], per_kind: int = 2) -> str:
    """The violations, the first few of each kind (messages that differ only in numbers)."""
    kinds: dict[str, list[str]] = {}
    for e in errors:
        kinds.setdefault(re.sub(r"[0-9]+", "N", e), []).append(e)
    lines = [f"{len(errors)} violations of {len(kinds)} kinds"]
    for group in kinds.values():
        lines += group[:per_kind]
        if len(group) > per_kind:
            lines.append(f"... and {len(group) - per_kind} more like it")
    return "\n  ".join(lines)


def stress(dev: ZramDevice, profile: Profile, tmp_path: Path, seed: int) -> dict[str, int]:
    """Run ``profile`` on ``dev``; AssertionError naming every violation found."""
    backing = tmp_path / "backing.img"
    with open(backing, "wb") as f:
        f.truncate((2 * sum(hi - lo for lo, hi in WINDOWS) + 64) * P)
    dev.set_recomp_algorithm("zstd")
    dev.set_backing_dev(str(backing))
    dev.set_disksize(PAGES * P)
    dev.set_writeback_batch_size(8)
    model = Model()
    bg = Background(dev, f"{seed}")
    totals = {"requests": 0, "refused": 0, "reads": 0}
    tag0 = 1
    for phase in range(profile.phases):
        plans = [
            plan_worker(
                random.Random(f"{seed}-{phase}-{w}"),
                profile.ops_in(phase),
                tag0 + w * profile.ops_in(phase),
            )
            for w in range(profile.workers)
        ]
        tag0 += profile.workers * profile.ops_in(phase)
        io = dev.io_stat()
        logs = run_phase(dev, bg, plans)
        dev.set_mem_limit(0)
        end = time.monotonic_ns()
        final: dict[int, int] = {}
        for lo, hi in WINDOWS:
            data = dev.read(lo * P, (hi - lo) * P)
            values = sector_values(lo * SPP, data, model.errors, f"phase {phase}: final read")
            final.update(zip(range(lo * SPP, hi * SPP), values, strict=True))
        model.check_phase(phase, logs, final, end)
        model.errors += [
            f"phase {phase}: {e}"
            for e in check_accounting(dev, final, logs, (io.failed_writes, io.notify_free))
        ]
        if model.errors:
            raise AssertionError(f"seed {seed} ({profile}): {summary(model.errors)}")
        totals["requests"] += sum(len(log.done) for log in logs)
        totals["refused"] += sum(not d.ok for log in logs for d in log.done)
        totals["reads"] += sum(len(log.seen) for log in logs)
    return totals | bg.count | {"bd_reads": dev.bd_stat().bd_reads}


def run_stress(native: bool, slow: bool, tmp_path: Path) -> None:
    if native and native_module() is None:
        pytest.fail("zramd._zram is not built or is stale: run scripts/test (pip install -e .)")
    seed = int(os.environ.get("ZRAMD_STRESS_SEED") or random.randrange(1 << 32))
    dev = ZramDevice(native=native)
    counts = stress(dev, PROFILES[native, slow], tmp_path, seed)
    print(f"core stress (seed {seed}, native={native}): {counts}")
    dev.reset()
    # the run did what it is for: each mechanism ran and changed something
    for what in ("refused", "written_back", "recompressed", "compacted", "bd_reads"):
        assert counts[what] > 0, (what, seed, counts)


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_parallel_requests_lose_and_mix_nothing(native: bool, tmp_path: Path) -> None:
    run_stress(native, slow=False, tmp_path=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_parallel_requests_lose_and_mix_nothing_long(native: bool, tmp_path: Path) -> None:
    run_stress(native, slow=True, tmp_path=tmp_path)
