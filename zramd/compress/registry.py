"""The one list of compression backends, in the kernel's order (since 6.12):
``lzo-rle lzo lz4 lz4hc zstd deflate 842``. Unavailable entries stay listed here, with the
reason, but are never offered."""

from __future__ import annotations

from zramd.compress.base import Backend, Compressor
from zramd.compress.deflate import DEFLATE
from zramd.compress.lz4 import LZ4, LZ4HC
from zramd.compress.lzo import LZO, LZO_RLE
from zramd.compress.zstd import ZSTD
from zramd.errors import InvalidValueError

BACKENDS: tuple[Backend, ...] = (
    LZO_RLE,
    LZO,
    LZ4,
    LZ4HC,
    ZSTD,
    DEFLATE,
    Backend("842", None, None, "no Python binding for the 842 compressor"),
)
DEFAULT = "lz4"


def available() -> list[str]:
    """Names a device can use on this machine, in the kernel's order."""
    return [b.name for b in BACKENDS if b.available]


def lookup(name: str) -> Backend:
    """The available backend called ``name``; InvalidValueError (EINVAL) otherwise."""
    for b in BACKENDS:
        if b.name == name:
            if b.factory is None:
                raise InvalidValueError(
                    f"comp_algorithm {name!r} is unavailable: {b.unavailable_because}"
                )
            return b
    raise InvalidValueError(f"unknown comp_algorithm {name!r}; available: {' '.join(available())}")


def create(
    name: str, level: int | None = None, *, winbits: int | None = None, dictionary: bytes = b""
) -> Compressor:
    """A ready compressor with the parameters ``algorithm_params`` stores (None or empty: the
    backend's default); a backend ignores those it has no use for, as the kernel's do.
    InvalidValueError for an unknown name or a value the backend cannot use."""
    factory = lookup(name).factory
    assert factory is not None
    try:
        return factory(level, winbits=winbits, dictionary=dictionary)
    except ValueError as e:
        raise InvalidValueError(str(e)) from e
