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


@pytest.mark.parametrize(
    ("name", "level"), [("lz4", 0), ("lz4hc", 13), ("zstd", 23), ("deflate", 10)]
)
def test_bad_levels(name: str, level: int) -> None:
    with pytest.raises(InvalidValueError, match=str(level)):
        create(name, level)


def test_levels_change_the_output() -> None:
    page = b"".join(synthetic_pages(1, seed=3))
    fast = create("zstd", 1).compress(page)
    strong = create("zstd", 19).compress(page)
    assert len(strong) <= len(fast)
    assert create("zstd", 19).decompress(strong, P) == page
