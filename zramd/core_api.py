"""The public contract of the data path's core, shared by its two implementations.

``zramd.core.ZramCore`` (Python, the reference) and ``zramd._zram.Core`` (C, zramd/csrc/zram.c,
runs with the GIL released) both implement ``CoreAPI``: the same calls give the same contents,
slot flags, handles, statistics and exceptions (type and message). mypy checks both against
this Protocol (below); tests/test_core_api.py checks their names, signatures and errors, and
tests/test_core_differential.py runs them side by side, comparing them after every step.

Offsets and lengths are bytes; indices are device pages; handles are the pool's. Errors:
InvalidIOError for a request outside the device (an offset or length of any size or sign), for
a slot operation on a slot that does not exist, and for any call but the releases (unpick,
tried), limits and statistics once ``close`` was called; ValueError for an argument no call
accepts (a block, size, priority, flag mask or frame count out of range); MemLimitError /
PoolExhaustedError (ENOSPC) when a write cannot be stored; CompressionError / CorruptionError /
InvalidHandleError (EIO) for an object that cannot be read back, or a written-back page
``backing_read`` cannot supply; and whatever ``backing_read`` raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from zramd._types import BytesLike
from zramd.pool_api import PoolAPI
from zramd.stats import CoreStats


class CoreAPI(Protocol):
    """The slot table of one initialised device and the per-request loops over it."""

    @property
    def pages(self) -> int:
        """Slots in the table (disksize / 4096)."""

    @property
    def pool(self) -> PoolAPI:
        """The pool the slots' objects live in (the core does not own it: close() leaves it
        open)."""

    # -- I/O: all or nothing; a failed write changes no byte -------------------------------

    def write(self, offset: int, data: BytesLike, /) -> None:
        """Store ``data`` at ``offset`` (any alignment: partial pages read-modify-write)."""

    def read_into(self, offset: int, buf: memoryview, /) -> None:
        """Fill ``buf`` from ``offset``; never-written and discarded bytes read as zeros."""

    def discard(self, offset: int, length: int, /) -> None:
        """Free the whole pages in the range; partial pages at its edges stay as they are."""

    def write_zeroes(self, offset: int, length: int, /, *, may_trim: bool = True) -> None:
        """Make the range read as zeros: whole pages freed (``may_trim``) or same-filled,
        partial edge pages zeroed by read-modify-write."""

    def extents(self, offset: int, length: int, /) -> list[tuple[int, int, int]]:
        """NBD block status from ``offset``: (offset, length, type) runs (3 hole, 2 zero,
        0 data), covering at least the first page and at most 256 MiB; none for an empty
        request at the end of the device."""

    # -- slot operations of the cold paths (each takes the stripe lock it needs) -----------

    def mark_idle(self, cutoff: int | None = None, /) -> int:
        """Mark stored objects IDLE (all, or those last accessed before ``cutoff`` s)."""

    def pick(self, lo: int, hi: int, need: int, skip: int, /) -> list[tuple[int, int]]:
        """Flag PP_SLOT on slots in [lo, hi) with a pool object, every ``need`` flag and no
        ``skip`` flag; (index, flags before the pick) in index order."""

    def unpick(self, picked: Sequence[int], /) -> None:
        """Drop PP_SLOT from these slots."""

    def take_page(self, index: int, /) -> tuple[int, int, bytes] | None:
        """(flags, handle, page) of a slot still picked, the page decompressed; else None."""

    def complete_writeback(self, index: int, handle: int, block: int, /) -> bool:
        """Switch a picked slot to WB with ``block`` (its object freed) unless it changed."""

    def tried(self, index: int, handle: int, incompressible: bool, /) -> None:
        """No algorithm improved the slot: drop PP_SLOT and IDLE, maybe INCOMPRESSIBLE."""

    def complete_recompress(self, index: int, handle: int, new: int, size: int, prio: int,
                            /) -> bool:  # fmt: skip
        """Install a recompressed object unless the slot changed (else the caller frees it)."""

    def reclaim_blocks(self) -> list[int]:
        """Written-back blocks freed by I/O that no reader can still be reading."""

    # -- limits and statistics -------------------------------------------------------------

    def set_mem_limit(self, pages: int, /) -> None:
        """The pool's limit in frames (0: none)."""

    def reset_max(self) -> None:
        """mem_used_max := the pool's current frames."""

    def note_peak(self, pages: int, /) -> None:
        """Raise mem_used_max to ``pages`` if higher (allocations made outside the core)."""

    def stats(self) -> CoreStats:
        """The counters (sums over the stripes)."""

    def slot(self, index: int, /) -> tuple[int, int, int]:
        """(handle, flags, actime) of one slot (tests and debugging)."""

    # -- swap mode (swapmode.py) -------------------------------------------------------------

    def lock_table(self) -> None:
        """Fault in and mlock the slot table, so that no request waits for its pages.
        MemoryLockError with mlock's errno (ENOMEM, EPERM); EOPNOTSUPP for the Python core,
        whose loops allocate on every request anyway."""

    def prepare_thread(self, max_bytes: int, /) -> None:
        """Ready the calling thread to serve writes of up to ``max_bytes`` with no allocation:
        its scratch grown and touched, a warmed compression stream kept for it. ValueError
        for a negative size. The Python core has nothing to prepare (a no-op)."""

    def close(self) -> None:
        """Refuse new calls, wait for those in flight, free the table."""


if TYPE_CHECKING:
    from zramd import _zram
    from zramd.core import ZramCore

    def _both_conform(py: ZramCore, c: _zram.Core) -> tuple[CoreAPI, CoreAPI]:
        return py, c  # mypy: both halves satisfy the contract
