"""The Python ceiling: the least Python can do to keep compressed pages in memory.

Each page is lz4-compressed (the same binding and mode zramd uses) into a dict keyed by page
number; reads decompress. No allocator, no accounting, no same-page detection, no locks
beyond the GIL. Whatever zramd costs beyond this is zramd's own overhead. Page-aligned
requests only. Served by nbdkit through ``ceiling_plugin.py`` (scripts/bench) and driven
in-process by scripts/bench_device.py, with the calls ``ZramDevice`` takes.

It imports nothing of zramd (the page size comes from the caller), so the process it runs in
holds only what the ceiling needs.
"""

from __future__ import annotations

import lz4.block


class Ceiling:
    def __init__(self, page: int) -> None:
        self.page = page
        self.zero = bytes(page)
        self.pages: dict[int, bytes] = {}

    def write(self, offset: int, buf: memoryview) -> None:
        page = self.page
        first = offset // page
        pages = self.pages
        compress = lz4.block.compress
        for i in range(len(buf) // page):
            pages[first + i] = compress(buf[i * page : (i + 1) * page], store_size=False)

    def read_into(self, offset: int, buf: memoryview) -> None:
        page, zero = self.page, self.zero
        get = self.pages.get
        first = offset // page
        decompress = lz4.block.decompress
        for i in range(len(buf) // page):
            c = get(first + i)
            buf[i * page : (i + 1) * page] = (
                zero if c is None else decompress(c, uncompressed_size=page)
            )

    def discard(self, offset: int, length: int) -> None:
        pop = self.pages.pop
        for i in range(offset // self.page, (offset + length) // self.page):
            pop(i, None)
