"""The page: zram's unit of everything, 4 KiB here as on every platform zram is used with
4 KiB logical blocks (the device's table has one entry per page, the pool's frames are pages,
the backing store's blocks are pages)."""

from __future__ import annotations

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = PAGE_SIZE - 1
