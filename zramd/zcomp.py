"""Compressors by priority (the kernel's ``zcomp.c`` and ``zram->comps[]``).

A device has a primary algorithm (priority 0, ``comp_algorithm``) and up to three secondary
ones for recompression (priorities 1..3, ``recomp_algorithm``), each with the parameters
``algorithm_params`` stored for it. Nothing is built until ``disksize``; then ``Comps`` holds
one ready compressor per configured priority, and a slot's two priority bits say which one
produced its object.

The compressors are C codecs (``zramd._zram.Codec``, on liblz4, libzstd, zlib and liblzo2)
when the extension is built and the C data path is in use, else the Python backends of
``zramd.compress``; both produce and accept the same formats.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zramd.compress import Compressor, create
from zramd.errors import InvalidValueError
from zramd.slots import ZRAM_COMP_PRIORITY_MASK, ZRAM_COMP_PRIORITY_SHIFT

ZRAM_MAX_COMPS = 4  #: the primary algorithm (priority 0) and up to three for recompression
ZRAM_PRIMARY_COMP = 0
ZRAM_SECONDARY_COMP = 1  #: the priority ``recomp_algorithm`` assumes without ``priority=``


def priority_of(flags: int) -> int:
    """The priority of the algorithm that produced a slot's object."""
    return (flags & ZRAM_COMP_PRIORITY_MASK) >> ZRAM_COMP_PRIORITY_SHIFT


@dataclass(frozen=True, slots=True)
class AlgorithmConfig:
    """A configured algorithm and what ``algorithm_params`` stored for it (the kernel's
    ``comp_algs[prio]`` and ``params[prio]``). None or empty: the backend's default."""

    name: str
    level: int | None = None
    winbits: int | None = None  #: deflate.winbits
    dictionary: bytes = field(default=b"", repr=False)  #: the dict= file's bytes

    def compressor(self, *, native: bool = False) -> Compressor:
        """The algorithm set up with these parameters: what disksize builds (a C codec when
        ``native``). EINVAL for a value the backend cannot use (a backend ignores those it
        has no use for)."""
        try:
            if native:
                return _native_codec(self)
            return create(self.name, self.level, winbits=self.winbits, dictionary=self.dictionary)
        except InvalidValueError as e:
            raise InvalidValueError(
                f"disksize: cannot set up {self.name} with its algorithm_params: {e}"
            ) from e


def _native_codec(config: AlgorithmConfig) -> Compressor:
    from zramd import _zram  # noqa: PLC0415 - only when the extension is in use

    try:
        codec: Compressor = _zram.Codec(
            config.name,
            level=config.level,
            winbits=config.winbits,
            dict=config.dictionary or None,
        )
    except ValueError as e:
        raise InvalidValueError(str(e)) from e
    return codec


class Comps:
    """The compressors of an initialised device, by priority (None where no secondary
    algorithm is configured)."""

    __slots__ = ("by_priority",)

    def __init__(self, configs: dict[int, AlgorithmConfig], *, native: bool) -> None:
        comps: list[Compressor | None] = [None] * ZRAM_MAX_COMPS
        for prio, config in configs.items():
            comps[prio] = config.compressor(native=native)
        if comps[ZRAM_PRIMARY_COMP] is None:
            raise InvalidValueError("disksize: no comp_algorithm configured")
        self.by_priority = tuple(comps)

    @property
    def primary(self) -> Compressor:
        comp = self.by_priority[ZRAM_PRIMARY_COMP]
        assert comp is not None  # checked at construction
        return comp

    def get(self, priority: int) -> Compressor | None:
        return self.by_priority[priority]

    def secondary(self) -> list[int]:
        """The configured secondary priorities, ascending."""
        return [p for p in range(1, ZRAM_MAX_COMPS) if self.by_priority[p] is not None]

    def name(self, priority: int) -> str | None:
        comp = self.by_priority[priority]
        return comp.name if comp is not None else None
