"""Helpers for tests and benchmarks: realistic page contents and conformance checks.

``synthetic_page`` makes 4 KiB pages whose lz4-compressed sizes spread the way swapped-out
process memory does (a few same-filled pages, many highly compressible ones, a tail of
incompressible ones), from a seed, without reading anything off the machine.

``check_block_device`` is a conformance checker any byte-addressed block backend can run
(``read(offset, length)``, ``write(offset, data)``, ``discard``, ``write_zeroes``).
"""

from __future__ import annotations

import random
from typing import Protocol

from zramd._types import BytesLike
from zramd.errors import CorruptionError
from zramd.page import PAGE_SIZE
from zramd.pool_api import PoolAPI

_WORDS = (
    b"the of and to in is that for it as was with be by on not he this are or his from at "
    b"which but have an they you were her she there been one all we their has would when if "
    b"so no out up into do only time can will more other could first some what than new "
).split()


def synthetic_page(rng: random.Random) -> bytes:
    """One page drawn from a seeded mix of the contents found in process memory."""
    kind = rng.random()
    if kind < 0.06:  # zero page
        return bytes(PAGE_SIZE)
    if kind < 0.09:  # same-filled with a non-zero word
        return rng.randbytes(8) * (PAGE_SIZE // 8)
    if kind < 0.16:  # encrypted/compressed data: incompressible
        return rng.randbytes(PAGE_SIZE)
    out = bytearray()
    # heap-like: runs of text, small integers, pointers, zero padding and random bytes
    while len(out) < PAGE_SIZE:
        part = rng.random()
        n = rng.randint(16, 512)
        if part < 0.3:
            out += b" ".join(rng.choice(_WORDS) for _ in range(n // 5))
        elif part < 0.5:
            base = rng.randrange(1 << 40) & ~0xFFFF
            for _ in range(n // 8):
                out += (base + rng.randrange(0, 1 << 12, 16)).to_bytes(8, "little")
        elif part < 0.8:
            out += bytes(n)
        elif part < 0.95:
            for _ in range(n // 4):
                out += rng.randrange(64).to_bytes(4, "little")
        else:
            out += rng.randbytes(n // 4)
    return bytes(out[:PAGE_SIZE])


def synthetic_pages(count: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [synthetic_page(rng) for _ in range(count)]


def discard_span(offset: int, length: int) -> tuple[int, int]:
    """The bytes a zramd discard of ``[offset, offset + length)`` frees, as (start, end):
    the whole pages inside the range (start == end when there are none). The partial pages
    at its edges keep their contents, as the kernel's ``zram_bio_discard`` keeps them."""
    start = -(-offset // PAGE_SIZE) * PAGE_SIZE
    end = (offset + length) // PAGE_SIZE * PAGE_SIZE
    return start, max(start, end)


class BlockBackend(Protocol):
    """What ``check_block_device`` exercises."""

    @property
    def size(self) -> int: ...
    def read(self, offset: int, length: int) -> bytes: ...
    def write(self, offset: int, data: BytesLike) -> None: ...
    def discard(self, offset: int, length: int) -> None: ...
    def write_zeroes(self, offset: int, length: int) -> None: ...


def check_block_device(dev: BlockBackend, seed: int = 0, steps: int = 300) -> None:
    """Random I/O against a bytearray model; raises AssertionError at the first disagreement.

    Covers unaligned offsets and lengths, page-straddling writes, discard and write-zeroes
    edges, and reads of never-written space. Discard follows NBD's trim contract: each byte
    it covers reads back as before or as zero (zramd frees whole pages and keeps partial
    ones) until it is written again, and once read it stays what was read.
    """
    rng = random.Random(seed)
    size = dev.size
    model = bytearray(size)
    loose = bytearray(size)  # 1: discarded and not read or written since
    pages = synthetic_pages(16, seed)

    def check(off: int, got: bytes, where: str) -> None:
        want = model[off : off + len(got)]
        if got != want:
            for i in range(len(got)):
                if got[i] != want[i] and not (loose[off + i] and got[i] == 0):
                    raise AssertionError(f"{where}: byte {off + i} differs from the model")
        model[off : off + len(got)] = got
        loose[off : off + len(got)] = bytes(len(got))

    for step in range(steps):
        op = rng.random()
        off = rng.randrange(size)
        length = rng.randint(1, min(size - off, 3 * PAGE_SIZE))
        if op < 0.45:
            page = pages[rng.randrange(len(pages))]
            data = (page * (length // PAGE_SIZE + 2))[rng.randrange(PAGE_SIZE) :][:length]
            dev.write(off, data)
            model[off : off + length] = data
            loose[off : off + length] = bytes(length)
        elif op < 0.55:
            dev.discard(off, length)
            loose[off : off + length] = b"\1" * length
        elif op < 0.65:
            dev.write_zeroes(off, length)
            model[off : off + length] = bytes(length)
            loose[off : off + length] = bytes(length)
        check(off, dev.read(off, length), f"step {step}: read({off}, {length})")
    check(0, dev.read(0, size), "final read")


def check_pool_invariants(pool: PoolAPI) -> None:
    """Walk every structure of an idle pool and cross-check it (``pool.check()``: fullness
    lists, free lists, headers, counters, frames); AssertionError naming the first mismatch."""
    try:
        pool.check()
    except CorruptionError as e:
        raise AssertionError(str(e)) from e
