"""The control attributes of a zram device, declared in one table (``/sys/block/zramN/``),
and of zram-control (``/sys/class/zram-control/``: ``hot_add``, ``hot_remove``) in another.

Each attribute has the kernel's mode and an ``<attr>_show`` / ``<attr>_store`` pair. Shows
return the exact text the kernel prints; stores take the bytes written and act before they
return, raising a ZramdError whose ``errno`` is the kernel's answer for that attribute (and
changing nothing). As in sysfs, a store sees at most the first 4096 bytes of one write and
reads them as a C string (up to the first NUL byte). The FUSE filesystem (``fusefs.py``) and
the CLI only call ``show``/``store``.

Writeback (CONFIG_ZRAM_WRITEBACK, with 7.0's ``writeback_batch_size``) and recompression
(CONFIG_ZRAM_MULTI_COMP) are built in; ``max_comp_streams`` (removed in 6.15) and
``writeback_compressed`` are absent, as from a kernel without them. ``mem_stat``, ``classes``,
``auto_compact`` and ``compact_stat`` are zramd's own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from zramd.compress import BACKENDS
from zramd.device import ZramDevice
from zramd.devices import Devices
from zramd.errors import (
    InvalidValueError,
    OutOfRangeError,
    PermissionDeniedError,
    ValueTooLongError,
    ZramdError,
)
from zramd.parse import (
    kstrtoint,
    kstrtoull,
    memparse,
    next_arg,
    next_args,
    skip_spaces,
    sysfs_streq,
)
from zramd.postproc import PP_HUGE, PP_IDLE, PP_INCOMPRESSIBLE
from zramd.stats import BdStat, CompactStat, DebugStat, IoStat, MemStat, MmStat, PoolStats

ZRAM_MAX_ALGO_NAME_SZ = 128
STORE_MAX = 4096  #: PAGE_SIZE: kernfs hands a store at most this many bytes of one write

RO, WO, RW = 0o444, 0o200, 0o644


# -- formats (the only place statistics become text) -----------------------------------------


def format_mm_stat(s: MmStat) -> str:
    return (
        f"{s.orig_data_size:8d} {s.compr_data_size:8d} {s.mem_used_total:8d} "
        f"{s.mem_limit:8d} {s.mem_used_max:8d} {s.same_pages:8d} {s.pages_compacted:8d} "
        f"{s.huge_pages:8d} {s.huge_pages_since:8d}\n"
    )


def format_io_stat(s: IoStat) -> str:
    # invalid_io is a literal 0 since 6.5 ("zram: remove valid_io_request")
    return f"{s.failed_reads:8d} {s.failed_writes:8d} 0 {s.notify_free:8d}\n"


def format_debug_stat(s: DebugStat) -> str:
    # writestall is a literal 0 since 6.15
    return f"version: {s.version}\n0 {s.miss_free:8d}\n"


def format_bd_stat(s: BdStat) -> str:
    return f"{s.bd_count:8d} {s.bd_reads:8d} {s.bd_writes:8d}\n"


def format_compact_stat(s: CompactStat) -> str:
    return (
        f"{s.auto_runs:8d} {s.auto_pages_freed:8d} {s.direct_runs:8d} "
        f"{s.direct_pages_freed:8d} {s.max_pause_us:8d}\n"
    )


def format_mem_stat(s: MemStat) -> str:
    return (
        f"{s.rss:8d} {s.mem_used_total:8d} {s.arena_cached:8d} {s.pool_metadata:8d} "
        f"{s.slot_table:8d} {s.arena_reserved:8d}\n"
    )


def format_comp_algorithm(selected: str) -> str:
    """Every available backend in the kernel's order, each followed by a space, the selected
    one in brackets, then a newline (``lzo [lz4] lz4hc zstd deflate \\n``)."""
    names = [b.name for b in BACKENDS if b.available]
    return "".join(f"[{n}] " if n == selected else f"{n} " for n in names) + "\n"


def format_classes(s: PoolStats) -> str:
    """zsmalloc's debugfs ``classes`` file (kernel >= 6.4 columns)."""
    header = (
        f"{'class':>5} {'size':>5} "
        + " ".join(
            f"{c:>9}"
            for c in ("10%", "20%", "30%", "40%", "50%", "60%", "70%", "80%", "90%", "99%", "100%")
        )
        + f" {'obj_allocated':>13} {'obj_used':>10} {'pages_used':>10} "
        f"{'pages_per_zspage':>16} {'freeable':>8}\n"
    )
    lines = [header]
    totals = [0] * 11
    t_alloc = t_used = t_pages = t_free = 0
    for c in s.classes:
        lines.append(
            f"{c.index:5d} {c.size:5d} "
            + " ".join(f"{n:9d}" for n in c.fullness)
            + f" {c.obj_allocated:13d} {c.obj_used:10d} {c.pages_used:10d} "
            f"{c.pages_per_zspage:16d} {c.freeable:8d}\n"
        )
        totals = [a + b for a, b in zip(totals, c.fullness, strict=True)]
        t_alloc += c.obj_allocated
        t_used += c.obj_used
        t_pages += c.pages_used
        t_free += c.freeable
    lines.append("\n")
    lines.append(
        f"{'Total':>5} {'':>5} "
        + " ".join(f"{n:9d}" for n in totals)
        + f" {t_alloc:13d} {t_used:10d} {t_pages:10d} {'':>16} {t_free:8d}\n"
    )
    return "".join(lines)


