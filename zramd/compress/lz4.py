"""lz4 and lz4hc (python-lz4's block API, no size prefix: zram knows every page is 4 KiB).

Levels go to the library as the kernel's backends pass them: lz4's is the acceleration (below
1 the library uses 1), lz4hc's the compression level (below 1 the default 9, above 12 the
maximum 12). A dictionary primes both encoders and the shared decoder, as the kernel's
LZ4_loadDict / LZ4_decompress_safe_usingDict do; LZ4 reaches back 64 KiB at most, so only a
dictionary's last 64 KiB is kept.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import lz4.block

from zramd._types import BytesLike
from zramd.compress.base import Backend, check_s32, exact_size
from zramd.errors import CompressionError

LZ4_ACCELERATION_DEFAULT = 1  # the kernel backend's default "level" for lz4 is acceleration 1
LZ4HC_DEFAULT_CLEVEL = 9
LZ4_DICT_WINDOW = 64 << 10  # LZ4's longest match distance: older dictionary bytes are unused


class _Lz4Decoder:
    """lz4 and lz4hc share the block decoder."""

    name: str

    #: the hot path's decoder (see Compressor): the binding itself, called (src, size)
    raw_decompress: Callable[[BytesLike, int], bytes] = staticmethod(lz4.block.decompress)

    def __init__(self, dictionary: bytes) -> None:
        self._dict = dictionary[-LZ4_DICT_WINDOW:]
        #: keyword options of every block call: the dictionary, if there is one
        self._dict_kw: dict[str, bytes] = {"dict": self._dict} if self._dict else {}
        if self._dict:
            self.raw_decompress = functools.partial(lz4.block.decompress, dict=self._dict)

    def decompress(self, src: BytesLike, size: int) -> bytes:
        try:
            out: bytes = lz4.block.decompress(src, uncompressed_size=size, **self._dict_kw)
        except lz4.block.LZ4BlockError as e:
            raise CompressionError(f"{self.name}: corrupt object: {e}") from e
        if len(out) == size:  # the hot path checks inline (a call is a tenth of a 4 KiB read)
            return out
        return exact_size(self.name, out, size)


class Lz4(_Lz4Decoder):
    """lz4 fast mode; ``level`` is the acceleration (1 = best ratio, larger = faster)."""

    name = "lz4"

    #: compress one page: the binding itself with the options bound (a C-level partial costs
    #: less per page than a Python method around it)
    compress: Callable[[BytesLike], bytes]

    def __init__(
        self, level: int | None = None, *, winbits: int | None = None, dictionary: bytes = b""
    ) -> None:
        super().__init__(dictionary)
        self.level = LZ4_ACCELERATION_DEFAULT if level is None else check_s32(level, "lz4 level")
        self.compress = functools.partial(
            lz4.block.compress,
            mode="fast",
            acceleration=self.level,
            store_size=False,
            **self._dict_kw,
        )


class Lz4hc(_Lz4Decoder):
    """lz4 high-compression mode; ``level`` 1..12 (default 9; the library maps others into
    that range). Same decoder as lz4."""

    name = "lz4hc"

    compress: Callable[[BytesLike], bytes]  #: the binding with the options bound, as for lz4

    def __init__(
        self, level: int | None = None, *, winbits: int | None = None, dictionary: bytes = b""
    ) -> None:
        super().__init__(dictionary)
        self.level = LZ4HC_DEFAULT_CLEVEL if level is None else check_s32(level, "lz4hc level")
        self.compress = functools.partial(
            lz4.block.compress,
            mode="high_compression",
            compression=self.level,
            store_size=False,
            **self._dict_kw,
        )


LZ4 = Backend("lz4", Lz4, LZ4_ACCELERATION_DEFAULT)
LZ4HC = Backend("lz4hc", Lz4hc, LZ4HC_DEFAULT_CLEVEL)
