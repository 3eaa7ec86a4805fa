"""The compressor protocol every backend implements (the kernel's ``struct zcomp_ops``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from zramd._types import BytesLike
from zramd.errors import CompressionError


class Compressor(Protocol):
    """A configured compression algorithm, safe to call from many threads at once.

    Backends whose library needs per-stream state keep one context per thread (the kernel keeps
    one stream per CPU); stateless libraries need nothing. Every backend releases the GIL in its
    C code, so pages compress in parallel.
    """

    @property
    def name(self) -> str:
        """The kernel's name for the algorithm."""
        ...

    @property
    def level(self) -> int | None:
        """The configured level (backend-specific meaning), or None."""
        ...

    def compress(self, src: BytesLike) -> bytes:
        """Compress one page. The result may be longer than the input (incompressible data):
        the device then stores the page raw. Raises CompressionError on a library failure."""
        ...

    def decompress(self, src: BytesLike, size: int) -> bytes:
        """Return exactly ``size`` bytes, or raise CompressionError (corrupt input, wrong size)."""
        ...


def raw_decompressor(comp: Compressor) -> Callable[[BytesLike, int], bytes]:
    """The fastest way to call ``comp``'s decoder for the read path.

    A backend may offer ``raw_decompress(src, size)``: its binding with no Python frame around
    it, which on a corrupt object may raise anything or return the wrong length. Callers that
    use it check the length and, on either failure, call ``comp.decompress`` for the proper
    CompressionError. Without one, this is ``comp.decompress`` itself.
    """
    raw: Callable[[BytesLike, int], bytes] | None = getattr(comp, "raw_decompress", None)
    return raw if raw is not None else comp.decompress


def exact_size(name: str, out: bytes, size: int) -> bytes:
    """``out`` if it is exactly ``size`` bytes: a short or long result means a corrupt object,
    which every backend reports the same way."""
    if len(out) != size:
        raise CompressionError(f"{name}: object decompressed to {len(out)} bytes, not {size}")
    return out


def check_s32(value: int, what: str) -> int:
    """``value`` if it fits the kernel's s32 parameter fields, else ValueError."""
    if not -(1 << 31) <= value < 1 << 31:
        raise ValueError(f"{what} {value} does not fit a 32-bit signed integer")
    return value


#: Builds a compressor from the kernel's parameters for it (``struct zcomp_params``), called
#: ``factory(level, winbits=..., dictionary=...)``: level and deflate.winbits (None: the
#: backend's default) and the dictionary's bytes (empty: none). As the kernel's backends, each
#: takes all of them and ignores what it has no use for. ValueError for a value it cannot use.
BackendFactory: TypeAlias = Callable[..., Compressor]


@dataclass(frozen=True, slots=True)
class Backend:
    """A registry entry: a name, how to build it, and whether this machine can."""

    name: str
    factory: BackendFactory | None  #: None when the binding is missing
    default_level: int | None = None
    unavailable_because: str = ""

    @property
    def available(self) -> bool:
        return self.factory is not None