# -- handlers ---------------------------------------------------------------------------------


def _text(data: bytes) -> str:
    """The written bytes as text for the word-based parsers. Bytes that are not UTF-8 come
    through as surrogates (``surrogateescape``): they match no keyword and no digit, so each
    parser refuses or ignores them where the kernel's does, instead of all being refused
    up front."""
    return data.decode("utf-8", "surrogateescape")


def _params(data: bytes, attr: str) -> list[tuple[str, str]]:
    """The ``key=value`` words of a write (kernel ``next_arg`` rules); a key without a value
    is EINVAL, as every zram handler of this syntax answers."""
    out = []
    for key, value in next_args(_text(data)):
        if not value:
            raise InvalidValueError(f"{attr}: {key} needs a value ({key}=...)")
        out.append((key, value))
    return out


def disksize_show(dev: ZramDevice) -> str:
    return f"{dev.disksize}\n"


def disksize_store(dev: ZramDevice, data: bytes) -> None:
    value, _ = memparse(data)
    if not value:
        raise InvalidValueError(f"disksize: {data.strip()!r} is not a size (e.g. 1G, 512M)")
    dev.set_disksize(value)


def initstate_show(dev: ZramDevice) -> str:
    return f"{int(dev.initstate)}\n"


def reset_store(dev: ZramDevice, data: bytes) -> None:
    value = kstrtoull(data, 10, what="reset", limit=0xFFFF)
    if not value:
        raise InvalidValueError("reset: write a non-zero number (echo 1 > reset)")
    dev.reset()


def mem_limit_store(dev: ZramDevice, data: bytes) -> None:
    value, consumed = memparse(data)
    if not consumed:
        raise InvalidValueError(f"mem_limit: {data.strip()!r} is not a size (e.g. 512M; 0 = none)")
    dev.set_mem_limit(value)


def mem_used_max_store(dev: ZramDevice, data: bytes) -> None:
    try:
        value = kstrtoull(data, 10, what="mem_used_max")
    except ZramdError:
        value = -1
    if value != 0:
        raise InvalidValueError("mem_used_max: only 0 can be written (resets the peak)")
    dev.reset_mem_used_max()


def compact_store(dev: ZramDevice, data: bytes) -> None:
    dev.compact()


def idle_store(dev: ZramDevice, data: bytes) -> None:
    if sysfs_streq(data, "all"):
        dev.mark_idle()
        return
    try:
        seconds = kstrtoull(data, 0, what="idle", limit=0xFFFFFFFF)
    except ZramdError:
        raise InvalidValueError("idle: write 'all' or an age in seconds") from None
    dev.mark_idle(seconds)


def comp_algorithm_show(dev: ZramDevice) -> str:
    return format_comp_algorithm(dev.comp_algorithm)


def comp_algorithm_store(dev: ZramDevice, data: bytes) -> None:
    if len(data) >= ZRAM_MAX_ALGO_NAME_SZ:
        raise ValueTooLongError(f"comp_algorithm: name of {len(data)} bytes is too long")
    # the handler drops one trailing newline and zcomp_available_algorithm compares with
    # sysfs_streq, which forgives one more: "lz4\n\n" selects lz4 in the kernel too
    dev.set_comp_algorithm(_text(data).removesuffix("\n").removesuffix("\n"))


