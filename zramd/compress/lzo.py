"""lzo (LZO1X-1, the kernel's ``lzo``) via python-lzo, when it is installed.

LZO1X-1 has no level and no dictionary: like the kernel's lzo backend, this one accepts every
parameter ``algorithm_params`` stores and uses none of them.

``lzo-rle`` is the kernel's own run-length extension of LZO1X; no maintained Python binding
implements it, so it is listed in the registry as unavailable and never offered.
"""

from __future__ import annotations

from zramd._types import BytesLike
from zramd.compress.base import Backend, BackendFactory, exact_size
from zramd.errors import CompressionError

try:
    import lzo as _lzo
except ImportError:  # pragma: no cover - depends on liblzo2-dev at install time
    _lzo = None


class Lzo:
    name = "lzo"
    level = None  #: LZO1X-1 has none; a configured level is stored by the device, unused

    def __init__(
        self, level: int | None = None, *, winbits: int | None = None, dictionary: bytes = b""
    ) -> None:
        pass

    def compress(self, src: BytesLike) -> bytes:
        out: bytes = _lzo.compress(bytes(src), 1, False)
        return out

    def decompress(self, src: BytesLike, size: int) -> bytes:
        try:
            out: bytes = _lzo.decompress(bytes(src), False, size)
        except _lzo.error as e:
            raise CompressionError(f"lzo: corrupt object: {e}") from e
        return exact_size(self.name, out, size)


_factory: BackendFactory | None = Lzo if _lzo is not None else None
LZO = Backend("lzo", _factory, None, "" if _lzo else "python-lzo is not installed")
LZO_RLE = Backend(
    "lzo-rle", None, None, "no maintained Python binding implements the kernel's lzo-rle format"
)
