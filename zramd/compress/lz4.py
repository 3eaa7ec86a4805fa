"""lz4 and lz4hc (python-lz4's block API, no size prefix: zram knows every page is 4 KiB)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import lz4.block

from zramd._types import BytesLike
from zramd.compress.base import Backend, exact_size
from zramd.errors import CompressionError

LZ4_ACCELERATION_DEFAULT = 1  # the kernel backend's default "level" for lz4 is acceleration 1
LZ4HC_DEFAULT_CLEVEL = 9


class _Lz4Decoder:
    """lz4 and lz4hc share the block decoder."""

    name: str

    #: the hot path's decoder (see Compressor): the binding itself, called (src, size)
    raw_decompress = staticmethod(lz4.block.decompress)

    def decompress(self, src: BytesLike, size: int) -> bytes:
        try:
            out: bytes = lz4.block.decompress(src, uncompressed_size=size)
        except lz4.block.LZ4BlockError as e:
            raise CompressionError(f"{self.name}: corrupt object: {e}") from e
        if len(out) == size:  # the hot path checks inline (a call is a tenth of a 4 KiB read)
            return out
        return exact_size(self.name, out, size)


class Lz4(_Lz4Decoder):
    """lz4 fast mode; ``level`` is the acceleration (1 = best ratio, larger = faster)."""

    name = "lz4"

    #: compress one page: the binding itself with the options bound (a C-level partial costs
    #: ~0.2 µs a page less than a Python method around it)
    compress: Callable[[BytesLike], bytes]

    def __init__(self, level: int | None = None) -> None:
        self.level = LZ4_ACCELERATION_DEFAULT if level is None else level
        if self.level < 1:
            raise ValueError(f"lz4 acceleration {self.level} must be >= 1")
        self.compress = functools.partial(
            lz4.block.compress, mode="fast", acceleration=self.level, store_size=False
        )


class Lz4hc(_Lz4Decoder):
    """lz4 high-compression mode; ``level`` 1..12 (default 9). Same decoder as lz4."""

    name = "lz4hc"

    def __init__(self, level: int | None = None) -> None:
        self.level = LZ4HC_DEFAULT_CLEVEL if level is None else level
        if not 1 <= self.level <= 12:
            raise ValueError(f"lz4hc level {self.level} outside 1..12")

    def compress(self, src: BytesLike) -> bytes:
        out: bytes = lz4.block.compress(
            src, mode="high_compression", compression=self.level, store_size=False
        )
        return out


LZ4 = Backend("lz4", Lz4, LZ4_ACCELERATION_DEFAULT)
LZ4HC = Backend("lz4hc", Lz4hc, LZ4HC_DEFAULT_CLEVEL)