#: what the kernel stores for a level or deflate.winbits it was not given (zcomp.h INT_MIN):
#: writing this value means "the backend's default" too
ZCOMP_PARAM_NOT_SET = -(1 << 31)


@dataclass(frozen=True, slots=True)
class AlgorithmParams:
    """One ``algorithm_params`` write, parsed (None: not given)."""

    priority: int = 0
    algo: str | None = None
    level: int | None = None
    winbits: int | None = None
    dict_path: bytes | None = None


def _params_int(value: str, key: str) -> int:
    """``kstrtoint(value, 10)`` as the kernel has it: kstrtoll reads one sign, so ``-+1`` is
    not a number (EINVAL)."""
    if value[:2] == "-+":
        raise InvalidValueError(f"algorithm_params: {key}={value} is not a number")
    return kstrtoint(value, what=f"algorithm_params {key}")


def _params_setting(value: str, key: str) -> int | None:
    """A level or deflate.winbits: ZCOMP_PARAM_NOT_SET reads as not given."""
    n = _params_int(value, key)
    return None if n == ZCOMP_PARAM_NOT_SET else n


def parse_algorithm_params(data: bytes) -> AlgorithmParams:
    """``algorithm_params_store``'s parse loop (7.0), errors in its order.

    The write is a C string: it ends at its first NUL. Bytes are Latin-1 (a byte >= 0x80 is a
    character, 0xA0 a space, as the kernel's ctype has them). Words are split by ``next_arg``;
    a word without a value is EINVAL; ``priority``, ``level`` and ``deflate.winbits`` are
    decimal ``kstrtoint`` (EINVAL, ERANGE beyond s32); ``algo`` and ``dict`` are taken as
    written; unknown keys are ignored; a repeated key keeps its last value.
    """
    text = data.split(b"\0", 1)[0].decode("latin-1")
    priority = 0
    algo: str | None = None
    level = winbits = None
    dict_path: bytes | None = None
    args = skip_spaces(text)
    while args:
        key, value, args = next_arg(args)
        if not value:
            raise InvalidValueError(f"algorithm_params: {key} needs a value ({key}=...)")
        if key == "priority":
            priority = _params_int(value, key)
        elif key == "level":
            level = _params_setting(value, key)
        elif key == "algo":
            algo = value
        elif key == "dict":
            dict_path = value.encode("latin-1")
        elif key == "deflate.winbits":
            winbits = _params_setting(value, key)
    return AlgorithmParams(priority, algo, level, winbits, dict_path)


def algorithm_params_store(dev: ZramDevice, data: bytes) -> None:
    p = parse_algorithm_params(data)
    dev.set_algorithm_params(
        priority=p.priority, algo=p.algo, level=p.level, winbits=p.winbits, dict_path=p.dict_path
    )


def backing_dev_show(dev: ZramDevice) -> str:
    return f"{dev.backing_dev or 'none'}\n"


def backing_dev_store(dev: ZramDevice, data: bytes) -> None:
    # strscpy into a PATH_MAX buffer: a path is at most 4095 bytes; the kernel opens the
    # bytes as they are, so they reach open() unchanged (os.fsdecode round-trips them)
    raw = data[: STORE_MAX - 1].removesuffix(b"\n")
    spec = os.fsdecode(raw)
    if "://" in spec and not raw.isascii():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidValueError("backing_dev: an NBD URI must be UTF-8 text") from None
    if not spec:
        raise InvalidValueError("backing_dev: write a file path, an NBD URI, or none")
    dev.set_backing_dev(spec)


WRITEBACK_MODES = {
    "idle": PP_IDLE,
    "huge": PP_HUGE,
    "huge_idle": PP_IDLE | PP_HUGE,
    "incompressible": PP_INCOMPRESSIBLE,
}


def _wb_mode(word: str) -> int:
    try:
        return WRITEBACK_MODES[word]
    except KeyError:
        raise InvalidValueError(
            f"writeback: {word!r} is not a mode ({', '.join(WRITEBACK_MODES)})"
        ) from None


def _page_index(text: str, nr_pages: int) -> int:
    index = kstrtoull(text, what="writeback page index")
    if index >= nr_pages:
        raise OutOfRangeError(f"writeback: page {index} is beyond the last page ({nr_pages - 1})")
    return index


