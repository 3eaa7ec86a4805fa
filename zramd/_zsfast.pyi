"""Types of the optional C accelerator (zramd/_zsfast.c)."""

from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from zramd._types import BytesLike

CONSTANTS: dict[str, int]

def encode_pages(
    src: memoryview,
    base: int,
    start: int,
    count: int,
    compress: Callable[[BytesLike], bytes],
    huge_size: int,
    same_flag: int,
    huge_flags: int,
    values: list[int | None],
    flags: list[int],
) -> tuple[list[BytesLike], list[int]]: ...

class Pool:
    def __init__(self, pool: Any) -> None: ...
    def store_many(self, objs: Sequence[BytesLike]) -> list[int]: ...
    def load_many(self, handles: Iterable[int]) -> list[bytes]: ...
    def free_many(self, handles: Iterable[int]) -> None: ...
    def close(self) -> None: ...

def decode_pages(
    buf: memoryview,
    contents: list[int | bytes],
    raw: Callable[[bytes, int], bytes],
    decompress: Callable[[bytes, int], bytes],
) -> None: ...
def scan_slots(
    flags: memoryview,
    handles: memoryview,
    actime: memoryview,
    lo: int,
    hi: int,
    first: int,
    now: int,
    out: list[int | bytes],
    load_many: Callable[[list[int]], list[bytes]],
    masks: tuple[int, int, int, int, int],
) -> tuple[list[int], list[int], list[tuple[int, int]]] | None: ...
def install_slots(
    flags_col: memoryview,
    handle_col: memoryview,
    actime: memoryview,
    first: int,
    values: list[int | None],
    flags: list[int],
    now: int,
    counters: tuple[array[int], ...],
    masks: tuple[int, int, int, int, int, int],
) -> tuple[list[int], list[int]]: ...
