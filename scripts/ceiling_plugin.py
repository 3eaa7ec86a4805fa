"""The Python ceiling: the least an nbdkit Python plugin can do to compress pages into memory.

Each 4 KiB page is lz4-compressed (the same binding and mode zramd uses) into a dict keyed by
page number; reads decompress. No allocator, no accounting, no same-page detection, no locks
beyond the GIL. Whatever zramd costs beyond this is zramd's own overhead.
Benchmark peer only (scripts/bench): page-aligned requests, no partial pages.
"""

from __future__ import annotations

import lz4.block
import nbdkit

API_VERSION = 2
PAGE = 4096
ZERO = bytes(PAGE)
config_size = [0]
pages: dict[int, bytes] = {}


def config(key: str, value: str) -> None:
    if key != "size":
        raise ValueError(f"unknown key {key}")
    config_size[0] = nbdkit.parse_size(value)


def thread_model() -> int:
    return int(nbdkit.THREAD_MODEL_PARALLEL)


def open(readonly: bool) -> int:
    return 1


def get_size(h: int) -> int:
    return config_size[0]


def can_multi_conn(h: int) -> bool:
    return True


def can_trim(h: int) -> bool:
    return True


def flush(h: int, flags: int) -> None:
    pass  # RAM: nothing to flush (nbdcopy --flush needs the capability)


def pread(h: int, buf: memoryview, offset: int, flags: int) -> None:
    get = pages.get
    first = offset // PAGE
    for i in range(len(buf) // PAGE):
        c = get(first + i)
        page = ZERO if c is None else lz4.block.decompress(c, uncompressed_size=PAGE)
        buf[i * PAGE : (i + 1) * PAGE] = page


def pwrite(h: int, buf: memoryview, offset: int, flags: int) -> None:
    first = offset // PAGE
    for i in range(len(buf) // PAGE):
        pages[first + i] = lz4.block.compress(buf[i * PAGE : (i + 1) * PAGE], store_size=False)


def trim(h: int, count: int, offset: int, flags: int) -> None:
    for i in range(offset // PAGE, (offset + count) // PAGE):
        pages.pop(i, None)


def zero(h: int, count: int, offset: int, flags: int) -> None:
    trim(h, count, offset, flags)