def writeback_plan(text: str) -> Callable[[int], list[tuple[int, int, int]]]:
    """``writeback_store``'s parser (6.16+, legacy words accepted), run once the device's size
    is known: a list of (mode, lo, hi) scans. ``page_index=N`` and ``page_indexes=LO-HI`` each
    scan their range and may repeat; a mode (``idle``, ``type=huge``...) scans the range set
    so far (the whole device if none) and ends the parse. Unknown keys are ignored."""

    def plan(nr_pages: int) -> list[tuple[int, int, int]]:
        scans: list[tuple[int, int, int]] = []
        lo, hi, mode = 0, nr_pages, 0
        for key, value in next_args(text):
            if not value:  # the legacy form: a bare mode word
                scans.append((_wb_mode(key), lo, hi))
                break
            if key == "type":
                scans.append((_wb_mode(value), lo, hi))
                break
            if key == "page_index":
                lo = _page_index(value, nr_pages)
                hi = lo + 1
            elif key == "page_indexes":
                first, dash, last = value.partition("-")
                if not dash:
                    raise InvalidValueError(f"writeback: page_indexes={value}: expected LO-HI")
                lo = _page_index(first, nr_pages)
                hi = _page_index(last, nr_pages) + 1
                if hi <= lo:
                    raise OutOfRangeError(f"writeback: page_indexes={value}: LO is above HI")
            else:
                continue
            scans.append((mode, lo, hi))
        return scans

    return plan


def writeback_store(dev: ZramDevice, data: bytes) -> None:
    dev.writeback(writeback_plan(_text(data)))


def writeback_limit_show(dev: ZramDevice) -> str:
    return f"{dev.writeback_limit}\n"


def writeback_limit_store(dev: ZramDevice, data: bytes) -> None:
    dev.set_writeback_limit(kstrtoull(data, what="writeback_limit"))


def writeback_limit_enable_show(dev: ZramDevice) -> str:
    return f"{int(dev.writeback_limit_enable)}\n"


def writeback_limit_enable_store(dev: ZramDevice, data: bytes) -> None:
    dev.set_writeback_limit_enable(bool(kstrtoull(data, what="writeback_limit_enable")))


def writeback_batch_size_show(dev: ZramDevice) -> str:
    return f"{dev.writeback_batch_size}\n"


def writeback_batch_size_store(dev: ZramDevice, data: bytes) -> None:
    value = kstrtoull(data, what="writeback_batch_size", limit=0xFFFFFFFF)
    if not value:
        raise InvalidValueError("writeback_batch_size: must be at least 1")
    dev.set_writeback_batch_size(value)


def bd_stat_show(dev: ZramDevice) -> str:
    return format_bd_stat(dev.bd_stat())


def recomp_algorithm_show(dev: ZramDevice) -> str:
    return "".join(
        f"#{prio}: {format_comp_algorithm(name)}" for prio, name in dev.recomp_algorithms.items()
    )


def recomp_algorithm_store(dev: ZramDevice, data: bytes) -> None:
    algo: str | None = None
    priority = 1
    for key, value in _params(data, "recomp_algorithm"):
        if key == "algo":
            algo = value
        elif key == "priority":
            priority = kstrtoint(value, what="recomp_algorithm priority")
    if algo is None:
        raise InvalidValueError("recomp_algorithm: write algo=NAME [priority=1..3]")
    if len(algo) >= ZRAM_MAX_ALGO_NAME_SZ:
        raise ValueTooLongError(f"recomp_algorithm: name of {len(algo)} bytes is too long")
    dev.set_recomp_algorithm(algo, priority)


RECOMPRESS_TYPES = {"idle": PP_IDLE, "huge": PP_HUGE, "huge_idle": PP_IDLE | PP_HUGE}


def recompress_store(dev: ZramDevice, data: bytes) -> None:
    mode = threshold = 0
    max_pages: int | None = None
    algo: str | None = None
    priority: int | None = None
    for key, value in _params(data, "recompress"):
        if key == "type":
            mode = RECOMPRESS_TYPES.get(value, 0)  # as the kernel: anything else means all
        elif key == "max_pages":
            max_pages = kstrtoull(value, what="recompress max_pages")
        elif key == "threshold":
            threshold = kstrtoull(value, what="recompress threshold", limit=0xFFFFFFFF)
        elif key == "algo":
            algo = value
        elif key == "priority":
            priority = kstrtoint(value, what="recompress priority")
    dev.recompress(
        mode=mode, threshold=threshold, max_pages=max_pages, algo=algo, priority=priority
    )


