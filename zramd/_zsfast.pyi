"""Types of the optional C accelerator (zramd/_zsfast.c).

The device helpers have exactly their Python twins' signatures, so the stub takes them from
there rather than repeating them.
"""

from collections.abc import Iterable, Sequence
from typing import Any

from zramd._types import BytesLike
from zramd.device import decode_pages as decode_pages
from zramd.device import encode_pages as encode_pages
from zramd.device import install_slots as install_slots
from zramd.device import scan_slots as scan_slots

CONSTANTS: dict[str, int]

class Pool:
    def __init__(self, pool: Any) -> None: ...
    def store_many(self, objs: Sequence[BytesLike]) -> list[int]: ...
    def load_many(self, handles: Iterable[int]) -> list[bytes]: ...
    def free_many(self, handles: Iterable[int]) -> None: ...
    def close(self) -> None: ...
