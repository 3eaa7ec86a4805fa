"""Control attributes: the kernel's text byte for byte, and its errno for every bad write."""

from __future__ import annotations

import errno
from collections.abc import Iterator

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
)
from zramd.device import ZramDevice
from zramd.errors import ZramdError
from zramd.stats import DebugStat, IoStat, MmStat

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
