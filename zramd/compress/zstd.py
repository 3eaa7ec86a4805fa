"""zstd via python-zstandard, one compression and one decompression context per thread.

Frames carry the content size, as the kernel's backend writes them.
"""

from __future__ import annotations

import threading

import zstandard

from zramd._types import BytesLike
from zramd.compress.base import Backend, exact_size
from zramd.errors import CompressionError

ZSTD_DEFAULT_LEVEL = 3  # ZSTD_CLEVEL_DEFAULT, what the kernel backend uses without params
ZSTD_MIN_LEVEL = -(1 << 17)  # ZSTD_minCLevel(): negative levels trade ratio for speed


class _Contexts(threading.local):
    cctx: zstandard.ZstdCompressor | None = None
    dctx: zstandard.ZstdDecompressor | None = None


class Zstd:
    name = "zstd"

    def __init__(self, level: int | None = None) -> None:
        self.level = ZSTD_DEFAULT_LEVEL if level is None else level
        if not ZSTD_MIN_LEVEL <= self.level <= zstandard.MAX_COMPRESSION_LEVEL:
            top = zstandard.MAX_COMPRESSION_LEVEL
            raise ValueError(f"zstd level {self.level} outside {ZSTD_MIN_LEVEL}..{top}")
        self._local = _Contexts()

    def compress(self, src: BytesLike) -> bytes:
        cctx = self._local.cctx
        if cctx is None:
            cctx = self._local.cctx = zstandard.ZstdCompressor(
                level=self.level, write_checksum=False, write_dict_id=False
            )
        return cctx.compress(src)

    def decompress(self, src: BytesLike, size: int) -> bytes:
        dctx = self._local.dctx
        if dctx is None:
            dctx = self._local.dctx = zstandard.ZstdDecompressor()
        try:
            out = dctx.decompress(src, max_output_size=size)
        except zstandard.ZstdError as e:
            raise CompressionError(f"zstd: corrupt object: {e}") from e
        return exact_size(self.name, out, size)


ZSTD = Backend("zstd", Zstd, ZSTD_DEFAULT_LEVEL)
