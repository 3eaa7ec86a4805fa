"""The public contract of a zsmalloc pool, shared by its two implementations.

``zramd.pool.ZsPool`` (Python, the reference) and ``zramd._zram.Pool`` (C, zramd/csrc/,
runs with the GIL released) both implement ``PoolAPI``: the same calls give the same handles,
bytes, statistics and exceptions. Neither half reaches into the other's private names;
mypy checks both against this Protocol (below), and tests/test_pool_api.py checks their
runtime signatures and that neither grows a public name the other lacks.

Handles are opaque ints (never 0). Sizes are bytes, 1..4096. Errors: ValueError for a bad
size, InvalidHandleError for a handle that is not allocated, CorruptionError for an object
whose header does not name its handle, PoolExhaustedError when the arena is full.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from zramd._types import BytesLike
from zramd.size_class import ClassSpec, ClassTable
from zramd.stats import PoolStats


@runtime_checkable
class PoolAPI(Protocol):
    """A thread-safe zsmalloc pool of compressed objects on 4 KiB frames."""

    @property
    def native(self) -> bool:
        """Whether the object loops run in C."""

    @property
    def huge_class_size(self) -> int:
        """The smallest request stored raw, one frame per object."""

    @property
    def class_table(self) -> ClassTable:
        """The pool's size classes (``build_class_table(chain)``)."""

    @property
    def total_pages(self) -> int:
        """Frames held by live zspages (``zs_get_total_pages``)."""

    @property
    def peak_pages(self) -> int:
        """The most frames held at once since the pool was created (transient overshoots
        of mem_limit included)."""

    @property
    def pages_compacted(self) -> int:
        """Frames freed by compaction since the pool was created."""

    @property
    def bytes_moved(self) -> int:
        """Object bytes (headers included) copied by compaction."""

    @property
    def max_slice_ns(self) -> int:
        """Longest class-lock hold of a gentle compaction slice, in nanoseconds."""

    def store_many(self, objs: Sequence[BytesLike], /) -> list[int]:
        """Store each buffer as a new object; handles in order. All or nothing: if one
        cannot be stored (bad size, arena exhausted), none stays stored."""

    def load_many(self, handles: Iterable[int], /) -> list[bytes]:
        """Copies of the objects' bytes, in order, each taken under its class lock."""

    def free_many(self, handles: Iterable[int], /) -> None:
        """Free every handle; stops at the first invalid one (InvalidHandleError), having
        freed those before it."""

    def malloc(self, size: int, /) -> int:
        """An object of ``size`` bytes, contents undefined until written; its handle."""

    def store(self, data: BytesLike, /) -> int:
        """``malloc(len(data))`` and ``write`` in one step."""

    def write(self, handle: int, data: BytesLike, /) -> None:
        """Write ``data`` (at most the allocated size) at the start of the object."""

    def read(self, handle: int, /) -> bytes:
        """A copy of the object's bytes (its allocated size)."""

    def free(self, handle: int, /) -> None:
        """Free an object."""

    def object_size(self, handle: int, /) -> int:
        """The size ``handle`` was allocated with."""

    def locate(self, handle: int, /) -> tuple[int, int]:
        """(zspage id, arena offset) of a live object; zspage 0 for a huge object."""

    def class_for_size(self, size: int, /) -> ClassSpec:
        """The class a ``malloc(size)`` lands in (``zs_lookup_class_index``)."""

    def can_compact(self) -> int:
        """Frames compaction could free now, summed over classes (the shrinker's count)."""

    def compact(self, *, gentle: bool = False) -> int:
        """``zs_compact``: frames freed; 0 at once if another compaction runs. ``gentle``:
        let waiting threads in between slices and record the longest in max_slice_ns."""

    def stats(self) -> PoolStats:
        """A snapshot; each class row is consistent (taken under its lock)."""

    def check(self) -> None:
        """Cross-check every structure; CorruptionError naming the first mismatch. Exact on
        an idle pool; for tests (it visits every object)."""

    @property
    def locked_frames(self) -> int:
        """Frames ``lock_frames`` locked; 0 for a pool that is not locked."""

    def lock_frames(self, frames: int, /) -> None:
        """Swap mode: fault in and mlock the first ``frames`` frames and the metadata they can
        need, cap the pool at them (a store beyond fails with PoolExhaustedError and touches
        no new memory) and keep freed frames resident. Only on a pool that has stored nothing.
        MemoryLockError (EBUSY for a used or locked pool, else mlock's errno: ENOMEM, EPERM)
        or ValueError for ``frames`` outside the arena. The Python pool cannot lock: it
        raises MemoryLockError (EOPNOTSUPP)."""

    def close(self) -> None:
        """Unmap everything; every handle becomes invalid. Idempotent."""


if TYPE_CHECKING:
    from zramd import _zram
    from zramd.pool import ZsPool

    def _both_conform(py: ZsPool, c: _zram.Pool) -> tuple[PoolAPI, PoolAPI]:
        return py, c  # mypy: both halves satisfy the contract
