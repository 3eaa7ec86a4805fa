"""deflate via the standard library, with the kernel backend's defaults: level
Z_DEFAULT_COMPRESSION, a raw stream with an 11-bit window, memLevel 9.

``deflate.winbits`` goes to zlib as the kernel passes it: negative for a raw stream (the
default, -11), positive for a zlib-wrapped one. Dictionaries are kept unused, as the kernel's
deflate backend keeps them.
"""

from __future__ import annotations

import zlib

from zramd._types import BytesLike
from zramd.compress.base import Backend, check_s32, exact_size
from zramd.errors import CompressionError

DEFLATE_DEF_LEVEL = zlib.Z_DEFAULT_COMPRESSION
DEFLATE_DEF_WINBITS = -11  # raw, 2 KiB window: a page is 4 KiB, a bigger window buys little
DEFLATE_DEF_MEMLEVEL = 9


class Deflate:
    name = "deflate"

    def __init__(
        self, level: int | None = None, *, winbits: int | None = None, dictionary: bytes = b""
    ) -> None:
        self.level = DEFLATE_DEF_LEVEL if level is None else check_s32(level, "deflate level")
        if not -1 <= self.level <= 9:
            raise ValueError(f"deflate level {self.level} outside -1..9")
        self.winbits = DEFLATE_DEF_WINBITS if winbits is None else winbits
        if not 9 <= abs(self.winbits) <= 15:
            raise ValueError(
                f"deflate.winbits {self.winbits} outside -15..-9 (raw) and 9..15 (zlib stream)"
            )

    def compress(self, src: BytesLike) -> bytes:
        # A fresh stream per page, as the kernel resets its stream: zlib has no reset in Python.
        c = zlib.compressobj(self.level, zlib.DEFLATED, self.winbits, DEFLATE_DEF_MEMLEVEL)
        return c.compress(src) + c.flush()

    def decompress(self, src: BytesLike, size: int) -> bytes:
        try:
            out = zlib.decompress(src, self.winbits, size)
        except zlib.error as e:
            raise CompressionError(f"deflate: corrupt object: {e}") from e
        return exact_size(self.name, out, size)


DEFLATE = Backend("deflate", Deflate, DEFLATE_DEF_LEVEL)
