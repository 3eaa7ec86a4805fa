"""The kernel's parsing primitives."""

from __future__ import annotations

import pytest

from zramd.errors import InvalidValueError, OutOfRangeError
from zramd.parse import kstrtoint, kstrtoull, memparse, next_args, sysfs_streq


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