def auto_compact_show(dev: ZramDevice) -> str:
    ac = dev.auto_compact
    return f"interval={ac.interval:g} min_bytes={ac.min_bytes} min_percent={ac.min_percent}\n"


def auto_compact_store(dev: ZramDevice, data: bytes) -> None:
    changes: dict[str, int] = {}
    for key, value in _params(data, "auto_compact"):
        if key == "interval":
            changes[key] = kstrtoull(value, what="auto_compact interval", limit=86400)
        elif key == "min_bytes":
            n, used = memparse(value)
            if used != len(value.removesuffix("\n")):
                raise InvalidValueError(f"auto_compact: min_bytes={value} is not a size")
            changes[key] = n
        elif key == "min_percent":
            changes[key] = kstrtoull(value, what="auto_compact min_percent", limit=100)
        else:
            raise InvalidValueError(
                f"auto_compact: unknown key {key!r} (interval, min_bytes, min_percent)"
            )
    if not changes:
        raise InvalidValueError("auto_compact: write interval=S min_bytes=SIZE min_percent=N")
    dev.set_auto_compact(**changes)


def compact_stat_show(dev: ZramDevice) -> str:
    return format_compact_stat(dev.compact_stat())


def mm_stat_show(dev: ZramDevice) -> str:
    return format_mm_stat(dev.mm_stat())


def io_stat_show(dev: ZramDevice) -> str:
    return format_io_stat(dev.io_stat())


def debug_stat_show(dev: ZramDevice) -> str:
    return format_debug_stat(dev.debug_stat())


def mem_stat_show(dev: ZramDevice) -> str:
    return format_mem_stat(dev.mem_stat())


def classes_show(dev: ZramDevice) -> str:
    pool = dev.pool
    if pool is None:
        raise InvalidValueError("classes: device is not initialised")
    return format_classes(pool.stats())


# -- zram-control ---------------------------------------------------------------------------


def hot_add_show(devices: Devices) -> str:
    """Reading adds a device (hot_add_show: zram_add under zram_index_mutex)."""
    return f"{devices.add()}\n"


def hot_remove_store(devices: Devices, data: bytes) -> None:
    # the id is a gendisk's first_minor, an int: kstrtoint's errors, then a negative id
    dev_id = kstrtoint(data, 10, what="hot_remove")
    if dev_id < 0:
        raise InvalidValueError(f"hot_remove: {dev_id} is not a device id")
    devices.remove(dev_id)


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Attribute(Generic[T]):
    """One attribute file: its mode, and the handlers that show and store it on its object
    (a ZramDevice for a device's attributes, the Devices index for zram-control's)."""

    name: str
    mode: int
    show: Callable[[T], str] | None
    store: Callable[[T, bytes], None] | None
    doc: str


#: /sys/class/zram-control/: hot_add is 0400, not the usual 0444 (reading changes the system)
CONTROL_ATTRIBUTES: tuple[Attribute[Devices], ...] = (
    Attribute("hot_add", 0o400, hot_add_show, None, "read: add a device, print its id"),
    Attribute("hot_remove", WO, None, hot_remove_store, "id: reset and remove that device"),
)

