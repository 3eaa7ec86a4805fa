"""nbdkit plugin serving the Python ceiling (scripts/ceiling.py) for scripts/bench.

nbdkit python scripts/ceiling_plugin.py size=SIZE page=PAGE_SIZE
"""

from __future__ import annotations

import os
import sys

import nbdkit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # nbdkit does not add it

from ceiling import Ceiling

API_VERSION = 2
config_size = [0]
config_page = [0]
ceiling: list[Ceiling] = []


def config(key: str, value: str) -> None:
    if key == "size":
        config_size[0] = nbdkit.parse_size(value)
    elif key == "page":
        config_page[0] = nbdkit.parse_size(value)
    else:
        raise ValueError(f"unknown key {key}")


def config_complete() -> None:
    if not config_page[0]:
        raise ValueError("page=PAGE_SIZE is required (scripts/bench passes zramd's)")
    ceiling.append(Ceiling(config_page[0]))


def thread_model() -> int:
    return int(nbdkit.THREAD_MODEL_PARALLEL)


def open(readonly: bool) -> Ceiling:
    return ceiling[0]


def get_size(h: Ceiling) -> int:
    return config_size[0]


def can_multi_conn(h: Ceiling) -> bool:
    return True


def can_trim(h: Ceiling) -> bool:
    return True


def flush(h: Ceiling, flags: int) -> None:
    pass  # RAM: nothing to flush (nbdcopy --flush needs the capability)


def pread(h: Ceiling, buf: memoryview, offset: int, flags: int) -> None:
    h.read_into(offset, buf)


def pwrite(h: Ceiling, buf: memoryview, offset: int, flags: int) -> None:
    h.write(offset, buf)


def trim(h: Ceiling, count: int, offset: int, flags: int) -> None:
    h.discard(offset, count)


def zero(h: Ceiling, count: int, offset: int, flags: int) -> None:
    h.discard(offset, count)
