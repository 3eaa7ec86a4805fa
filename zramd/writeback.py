"""Writeback: cold pages out to the backing store (CONFIG_ZRAM_WRITEBACK).

``writeback`` picks its candidates (``postproc``), then works in batches of
``writeback_batch_size`` pages: for each page still picked, a copy of its page (decompressed)
and a block of the store; the batch is written at once (the NBD store keeps it all in flight);
then every slot still picked switches to WB with its block and its pool object is freed. A page
touched meanwhile stays in memory and its block goes back. ``writeback_limit`` is a budget in
pages, taken per page and given back when a batch fails.

Reads of written-back pages go to the store through the core's ``backing_read``; blocks freed
by overwrites and discards come back through ``core.reclaim_blocks`` (see ``core.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

from zramd.backing import BackingDevice
from zramd.errors import BackingError, BackingFullError, ZramdError
from zramd.postproc import Picker, candidates
from zramd.slots import ZRAM_SAME, ZRAM_WB

WB_BATCH_DEFAULT = 32  # writeback_batch_size: pages in flight at once (7.0's default)
#: the most pages one writeback holds decompressed at once, whatever writeback_batch_size
#: says (1 MiB): the kernel's knob bounds requests in flight, not memory held by this process
WB_BATCH_MAX = 256


class WritebackCore(Picker, Protocol):
    """What writeback needs of the data path's core."""

    def take_page(self, index: int) -> tuple[int, int, bytes] | None: ...

    def complete_writeback(self, index: int, handle: int, block: int) -> bool: ...

    def reclaim_blocks(self) -> list[int]: ...


class WritebackSettings:
    """``writeback_limit`` (a budget in 4 KiB pages, used while ``writeback_limit_enable``)
    and ``writeback_batch_size``. Like the 7.0 code, reset leaves them alone."""

    __slots__ = ("_lock", "batch", "enable", "limit")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.limit = 0
        self.enable = False
        self.batch = WB_BATCH_DEFAULT

    def set_limit(self, pages: int) -> None:
        with self._lock:
            self.limit = pages

    def take(self, pages: int) -> bool:
        """Take ``pages`` (negative: give back) from an enabled limit; False if used up."""
        if not self.enable:
            return True
        with self._lock:
            if pages > 0 and self.limit < pages:
                return False
            self.limit -= pages
            return True


def writeback(
    core: WritebackCore,
    backing: BackingDevice,
    settings: WritebackSettings,
    scans: Sequence[tuple[int, int, int]],
) -> int:
    """Write back the pages the (mode, lo, hi) ``scans`` pick; returns how many. Raises EIO
    when the enabled limit runs out or the store fails, ENOSPC when it is full; what was
    written back before an error stays written back."""
    backing.free(core.reclaim_blocks())  # blocks overwrites freed are reused first
    written = 0
    error: ZramdError | None = None
    batch = min(settings.batch, WB_BATCH_MAX)
    with candidates(core, scans, ZRAM_WB | ZRAM_SAME) as picked:
        for start in range(0, len(picked), batch):
            jobs: list[tuple[int, int, int, bytes]] = []  # index, handle, block, page
            for index, _ in picked[start : start + batch]:
                if not settings.take(1):
                    error = ZramdError("writeback: writeback_limit is used up")
                    break
                taken = core.take_page(index)
                if taken is None:  # accessed or freed since it was picked
                    settings.take(-1)
                    continue
                try:
                    block = backing.alloc()
                except BackingFullError as e:
                    settings.take(-1)
                    error = e
                    break
                jobs.append((index, taken[1], block, taken[2]))
            if jobs:
                blocks = [job[2] for job in jobs]
                try:
                    backing.write(blocks, [job[3] for job in jobs])
                except BackingError as e:
                    backing.free(blocks)
                    settings.take(-len(jobs))
                    error = e
                    break
                unused = [b for i, h, b, _ in jobs if not core.complete_writeback(i, h, b)]
                backing.free(unused)
                written += len(jobs) - len(unused)
            if error is not None:
                break
    if error is not None:
        raise error
    return written
