"""Control attributes: the kernel's text byte for byte, and its errno for every bad write."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from zramd import control
from zramd.control import (
    ATTRIBUTES,
    format_classes,
    format_comp_algorithm,
    format_debug_stat,
    format_io_stat,
    format_mm_stat,
    show,
    store,
    writeback_plan,
)
from zramd.device import ZramDevice
from zramd.errors import ZramdError
from zramd.postproc import PP_HUGE, PP_IDLE, PP_INCOMPRESSIBLE
from zramd.slots import ZRAM_COMP_PRIORITY_MASK
from zramd.stats import DebugStat, IoStat, MmStat
from zramd.testing import synthetic_pages

P = 4096


@pytest.fixture
def dev() -> Iterator[ZramDevice]:
    d = ZramDevice()
    yield d
    d.openers = 0
    d.reset()


def errno_of(dev: ZramDevice, name: str, data: bytes) -> int:
    with pytest.raises(ZramdError) as info:
        store(dev, name, data)
    return info.value.errno


# -- formats --------------------------------------------------------------------------------------


def test_mm_stat_format() -> None:
    s = MmStat(11247616, 2091566, 3641344, 0, 3645440, 824, 0, 41, 43)
    assert format_mm_stat(s) == (
        "11247616  2091566  3641344        0  3645440      824        0       41       43\n"
    )
    wide = MmStat(123456789012, 1, 2, 3, 4, 5, 6, 7, 8)  # wider than 8: no truncation
    assert format_mm_stat(wide).startswith("123456789012        1 ")


def test_io_stat_format() -> None:
    assert format_io_stat(IoStat(1, 22, 0, 333)) == "       1       22 0      333\n"


def test_debug_stat_format() -> None:
    assert format_debug_stat(DebugStat(1, 7)) == "version: 1\n0        7\n"


def test_comp_algorithm_format() -> None:
    text = format_comp_algorithm("lz4")
    assert text.endswith(" \n")
    assert "[lz4] " in text
    assert text.count("[") == 1
    assert text.startswith(("lzo [lz4] lz4hc zstd deflate", "[lz4] lz4hc zstd deflate"))


def test_uninitialised_shows(dev: ZramDevice) -> None:
    assert show(dev, "disksize") == b"0\n"
    assert show(dev, "initstate") == b"0\n"
    assert show(dev, "mm_stat") == (b"       0" + b"        0" * 8 + b"\n")
    assert show(dev, "io_stat") == b"       0        0 0        0\n"
    assert show(dev, "debug_stat") == b"version: 1\n0        0\n"


def test_mem_limit_shows_before_init(dev: ZramDevice) -> None:
    store(dev, "mem_limit", b"1M\n")
    fields = show(dev, "mm_stat").split()
    assert fields[3] == b"1048576"


def test_classes_table(dev: ZramDevice) -> None:
    store(dev, "disksize", b"1M")
    dev.write(0, b"".join((f"{i} ".encode() * 2000)[:P] for i in range(10)))
    pool = dev.pool
    assert pool is not None
    text = format_classes(pool.stats())
    lines = text.splitlines()
    assert lines[0].split() == [
        "class", "size", "10%", "20%", "30%", "40%", "50%", "60%", "70%", "80%", "90%",
        "99%", "100%", "obj_allocated", "obj_used", "pages_used", "pages_per_zspage",
        "freeable",
    ]  # fmt: skip
    assert len(lines) == 1 + 119 + 2
    assert lines[-2] == ""
    assert lines[-1].split()[0] == "Total"
    assert int(lines[-1].split()[-3]) == 10  # obj_used total (pages_per_zspage is blank)


# -- the attribute table --------------------------------------------------------------------------


def test_modes_follow_sysfs() -> None:
    modes = {a.name: a.mode for a in ATTRIBUTES}
    assert modes["mm_stat"] == modes["io_stat"] == modes["initstate"] == 0o444
    assert modes["compact"] == modes["reset"] == modes["mem_limit"] == 0o200
    assert modes["disksize"] == modes["comp_algorithm"] == 0o644
    for a in ATTRIBUTES:
        assert (a.show is not None) == bool(a.mode & 0o444)
        assert (a.store is not None) == bool(a.mode & 0o200)


def test_read_only_and_write_only(dev: ZramDevice) -> None:
    assert errno_of(dev, "mm_stat", b"1") == errno.EACCES
    with pytest.raises(ZramdError) as info:
        show(dev, "compact")
    assert info.value.errno == errno.EACCES


# -- lifecycle through the attributes -------------------------------------------------------------


def test_setup_like_zramctl(dev: ZramDevice) -> None:
    store(dev, "reset", b"1\n")
    store(dev, "comp_algorithm", b"zstd\n")
    store(dev, "algorithm_params", b"algo=zstd level=5\n")
    store(dev, "disksize", b"64M\n")
    assert show(dev, "disksize") == b"67108864\n"
    assert show(dev, "initstate") == b"1\n"
    assert b"[zstd]" in show(dev, "comp_algorithm")
    assert dev.algorithm_level == 5


@pytest.mark.parametrize(
    ("attr", "value", "err"),
    [
        ("disksize", b"0\n", errno.EINVAL),
        ("disksize", b"lots\n", errno.EINVAL),
        ("reset", b"0\n", errno.EINVAL),
        ("reset", b"x\n", errno.EINVAL),
        ("reset", b"70000\n", errno.ERANGE),
        ("mem_limit", b"-5\n", errno.EINVAL),
        ("mem_limit", b"\n", errno.EINVAL),
        ("mem_used_max", b"1\n", errno.EINVAL),
        ("mem_used_max", b"x\n", errno.EINVAL),
        ("compact", b"1\n", errno.EINVAL),  # not initialised
        ("idle", b"all\n", errno.EINVAL),  # not initialised
        ("idle", b"soon\n", errno.EINVAL),
        ("comp_algorithm", b"snappy\n", errno.EINVAL),
        ("comp_algorithm", b"x" * 128, errno.E2BIG),
        ("algorithm_params", b"level\n", errno.EINVAL),
        ("algorithm_params", b"level=x\n", errno.EINVAL),
        ("algorithm_params", b"priority=2 level=1\n", errno.EINVAL),
        ("algorithm_params", b"algo=zstd level=1\n", errno.EINVAL),  # zstd is not selected
        ("disksize", b"\xff\n", errno.EINVAL),
        ("backing_dev", b"/nonexistent/backing\n", errno.ENOENT),
        ("backing_dev", b"\n", errno.EINVAL),
        ("backing_dev", b"/dev/null\n", errno.ENOTBLK),
        ("writeback", b"idle\n", errno.EINVAL),  # not initialised
        ("recompress", b"type=idle\n", errno.EINVAL),  # not initialised
        ("writeback_limit", b"lots\n", errno.EINVAL),
        ("writeback_limit", b"18446744073709551616\n", errno.ERANGE),
        ("writeback_limit_enable", b"yes\n", errno.EINVAL),
        ("writeback_batch_size", b"0\n", errno.EINVAL),
        ("writeback_batch_size", b"4294967296\n", errno.ERANGE),
        ("recomp_algorithm", b"priority=1\n", errno.EINVAL),  # no algo
        ("recomp_algorithm", b"algo\n", errno.EINVAL),  # key without value
        ("recomp_algorithm", b"algo=zstd priority=4\n", errno.EINVAL),
        ("recomp_algorithm", b"algo=zstd priority=0\n", errno.EINVAL),
        ("recomp_algorithm", b"algo=zstd priority=x\n", errno.EINVAL),
        ("recomp_algorithm", b"algo=snappy\n", errno.EINVAL),
        ("recomp_algorithm", b"algo=" + b"z" * 128 + b"\n", errno.E2BIG),
        ("auto_compact", b"\n", errno.EINVAL),
        ("auto_compact", b"interval=-1\n", errno.EINVAL),
        ("auto_compact", b"interval=90000\n", errno.ERANGE),
        ("auto_compact", b"min_percent=101\n", errno.ERANGE),
        ("auto_compact", b"min_bytes=lots\n", errno.EINVAL),
        ("auto_compact", b"speed=9\n", errno.EINVAL),
        ("auto_compact", b"interval\n", errno.EINVAL),
    ],
)
def test_bad_writes_before_init(dev: ZramDevice, attr: str, value: bytes, err: int) -> None:
    readable = [a.name for a in ATTRIBUTES if a.show and a.name not in ("mem_stat", "classes")]
    before = [show(dev, name) for name in readable]
    assert errno_of(dev, attr, value) == err
    after = [show(dev, name) for name in readable]
    assert before == after  # nothing changed


@pytest.mark.parametrize(
    ("attr", "value", "err"),
    [
        ("disksize", b"1G\n", errno.EBUSY),
        ("comp_algorithm", b"zstd\n", errno.EBUSY),
        ("comp_algorithm", b"nope\n", errno.EINVAL),  # unknown is EINVAL even when busy
        ("algorithm_params", b"level=1\n", errno.EBUSY),
    ],
)
def test_bad_writes_after_init(dev: ZramDevice, attr: str, value: bytes, err: int) -> None:
    store(dev, "disksize", b"1M")
    assert errno_of(dev, attr, value) == err
    assert show(dev, "disksize") == b"1048576\n"


def test_reset_while_open_is_ebusy(dev: ZramDevice) -> None:
    store(dev, "disksize", b"1M")
    dev.open()
    assert errno_of(dev, "reset", b"1") == errno.EBUSY
    assert show(dev, "initstate") == b"1\n"


def test_writes_act_before_returning(dev: ZramDevice) -> None:
    store(dev, "disksize", b"4M")
    dev.write(0, b"".join((f"{i} ".encode() * 2000)[:P] for i in range(1024)))
    for page in range(0, 1024, 4):
        dev.discard(page * P, 3 * P)  # three of every four pages: sparse zspages
    before = dev.mm_stat()
    store(dev, "compact", b"1\n")
    after = dev.mm_stat()
    assert after.pages_compacted > before.pages_compacted
    assert after.mem_used_total < before.mem_used_total
    store(dev, "mem_limit", b"256K\n")
    assert dev.mem_limit == 256 * 1024
    store(dev, "mem_limit", b"0\n")
    assert dev.mem_limit == 0
    store(dev, "mem_used_max", b"0\n")
    assert dev.mm_stat().mem_used_max == after.mem_used_total
    store(dev, "idle", b"all\n")
    store(dev, "idle", b"60\n")


def test_a_store_sees_one_page_as_a_c_string(dev: ZramDevice) -> None:
    """kernfs gives a store the first 4096 bytes of a write and reports that many written;
    the store reads them as a C string (NUL ends the value)."""
    # the number fills the first 4096 bytes; the junk after it is never parsed
    assert store(dev, "writeback_limit", b"0" * 4095 + b"7" + b"junk") == 4096
    assert dev.writeback_limit == 7
    assert store(dev, "writeback_limit", b"9\0junk") == 6
    assert dev.writeback_limit == 9
    assert store(dev, "mem_limit", b"1M" + b" " * 10_000) == 4096
    assert dev.mem_limit == 1 << 20
    assert store(dev, "compact", b"") == 0  # an empty write runs no store (not EINVAL)
    assert errno_of(dev, "compact", b"\0") == errno.EINVAL  # a store that runs: not init
    # junk after a number is the kernel's business, not refused up front
    assert store(dev, "mem_limit", b"64M\xff\xfe") == 5
    assert dev.mem_limit == 64 << 20
    assert errno_of(dev, "writeback_limit", b"99999999999999999999\xff") == errno.ERANGE


@pytest.mark.parametrize(
    ("written", "shown"),
    [
        (b"18446744073709551615", 0),  # PAGE_ALIGN wraps in 64 bits: no limit
        (b"0xffffffffffffffff", 0),
        (b"16E", 0),  # memparse's shift wraps first
        (b"18446744073709547520", 18446744073709547520),
    ],
)
def test_mem_limit_at_the_top_shows_a_u64(dev: ZramDevice, written: bytes, shown: int) -> None:
    store(dev, "mem_limit", written)
    assert show(dev, "mm_stat").split()[3] == str(shown).encode()


def test_backing_dev_path_is_bytes(dev: ZramDevice, tmp_path: Path) -> None:
    """The kernel opens the path as the bytes written; a name that is not UTF-8 works and
    shows as written."""
    name = os.fsencode(tmp_path) + b"/back\xff.img"
    with open(name, "wb") as f:
        f.truncate(1 << 20)
    store(dev, "backing_dev", name + b"\n")
    assert show(dev, "backing_dev") == name + b"\n"
    store(dev, "backing_dev", b"none")


def test_algorithm_params_ignores_unknown_keys(dev: ZramDevice) -> None:
    store(dev, "comp_algorithm", b"zstd")
    store(dev, "algorithm_params", b"level=7 frobnicate=1\n")
    assert dev.algorithm_level == 7


def test_mem_stat_fields(dev: ZramDevice) -> None:
    store(dev, "disksize", b"1M")
    fields = [int(x) for x in show(dev, "mem_stat").split()]
    assert len(fields) == 6
    assert fields[0] > 0  # RSS
    assert fields[4] == 256 * 16  # slot table for 256 pages


def test_lookup_unknown() -> None:
    with pytest.raises(ZramdError, match="no attribute"):
        control.lookup("nope")


# -- memory tiers: backing_dev, writeback*, bd_stat, recomp_algorithm, recompress ---------------


@pytest.fixture
def backing(tmp_path: Path) -> str:
    path = tmp_path / "backing.img"
    with open(path, "wb") as f:
        f.truncate(4 << 20)
    return str(path)


def test_tier_attributes_before_init(dev: ZramDevice, backing: str) -> None:
    assert show(dev, "backing_dev") == b"none\n"
    assert show(dev, "bd_stat") == b"       0        0        0\n"
    assert show(dev, "writeback_limit") == b"0\n"
    assert show(dev, "writeback_limit_enable") == b"0\n"
    assert show(dev, "writeback_batch_size") == b"32\n"
    assert show(dev, "recomp_algorithm") == b""
    store(dev, "backing_dev", backing.encode() + b"\n")
    assert show(dev, "backing_dev") == backing.encode() + b"\n"
    store(dev, "recomp_algorithm", b"algo=zstd\n")
    store(dev, "recomp_algorithm", b"algo=deflate priority=3\n")
    assert show(dev, "recomp_algorithm") == (
        b"#1: "
        + format_comp_algorithm("zstd").encode()
        + b"#3: "
        + format_comp_algorithm("deflate").encode()
    )
    store(dev, "algorithm_params", b"algo=zstd level=9\n")  # a secondary's parameters
    store(dev, "writeback_limit", b"100\n")
    store(dev, "writeback_limit_enable", b"1\n")
    store(dev, "writeback_batch_size", b"8\n")
    assert (dev.writeback_limit, dev.writeback_limit_enable, dev.writeback_batch_size) == (
        100,
        True,
        8,
    )
    store(dev, "auto_compact", b"interval=5 min_bytes=4M min_percent=10\n")
    assert show(dev, "auto_compact") == b"interval=5 min_bytes=4194304 min_percent=10\n"
    assert show(dev, "compact_stat") == b"       0        0        0        0        0\n"


def test_writeback_and_recompress_through_the_attributes(dev: ZramDevice, backing: str) -> None:
    store(dev, "backing_dev", backing.encode())
    store(dev, "recomp_algorithm", b"algo=zstd priority=1")
    store(dev, "disksize", b"1M\n")
    data = b"".join(synthetic_pages(256, seed=8))
    dev.write(0, data)
    store(dev, "recompress", b"type=huge_idle threshold=100 max_pages=1000\n")  # none idle yet
    assert not any(dev.slot_flags(i) & ZRAM_COMP_PRIORITY_MASK for i in range(256))
    store(dev, "idle", b"all\n")
    store(dev, "recompress", b"type=idle algo=zstd\n")
    assert any(dev.slot_flags(i) & ZRAM_COMP_PRIORITY_MASK for i in range(256))
    store(dev, "writeback", b"page_index=3\n")  # the pre-6.16 single-page form
    store(dev, "writeback", b"page_indexes=10-19 page_index=30\n")
    written = int(show(dev, "bd_stat").split()[2])
    assert 0 < written <= 12
    store(dev, "writeback", b"idle\n")  # the legacy bare word
    store(dev, "writeback", b"type=huge\n")
    store(dev, "writeback", b"\n")  # nothing asked, nothing done
    store(dev, "writeback", b"frobnicate=1\n")  # unknown keys are ignored
    assert dev.read(0, len(data)) == data
    store(dev, "writeback_limit_enable", b"1\n")
    store(dev, "writeback_limit", b"0\n")
    assert errno_of(dev, "writeback", b"page_indexes=0-255\n") == errno.EIO


def test_writeback_parser_order() -> None:
    plan = writeback_plan("page_index=5 page_indexes=7-9 idle page_index=1")
    # indexes scan their own range; a mode scans the range set last and ends the parse
    assert plan(100) == [(0, 5, 6), (0, 7, 10), (PP_IDLE, 7, 10)]
    assert writeback_plan("type=huge_idle")(100) == [(PP_IDLE | PP_HUGE, 0, 100)]
    assert writeback_plan('"type=incompressible"')(8) == [(PP_INCOMPRESSIBLE, 0, 8)]


@pytest.mark.parametrize(
    ("attr", "value", "err"),
    [
        ("backing_dev", b"none\n", errno.EBUSY),
        ("recomp_algorithm", b"algo=deflate\n", errno.EBUSY),
        ("writeback", b"nonsense\n", errno.EINVAL),
        ("writeback", b"type=cold\n", errno.EINVAL),
        ("writeback", b"page_index=256\n", errno.ERANGE),  # 256 pages: 0..255
        ("writeback", b"page_index=x\n", errno.EINVAL),
        ("writeback", b"page_index=99999999999999999999\n", errno.ERANGE),
        ("writeback", b"page_indexes=5\n", errno.EINVAL),
        ("writeback", b"page_indexes=9-3\n", errno.ERANGE),
        ("writeback", b"page_indexes=0-256\n", errno.ERANGE),
        ("recompress", b"type\n", errno.EINVAL),
        ("recompress", b"threshold=4000\n", errno.EINVAL),  # not below huge_class_size
        ("recompress", b"max_pages=x\n", errno.EINVAL),
        ("recompress", b"algo=deflate\n", errno.EINVAL),  # not a configured secondary
        ("recompress", b"priority=2\n", errno.EINVAL),
        ("recompress", b"priority=0\n", errno.EINVAL),
    ],
)
def test_bad_tier_writes_after_init(
    dev: ZramDevice, backing: str, attr: str, value: bytes, err: int
) -> None:
    store(dev, "backing_dev", backing.encode())
    store(dev, "recomp_algorithm", b"algo=zstd")
    store(dev, "disksize", b"1M")
    dev.write(0, b"".join(synthetic_pages(256, seed=3)))
    before = (show(dev, "mm_stat"), show(dev, "bd_stat"), show(dev, "backing_dev"))
    assert errno_of(dev, attr, value) == err
    assert (show(dev, "mm_stat"), show(dev, "bd_stat"), show(dev, "backing_dev")) == before


def test_writeback_without_backing_dev_is_enodev(dev: ZramDevice) -> None:
    store(dev, "disksize", b"1M")
    assert errno_of(dev, "writeback", b"idle\n") == errno.ENODEV
    assert errno_of(dev, "recompress", b"type=idle\n") == errno.EINVAL  # no secondary
