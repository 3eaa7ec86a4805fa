"""Types of zramd._zram, the C data path (zramd/csrc/)."""

from collections.abc import Sequence

from zramd._types import BytesLike

#: the C registry in the kernel's order: (name, None when available, else why not)
CODECS: tuple[tuple[str, str | None], ...]

class Codec:
    """A compression algorithm run in C (zcomp.c), shareable between threads.

    ValueError for an unknown or unavailable name or a bad parameter; ``dict`` is a zstd
    dictionary (raw content or a zstd-format dictionary).
    """

    def __new__(
        cls,
        name: str,
        level: int | None = None,
        winbits: int | None = None,
        dict: BytesLike | None = None,
    ) -> Codec: ...
    @property
    def name(self) -> str: ...
    @property
    def level(self) -> int | None: ...
    @property
    def winbits(self) -> int | None: ...
    @property
    def streams(self) -> tuple[int, int]: ...
    def compress(self, src: BytesLike, /) -> bytes: ...
    def decompress(self, src: BytesLike, size: int, /) -> bytes: ...
    def compress_many(self, srcs: Sequence[BytesLike], /) -> list[bytes]: ...
    def decompress_many(self, srcs: Sequence[BytesLike], size: int, /) -> list[bytes]: ...