ATTRIBUTES: tuple[Attribute[ZramDevice], ...] = (
    Attribute(
        "disksize",
        RW,
        disksize_show,
        disksize_store,
        "device size in bytes; writing (memparse) initialises the device",
    ),
    Attribute("initstate", RO, initstate_show, None, "1 once disksize is set"),
    Attribute("reset", WO, None, reset_store, "non-zero: free everything, back to uninitialised"),
    Attribute("mem_limit", WO, None, mem_limit_store, "pool memory limit (memparse; 0 = none)"),
    Attribute("mem_used_max", WO, None, mem_used_max_store, "0: reset the peak to current use"),
    Attribute("compact", WO, None, compact_store, "any write: compact the pool now"),
    Attribute("idle", WO, None, idle_store, "'all' or seconds: mark slots idle"),
    Attribute(
        "comp_algorithm",
        RW,
        comp_algorithm_show,
        comp_algorithm_store,
        "available algorithms, selected one in []",
    ),
    Attribute(
        "algorithm_params",
        WO,
        None,
        algorithm_params_store,
        "key=value: priority, algo, level, deflate.winbits, dict",
    ),
    Attribute(
        "backing_dev",
        RW,
        backing_dev_show,
        backing_dev_store,
        "file or NBD URI for writeback (before init); none detaches",
    ),
    Attribute(
        "writeback",
        WO,
        None,
        writeback_store,
        "idle|huge|huge_idle|incompressible, type=, page_index=N, page_indexes=A-B",
    ),
    Attribute(
        "writeback_limit",
        RW,
        writeback_limit_show,
        writeback_limit_store,
        "writeback budget in 4 KiB pages",
    ),
    Attribute(
        "writeback_limit_enable",
        RW,
        writeback_limit_enable_show,
        writeback_limit_enable_store,
        "1: writeback stops when writeback_limit runs out",
    ),
    Attribute(
        "writeback_batch_size",
        RW,
        writeback_batch_size_show,
        writeback_batch_size_store,
        "pages written back at once",
    ),
    Attribute("bd_stat", RO, bd_stat_show, None, "backing device: blocks used, read, written"),
    Attribute(
        "recomp_algorithm",
        RW,
        recomp_algorithm_show,
        recomp_algorithm_store,
        "algo=NAME [priority=1..3]: secondary algorithms (before init)",
    ),
    Attribute(
        "recompress",
        WO,
        None,
        recompress_store,
        "type=idle|huge|huge_idle threshold=B max_pages=N algo= priority=",
    ),
    Attribute("mm_stat", RO, mm_stat_show, None, "memory statistics (9 fields)"),
    Attribute("io_stat", RO, io_stat_show, None, "I/O statistics (4 fields)"),
    Attribute("debug_stat", RO, debug_stat_show, None, "debug statistics"),
    Attribute("mem_stat", RO, mem_stat_show, None, "zramd: real memory cost of the process"),
    Attribute("classes", RO, classes_show, None, "zramd: zsmalloc debugfs classes table"),
    Attribute(
        "auto_compact",
        RW,
        auto_compact_show,
        auto_compact_store,
        "zramd: background compaction: interval=S min_bytes=SIZE min_percent=N",
    ),
    Attribute("compact_stat", RO, compact_stat_show, None, "zramd: background/direct compaction"),
)
BY_NAME = {a.name: a for a in ATTRIBUTES}
CONTROL_BY_NAME = {a.name: a for a in CONTROL_ATTRIBUTES}


def lookup(name: str) -> Attribute[ZramDevice]:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ZramdError(f"no attribute {name!r}") from None


def show_attr(attr: Attribute[T], target: T) -> bytes:
    """The attribute's text, as bytes. EACCES for a write-only attribute."""
    if attr.show is None:
        raise PermissionDeniedError(f"{attr.name} is write-only")
    return os.fsencode(attr.show(target))  # a backing_dev path shows as the bytes it was given


def store_attr(attr: Attribute[T], target: T, data: bytes) -> int:
    """Write ``data`` to the attribute as one sysfs write does; returns the byte count the
    write reports: ``min(len(data), 4096)``.

    kernfs passes a store only the first 4096 bytes (PAGE_SIZE) of a write, and reports that
    many as written; every zram store reads them as a C string, so a NUL byte ends the value.
    An empty write reports 0 without running the store. EACCES for a read-only attribute;
    otherwise the attribute's own errno on a bad value, with nothing changed."""
    if attr.store is None:
        raise PermissionDeniedError(f"{attr.name} is read-only")
    data = bytes(data[:STORE_MAX])
    if not data:
        return 0
    attr.store(target, data.split(b"\0", 1)[0])
    return len(data)


def show(dev: ZramDevice, name: str) -> bytes:
    """``show_attr`` of the device attribute ``name``."""
    return show_attr(lookup(name), dev)


def store(dev: ZramDevice, name: str, data: bytes) -> int:
    """``store_attr`` of the device attribute ``name``."""
    return store_attr(lookup(name), dev, data)


def class_show(devices: Devices, name: str) -> bytes:
    """``show_attr`` of the zram-control attribute ``name``."""
    return show_attr(CONTROL_BY_NAME[name], devices)


def class_store(devices: Devices, name: str, data: bytes) -> int:
    """``store_attr`` of the zram-control attribute ``name``."""
    return store_attr(CONTROL_BY_NAME[name], devices, data)
