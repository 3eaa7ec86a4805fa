"""deflate (raw, no zlib header) via the standard library, with the kernel backend's defaults:
level Z_DEFAULT_COMPRESSION, an 11-bit window, memLevel 9."""

from __future__ import annotations

import zlib

from zramd._types import BytesLike
from zramd.compress.base import Backend, exact_size
from zramd.errors import CompressionError

DEFLATE_DEF_LEVEL = zlib.Z_DEFAULT_COMPRESSION
DEFLATE_DEF_WINBITS = 11  # 2 KiB window: a page is 4 KiB, a bigger window buys little
DEFLATE_DEF_MEMLEVEL = 9


class Deflate:
    name = "deflate"

    def __init__(self, level: int | None = None, winbits: int = DEFLATE_DEF_WINBITS) -> None:
        self.level = DEFLATE_DEF_LEVEL if level is None else level
        if not -1 <= self.level <= 9:
            raise ValueError(f"deflate level {self.level} outside -1..9")
        if not 9 <= winbits <= 15:
            raise ValueError(f"deflate.winbits {winbits} outside 9..15")
        self.winbits = winbits

    def compress(self, src: BytesLike) -> bytes:
        # A fresh stream per page, as the kernel resets its stream: zlib has no reset in Python.
        c = zlib.compressobj(self.level, zlib.DEFLATED, -self.winbits, DEFLATE_DEF_MEMLEVEL)
        return c.compress(src) + c.flush()

    def decompress(self, src: BytesLike, size: int) -> bytes:
        try:
            out = zlib.decompress(src, -self.winbits, size)
        except zlib.error as e:
            raise CompressionError(f"deflate: corrupt object: {e}") from e
        return exact_size(self.name, out, size)


DEFLATE = Backend("deflate", Deflate, DEFLATE_DEF_LEVEL)
