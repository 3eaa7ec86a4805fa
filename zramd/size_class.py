"""zsmalloc size classes, computed exactly as mm/zsmalloc.c does.

Objects are grouped into classes 16 bytes apart (32 .. 4096). Each class carves its objects out of
a *zspage*: a chain of ``pages_per_zspage`` independent 4 KiB frames, the chain length chosen to
waste the least tail space (CONFIG_ZSMALLOC_CHAIN_SIZE bounds it: default 8, range 4..16).
Neighbouring classes with the same (pages_per_zspage, objs_per_zspage) are merged into the larger
one. Classes holding one object in one frame are *huge*: such objects are stored raw, without the
8-byte in-object handle header, and ``huge_class_size`` is the smallest request that lands there.
"""

from __future__ import annotations

import threading
from array import array
from dataclasses import dataclass

from zramd.page import PAGE_SIZE

ZS_HANDLE_SIZE = 8  # in-object header: the owning handle (the reverse map compaction needs)
ZS_MIN_ALLOC_SIZE = 32  # max(32, chain << PAGE_SHIFT >> OBJ_INDEX_BITS) on 64-bit
ZS_MAX_ALLOC_SIZE = PAGE_SIZE
ZS_SIZE_CLASS_DELTA = PAGE_SIZE >> 8  # 16: fine enough that rounding wastes < 16 B per object
ZS_SIZE_CLASSES = -(-(ZS_MAX_ALLOC_SIZE - ZS_MIN_ALLOC_SIZE) // ZS_SIZE_CLASS_DELTA) + 1  # 255
DEFAULT_CHAIN_SIZE = 8  # CONFIG_ZSMALLOC_CHAIN_SIZE default since 6.3
MIN_CHAIN_SIZE = 4
MAX_CHAIN_SIZE = 16


@dataclass(frozen=True, slots=True)
class ClassSpec:
    """The geometry of one distinct size class."""

    index: int  #: class index 0..254 of the (largest) size this class was created for
    size: int  #: object size in bytes, including the 8-byte header for non-huge classes
    pages_per_zspage: int
    objs_per_zspage: int

    @property
    def huge(self) -> bool:
        """One object per one-frame zspage: stored raw, never compacted."""
        return self.pages_per_zspage == 1 and self.objs_per_zspage == 1


def chain_size(class_size: int, max_chain: int = DEFAULT_CHAIN_SIZE) -> int:
    """``calculate_zspage_chain_size``: frames per zspage that leave the smallest tail.

    Powers of two tile a frame exactly. Ties keep the shorter chain.
    """
    if class_size & (class_size - 1) == 0:
        return 1
    best_waste, best = PAGE_SIZE, 1
    for frames in range(1, max_chain + 1):
        waste = (frames * PAGE_SIZE) % class_size
        if waste < best_waste:
            best_waste, best = waste, frames
    return best


def class_index(size: int) -> int:
    """``get_size_class_index``: the class index for an object of ``size`` bytes *including* its
    header."""
    if size <= ZS_MIN_ALLOC_SIZE:
        return 0
    return min(ZS_SIZE_CLASSES - 1, -(-(size - ZS_MIN_ALLOC_SIZE) // ZS_SIZE_CLASS_DELTA))


@dataclass(frozen=True, slots=True)
class ClassTable:
    """All size classes of a pool with one chain size."""

    chain: int
    classes: tuple[ClassSpec, ...]  #: distinct classes, ascending size
    by_index: tuple[ClassSpec, ...]  #: 255 entries; merged indices point at their larger class
    huge_class_size: int  #: requests of this many bytes or more are stored in the huge class

    def for_size(self, size: int) -> ClassSpec:
        """The class a ``malloc(size)`` request lands in (size excludes the header)."""
        if not 0 < size <= ZS_MAX_ALLOC_SIZE:
            raise ValueError(f"object size {size} outside 1..{ZS_MAX_ALLOC_SIZE}")
        return self.by_index[class_index(size + ZS_HANDLE_SIZE)]


def build_class_table(chain: int = DEFAULT_CHAIN_SIZE) -> ClassTable:
    """``zs_create_pool``'s class loop: walk from the largest index down, merging look-alikes."""
    if not MIN_CHAIN_SIZE <= chain <= MAX_CHAIN_SIZE:
        raise ValueError(f"chain size {chain} outside {MIN_CHAIN_SIZE}..{MAX_CHAIN_SIZE}")
    by_index: list[ClassSpec | None] = [None] * ZS_SIZE_CLASSES
    distinct: list[ClassSpec] = []
    huge_class_size = 0
    prev: ClassSpec | None = None
    for i in range(ZS_SIZE_CLASSES - 1, -1, -1):
        size = min(ZS_MIN_ALLOC_SIZE + i * ZS_SIZE_CLASS_DELTA, ZS_MAX_ALLOC_SIZE)
        pages = chain_size(size, chain)
        objs = pages * PAGE_SIZE // size
        # The first class (from the top) that is not huge bounds the huge ones; the header that
        # zs_malloc adds before the lookup is taken off so callers can compare payload sizes.
        if pages != 1 and objs != 1 and not huge_class_size:
            huge_class_size = size - (ZS_HANDLE_SIZE - 1)
        if prev is not None and (prev.pages_per_zspage, prev.objs_per_zspage) == (pages, objs):
            by_index[i] = prev
            continue
        prev = ClassSpec(i, size, pages, objs)
        by_index[i] = prev
        distinct.append(prev)
    distinct.reverse()
    indexed = tuple(c for c in by_index if c is not None)
    assert len(indexed) == ZS_SIZE_CLASSES
    return ClassTable(chain, tuple(distinct), indexed, huge_class_size)


# Fullness groups (kernel >= 6.4, "fine-grained inuse ratio based fullness grouping"): a zspage
# is filed by the share of its objects in use, in 10 % steps. Group 0 (empty) is never
# listed: an empty zspage is freed at once. Group 11 (full) is only counted: nothing allocates
# from, or compacts out of, a full zspage.
ZS_INUSE_RATIO_0 = 0
ZS_INUSE_RATIO_10 = 1
ZS_INUSE_RATIO_99 = 10
ZS_INUSE_RATIO_100 = 11
NR_FULLNESS_GROUPS = 12


def fullness_group(inuse: int, objs_per_zspage: int) -> int:
    """``get_fullness_group``: 0 empty, 1..10 by ten-percent ratio, 11 full."""
    if inuse == 0:
        return ZS_INUSE_RATIO_0
    if inuse == objs_per_zspage:
        return ZS_INUSE_RATIO_100
    # 1 of 127 objects rounds to 0 %, but such a zspage belongs in the 10 % group.
    return 100 * inuse // objs_per_zspage // 10 + 1


class SizeClass:
    """Runtime state of one distinct class (the kernel's ``struct size_class``).

    Guarded by ``lock``: the fullness lists (heads/counts/mask), the counters, the handle table
    and the bytes of every object of the class.

    Handles of the class index ``handles``: entry ``i`` holds the object's encoded location
    (>= 0) while it is live, and ``-1 - next free entry`` while it is free. Entry 0 is never
    used, so no handle is 0.
    """

    __slots__ = (
        "counts",
        "free_entry",
        "group_of",
        "handles",
        "heads",
        "huge",
        "index",
        "lock",
        "mask",
        "moves",
        "obj_allocated",
        "obj_used",
        "objs_per_zspage",
        "pages_per_zspage",
        "size",
        "spec",
    )

    def __init__(self, spec: ClassSpec) -> None:
        self.spec = spec
        self.index = spec.index
        self.size = spec.size
        self.pages_per_zspage = spec.pages_per_zspage
        self.objs_per_zspage = spec.objs_per_zspage
        self.huge = spec.huge
        self.lock = threading.Lock()
        self.handles = array("q", [0])
        self.free_entry = 0
        self.heads = [0] * NR_FULLNESS_GROUPS  #: first zspage of each group's list (0 = empty)
        self.counts = [0] * NR_FULLNESS_GROUPS  #: zspages in each group
        self.mask = 0  #: bit g set while list g is non-empty: the fullest is one bit_length away
        #: group of a zspage with ``inuse`` live objects, precomputed for the hot paths
        self.group_of = [
            fullness_group(i, spec.objs_per_zspage) for i in range(spec.objs_per_zspage + 1)
        ]
        self.obj_allocated = 0
        self.obj_used = 0
        self.moves = 0  #: objects moved by compaction (a sequence number readers may check)

    def can_compact(self) -> int:
        """``zs_can_compact``: frames freed if the free objects were packed into whole zspages."""
        wasted = self.obj_allocated - self.obj_used
        if wasted <= 0:
            return 0
        return wasted // self.objs_per_zspage * self.pages_per_zspage
