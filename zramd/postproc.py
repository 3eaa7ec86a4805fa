"""Post-processing control: which pages writeback and recompression work on (the kernel's
``zram_pp_ctl``, shared by CONFIG_ZRAM_WRITEBACK and CONFIG_ZRAM_MULTI_COMP).

A pass *picks* its candidates first: under each stripe lock the slots that hold a pool object
and match the mode get PP_SLOT. It then works through them biggest object first (64-byte size
buckets, index order within one), and before and after each step checks the slot still has
PP_SLOT, which any read, write or free clears, so a page a client touches meanwhile is left
alone. Candidates not processed lose PP_SLOT when the pass ends. One pass at a time per device
(else EAGAIN), as the kernel allows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from zramd.slots import ZRAM_HUGE, ZRAM_IDLE, ZRAM_INCOMPRESSIBLE, ZRAM_SIZE_MASK

#: candidate filters (the kernel's *_WRITEBACK and RECOMPRESS_* modes)
PP_HUGE = 1 << 0
PP_IDLE = 1 << 1
PP_INCOMPRESSIBLE = 1 << 2
PP_BUCKET_SHIFT = 6  # buckets of 64 bytes of object size: biggest first


class Picker(Protocol):
    """The part of the data path's core a pass uses to pick and release candidates."""

    def pick(self, lo: int, hi: int, need: int, skip: int) -> list[tuple[int, int]]: ...

    def unpick(self, picked: Sequence[int]) -> None: ...


def pp_flags(mode: int) -> int:
    """Slot flags a writeback / recompress mode requires."""
    return (
        (ZRAM_HUGE if mode & PP_HUGE else 0)
        | (ZRAM_IDLE if mode & PP_IDLE else 0)
        | (ZRAM_INCOMPRESSIBLE if mode & PP_INCOMPRESSIBLE else 0)
    )


@contextmanager
def candidates(
    core: Picker, scans: Sequence[tuple[int, int, int]], skip: int
) -> Iterator[list[tuple[int, int]]]:
    """Pick the slots of every (mode, lo, hi) scan, skipping those with any ``skip`` flag, and
    yield them as (index, flags at pick time), biggest object first; on exit the ones still
    picked are released."""
    picked: list[tuple[int, int]] = []
    try:
        for mode, lo, hi in scans:
            picked += core.pick(lo, hi, pp_flags(mode), skip)
        picked.sort(key=lambda c: -((c[1] & ZRAM_SIZE_MASK) >> PP_BUCKET_SHIFT))
        yield picked
    finally:
        core.unpick([index for index, _ in picked])
