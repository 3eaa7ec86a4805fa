"""The kernel's parsing primitives, and each attribute's answer to raw bytes as the kernel gave
it (the tables at the end were recorded by hand on Linux 6.18.44, /sys/block/zram0)."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from zramd import control
from zramd.device import ZramDevice
from zramd.errors import InvalidValueError, OutOfRangeError, ZramdError
from zramd.parse import cstring, kstrtoint, kstrtoull, memparse, next_args, sysfs_streq


@pytest.mark.parametrize(
    ("text", "value", "consumed"),
    [
        ("4096", 4096, 4),
        ("512M\n", 512 << 20, 4),
        ("1g", 1 << 30, 2),
        ("2T", 2 << 40, 2),
        ("3k", 3072, 2),
        ("1E", 1 << 60, 2),
        ("0x1000", 4096, 6),
        ("0x10M", 16 << 20, 5),
        ("010", 8, 3),  # leading 0: octal
        ("0", 0, 1),
        ("1x", 1, 1),  # junk after the number is ignored
        ("0x", 0, 1),  # "0x" without a hex digit is octal 0, then junk
        ("abc", 0, 0),
        ("", 0, 0),
        ("-1", 0, 0),
        (" 5", 0, 0),  # no leading whitespace
    ],
)
def test_memparse(text: str, value: int, consumed: int) -> None:
    assert memparse(text) == (value, consumed)


def test_memparse_wraps_like_unsigned_long_long() -> None:
    assert memparse("16E")[0] == 0


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("1\n", 1), ("+7", 7), ("65535", 65535)])
def test_kstrtoull(text: str, value: int) -> None:
    assert kstrtoull(text, limit=0xFFFF) == value


@pytest.mark.parametrize("text", ["", "\n", "1 ", "1\n\n", "x", "-1", "1k", " 1"])
def test_kstrtoull_rejects_junk(text: str) -> None:
    with pytest.raises(InvalidValueError):
        kstrtoull(text)


def test_kstrtoull_range() -> None:
    with pytest.raises(OutOfRangeError):
        kstrtoull("65536", limit=0xFFFF)
    with pytest.raises(OutOfRangeError):
        kstrtoull("18446744073709551616")
    assert kstrtoull("0x1f", 0) == 31
    assert kstrtoull("017", 0) == 15


def test_kstrtoint() -> None:
    assert kstrtoint("-5") == -5
    assert kstrtoint("2147483647") == 2**31 - 1
    with pytest.raises(OutOfRangeError):
        kstrtoint("2147483648")


def test_sysfs_streq() -> None:
    assert sysfs_streq("all\n", "all")
    assert not sysfs_streq("all\n\n", "all")
    assert not sysfs_streq("al", "all")


def test_next_args() -> None:
    assert next_args('  algo=zstd level=9\n dict="/a b" flag ') == [
        ("algo", "zstd"),
        ("level", "9"),
        ("dict", "/a b"),
        ("flag", None),
    ]
    assert next_args("level=") == [("level", "")]


# -- bytes, as a store receives them ---------------------------------------------------------------


def test_cstring_ends_at_nul_and_keeps_bytes() -> None:
    assert cstring(b"64M\0junk") == b"64M"
    assert cstring(b"\0") == b""
    assert cstring("lz4\udcff") == b"lz4\xff"  # surrogateescape gives the byte back
    assert cstring(b"\xff\xfe") == b"\xff\xfe"


@pytest.mark.parametrize(
    ("text", "value", "consumed"),
    [
        (b"64M\xff", 64 << 20, 3),  # a byte >= 0x80 ends the number like any other junk
        (b"64\x00M", 64, 2),  # the NUL ends the string before the suffix
        (b"\x0064M", 0, 0),
        (b"0X10m", 16 << 20, 5),
        (b"0xg", 0, 1),  # no hex digit after 0x: octal 0
        (b"09M", 0, 1),  # octal stops at 9; '9' is no suffix
        (b"99999999999999999999999", 99999999999999999999999 % 2**64, 23),  # wraps silently
        (b"0x1ffffffffffffffff", 2**64 - 1, 19),
        (b"1\xc2\xb2", 1, 1),  # "1²": a non-ASCII digit is not a digit
    ],
)
def test_memparse_bytes(text: bytes, value: int, consumed: int) -> None:
    assert memparse(text) == (value, consumed)


@pytest.mark.parametrize(
    ("text", "err"),
    [
        (b"99999999999999999999x", errno.ERANGE),  # overflow is found before the junk
        (b"18446744073709551616\n\n", errno.ERANGE),
        (b"65536x", errno.EINVAL),  # no overflow of a u64: junk first, then the u16 range
        (b"65536", errno.ERANGE),
        (b"1\xff", errno.EINVAL),
        (b"\xff", errno.EINVAL),
        (b"++1", errno.EINVAL),
        (b"+-1", errno.EINVAL),
        (b"-0", errno.EINVAL),  # unsigned: no '-' at all
        (b"+", errno.EINVAL),
        (b"1\r", errno.EINVAL),
    ],
)
def test_kstrtou16_errors_in_the_kernels_order(text: bytes, err: int) -> None:
    with pytest.raises(ZramdError) as info:
        kstrtoull(text, limit=0xFFFF)
    assert info.value.errno == err


def test_kstrtoull_reads_a_c_string() -> None:
    assert kstrtoull(b"7\0junk") == 7
    assert kstrtoull(b"+7\n\0\n") == 7
    with pytest.raises(InvalidValueError):
        kstrtoull(b"\x007")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"-2147483648", -(2**31)),
        (b"2147483647", 2**31 - 1),
        (b"-0", 0),
        (b"+5\n", 5),
        (b"-5\0x", -5),
    ],
)
def test_kstrtoint_values(text: bytes, value: int) -> None:
    assert kstrtoint(text) == value


@pytest.mark.parametrize(
    ("text", "err"),
    [
        (b"-+0", errno.EINVAL),  # after '-' digits must follow (_kstrtoull, no '+')
        (b"+-0", errno.EINVAL),
        (b"--1", errno.EINVAL),
        (b"-", errno.EINVAL),
        (b"-5x", errno.EINVAL),
        (b"-2147483649", errno.ERANGE),
        (b"2147483648", errno.ERANGE),
        (b"-99999999999999999999x", errno.ERANGE),  # u64 overflow first, then junk
        (b"-9223372036854775809", errno.ERANGE),
    ],
)
def test_kstrtoint_errors(text: bytes, err: int) -> None:
    with pytest.raises(ZramdError) as info:
        kstrtoint(text)
    assert info.value.errno == err


def test_sysfs_streq_on_c_strings() -> None:
    assert sysfs_streq(b"all\0x", "all")
    assert sysfs_streq(b"all\n\0\n", "all")
    assert not sysfs_streq(b"all\xff", "all")
    assert not sysfs_streq(b"\0all", "all")


# -- each attribute against the kernel (Linux 6.18.44, by hand) ----------------------------------
#
# Written with one os.write() each to /sys/block/zram0/ATTR; the result is the count the
# write returned or its errno. The kernel was built without CONFIG_ZRAM_WRITEBACK,
# CONFIG_ZRAM_MULTI_COMP and ac-time tracking, so only the attributes below were compared.

KiB, MiB = 1 << 10, 1 << 20
LONG = b" " * 5000

#: mem_limit (memparse): (written, result, mm_stat's mem_limit after; 16384 = unchanged)
KERNEL_MEM_LIMIT: list[tuple[bytes, int | str, int]] = [
    (b"64M", 3, 64 * MiB),
    (b"64M\xff", 4, 64 * MiB),
    (b"64M\n", 4, 64 * MiB),
    (b"64M\n\n", 5, 64 * MiB),
    (b"64M junk", 8, 64 * MiB),
    (b" 64M", "EINVAL", 16384),
    (b"\t64M", "EINVAL", 16384),
    (b"+64M", "EINVAL", 16384),
    (b"-64M", "EINVAL", 16384),
    (b"-1", "EINVAL", 16384),
    (b"0x10M", 5, 16 * MiB),
    (b"0X10m", 5, 16 * MiB),
    (b"0x", 2, 0),
    (b"0xg", 3, 0),
    (b"010", 3, 4096),
    (b"08", 2, 0),
    (b"09M", 3, 0),
    (b"0", 1, 0),
    (b"\n", "EINVAL", 16384),
    (b"", 0, 16384),
    (b"\xff", "EINVAL", 16384),
    (b"64\x00M", 4, 4096),
    (b"\x0064M", "EINVAL", 16384),
    (b"16E", 3, 0),
    (b"15E", 3, 15 << 60),
    (b"18446744073709551615", 20, 0),
    (b"18446744073709551616", 20, 0),
    (b"99999999999999999999999", 23, 200376420520689664),
    (b"18446744073709547521", 20, 0),
    (b"18446744073709547520", 20, 18446744073709547520),
    (b"18446744073709547519", 20, 18446744073709547520),
    (b"0xffffffffffffffff", 18, 0),
    (b"0x1ffffffffffffffff", 19, 0),
    (b"1k", 2, 4096),
    (b"1K", 2, 4096),
    (b"1b", 2, 4096),
    (b"1KiB", 4, 4096),
    (b"4095", 4, 4096),
    (b"4097", 4, 8192),
    (b"1y", 2, 4096),
    (b"1e", 2, 1 << 60),
    (b"1p", 2, 1 << 50),
    (b"1t", 2, 1 << 40),
    (b"1g", 2, 1 << 30),
    (b"1x", 2, 4096),
    (b"0b101", 5, 0),
    (b"1_000", 5, 4096),
    (b"  ", "EINVAL", 16384),
    (b"64M" + LONG, 4096, 64 * MiB),  # only the first 4096 bytes are stored, and counted
    (LONG + b"64M", "EINVAL", 16384),
]

#: (attribute, written, result) on an uninitialised device
KERNEL_UNINIT: list[tuple[str, bytes, int | str]] = [
    # reset: kstrtou16, non-zero
    ("reset", b"1", 1),
    ("reset", b"1\n", 2),
    ("reset", b"1\n\n", "EINVAL"),
    ("reset", b"+1", 2),
    ("reset", b"++1", "EINVAL"),
    ("reset", b"+-1", "EINVAL"),
    ("reset", b"-1", "EINVAL"),
    ("reset", b"-0", "EINVAL"),
    ("reset", b" 1", "EINVAL"),
    ("reset", b"1 ", "EINVAL"),
    ("reset", b"\t1", "EINVAL"),
    ("reset", b"1\t", "EINVAL"),
    ("reset", b"1\r", "EINVAL"),
    ("reset", b"01", 2),
    ("reset", b"0x1", "EINVAL"),
    ("reset", b"0", "EINVAL"),
    ("reset", b"00", "EINVAL"),
    ("reset", b"0\n", "EINVAL"),
    ("reset", b"\n", "EINVAL"),
    ("reset", b"+", "EINVAL"),
    ("reset", b"+\n", "EINVAL"),
    ("reset", b"1\x00", 2),
    ("reset", b"1\x00junk", 6),
    ("reset", b"\x001", "EINVAL"),
    ("reset", b"1\xff", "EINVAL"),
    ("reset", b"\xff", "EINVAL"),
    ("reset", b"65535", 5),
    ("reset", b"65536", "ERANGE"),
    ("reset", b"65536x", "EINVAL"),
    ("reset", b"99999999999999999999", "ERANGE"),
    ("reset", b"99999999999999999999x", "ERANGE"),
    ("reset", b"18446744073709551616\n", "ERANGE"),
    ("reset", b"18446744073709551616\n\n", "ERANGE"),
    ("reset", b"1" * 5000, "ERANGE"),
    ("reset", b"1\n" + b"x" * 5000, "EINVAL"),
    ("reset", b"1" + b"\x00" * 5000, 4096),
    ("reset", b"-", "EINVAL"),
    ("reset", b"1e3", "EINVAL"),
    ("reset", b"1k", "EINVAL"),
    # mem_used_max: kstrtoul, exactly 0
    ("mem_used_max", b"0", 1),
    ("mem_used_max", b"0\n", 2),
    ("mem_used_max", b"+0", 2),
    ("mem_used_max", b"-0", "EINVAL"),
    ("mem_used_max", b"00", 2),
    ("mem_used_max", b"0x0", "EINVAL"),
    ("mem_used_max", b"0\x00x", 3),
    ("mem_used_max", b"0 ", "EINVAL"),
    ("mem_used_max", b"18446744073709551616", "EINVAL"),
    ("mem_used_max", b"18446744073709551616x", "EINVAL"),
    ("mem_used_max", b"1", "EINVAL"),
    ("mem_used_max", b"0\n\n", "EINVAL"),
    ("mem_used_max", b"0" * 5000, 4096),
    ("mem_used_max", b"0\xff", "EINVAL"),
    # idle and compact need an initialised device
    ("idle", b"all", "EINVAL"),
    ("idle", b"all\n", "EINVAL"),
    ("idle", b"xx", "EINVAL"),
    ("compact", b"1", "EINVAL"),
    ("compact", b"", 0),
    # comp_algorithm (lz4 exists in both; the name is a C string, one '\n' dropped, and
    # the lookup forgives one more)
    ("comp_algorithm", b"lz4\x00" + b"x" * 200, 204),
    ("comp_algorithm", b"lz4\xff", "EINVAL"),
    ("comp_algorithm", b"x" * 200, "E2BIG"),
    ("comp_algorithm", b"\xff" * 200, "E2BIG"),
    ("comp_algorithm", b"lz4\n", 4),
    ("comp_algorithm", b"lz4\n\n", 5),
    ("comp_algorithm", b"lz4 ", "EINVAL"),
    ("comp_algorithm", b"x" * 127, "EINVAL"),
    ("comp_algorithm", b"x" * 128, "E2BIG"),
    ("comp_algorithm", b"lz4\x00\n", 5),
    # disksize: memparse, 0 refused (each success is reset before the next case)
    ("disksize", b"1M\xff", 3),
    ("disksize", b"0x", "EINVAL"),
    ("disksize", b"\x00", "EINVAL"),
    ("disksize", b"1M\x00junk", 7),
]

#: (attribute, written, result) on an initialised device (disksize 1M)
KERNEL_INIT: list[tuple[str, bytes, int | str]] = [
    ("idle", b"all", 3),
    ("idle", b"all\x00x", 5),
    ("idle", b"all\n", 4),
    ("idle", b"all\n\n", "EINVAL"),
    ("idle", b"1\xff", "EINVAL"),
    ("idle", b"99999999999999999999x", "EINVAL"),
    ("idle", b"4294967296", "EINVAL"),  # (the kernel refused every age: no ac-time tracking)
    ("idle", b"-1", "EINVAL"),
    ("compact", b"junk", 4),
    ("compact", b"\xff", 1),
    ("compact", b"\x00", 1),
    ("disksize", b"2M", "EBUSY"),
]


def _result(dev: ZramDevice, attr: str, data: bytes) -> int | str:
    try:
        return control.store(dev, attr, data)
    except ZramdError as e:
        return errno.errorcode[e.errno]


@pytest.fixture
def fresh() -> Iterator[ZramDevice]:
    d = ZramDevice()
    yield d
    d.openers = 0
    d.reset()


@pytest.mark.parametrize(("data", "result", "limit"), KERNEL_MEM_LIMIT)
def test_mem_limit_as_the_kernel(
    fresh: ZramDevice, data: bytes, result: object, limit: int
) -> None:
    control.store(fresh, "mem_limit", b"12345")
    assert fresh.mm_stat().mem_limit == 16384
    assert _result(fresh, "mem_limit", data) == result
    assert fresh.mm_stat().mem_limit == limit
    assert control.show(fresh, "mm_stat").split()[3] == str(limit).encode()


@pytest.mark.parametrize(("attr", "data", "result"), KERNEL_UNINIT)
def test_uninitialised_attributes_as_the_kernel(
    fresh: ZramDevice, attr: str, data: bytes, result: object
) -> None:
    assert _result(fresh, attr, data) == result


@pytest.mark.parametrize(("attr", "data", "result"), KERNEL_INIT)
def test_initialised_attributes_as_the_kernel(
    fresh: ZramDevice, attr: str, data: bytes, result: object
) -> None:
    control.store(fresh, "disksize", b"1M")
    assert _result(fresh, attr, data) == result
