"""zstd via python-zstandard, one compression and one decompression context per thread.

Frames carry the content size, as the kernel's backend writes them. Levels follow the
kernel's ``zstd_get_params``: 0 is the default (3), negative levels trade ratio for speed down
to ZSTD_minCLevel, and a level above the maximum is the maximum.

A dictionary (``algorithm_params dict=PATH``) is loaded as the kernel's backend loads it: a
zstd dictionary (``zstd --train``) or, without the dictionary magic, raw content
(ZSTD_dct_auto), digested once for the level and a page-sized input
(``zstd_get_cparams(level, PAGE_SIZE, dict_size)``) and shared by every thread's contexts.
Frames do not repeat the dictionary's id: the device knows which dictionary it has.
"""

from __future__ import annotations

import threading

import zstandard

from zramd._types import BytesLike
from zramd.compress.base import Backend, check_s32, exact_size
from zramd.errors import CompressionError

ZSTD_DEFAULT_LEVEL = 3  # ZSTD_CLEVEL_DEFAULT, what the kernel backend uses without params
ZSTD_MIN_LEVEL = -(1 << 17)  # ZSTD_minCLevel(): libzstd treats anything lower as this
from zramd.page import PAGE_SIZE  # noqa: E402


class _Contexts(threading.local):
    cctx: zstandard.ZstdCompressor | None = None
    dctx: zstandard.ZstdDecompressor | None = None


class Zstd:
    name = "zstd"

    def __init__(
        self, level: int | None = None, *, winbits: int | None = None, dictionary: bytes = b""
    ) -> None:
        self.level = ZSTD_DEFAULT_LEVEL if level is None else check_s32(level, "zstd level")
        self._effective = min(self.level, zstandard.MAX_COMPRESSION_LEVEL)
        self._dict: zstandard.ZstdCompressionDict | None = None
        if dictionary:
            self._dict = self._load(dictionary)
        self._local = _Contexts()

    def _load(self, dictionary: bytes) -> zstandard.ZstdCompressionDict:
        """The digested dictionary; ValueError if zstd cannot use it (a file with the
        dictionary magic whose tables are damaged)."""
        d = zstandard.ZstdCompressionDict(dictionary, dict_type=zstandard.DICT_TYPE_AUTO)
        try:
            d.precompute_compress(
                compression_params=zstandard.ZstdCompressionParameters.from_level(
                    self._effective, source_size=PAGE_SIZE, dict_size=len(dictionary)
                )
            )
            # one round trip builds the decoding tables now, once: contexts in many threads
            # then share them instead of racing to build their own
            probe = bytes(range(256)) * 4
            frame = self._compressor(d).compress(probe)
            ok = zstandard.ZstdDecompressor(dict_data=d).decompress(frame) == probe
        except zstandard.ZstdError as e:
            raise ValueError(f"zstd: the dictionary is not usable: {e}") from None
        if not ok:
            raise ValueError("zstd: the dictionary does not round-trip")
        return d

    def _compressor(self, d: zstandard.ZstdCompressionDict | None) -> zstandard.ZstdCompressor:
        if d is None:
            return zstandard.ZstdCompressor(
                level=self._effective, write_checksum=False, write_dict_id=False
            )
        return zstandard.ZstdCompressor(dict_data=d, write_checksum=False, write_dict_id=False)

    def compress(self, src: BytesLike) -> bytes:
        cctx = self._local.cctx
        if cctx is None:
            cctx = self._local.cctx = self._compressor(self._dict)
        return cctx.compress(src)

    def decompress(self, src: BytesLike, size: int) -> bytes:
        dctx = self._local.dctx
        if dctx is None:
            dctx = self._local.dctx = zstandard.ZstdDecompressor(dict_data=self._dict)
        try:
            out = dctx.decompress(src, max_output_size=size)
        except zstandard.ZstdError as e:
            raise CompressionError(f"zstd: corrupt object: {e}") from e
        return exact_size(self.name, out, size)


ZSTD = Backend("zstd", Zstd, ZSTD_DEFAULT_LEVEL)
