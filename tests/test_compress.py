"""Every backend: round trip, real compression (not a no-op), errors."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zramd import CompressionError, InvalidValueError
from zramd.compress import BACKENDS, available, create, lookup
from zramd.testing import synthetic_pages

NAMES = available()
P = 4096


def test_registry_order_is_the_kernels() -> None:
    order = ["lzo-rle", "lzo", "lz4", "lz4hc", "zstd", "deflate", "842"]
    assert [b.name for b in BACKENDS] == order
    assert [n for n in order if n in NAMES] == NAMES
    assert {"lz4", "lz4hc", "zstd", "deflate"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
@settings(suppress_health_check=[HealthCheck.large_base_example])
@given(page=st.binary(min_size=P, max_size=P))
def test_round_trip_any_page(name: str, page: bytes) -> None:
    c = create(name)
    assert c.decompress(c.compress(page), P) == page


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_memoryview_input(name: str) -> None:
    c = create(name)
    for page in synthetic_pages(20, seed=1):
        assert c.decompress(memoryview(c.compress(memoryview(page))), P) == page


@pytest.mark.parametrize("name", NAMES)
def test_compresses_compressible_data(name: str) -> None:
    # catches a do-nothing backend: text must shrink a lot, random data must not shrink
    c = create(name)
    text = (b"the quick brown fox jumps over the lazy dog " * 100)[:P]
    assert len(c.compress(text)) < P // 8
    noise = os.urandom(P)
    assert len(c.compress(noise)) >= P - 16


@pytest.mark.parametrize("name", NAMES)
def test_corrupt_input_raises(name: str) -> None:
    c = create(name)
    good = c.compress(b"abc" * 1000 + bytes(P - 3000))
    with pytest.raises(CompressionError, match=name):
        c.decompress(good[: len(good) // 2], P)
    with pytest.raises(CompressionError):
        c.decompress(good, P + 1)  # wrong size


def test_unknown_and_unavailable_names() -> None:
    with pytest.raises(InvalidValueError, match="unknown comp_algorithm 'snappy'"):
        lookup("snappy")
    with pytest.raises(InvalidValueError, match=r"lzo-rle.*unavailable"):
        lookup("lzo-rle")


@pytest.mark.parametrize(("name", "level"), [("deflate", 10), ("deflate", -2)])
def test_bad_levels(name: str, level: int) -> None:
    with pytest.raises(InvalidValueError, match=str(level)):
        create(name, level)


@pytest.mark.parametrize(
    ("name", "level", "same_as"),
    [
        ("lz4", 0, 1),  # an acceleration below 1 is 1 (LZ4_compress_fast)
        ("lz4", -5, 1),
        ("lz4hc", 0, 9),  # below 1: the default 9 (LZ4HC_compress_generic)
        ("lz4hc", 13, 12),  # above the maximum: the maximum
        ("zstd", 0, 3),  # ZSTD_getCParams: 0 is the default level
        ("zstd", 23, 22),  # above the maximum: the maximum
        ("zstd", 2**31 - 1, 22),
        ("zstd", -(2**31) + 1, -(1 << 17)),  # below ZSTD_minCLevel: the minimum
    ],
)
def test_levels_map_as_the_kernel_backends_map_them(name: str, level: int, same_as: int) -> None:
    """The kernel passes a level to the library as written and the library maps it into its
    range; zramd's backends give the same output for it as for the level it maps to."""
    pages = synthetic_pages(8, seed=4)
    c, ref = create(name, level), create(name, same_as)
    assert c.level == level
    for page in pages:
        out = c.compress(page)
        assert out == ref.compress(page)
        assert c.decompress(out, P) == page


def test_negative_zstd_levels_trade_ratio_for_speed() -> None:
    page = b"".join(synthetic_pages(1, seed=3))
    assert len(create("zstd", -50).compress(page)) > len(create("zstd", 3).compress(page))


def test_levels_out_of_the_kernels_s32_are_refused() -> None:
    with pytest.raises(InvalidValueError, match="32-bit"):
        create("lz4", 2**31)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "deflate"])
def test_deflate_winbits_is_ignored_by_the_others(name: str) -> None:
    page = b"".join(synthetic_pages(1, seed=3))
    assert create(name, winbits=0).compress(page) == create(name).compress(page)


@pytest.mark.parametrize("winbits", [8, 16, -8, -16, 0, 25])
def test_deflate_winbits_out_of_range(winbits: int) -> None:
    with pytest.raises(InvalidValueError, match=r"deflate\.winbits"):
        create("deflate", winbits=winbits)


def test_deflate_winbits_as_zlib_takes_them() -> None:
    """Negative: a raw stream (the default, -11); positive: a zlib stream, as the kernel
    passes the value to zlib_deflateInit2 unchanged."""
    page = b"".join(synthetic_pages(1, seed=3))
    raw, wrapped = create("deflate"), create("deflate", winbits=11)
    assert raw.compress(page) == create("deflate", winbits=-11).compress(page)
    out = wrapped.compress(page)
    assert out[0] & 0x0F == 8  # a zlib header (CM 8 = deflate) ...
    assert len(out) == len(raw.compress(page)) + 6  # ... and an Adler-32 trailer
    assert wrapped.decompress(out, P) == page


def test_levels_change_the_output() -> None:
    page = b"".join(synthetic_pages(1, seed=3))
    fast = create("zstd", 1).compress(page)
    strong = create("zstd", 19).compress(page)
    assert len(strong) <= len(fast)
    assert create("zstd", 19).decompress(strong, P) == page
